"""The WebSocket opening handshake and a lean frame reader, free of I/O.

websockets' `ServerProtocol` is a complete Sans-I/O connection, and keeping one per socket
cost 1.4 KiB and, for the handshake, a `Headers` object and a second protocol instance per
connection: 46 % of connect+subscribe time and the whole memory gap to soketi (benchmarks,
connections scenario). A Pusher server needs much less of it per socket: read masked client
frames, answer pings, echo a close. So the per-socket state here is four slots and the 101 answer
is written straight from the headers httptools already parsed, while websockets still provides
what is easy to get wrong: the accept key, close-frame parsing and checks, framing of control
frames, and the C unmasking.
"""

from __future__ import annotations

import binascii
from collections.abc import Iterator
from enum import Enum

from websockets.exceptions import ProtocolError
from websockets.frames import Close, CloseCode, Frame, Opcode
from websockets.utils import accept_key

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets ships the C extension for every platform
    from websockets.utils import apply_mask

from reverb_py.http_types import HttpRequest, HttpResponse, error_response


def text_frame(payload: bytes) -> bytes:
    """An unmasked server text frame; encode once, write to any number of sockets.

    Every message a client gets is framed here, so the header is packed directly instead of
    through `Frame.serialize`, which builds a buffer and checks the frame on every call; the
    tests compare both."""
    length = len(payload)
    if length < 126:
        return bytes((0x81, length)) + payload
    if length < 65536:
        return b"\x81\x7e" + length.to_bytes(2) + payload
    return b"\x81\x7f" + length.to_bytes(8) + payload


def control_frame(opcode: Opcode, payload: bytes = b"") -> bytes:
    return Frame(opcode, payload).serialize(mask=False)


def close_frame(code: int, reason: str = "") -> bytes:
    """A close frame; the reason is cut to the 123 bytes a control frame leaves for it."""
    fitting = reason.encode()[:123].decode(errors="ignore")
    return control_frame(Opcode.CLOSE, Close(code, fitting).serialize())


PING_FRAME = control_frame(Opcode.PING)


# Opening handshake (RFC 6455 section 4.2) ---------------------------------------------------


def _has_token(value: str | None, token: str) -> bool:
    if value is None:
        return False
    lowered = value.lower()
    return lowered == token or token in [part.strip() for part in lowered.split(",")]


def _upgrade_required(message: str) -> HttpResponse:
    return error_response(426, message, (("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")))


def handshake_response(request: HttpRequest) -> bytes | HttpResponse:
    """The 101 answer to a valid upgrade request, or the 4xx that explains what is wrong."""
    headers = request.headers
    if not _has_token(headers.get("upgrade"), "websocket"):
        return _upgrade_required("WebSocket upgrade needs the header Upgrade: websocket")
    if not _has_token(headers.get("connection"), "upgrade"):
        return _upgrade_required("WebSocket upgrade needs the header Connection: Upgrade")
    if headers.get("sec-websocket-version", "").strip() != "13":
        return _upgrade_required("Unsupported Sec-WebSocket-Version: only 13 is spoken")
    key = headers.get("sec-websocket-key", "").strip()
    keys = sum(1 for name, _ in request.raw_headers if name.lower() == "sec-websocket-key")
    if keys != 1 or not _valid_key(key):
        return error_response(400, "Invalid or missing Sec-WebSocket-Key header")
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_key(key).encode() + b"\r\n\r\n"
    )


def _valid_key(key: str) -> bool:
    try:
        return len(binascii.a2b_base64(key.encode("ascii"), strict_mode=True)) == 16
    except (binascii.Error, UnicodeEncodeError):
        return False


# Frames --------------------------------------------------------------------------------------


class Received(Enum):
    """What a client frame amounts to once fragments are joined."""

    TEXT = "text"
    BINARY = "binary"
    PING = "ping"
    CLOSE = "close"


