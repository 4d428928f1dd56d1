"""The scenarios of the issue "Performance: beat soketi on one core", as generator settings.

Each scenario names the loadgen mode and parameters, any server environment it needs, and the
metrics the table reports (with the direction that counts as better, so ratios can be judged).
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Metric:
    key: str  # a field of the generator's JSON result
    label: str
    higher_is_better: bool | None  # None: shown for information, no winner


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    mode: str  # loadgen --mode
    metrics: tuple[Metric, ...]
    conns: int = 0
    subs: int = 1
    pairs: int = 0
    rate: float = 0.0
    http_conns: int = 4
    duration: float = 10.0
    settle: float = 1.0
    concurrency: int = 200
    signin: bool = False  # pusher:signin before subscribing (soketi closes unsigned sockets)
    profile_connect: bool = False  # --profile from the first connect, not the measuring window
    server_env: tuple[tuple[str, str], ...] = ()

    def loadgen_args(self) -> list[str]:
        args = ["--mode", self.mode, "--duration", str(self.duration), "--settle", str(self.settle)]
        args += ["--concurrency", str(self.concurrency)]
        if self.mode == "broadcast":
            args += ["--conns", str(self.conns), "--http-conns", str(self.http_conns)]
            args += ["--rate", str(self.rate)]
        elif self.mode == "client-events":
            args += ["--pairs", str(self.pairs), "--rate", str(self.rate)]
        else:
            args += ["--conns", str(self.conns), "--subs", str(self.subs)]
        if self.signin:
            args.append("--signin")
        return args

    def timeout(self) -> float:
        """Generous wall-clock bound for one generator run (connect + settle + run + drain)."""
        return 120 + self.settle + self.duration + 30

    def scaled(self, clients: int | None, duration: float | None) -> Scenario:
        """The same scenario with fewer sockets or another duration (smoke tests, quick looks)."""
        changed = self
        if clients is not None:
            changed = replace(
                changed,
                conns=min(self.conns, clients),
                pairs=min(self.pairs, max(1, clients // 2)),
            )
            if self.pairs:  # keep the per-socket event rate (servers rate-limit per socket)
                changed = replace(changed, rate=self.rate * changed.pairs / self.pairs)
        if duration is not None:
            changed = replace(changed, duration=duration)
        return changed


DELIVERED = Metric("delivered_per_s", "delivered msg/s", True)
LOST = Metric("lost", "lost messages", False)
TRIGGERS = Metric("triggers_per_s", "triggers/s", True)
P50 = Metric("latency_p50_ms", "latency p50 ms", False)
P99 = Metric("latency_p99_ms", "latency p99 ms", False)
MAX = Metric("latency_max_ms", "latency max ms", False)
SERVER_CPU = Metric("server_cpu_pct", "server CPU %", False)
RSS_PER_CONN = Metric("server_rss_per_conn_kib", "server RSS KiB/conn", False)
CONNECT_RATE = Metric("connect_per_s", "connect+subscribe/s", True)
FAILED = Metric("connections_failed", "failed connections", False)
TRIGGER_ERRORS = Metric("trigger_errors", "trigger errors", False)
DISCONNECTS = Metric("disconnects", "disconnects", False)
PINGS = Metric("pusher_pings", "pusher:ping received", None)


def _fanout(subscribers: int) -> Scenario:
    return Scenario(
        f"fanout-{subscribers}",
        f"1 channel, {subscribers} subscribers, signed keep-alive HTTP triggers as fast as "
        "they are accepted (4 in flight); every message to every subscriber",
        "broadcast",
        (DELIVERED, LOST, TRIGGERS, SERVER_CPU),
        conns=subscribers,
    )


def _latency(rate: int) -> Scenario:
    return Scenario(
        f"latency-{rate}",
        f"{rate} triggers/s to 1 channel with 1000 subscribers; send time in the payload",
        "broadcast",
        (P50, P99, MAX, LOST, SERVER_CPU),
        conns=1000,
        rate=float(rate),
    )


def _latency_10k() -> Scenario:
    """The tail at ten times the sockets: what a full garbage collection costs grows with the
    objects of live connections, and the slower rate keeps the server below saturation."""
    return Scenario(
        "latency-10k",
        "5 triggers/s to 1 channel with 10 000 subscribers for 30 s; send time in the payload",
        "broadcast",
        (P50, P99, MAX, LOST, SERVER_CPU),
        conns=10_000,
        rate=5.0,
        duration=30.0,
        concurrency=500,
    )


def _triggers(subscribers: int) -> Scenario:
    return Scenario(
        f"trigger-{subscribers}",
        f"signed HTTP triggers, 8 connections in flight, channel with {subscribers} subscribers "
        "(reconnects when the server closes after a response, as soketi does)",
        "broadcast",
        (TRIGGERS, TRIGGER_ERRORS, LOST, SERVER_CPU),
        conns=subscribers,
        http_conns=8,
    )


def _idle(name: str, held: str, duration: float, ping_interval: int | None) -> Scenario:
    env = () if ping_interval is None else (("REVERB_APP_PING_INTERVAL", str(ping_interval)),)
    return Scenario(
        name,
        f"10 000 signed-in sockets, 1 channel each, {held}; the generator answers pusher:ping "
        "and WebSocket pings",
        "hold",
        (SERVER_CPU, RSS_PER_CONN, DISCONNECTS, PINGS),
        conns=10_000,
        duration=duration,
        settle=2.0,
        concurrency=500,
        signin=True,
        server_env=env,
    )


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        _fanout(100),
        _fanout(1000),
        _latency(25),
        _latency(50),
        _latency(100),
        _latency_10k(),
        _triggers(0),
        _triggers(100),
        Scenario(
            "connections",
            "10 000 sockets, 11 public channels each (1 100 channels of 100 members), 500 "
            "handshakes in flight; RSS measured 3 s after the last subscription",
            "hold",
            (CONNECT_RATE, RSS_PER_CONN, FAILED),
            conns=10_000,
            subs=11,
            duration=2.0,
            settle=3.0,
            concurrency=500,
            profile_connect=True,
        ),
        Scenario(
            "client-events",
            "500 pairs sharing a private channel (signed by the generator), 5 000 client "
            "events/s in total (5 per socket per second), each delivered to the peer",
            "client-events",
            (P50, P99, LOST, SERVER_CPU),
            pairs=500,
            rate=5000.0,
        ),
        _idle(
            "idle",
            "held for 65 s at the default REVERB_APP_PING_INTERVAL of 60 s (Reverb's too), so "
            "each socket is pinged once in the window, as it would be every minute in production",
            duration=65.0,
            ping_interval=None,
        ),
        _idle(
            "idle-ping5",
            "held for 30 s with REVERB_APP_PING_INTERVAL=5: twelve times the default ping rate, "
            "2 000 pings a second, a stress variant",
            duration=30.0,
            ping_interval=5,
        ),
    )
}


def select(spec: str) -> list[Scenario]:
    """`all`, or comma-separated scenario names, in the order given."""
    if spec == "all":
        return list(SCENARIOS.values())
    chosen = []
    for name in spec.split(","):
        if name.strip() not in SCENARIOS:
            raise SystemExit(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
        chosen.append(SCENARIOS[name.strip()])
    return chosen
