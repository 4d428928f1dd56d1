"""The operations replicas exchange, one small type each, and the one decoder of their wire form.

On the wire an operation is a JSON array whose first item names its kind (see the table in
`scaling.cluster`); the types here encode to exactly that array (`to_wire`), so a replica of
the previous release, which unpacked the arrays by position, still understands this one.

Everything a replica reads from the bus goes through `decode` before it is applied: an
operation of a kind this release does not know, with the wrong number of items or an item of
the wrong type (a bad replica, a corrupt stream entry) raises `MalformedOp`, which the cluster
counts and skips. What `decode` returns can be applied without further checks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from reverb_py.scaling.state import NodeState

# app id -> channel -> (payload, seconds left to live)
CacheEntries = dict[str, dict[str, tuple[str, float]]]


class MalformedOp(ValueError):
    """An operation this release cannot apply; `reason` is short and names no data."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Event:
    """An event for a channel, to deliver to that replica's subscribers."""

    KIND: ClassVar[str] = "e"
    app_id: str
    channel: str
    payload: str
    socket_id: str | None
    cache: bool

    def to_wire(self) -> list[Any]:
        return ["e", self.app_id, self.channel, self.payload, self.socket_id, self.cache]


@dataclass(frozen=True, slots=True)
class UserEvent:
    """An event for a signed-in user's connections."""

    KIND: ClassVar[str] = "u"
    app_id: str
    user_id: str
    payload: str
    socket_id: str | None

    def to_wire(self) -> list[Any]:
        return ["u", self.app_id, self.user_id, self.payload, self.socket_id]


@dataclass(frozen=True, slots=True)
class Terminate:
    """Close a user's connections."""

    KIND: ClassVar[str] = "t"
    app_id: str
    user_id: str

    def to_wire(self) -> list[Any]:
        return ["t", self.app_id, self.user_id]


@dataclass(frozen=True, slots=True)
class MemberAdded:
    """The sender gained a presence member (its first socket of that user on the channel)."""

    KIND: ClassVar[str] = "p+"
    app_id: str
    channel: str
    key: str
    user_id: Any
    user_info: Any

    def to_wire(self) -> list[Any]:
        return ["p+", self.app_id, self.channel, self.key, self.user_id, self.user_info]


@dataclass(frozen=True, slots=True)
class MemberRemoved:
    """The sender lost a presence member (its last socket of that user on the channel)."""

    KIND: ClassVar[str] = "p-"
    app_id: str
    channel: str
    key: str

    def to_wire(self) -> list[Any]:
        return ["p-", self.app_id, self.channel, self.key]


@dataclass(frozen=True, slots=True)
class CountChanged:
    """The sender's subscription count of a channel changed by `delta`."""

    KIND: ClassVar[str] = "c"
    app_id: str
    channel: str
    delta: int

    def to_wire(self) -> list[Any]:
        return ["c", self.app_id, self.channel, self.delta]


@dataclass(frozen=True, slots=True)
class SignedIn:
    """The sender got its first signed-in connection of a user (watchlist apps only)."""

    KIND: ClassVar[str] = "s+"
    app_id: str
    user_id: str

    def to_wire(self) -> list[Any]:
        return ["s+", self.app_id, self.user_id]


