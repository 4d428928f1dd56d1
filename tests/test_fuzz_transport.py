"""Property-based fuzzing of the two parsers that read anonymous clients' bytes.

The WebSocket frame reader and HTTP request assembly (httptools driven by `Connection`, fed
through a fake transport, answered by the real router) get arbitrary and near-valid input,
cut into arbitrary chunks. What must hold: no exception but the documented refusal, the same
result however the bytes are chunked, and no answer a client could not have earned (a 500).

The suite runs a bounded number of examples (a few seconds). For a long run:

    HYPOTHESIS_PROFILE=long .venv/bin/python -m pytest tests/test_fuzz_transport.py

Anything a long run finds becomes a plain regression test (tests/test_adversarial_transport.py,
tests/test_websocket_frames.py).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode

from benchmarks.fake_transport import FakeTransport
from reverb_py.config import Settings
from reverb_py.server import Server
from reverb_py.transport.connection import Connection, ConnectionLimits, WriteCoalescer
from reverb_py.transport.websocket import FrameError, FrameReader, Received
from tests.conftest import APP

# caplog is cleared by each example itself, so sharing it across examples is safe.
_QUIET = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
settings.register_profile("suite", max_examples=100, deadline=None, suppress_health_check=_QUIET)
settings.register_profile("long", max_examples=200_000, deadline=None, suppress_health_check=_QUIET)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """`data` cut at these offsets (taken modulo its length)."""
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


# Frame reader ------------------------------------------------------------------------------


def read_all(chunks: list[bytes], max_size: int = 4096) -> tuple[list[tuple[Received, bytes]], int]:
    """Everything the reader yields for these chunks, and the close code it stopped at (0)."""
    reader = FrameReader(max_size)
    out: list[tuple[Received, bytes]] = []
    try:
        for chunk in chunks:
            out.extend(reader.feed(chunk))
    except FrameError as error:
        return out, error.code
    return out, 0


@given(st.binary(max_size=2048), st.lists(st.integers(min_value=0), max_size=20))
def test_any_bytes_give_messages_or_a_close_code_whatever_the_chunking(
    data: bytes, cuts: list[int]
) -> None:
    whole = read_all([data])
    assert read_all(chunked(data, cuts)) == whole
    assert whole[1] in (0, 1002, 1007, 1008, 1009)


frames = st.lists(
    st.tuples(
        st.sampled_from([Opcode.TEXT, Opcode.BINARY, Opcode.CONT, Opcode.PING, Opcode.PONG]),
        st.booleans(),
        st.one_of(st.binary(max_size=300), st.text(max_size=100).map(str.encode)),
    ),
    max_size=12,
)


@given(frames, st.lists(st.integers(min_value=0), max_size=20))
def test_frames_written_by_websockets_read_back_whatever_the_chunking(
    parts: list[tuple[Opcode, bool, bytes]], cuts: list[int]
) -> None:
    wire = b"".join(
        Frame(opcode, payload[:125], fin=True).serialize(mask=True, extensions=[])
        if opcode in (Opcode.PING, Opcode.PONG)  # whole and short, or websockets refuses
        else Frame(opcode, payload, fin=fin).serialize(mask=True, extensions=[])
        for opcode, fin, payload in parts
    )
    out, code = read_all(chunked(wire, cuts), max_size=100_000)
    assert (out, code) == read_all([wire], max_size=100_000)
    for kind, payload in out:
        if kind is Received.TEXT:
            payload.decode()  # only valid UTF-8 is ever handed on as text


# HTTP request assembly ----------------------------------------------------------------------


async def serve_bytes(chunks: list[bytes]) -> bytes:
    server = Server(Settings(host="127.0.0.1", port=0, apps=(APP,)))
    loop = asyncio.get_running_loop()
    limits = ConnectionLimits(max_body=4096, max_header=2048, write_buffer_limit=65536)
    connection = Connection(server.router, WriteCoalescer(loop), limits, set())
    transport = FakeTransport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    for chunk in chunks:
        if transport.closing:
            break
        connection.data_received(chunk)
        await asyncio.sleep(0)
    for _ in range(3):  # queued answers and backlogs are handled on later loop turns
        await asyncio.sleep(0)
    connection.connection_lost(None)
    return bytes(transport.written)


def run(chunks: list[bytes]) -> bytes:
    return asyncio.run(serve_bytes(chunks))


methods = st.sampled_from(["GET", "HEAD", "POST", "PUT", "CONNECT", "OPTIONS", "G\x00T", "get"])
targets = st.one_of(
    st.sampled_from(
        [
            "/up",
            "/ready",
            "/app/test-key?protocol=7",
            "/apps/1234/events",
            "http://x/up",
            "http://[::1/up",
            "example.com:443",
            "*",
            "/app/test-key?protocol=%E0%A5%AD",
        ]
    ),
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=40),
)
headers = st.lists(
    st.sampled_from(
        [
            "Host: x",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Connection: close",
            "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Origin: http://[::1",
            "Content-Length: 5",
            "Content-Length: 99999999",
            "Transfer-Encoding: chunked",
            "X-Pad: " + "a" * 3000,
        ]
    ),
    max_size=8,
)
requests = st.builds(
    lambda method, target, lines, body: (
        (
            f"{method} {target} HTTP/1.1\r\n" + "".join(f"{line}\r\n" for line in lines) + "\r\n"
        ).encode("latin-1")
        + body
    ),
    methods,
    targets,
    headers,
    st.sampled_from([b"", b"hello", b"5\r\nhello\r\n0\r\n\r\n", b"1\r\nx\r\n" * 50]),
)


def check_answers(wire: bytes, caplog: pytest.LogCaptureFixture) -> None:
    assert b"HTTP/1.1 500" not in wire
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors[0].getMessage()


@given(st.lists(requests, min_size=1, max_size=4), st.lists(st.integers(min_value=0), max_size=8))
def test_near_valid_requests_never_crash_or_get_a_500(
    caplog: pytest.LogCaptureFixture, batch: list[bytes], cuts: list[int]
) -> None:
    caplog.clear()
    check_answers(run(chunked(b"".join(batch), cuts)), caplog)


@given(st.binary(max_size=1024), st.lists(st.integers(min_value=0), max_size=8))
def test_arbitrary_bytes_never_crash_or_get_a_500(
    caplog: pytest.LogCaptureFixture, data: bytes, cuts: list[int]
) -> None:
    caplog.clear()
    check_answers(run(chunked(data, cuts)), caplog)
