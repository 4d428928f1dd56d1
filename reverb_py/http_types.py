"""HTTP/1.1 request and response values, free of I/O.

Shared by both sides of the server: the transport (`transport.connection`) fills requests and
writes responses; the application (`router`, `pusher.http_api`, `metrics`) reads requests and
builds responses. Living outside `transport/` keeps the Pusher layer from importing it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

import orjson


@dataclass(slots=True)
class HttpRequest:
    method: str
    path: str
    query_string: str
    headers: dict[str, str]
    body: bytes = b""
    client_ip: str = ""
    keep_alive: bool = True
    raw_headers: list[tuple[str, str]] = field(default_factory=list)

    def query(self) -> list[tuple[str, str]]:
        return parse_query(self.query_string)


def parse_query(text: str) -> list[tuple[str, str]]:
    """The `(name, value)` pairs of a query string, blank values kept."""
    if "%" in text or "+" in text:
        return parse_qsl(text, keep_blank_values=True)
    # Signed API queries are plain `k=v&k=v`: skip the general parser's unquoting.
    pairs = []
    for pair in text.split("&"):
        if pair:
            key, _, value = pair.partition("=")
            pairs.append((key, value))
    return pairs


@dataclass(slots=True)
class HttpResponse:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    # Constant responses (`{}` to a trigger, health) are encoded once per keep-alive state.
    static: bool = False
    _wire: dict[bool, bytes] = field(default_factory=dict, repr=False)

    def encode(self, keep_alive: bool) -> bytes:
        if self.static:
            wire = self._wire.get(keep_alive)
            if wire is None:
                wire = self._wire[keep_alive] = self._encode(keep_alive)
            return wire
        return self._encode(keep_alive)

    def _encode(self, keep_alive: bool) -> bytes:
        phrase = _PHRASES.get(self.status, "Unknown")
        lines = [
            f"HTTP/1.1 {self.status} {phrase}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            "Connection: keep-alive" if keep_alive else "Connection: close",
        ]
        lines.extend(f"{name}: {value}" for name, value in self.headers)
        head = "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n"
        return head + self.body


_PHRASES = {status.value: status.phrase for status in HTTPStatus}


def json_response(
    status: int, payload: Any, headers: tuple[tuple[str, str], ...] = ()
) -> HttpResponse:
    return HttpResponse(status, orjson.dumps(payload), headers=headers)


def error_response(
    status: int, message: str, headers: tuple[tuple[str, str], ...] = ()
) -> HttpResponse:
    """Every HTTP error is JSON `{"error": ..., "code": ...}`, the shape soketi and Pusher use."""
    return json_response(status, {"error": message, "code": status}, headers)
