"""Every HMAC of the protocol: channel auth, user sign-in and HTTP API request signatures.

Comparisons are constant-time (hmac.compare_digest) so that a client cannot learn a valid
signature byte by byte from response timing.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from functools import lru_cache
from typing import Protocol

TIMESTAMP_WINDOW_SECONDS = 600


class _Mac(Protocol):
    def copy(self) -> _Mac: ...

    def update(self, msg: bytes, /) -> None: ...

    def hexdigest(self) -> str: ...


@lru_cache(maxsize=256)
def _keyed(secret: str) -> _Mac:
    """OpenSSL's HMAC object itself where there is one: hmac.HMAC wraps each of its methods
    in a Python call, which a signed request pays three times."""
    try:
        from _hashlib import hmac_new
    except ImportError:  # a Python built without OpenSSL
        return hmac.new(secret.encode(), digestmod=hashlib.sha256)
    return hmac_new(secret.encode(), b"", "sha256")


def sign(secret: str, string_to_sign: str) -> str:
    """HMAC-SHA256, hex. A context keyed once per secret is copied for each message, cheaper
    than `hmac.digest`, which sets up OpenSSL's HMAC afresh on every call, and every signed API
    request and private subscription signs at least once."""
    mac = _keyed(secret).copy()
    mac.update(string_to_sign.encode())
    return mac.hexdigest()


def _matches(expected: str, given: str) -> bool:
    return hmac.compare_digest(expected.encode(), given.encode())


def channel_auth_valid(
    key: str,
    secret: str,
    socket_id: str,
    channel: str,
    auth: object,
    channel_data: str | None = None,
) -> bool:
    """`auth` must be `key:hex(HMAC(secret, socket_id:channel[:channel_data]))`.

    channel_data is part of the signed string only when given (presence channels)."""
    if not isinstance(auth, str):
        return False
    string_to_sign = f"{socket_id}:{channel}"
    if channel_data is not None:
        string_to_sign += f":{channel_data}"
    return _matches(f"{key}:{sign(secret, string_to_sign)}", auth)


def user_auth_valid(key: str, secret: str, socket_id: str, user_data: str, auth: object) -> bool:
    if not isinstance(auth, str):
        return False
    return _matches(f"{key}:{sign(secret, f'{socket_id}::user::{user_data}')}", auth)


def webhook_signature(secret: str, body: bytes) -> str:
    return hmac.digest(secret.encode(), body, "sha256").hex()


def api_string_to_sign(method: str, path: str, params: Iterable[tuple[str, str]]) -> str:
    """METHOD\\nPATH\\nQUERY: keys lower-cased, sorted, `k=v` joined by `&`, not URL-escaped;
    auth_signature itself is left out."""
    return f"{method.upper()}\n{path}\n{_signed_query([(k.lower(), v) for k, v in params])}"


def _signed_query(lowered: list[tuple[str, str]]) -> str:
    pairs = sorted(lowered)
    return "&".join([f"{key}={value}" for key, value in pairs if key != "auth_signature"])


class ApiAuthError(Exception):
    """Why a signed HTTP API request was refused; the message is safe to return to the caller."""


def verify_api_request(
    *,
    key: str,
    secret: str,
    method: str,
    paths: Iterable[str],
    params: list[tuple[str, str]],
    body: bytes,
    now: float,
) -> None:
    """Check a request signed as the Pusher REST API specifies, or raise ApiAuthError.

    `paths` are the spellings of the request path a correct client may have signed: SDKs
    differ on whether a server path prefix is included and on percent-decoding, and trying
    each costs one HMAC only when the first does not match.
    """
    lowered = [(name.lower(), value) for name, value in params]
    values = dict(lowered)
    if values.get("auth_key") != key:
        raise ApiAuthError("Unknown auth_key")
    if values.get("auth_version", "1.0") != "1.0":
        raise ApiAuthError("Unsupported auth_version (expected 1.0)")
    # Plain ASCII digits only, and few of them: int() also takes "1_0", "+1" and other
    # scripts' digits, and a 400-digit timestamp overflowed the float subtraction (a 500).
    text = values.get("auth_timestamp", "")
    if not (text.isascii() and text.isdigit()) or len(text) > 12:
        raise ApiAuthError("Missing or invalid auth_timestamp")
    if abs(now - int(text)) > TIMESTAMP_WINDOW_SECONDS:
        raise ApiAuthError(
            f"Timestamp expired: auth_timestamp must be within {TIMESTAMP_WINDOW_SECONDS} "
            "seconds of the server time"
        )
    given_md5 = values.get("body_md5")
    if body or given_md5 is not None:
        if given_md5 is None:
            raise ApiAuthError("Missing body_md5 for a request with a body")
        if not _matches(hashlib.md5(body).hexdigest(), given_md5):
            raise ApiAuthError("body_md5 does not match the request body")
    signature = values.get("auth_signature")
    if not signature:
        raise ApiAuthError("Missing auth_signature")
    query = _signed_query(lowered)
    for path in paths:
        if _matches(sign(secret, f"{method.upper()}\n{path}\n{query}"), signature):
            return
    raise ApiAuthError("Invalid signature: check the app secret and the signed path")
