"""Container health check for reverb-py: exit 0 when `GET /up` answers 200, else exit 1.

Docker's HEALTHCHECK (and compose's `depends_on: condition: service_healthy`) run this inside
the container. It uses only the standard library because the slim runtime image has no curl or
wget, and it deliberately does not import reverb_py: a check that runs every few seconds should
cost a bare interpreter start, not the server's import graph.

It finds the server wherever it was configured:

- first from the address file the server writes once it listens (REVERB_ADDRESS_FILE, which
  the image sets to /tmp/reverb-py/address.json): host, bound port, path prefix and TLS as the
  server resolved them from flags, --env-file, --config and the environment together;
- before that file exists (start-up) or where it is not used, from the environment the server
  reads: REVERB_SERVER_HOST, REVERB_SERVER_PORT (default 8080), REVERB_SERVER_PATH and
  REVERB_TLS_CERT.

A wildcard bind (0.0.0.0, ::, empty) is probed on loopback, a specific address on that address.
The server serves /up under its path prefix, like every other route. With TLS the probe uses
https without verifying the certificate (issued for the public hostname, not for loopback):
this checks liveness, not the certificate.

An optional first argument replaces the path (default /up), e.g. `healthcheck.py /ready`.
"""

from __future__ import annotations

import json
import os
import ssl
import sys
import urllib.error
import urllib.request
from typing import NamedTuple

WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]", "*"}
TIMEOUT_SECONDS = 3.0
ADDRESS_FILE_MAX_BYTES = 4096


class Address(NamedTuple):
    host: str
    port: int
    path: str
    tls: bool


def address_from_env(env: dict[str, str]) -> Address:
    port = env.get("REVERB_SERVER_PORT", "").strip() or "8080"
    return Address(
        host=env.get("REVERB_SERVER_HOST", "0.0.0.0").strip(),
        port=int(port) if port.isdigit() else 8080,
        path=env.get("REVERB_SERVER_PATH", "").strip(),
        tls=bool(env.get("REVERB_TLS_CERT", "").strip()),
    )


def address_from_file(file: str) -> Address | None:
    """The server's own record of where it listens; None when absent or not understood."""
    try:
        with open(file, "rb") as handle:
            record = json.loads(handle.read(ADDRESS_FILE_MAX_BYTES))
        address = Address(record["host"], record["port"], record["path"], record["tls"])
    except (OSError, ValueError, TypeError, KeyError):
        return None
    types_ok = isinstance(address.host, str) and isinstance(address.path, str)
    if not types_ok or type(address.port) is not int or type(address.tls) is not bool:
        return None
    return address


def find_address(env: dict[str, str]) -> Address:
    file = env.get("REVERB_ADDRESS_FILE", "").strip()
    return (address_from_file(file) if file else None) or address_from_env(env)


def probe_url(address: Address, path: str = "/up") -> str:
    """The URL to probe, from the server's own settings, so both always agree."""
    host = address.host
    if host in WILDCARD_HOSTS:
        host = "127.0.0.1"
    host = host.strip("[]")
    if ":" in host:  # a literal IPv6 address needs brackets in a URL
        host = f"[{host}]"
    scheme = "https" if address.tls else "http"
    prefix = address.path.strip("/")
    if prefix:
        path = f"/{prefix}{path}"
    return f"{scheme}://{host}:{address.port}{path}"


def check(url: str, timeout: float = TIMEOUT_SECONDS) -> tuple[bool, str]:
    """Return (healthy, reason). Only an HTTP 200 counts as healthy."""
    context = None
    if url.startswith("https://"):
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    # Straight to the server: an HTTP(S)_PROXY in the container's environment (set for the
    # app's outbound calls) must not route a loopback probe through the proxy.
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    try:
        with opener.open(url, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        return False, f"{url} answered HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        return False, f"{url} unreachable: {exc}"
    if status != 200:
        return False, f"{url} answered HTTP {status}"
    return True, f"{url} answered HTTP 200"


def main(argv: list[str]) -> int:
    path = argv[1] if len(argv) > 1 else "/up"
    healthy, reason = check(probe_url(find_address(dict(os.environ)), path))
    if not healthy:
        print(reason, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
