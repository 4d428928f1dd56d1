"""Logging: one line per significant event, human-readable by default, JSON on request."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

import orjson


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure(log_format: str = "text", debug: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.getLogger("reverb_py.frames").setLevel(logging.DEBUG if debug else logging.INFO)


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """`1 client`, `2 clients`: log lines read as sentences whatever the count."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


class ThrottledLog:
    """Warnings that a client can cause, at most one per `interval` for each key.

    A log line per bad request would let one client fill the disk and spend the event loop on
    formatting, so repeats are counted instead and the count rides on the next line that is
    written. Keys must come from a bounded set (a reason, an app id), never from client input:
    the map of keys is never pruned. The clock is injectable so tests need not sleep.

    The same throttle serves unexpected exceptions (a bug a client can trigger at will is a
    flood like any other): `exc_info` puts the traceback on the lines that are written, so a
    bug leaves a stack to fix it from. Tracebacks show code and the exception's message, never
    local variables; App's repr hides its secret, so an exception that names its app is safe.
    """

    __slots__ = ("_clock", "_interval", "_logger", "_state")

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._state: dict[str, tuple[float, int]] = {}

    def warning(
        self, key: str, message: str, *args: object, exc_info: BaseException | None = None
    ) -> bool:
        """Log `message` unless this key logged less than `interval` ago; True if it did."""
        now = self._clock()
        last = self._state.get(key)
        if last is not None and now - last[0] < self._interval:
            self._state[key] = (last[0], last[1] + 1)
            return False
        self._state[key] = (now, 0)
        held_back = 0 if last is None else last[1]
        if held_back:
            self._logger.warning(
                message + " (and %d more since the last such line)",
                *args,
                held_back,
                exc_info=exc_info,
            )
        else:
            self._logger.warning(message, *args, exc_info=exc_info)
        return True
