"""Connection-storm protection: who is connecting, and how fast.

A client stuck in a reconnect loop, or a script opening sockets as fast as it can, must not
exhaust the process's file descriptors or starve everyone else. Each client IP may open at
most N new WebSockets per second; past that, the socket is refused with 4100, which pusher-js
answers by waiting a second before it tries again.

Behind a load balancer every connection comes from the balancer's address, so a per-IP limit
would throttle all clients together. The real client is then read from X-Forwarded-For, but
only when the direct peer is one of the configured trusted proxies: anyone else could write
that header themselves.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Fixed one-second windows: simple, one small list per active IP, no timer.
WINDOW_SECONDS = 1.0
# Beyond this many distinct IPs in one window new IPs are not tracked until the next sweep
# (fail open): memory stays bounded and a flood of addresses cannot lock real users out.
MAX_TRACKED_IPS = 100_000


class NewConnectionLimiter:
    """Counts new connections per client IP in fixed one-second windows."""

    __slots__ = ("limit", "max_tracked", "windows")

    def __init__(self, limit: int, max_tracked: int = MAX_TRACKED_IPS) -> None:
        self.limit = limit
        self.max_tracked = max_tracked
        # ip -> [window start, connections opened in that window]
        self.windows: dict[str, list[float]] = {}

    def hit(self, ip: str, now: float) -> int:
        """Record one new connection from `ip`; how many it opened in the current window."""
        entry = self.windows.get(ip)
        if entry is None or now - entry[0] >= WINDOW_SECONDS:
            if entry is None and len(self.windows) >= self.max_tracked:
                return 1
            self.windows[ip] = [now, 1]
            return 1
        entry[1] += 1
        return int(entry[1])

    def sweep(self, now: float) -> None:
        """Forget IPs whose window has passed (called from the server's periodic sweep)."""
        expired = [ip for ip, (start, _) in self.windows.items() if now - start >= WINDOW_SECONDS]
        for ip in expired:
            del self.windows[ip]


class ConnectionsPerAddress:
    """Open WebSockets per client address, capped: one address cannot take every socket.

    Entries exist only while the address has a socket open, so the map is bounded by the open
    connections, which the file-descriptor limit bounds."""

    __slots__ = ("limit", "open")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: dict[str, int] = {}

    def acquire(self, address: str) -> bool:
        """Count one more socket for `address`; False (and nothing counted) if it is at the cap."""
        count = self.open.get(address, 0)
        if count >= self.limit:
            return False
        self.open[address] = count + 1
        return True

    def release(self, address: str) -> None:
        count = self.open.get(address, 0) - 1
        if count > 0:
            self.open[address] = count
        else:
            self.open.pop(address, None)


def parse_networks(name: str, values: Iterable[str]) -> tuple[Network, ...]:
    """Trusted proxy addresses or CIDR ranges; raises ValueError naming the bad entry."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{name}: not an IP address or CIDR range: {value!r}") from None
    return tuple(networks)


class ClientAddress:
    """Finds the client's IP for a request: the peer, or what trusted proxies say it is."""

    __slots__ = ("networks",)

    def __init__(self, networks: tuple[Network, ...]) -> None:
        self.networks = networks

    def trusted(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # a dual-stack socket reports IPv4 peers like this
        return any(address in network for network in self.networks)

    def resolve(self, peer: str, forwarded_for: list[str]) -> str:
        """The rightmost X-Forwarded-For hop that is not a trusted proxy.

        Each proxy appends the address it received the request from, so hops are read from the
        right; anything left of the first untrusted hop was written by the client and is not
        believed. Without trusted proxies, or from an untrusted peer, the peer is the client.
        """
        if not self.networks or not forwarded_for or not self.trusted(peer):
            return peer
        hops = [hop.strip() for value in forwarded_for for hop in value.split(",")]
        hops = [hop for hop in hops if hop]
        for hop in reversed(hops):
            if not self.trusted(hop):
                return hop[:64]
        return hops[0][:64] if hops else peer