class FrameError(Exception):
    """The client broke the framing rules; close with this code (1002, 1007, 1008 or 1009)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


_CONT, _TEXT, _BINARY, _CLOSE, _PING, _PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_CONTROL = (_CLOSE, _PING, _PONG)
_SHORTEST_CLIENT_FRAME = 6  # 2 header bytes and the 4-byte mask every client frame carries
# Browsers send a Pusher message in one frame; a message cut into more pieces than this is an
# attack on the fragment list (empty continuation frames add no bytes to count against it).
MAX_FRAGMENTS = 1024


class FrameReader:
    """Parses client frames out of whatever byte chunks the socket delivers.

    Only an unfinished frame or fragmented message is kept between chunks, so an idle socket
    holds no buffer at all. The header is read here rather than by websockets' generator-based
    `Frame.parse`: driven from a buffer, that costs several times as much per frame, and a
    connecting client sends a dozen frames. Unmasking is websockets' C `apply_mask`, and the
    tests feed it frames serialized by websockets in every length class and split anywhere.

    The cost per received byte is bounded whatever the chunking: an unfinished frame grows in
    a bytearray and is parsed again only once the bytes it needs have arrived, and a fragmented
    message keeps a running size and a capped count of its pieces."""

    __slots__ = (
        "_fragments",
        "_fragments_binary",
        "_fragments_size",
        "_needed",
        "_partial",
        "max_size",
    )

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        # None between frames: an empty bytearray is 56 bytes on every idle socket.
        self._partial: bytearray | None = None
        self._needed = 0  # bytes the unfinished frame in _partial needs before it can be read
        self._fragments: list[bytes] | None = None
        self._fragments_binary = False
        self._fragments_size = 0

    def feed(self, data: bytes) -> Iterator[tuple[Received, bytes]]:
        """Yield each complete message and control frame in `data` (after what is left from
        earlier chunks); raise FrameError at the first frame that breaks the rules."""
        partial = self._partial
        if partial is not None:
            partial += data
            if len(partial) < self._needed:
                return
            buffer = bytes(partial)
            self._partial = None
        else:
            buffer = data
        end = len(buffer)
        position = 0
        needed = _SHORTEST_CLIENT_FRAME
        while end - position >= _SHORTEST_CLIENT_FRAME:
            head1 = buffer[position]
            head2 = buffer[position + 1]
            if head1 & 0x70:
                raise FrameError(CloseCode.PROTOCOL_ERROR, "reserved bits must be 0")
            if not head2 & 0x80:
                raise FrameError(CloseCode.PROTOCOL_ERROR, "client frames must be masked")
            length = head2 & 0x7F
            mask_at = position + 2
            if length >= 126:  # the length follows in 2 or 8 bytes
                mask_at += 2 if length == 126 else 8
                if end - mask_at < 4:
                    needed = mask_at + 4 - position
                    break
                length = int.from_bytes(buffer[position + 2 : mask_at])
            if length > self.max_size:
                raise FrameError(
                    CloseCode.MESSAGE_TOO_BIG,
                    f"frame of {length} bytes exceeds limit of {self.max_size} bytes",
                )
            data_at = mask_at + 4
            if end - data_at < length:
                needed = data_at + length - position
                break
            payload = apply_mask(buffer[data_at : data_at + length], buffer[mask_at:data_at])
            position = data_at + length
            received = self._assemble(head1 & 0x0F, head1 & 0x80 != 0, payload)
            if received is not None:
                yield received
        if position < end:
            self._partial = bytearray(buffer[position:])
            self._needed = needed

    def _assemble(self, opcode: int, fin: bool, data: bytes) -> tuple[Received, bytes] | None:
        if opcode in (_TEXT, _BINARY):
            if self._fragments is not None:
                raise FrameError(CloseCode.PROTOCOL_ERROR, "expected a continuation frame")
            if fin:
                if opcode == _BINARY:
                    return Received.BINARY, data
                # the ASCII scan inline: one call less for every Pusher message
                return Received.TEXT, data if data.isascii() else _valid_text(data)
            self._fragments = [data]
            self._fragments_binary = opcode == _BINARY
            self._fragments_size = len(data)
            return None
        if opcode in _CONTROL:
            if not fin or len(data) > 125:
                raise FrameError(CloseCode.PROTOCOL_ERROR, "control frames must be short and whole")
            if opcode == _PING:
                return Received.PING, data
            if opcode == _CLOSE:
                return Received.CLOSE, data
            return None  # a pong: any frame already counted as a sign of life
        if opcode != _CONT:
            raise FrameError(CloseCode.PROTOCOL_ERROR, f"invalid opcode {opcode}")
        fragments = self._fragments
        if fragments is None:
            raise FrameError(CloseCode.PROTOCOL_ERROR, "unexpected continuation frame")
        if len(fragments) >= MAX_FRAGMENTS:
            raise FrameError(
                CloseCode.POLICY_VIOLATION, f"message in more than {MAX_FRAGMENTS} fragments"
            )
        fragments.append(data)
        self._fragments_size += len(data)
        if self._fragments_size > self.max_size:
            raise FrameError(
                CloseCode.MESSAGE_TOO_BIG,
                f"message of {self._fragments_size} bytes exceeds limit of {self.max_size} bytes",
            )
        if not fin:
            return None
        self._fragments = None
        message = b"".join(fragments)
        if self._fragments_binary:
            return Received.BINARY, message
        return Received.TEXT, _valid_text(message)


def _valid_text(data: bytes) -> bytes:
    """A text message as received, once it is known to be UTF-8 (RFC 6455 8.1: else 1007).
    Pusher messages are ASCII JSON, for which the check is one fast scan."""
    if not data.isascii():
        try:
            data.decode()
        except UnicodeDecodeError:
            raise FrameError(CloseCode.INVALID_DATA, "text message is not valid UTF-8") from None
    return data


def close_reply(payload: bytes) -> tuple[int, str]:
    """The code and reason to echo to a client's close frame (RFC 6455 section 5.5.1)."""
    try:
        close = Close.parse(payload)
    except ProtocolError as exc:
        raise FrameError(CloseCode.PROTOCOL_ERROR, str(exc)) from exc
    except UnicodeDecodeError as exc:
        raise FrameError(CloseCode.INVALID_DATA, "close reason is not valid UTF-8") from exc
    if close.code == CloseCode.NO_STATUS_RCVD:
        return CloseCode.NORMAL_CLOSURE, ""
    return close.code, close.reason
