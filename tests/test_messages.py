"""Pusher frames without sockets: what clients send, parsed; what the server sends, encoded."""

from __future__ import annotations

import orjson
import pytest

from reverb_py.pusher import messages
from reverb_py.pusher.channels import ChannelKind, channel_type
from reverb_py.pusher.messages import ProtocolViolation


def test_subscribe_with_object_or_string_data_parses_the_same() -> None:
    as_object = messages.parse_client_message(
        b'{"event":"pusher:subscribe","data":{"channel":"a"}}'
    )
    as_string = messages.parse_client_message(
        b'{"event":"pusher:subscribe","data":"{\\"channel\\":\\"a\\"}"}'
    )
    assert as_object == as_string == ("pusher:subscribe", {"channel": "a"}, None)
    assert as_object.event == "pusher:subscribe" and as_object.channel is None


def test_client_event_data_string_is_kept_as_sent() -> None:
    message = messages.parse_client_message(
        b'{"event":"client-x","channel":"private-a","data":"1"}'
    )
    assert (message.event, message.data, message.channel) == ("client-x", "1", "private-a")


@pytest.mark.parametrize(
    "raw", [b"nope", b"[]", b'{"data":1}', b'{"event":"e","channel":5}', b'{"event":""}']
)
def test_malformed_frames_are_protocol_violations(raw: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        messages.parse_client_message(raw)


@pytest.mark.parametrize("channel", ["plain", 'quo"te', "ünï"])
def test_subscription_succeeded_is_the_double_encoded_internal_event(channel: str) -> None:
    expected = messages.encode_internal("pusher_internal:subscription_succeeded", {}, channel)
    assert messages.subscription_succeeded(channel) == expected
    assert orjson.loads(orjson.loads(expected)["data"]) == {}


def test_presence_subscription_carries_the_roster() -> None:
    roster = {"ids": ["1"], "hash": {"1": None}, "count": 1}
    frame = orjson.loads(messages.subscription_succeeded("presence-a", roster))
    assert orjson.loads(frame["data"]) == {"presence": roster}


@pytest.mark.parametrize(
    ("name", "kind", "cached", "needs_auth"),
    [
        ("public", ChannelKind.PUBLIC, False, False),
        ("cache-x", ChannelKind.PUBLIC, True, False),
        ("private-x", ChannelKind.PRIVATE, False, True),
        ("private-cache-x", ChannelKind.PRIVATE, True, True),
        ("private-encrypted-x", ChannelKind.ENCRYPTED, False, True),
        ("private-encrypted-cache-x", ChannelKind.ENCRYPTED, True, True),
        ("presence-x", ChannelKind.PRESENCE, False, True),
        ("presence-cache-x", ChannelKind.PRESENCE, True, True),
        ("#server-to-user-7", ChannelKind.SERVER_TO_USER, False, False),
        ("privatex", ChannelKind.PUBLIC, False, False),
    ],
)
def test_channel_types_by_prefix(
    name: str, kind: ChannelKind, cached: bool, needs_auth: bool
) -> None:
    channel = channel_type(name)
    assert (channel.kind, channel.cached, channel.needs_auth) == (kind, cached, needs_auth)
    assert channel.accepts_client_events == needs_auth
