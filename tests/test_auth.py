"""Signatures: the Pusher documentation's vectors and the REST API verification rules."""

from __future__ import annotations

import hashlib

import pytest

from reverb_py.pusher import auth

KEY = "278d425bdf160c739803"
SECRET = "7ad3773142a6692b25b8"


@pytest.mark.parametrize(
    ("string_to_sign", "signature"),
    [
        (
            "1234.1234:private-foobar",
            "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4",
        ),
        (
            '1234.1234::user::{"id":"12345"}',
            "4708d583dada6a56435fb8bc611c77c359a31eebde13337c16ab43aa6de336ba",
        ),
        (
            '1234.1234:presence-foobar:{"user_id":10,"user_info":{"name":"Mr. Pusher"}}',
            "afaed3695da2ffd16931f457e338e6c9f2921fa133ce7dac49f529792be6304c",
        ),
        (
            '1234.1234:presence-foobar:{"user_id":10,"user_info":{"name":"Mr. Channels"}}',
            "31935e7d86dba64c2a90aed31fdc61869f9b22ba9d8863bba239c03ca481bc80",
        ),
    ],
)
def test_documented_auth_vectors(string_to_sign: str, signature: str) -> None:
    assert auth.sign(SECRET, string_to_sign) == signature


def test_private_channel_auth() -> None:
    good = f"{KEY}:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
    assert auth.channel_auth_valid(KEY, SECRET, "1234.1234", "private-foobar", good)
    assert not auth.channel_auth_valid(KEY, SECRET, "1234.1235", "private-foobar", good)
    assert not auth.channel_auth_valid("other", SECRET, "1234.1234", "private-foobar", good)
    assert not auth.channel_auth_valid(KEY, SECRET, "1234.1234", "private-foobar", None)


def test_presence_auth_signs_channel_data() -> None:
    data = '{"user_id":10,"user_info":{"name":"Mr. Channels"}}'
    good = f"{KEY}:31935e7d86dba64c2a90aed31fdc61869f9b22ba9d8863bba239c03ca481bc80"
    assert auth.channel_auth_valid(KEY, SECRET, "1234.1234", "presence-foobar", good, data)
    assert not auth.channel_auth_valid(
        KEY, SECRET, "1234.1234", "presence-foobar", good, data.replace("10", "11")
    )


def test_user_auth() -> None:
    good = f"{KEY}:4708d583dada6a56435fb8bc611c77c359a31eebde13337c16ab43aa6de336ba"
    assert auth.user_auth_valid(KEY, SECRET, "1234.1234", '{"id":"12345"}', good)
    assert not auth.user_auth_valid(KEY, SECRET, "1234.1234", '{"id":"12346"}', good)


# The REST API vector from the Pusher documentation.
BODY = b'{"name":"foo","channels":["project-3"],"data":"{\\"some\\":\\"data\\"}"}'
PARAMS = [
    ("auth_key", KEY),
    ("auth_timestamp", "1353088179"),
    ("auth_version", "1.0"),
    ("body_md5", "ec365a775a4cd0599faeb73354201b6f"),
]
SIGNATURE = "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"


def test_documented_rest_vector() -> None:
    assert hashlib.md5(BODY).hexdigest() == "ec365a775a4cd0599faeb73354201b6f"
    string_to_sign = auth.api_string_to_sign("POST", "/apps/3/events", PARAMS)
    assert string_to_sign == (
        "POST\n/apps/3/events\nauth_key=278d425bdf160c739803&auth_timestamp=1353088179"
        "&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f"
    )
    assert auth.sign(SECRET, string_to_sign) == SIGNATURE


def verify(params: list[tuple[str, str]], body: bytes = BODY, now: float = 1353088179) -> None:
    auth.verify_api_request(
        key=KEY,
        secret=SECRET,
        method="POST",
        paths=["/apps/3/events"],
        params=params,
        body=body,
        now=now,
    )


def test_rest_request_verifies() -> None:
    verify([*PARAMS, ("auth_signature", SIGNATURE)])


def test_rest_signature_ignores_param_order_and_key_case() -> None:
    shuffled = [(k.upper(), v) for k, v in reversed(PARAMS)]
    verify([*shuffled, ("auth_signature", SIGNATURE)])


@pytest.mark.parametrize(
    ("params", "body", "now", "reason"),
    [
        ([*PARAMS, ("auth_signature", "0" * 64)], BODY, 1353088179, "Invalid signature"),
        ([*PARAMS, ("auth_signature", SIGNATURE)], BODY + b" ", 1353088179, "body_md5"),
        ([*PARAMS, ("auth_signature", SIGNATURE)], BODY, 1353088179 + 601, "Timestamp"),
        ([*PARAMS, ("auth_signature", SIGNATURE)], BODY, 1353088179 - 601, "Timestamp"),
        (PARAMS, BODY, 1353088179, "Missing auth_signature"),
        ([p for p in PARAMS if p[0] != "body_md5"], BODY, 1353088179, "Missing body_md5"),
        ([("auth_key", "nope"), *PARAMS[1:]], BODY, 1353088179, "auth_key"),
    ],
)
def test_rest_request_refusals(
    params: list[tuple[str, str]], body: bytes, now: float, reason: str
) -> None:
    with pytest.raises(auth.ApiAuthError, match=reason):
        verify(params, body, now)


def test_rest_timestamp_window_edges_are_accepted() -> None:
    params = [*PARAMS, ("auth_signature", SIGNATURE)]
    verify(params, now=1353088179 + 600)
    verify(params, now=1353088179 - 600)
