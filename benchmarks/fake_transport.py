"""The asyncio transport a `Connection` is driven through without a socket.

The instruction-count harnesses and the tests that feed a `Connection` bytes directly need the
same small surface of `asyncio.Transport`; one definition keeps them from drifting apart when
`Connection` starts using another method of it. Every write succeeds at once: there is no
kernel buffer to fill, so nothing here ever pauses the writer.
"""

from __future__ import annotations

from typing import Any


class FakeTransport:
    """Keeps every byte written and whether the connection closed it, for tests to compare."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    abort = close

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.closing = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        return None

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None


class CountingTransport(FakeTransport):
    """Counts writes and bytes instead of keeping them: thousands of sockets times hundreds of
    broadcasts would otherwise hold the whole run in memory and count the copying."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.size = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.size += len(data)