@dataclass(frozen=True, slots=True)
class SignedOut:
    """The sender lost its last signed-in connection of a user (watchlist apps only)."""

    KIND: ClassVar[str] = "s-"
    app_id: str
    user_id: str

    def to_wire(self) -> list[Any]:
        return ["s-", self.app_id, self.user_id]


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """The sender is alive; its connection count per app."""

    KIND: ClassVar[str] = "hb"
    connections: dict[str, int]

    def to_wire(self) -> list[Any]:
        return ["hb", self.connections]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The sender's whole state and its cache channels' entries; `reply`: send yours back."""

    KIND: ClassVar[str] = "snap"
    state: NodeState
    cache: CacheEntries
    reply: bool

    def to_wire(self) -> list[Any]:
        cache = {
            app_id: {name: [payload, ttl] for name, (payload, ttl) in entries.items()}
            for app_id, entries in self.cache.items()
        }
        return ["snap", _state_to_wire(self.state), cache, self.reply]


@dataclass(frozen=True, slots=True)
class Goodbye:
    """The sender is stopping: forget it now rather than after the node timeout."""

    KIND: ClassVar[str] = "bye"

    def to_wire(self) -> list[Any]:
        return ["bye"]


Op = (
    Event
    | UserEvent
    | Terminate
    | MemberAdded
    | MemberRemoved
    | CountChanged
    | SignedIn
    | SignedOut
    | Heartbeat
    | Snapshot
    | Goodbye
)


def decode(raw: object) -> Op:
    """The operation a parsed JSON array stands for; `MalformedOp` if it stands for none."""
    if not isinstance(raw, list) or not raw or not isinstance(raw[0], str):
        raise MalformedOp("not an operation")
    known = _PARSERS.get(raw[0])
    if known is None:
        raise MalformedOp("unknown kind")
    length, parse = known
    if len(raw) != length:
        raise MalformedOp("wrong number of items")
    return parse(raw)


# Checks of single items ---------------------------------------------------------------------


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise MalformedOp("expected a string")
    return value


def _optional_str(value: object) -> str | None:
    return None if value is None else _str(value)


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise MalformedOp("expected a boolean")
    return value


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise MalformedOp("expected an integer")
    return value


def _number(value: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise MalformedOp("expected a number")
    return float(value)


def _object(value: object) -> dict[str, Any]:
    """A JSON object (its keys are strings by construction)."""
    if not isinstance(value, dict):
        raise MalformedOp("expected an object")
    return value


def _pair(value: object) -> tuple[Any, Any]:
    if not isinstance(value, list) or len(value) != 2:
        raise MalformedOp("expected a pair")
    return value[0], value[1]


def _counts(value: object) -> dict[str, int]:
    return {key: _int(count) for key, count in _object(value).items()}


# Snapshots --------------------------------------------------------------------------------


def _state_to_wire(state: NodeState) -> dict[str, Any]:
    """JSON has no tuple keys, so apps nest their channels (every app with connections is
    listed, as the previous release did)."""
    apps: dict[str, dict[str, Any]] = {}

    def app(app_id: str) -> dict[str, Any]:
        found = apps.get(app_id)
        if found is None:
            found = apps[app_id] = {"connections": 0, "channels": {}, "members": {}, "users": []}
        return found

    for app_id, count in state.connections.items():
        app(app_id)["connections"] = count
    for (app_id, channel), count in state.channels.items():
        app(app_id)["channels"][channel] = count
    for (app_id, channel), members in state.members.items():
        app(app_id)["members"][channel] = {
            key: [user_id, info] for key, (user_id, info) in members.items()
        }
    for app_id, users in state.users.items():
        app(app_id)["users"] = list(users)
    return apps


def _state_from_wire(value: object) -> NodeState:
    node = NodeState(last_seen=0.0)
    for app_id, raw_app in _object(value).items():
        app = _object(raw_app)
        node.connections[app_id] = _int(app.get("connections", 0))
        for channel, count in _counts(app.get("channels", {})).items():
            node.channels[(app_id, channel)] = count
        for channel, members in _object(app.get("members", {})).items():
            node.members[(app_id, channel)] = {
                key: _pair(pair) for key, pair in _object(members).items()
            }
        users = app.get("users", [])
        if not isinstance(users, list):
            raise MalformedOp("expected a list of users")
        if users:
            node.users[app_id] = {_str(user_id) for user_id in users}
    return node


def _cache_from_wire(value: object) -> CacheEntries:
    cache: CacheEntries = {}
    for app_id, entries in _object(value).items():
        parsed: dict[str, tuple[str, float]] = {}
        for name, entry in _object(entries).items():
            payload, ttl = _pair(entry)
            parsed[name] = (_str(payload), _number(ttl))
        cache[app_id] = parsed
    return cache


# Per kind: how many items the array has, and how to read them once it has that many --------

_PARSERS: dict[str, tuple[int, Callable[[list[Any]], Op]]] = {
    "e": (
        6,
        lambda raw: Event(
            _str(raw[1]), _str(raw[2]), _str(raw[3]), _optional_str(raw[4]), _bool(raw[5])
        ),
    ),
    "u": (
        5,
        lambda raw: UserEvent(_str(raw[1]), _str(raw[2]), _str(raw[3]), _optional_str(raw[4])),
    ),
    "t": (3, lambda raw: Terminate(_str(raw[1]), _str(raw[2]))),
    "p+": (6, lambda raw: MemberAdded(_str(raw[1]), _str(raw[2]), _str(raw[3]), raw[4], raw[5])),
    "p-": (4, lambda raw: MemberRemoved(_str(raw[1]), _str(raw[2]), _str(raw[3]))),
    "c": (4, lambda raw: CountChanged(_str(raw[1]), _str(raw[2]), _int(raw[3]))),
    "s+": (3, lambda raw: SignedIn(_str(raw[1]), _str(raw[2]))),
    "s-": (3, lambda raw: SignedOut(_str(raw[1]), _str(raw[2]))),
    "hb": (2, lambda raw: Heartbeat(_counts(raw[1]))),
    "snap": (
        4,
        lambda raw: Snapshot(_state_from_wire(raw[1]), _cache_from_wire(raw[2]), _bool(raw[3])),
    ),
    "bye": (1, lambda raw: Goodbye()),
}
