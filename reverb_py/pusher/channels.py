"""Channel kinds and name rules, by exact prefix as the Pusher documentation defines them.

Reverb matches `private`/`presence`/`cache` without the dash and lets `private-encrypted-cache-`
fall through to plain private; soketi uses unanchored regexes. Both are wrong in edge cases, so
the prefixes here are checked longest first and anchored.
"""

from __future__ import annotations

import re
from enum import Enum
from functools import lru_cache
from typing import NamedTuple


class ChannelKind(Enum):
    PUBLIC = "public"
    PRIVATE = "private"
    ENCRYPTED = "encrypted"
    PRESENCE = "presence"
    SERVER_TO_USER = "server-to-user"


class ChannelType(NamedTuple):
    """Looked up on every subscribe and client event, so what is derived from the kind is
    stored, not computed (a property comparing enums cost more than the lookup)."""

    kind: ChannelKind
    cached: bool
    needs_auth: bool

    @property
    def accepts_client_events(self) -> bool:
        return self.needs_auth


def _type(kind: ChannelKind, cached: bool) -> ChannelType:
    signed = kind in (ChannelKind.PRIVATE, ChannelKind.ENCRYPTED, ChannelKind.PRESENCE)
    return ChannelType(kind, cached, signed)


SERVER_TO_USER_PREFIX = "#server-to-user-"

# Longest prefix first: the first match wins.
_PREFIXES: tuple[tuple[str, ChannelType], ...] = (
    ("private-encrypted-cache-", _type(ChannelKind.ENCRYPTED, True)),
    ("private-encrypted-", _type(ChannelKind.ENCRYPTED, False)),
    ("private-cache-", _type(ChannelKind.PRIVATE, True)),
    ("private-", _type(ChannelKind.PRIVATE, False)),
    ("presence-cache-", _type(ChannelKind.PRESENCE, True)),
    ("presence-", _type(ChannelKind.PRESENCE, False)),
    ("cache-", _type(ChannelKind.PUBLIC, True)),
    (SERVER_TO_USER_PREFIX, _type(ChannelKind.SERVER_TO_USER, False)),
)
_PUBLIC = _type(ChannelKind.PUBLIC, False)

# Pusher's channel-name alphabet; user ids use the same one.
_NAME_CHARS = re.compile(r"[-a-zA-Z0-9_=@,.;]+")


@lru_cache(maxsize=65_536)
def channel_type(name: str) -> ChannelType:
    for prefix, kind in _PREFIXES:
        if name.startswith(prefix):
            return kind
    return _PUBLIC


def valid_channel_name(name: str, max_length: int) -> bool:
    """Pusher's character set and length limit; `#server-to-user-{id}` has its own form."""
    if not name or len(name) > max_length:
        return False
    if name.startswith(SERVER_TO_USER_PREFIX):
        return valid_user_id(name[len(SERVER_TO_USER_PREFIX) :], max_length)
    return _NAME_CHARS.fullmatch(name) is not None


def valid_user_id(user_id: str, max_length: int) -> bool:
    return 0 < len(user_id) <= max_length and _NAME_CHARS.fullmatch(user_id) is not None


def user_key(user_id: object) -> str:
    """Presence members are one per user id whatever its JSON type (1 and "1" are one user),
    while the roster echoes the id with the type it came with, as Reverb's clients expect."""
    return user_id if isinstance(user_id, str) else str(user_id)
