"""The liveness sweep on one session, with a recording socket instead of a connection: the
sweep passes the time and whether the client sent anything since the last sweep."""

from __future__ import annotations

from reverb_py.config import App, Settings
from reverb_py.pusher import messages
from reverb_py.pusher.session import Session
from reverb_py.server import Server
from reverb_py.transport.websocket import PING_FRAME, text_frame


class RecordingSocket:
    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.closed_with: int | None = None

    def send(self, frame: bytes) -> None:
        self.frames.append(frame)

    def send_text(self, payload: bytes) -> None:
        self.frames.append(text_frame(payload))

    def ping(self) -> None:
        self.frames.append(PING_FRAME)

    def close(self, code: int, reason: str = "") -> None:
        self.closed_with = code


def new_session(**app_settings: float) -> tuple[Session, RecordingSocket]:
    app = App(id="1", key="key", secret="secret", **app_settings)
    hub = Server(Settings(apps=(app,))).router.hubs_by_id["1"]
    socket = RecordingSocket()
    session = Session(hub, socket, "1.1")
    session.idle_since = 0.0
    return session, socket


PUSHER_PING = text_frame(messages.PING)


def test_both_pings_until_the_client_answers_pusher_ping_then_one() -> None:
    session, socket = new_session(ping_interval=10, pong_timeout=5)
    session.check_liveness(10.0, seen=False)
    assert socket.frames == [PUSHER_PING, PING_FRAME]
    socket.frames.clear()
    session.on_message(b'{"event":"pusher:pong","data":{}}', binary=False)
    session.check_liveness(11.0, seen=True)  # the answer resets the idle clock
    session.check_liveness(21.0, seen=False)
    assert socket.frames == [PUSHER_PING]


def test_a_client_that_answers_only_websocket_pings_keeps_getting_both() -> None:
    session, socket = new_session(ping_interval=10, pong_timeout=5)
    session.check_liveness(10.0, seen=False)
    session.check_liveness(11.0, seen=True)  # a WebSocket pong arrived
    socket.frames.clear()
    session.check_liveness(21.0, seen=False)
    assert socket.frames == [PUSHER_PING, PING_FRAME]
    assert socket.closed_with is None


def test_no_answer_closes_4201() -> None:
    session, socket = new_session(ping_interval=10, pong_timeout=5)
    session.check_liveness(10.0, seen=False)
    session.check_liveness(14.0, seen=False)
    assert socket.closed_with is None
    session.check_liveness(15.0, seen=False)
    assert socket.closed_with == 4201
