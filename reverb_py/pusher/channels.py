"""Channel kinds and name rules, by exact prefix as the Pusher documentation defines them.

Reverb matches `private`/`presence`/`cache` without the dash and lets `private-encrypted-cache-`
fall through to plain private; soketi uses unanchored regexes. Both are wrong in edge cases, so
the prefixes here are checked longest first and anchored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache


class ChannelKind(Enum):
    PUBLIC = "public"
    PRIVATE = "private"
    ENCRYPTED = "encrypted"
    PRESENCE = "presence"
    SERVER_TO_USER = "server-to-user"


@dataclass(frozen=True, slots=True)
class ChannelType:
    kind: ChannelKind
    cached: bool

    @property
    def needs_auth(self) -> bool:
        return self.kind in (ChannelKind.PRIVATE, ChannelKind.ENCRYPTED, ChannelKind.PRESENCE)

    @property
    def accepts_client_events(self) -> bool:
        return self.needs_auth


SERVER_TO_USER_PREFIX = "#server-to-user-"

# Longest prefix first: the first match wins.
_PREFIXES: tuple[tuple[str, ChannelType], ...] = (
    ("private-encrypted-cache-", ChannelType(ChannelKind.ENCRYPTED, cached=True)),
    ("private-encrypted-", ChannelType(ChannelKind.ENCRYPTED, cached=False)),
    ("private-cache-", ChannelType(ChannelKind.PRIVATE, cached=True)),
    ("private-", ChannelType(ChannelKind.PRIVATE, cached=False)),
    ("presence-cache-", ChannelType(ChannelKind.PRESENCE, cached=True)),
    ("presence-", ChannelType(ChannelKind.PRESENCE, cached=False)),
    ("cache-", ChannelType(ChannelKind.PUBLIC, cached=True)),
    (SERVER_TO_USER_PREFIX, ChannelType(ChannelKind.SERVER_TO_USER, cached=False)),
)
_PUBLIC = ChannelType(ChannelKind.PUBLIC, cached=False)

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


def server_to_user_channel(user_id: str) -> str:
    return SERVER_TO_USER_PREFIX + user_id


def user_key(user_id: object) -> str:
    """Presence members are one per user id whatever its JSON type (1 and "1" are one user),
    while the roster echoes the id with the type it came with, as Reverb's clients expect."""
    return user_id if isinstance(user_id, str) else str(user_id)
