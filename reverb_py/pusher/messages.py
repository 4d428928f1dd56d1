"""Pusher protocol frames: parsing what clients send, encoding what the server sends.

Everything here is pure: bytes in, bytes or values out. Server frames follow the published
protocol: `pusher:` and `pusher_internal:` events carry `data` as a JSON string ("double
encoding"), except `pusher:error`, `pusher:subscription_error` and `pusher:signin_success`,
whose `data` the protocol documents as an object.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, NamedTuple

import orjson


class ErrorCode(IntEnum):
    """Pusher close/error codes. The range tells pusher-js what to do next:
    4000-4099 do not reconnect, 4100-4199 back off, 4200-4299 reconnect at once."""

    SSL_ONLY = 4000
    APP_NOT_FOUND = 4001
    APP_DISABLED = 4003
    OVER_CONNECTION_QUOTA = 4004
    PATH_NOT_FOUND = 4005
    INVALID_VERSION = 4006
    UNSUPPORTED_PROTOCOL = 4007
    NO_PROTOCOL = 4008
    UNAUTHORIZED = 4009
    OVER_CAPACITY = 4100
    RECONNECT = 4200
    PONG_TIMEOUT = 4201
    INACTIVE = 4202
    CLIENT_EVENT_REJECTED = 4301
    WATCHLIST_LIMIT = 4302


class ProtocolViolation(Exception):
    """A client frame that cannot be handled; answered with pusher:error, never a crash.

    `reason` labels the refusal in metrics, so it must come from a short fixed set."""

    def __init__(
        self, message: str, code: ErrorCode = ErrorCode.RECONNECT, reason: str = "invalid_message"
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason


class ClientMessage(NamedTuple):
    """A NamedTuple: built for every client frame, three times cheaper than a dataclass."""

    event: str
    data: Any
    channel: str | None


def parse_client_message(raw: bytes) -> ClientMessage:
    """Decode one text frame from a client.

    `data` may be an object or, as the Java client sends it, a JSON string holding one; for
    `pusher:` events a string is decoded so that both spellings work (Reverb PR #352).
    """
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ProtocolViolation("Invalid message format: not valid JSON") from None
    if not isinstance(message, dict):
        raise ProtocolViolation("Invalid message format: expected a JSON object")
    event = message.get("event")
    if not isinstance(event, str) or not event:
        raise ProtocolViolation("Invalid message format: missing event name")
    channel = message.get("channel")
    if channel is not None and not isinstance(channel, str):
        raise ProtocolViolation("Invalid message format: channel must be a string")
    data = message.get("data")
    if event.startswith("pusher:") and isinstance(data, str):
        try:
            data = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise ProtocolViolation("Invalid message format: data is not valid JSON") from None
    return ClientMessage(event, data, channel)


def encode_nested(value: Any, headroom: int) -> bytes | None:
    """`value` as JSON, or None when it nests too deeply for the server to wrap it in
    `headroom` more containers later. orjson decodes up to 1024 levels but encodes at most 254,
    so a client value that decoded fine could otherwise fail in every frame built around it."""
    wrapped = value
    for _ in range(headroom):
        wrapped = [wrapped]
    try:
        encoded = orjson.dumps(wrapped)
    except orjson.JSONEncodeError:
        return None
    return encoded[headroom : len(encoded) - headroom]


def encode_event(event: str, data: Any, channel: str | None = None, user_id: Any = None) -> bytes:
    """One server frame. `data` goes on the wire as given (string or object)."""
    message: dict[str, Any] = {"event": event}
    if channel is not None:
        message["channel"] = channel
    if data is not None:
        message["data"] = data
    if user_id is not None:
        message["user_id"] = user_id
    return orjson.dumps(message)


def encode_internal(event: str, payload: Any, channel: str | None = None) -> bytes:
    """A `pusher:`/`pusher_internal:` frame whose data is double-encoded, as pusher-js expects."""
    return encode_event(event, orjson.dumps(payload).decode(), channel)


def connection_established(socket_id: str, activity_timeout: int) -> bytes:
    return encode_internal(
        "pusher:connection_established",
        {"socket_id": socket_id, "activity_timeout": activity_timeout},
    )


def error(code: ErrorCode | None, message: str, channel: str | None = None) -> bytes:
    return encode_event(
        "pusher:error",
        {"code": int(code) if code is not None else None, "message": message},
        channel,
    )


def subscription_error(channel: str, kind: str, message: str, status: int) -> bytes:
    """Shaped like pusher-js's own auth failure event, so Echo's `.error()` handlers fire."""
    return encode_event(
        "pusher:subscription_error",
        {"type": kind, "error": message, "status": status},
        channel,
    )


def subscription_succeeded(channel: str, presence: Any = None) -> bytes:
    if presence is None:  # every subscription of every connect: skip two generic encodes
        return _SUCCEEDED_HEAD + orjson.dumps(channel) + b',"data":"{}"}'
    return encode_internal(
        "pusher_internal:subscription_succeeded", {"presence": presence}, channel
    )


_SUCCEEDED_HEAD = b'{"event":"pusher_internal:subscription_succeeded","channel":'


PONG = encode_event("pusher:pong", "{}")
PING = encode_event("pusher:ping", "{}")


def cache_miss(channel: str) -> bytes:
    return encode_event("pusher:cache_miss", None, channel)
