"""What the transport refused, counted for /metrics and logged without amplification.

Every refusal here is something an anonymous client can cause at will (a malformed request, a
head that trickles in, a socket too many), so each is one increment and, at most once per
interval for each reason, one log line that carries the count of the lines held back.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Literal

from reverb_py.logs import ThrottledLog

logger = logging.getLogger("reverb_py.transport")

# The bounded set of reasons (metric label values and log keys), checked by mypy at each caller.
RefusalReason = Literal[
    "bad_request",  # the HTTP parser refused the bytes (400)
    "bad_target",  # a request target that is not a path or an absolute URL (400)
    "method",  # CONNECT (405)
    "header_too_large",  # request head over max_header_size (431)
    "body_too_large",  # request body over max_request_size (413)
    "request_timeout",  # request not complete within request_timeout (408)
    "fd_limit",  # no file descriptor to spare for one more socket (closed on accept)
]


class TransportRefusals:
    __slots__ = ("_log", "counts")

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.counts: Counter[str] = Counter()
        self._log = ThrottledLog(logger, interval, clock)

    def refuse(self, reason: RefusalReason, message: str, *args: object) -> None:
        """Count one refusal for `reason` and log it, throttled."""
        self.counts[reason] += 1
        self._log.warning(reason, message, *args)
