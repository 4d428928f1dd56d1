"""The presence rules of one node, pure: how sockets make members, and what a roster shows.

A user is one member of a channel however many of its sockets are subscribed on this node; it
is added on its first socket and removed with its last. Whether the change is news to the
cluster (member_added / member_removed for the others) is `scaling.state`'s rule, asked through
the cluster. Nothing here sends or frames anything: the hub acts on what these return.
"""

from __future__ import annotations

from typing import Any

from reverb_py.scaling.state import Members


class Member:
    """One presence member on this node: a user, however many of its sockets are here."""

    __slots__ = ("sockets", "user_id", "user_info")

    def __init__(self, user_id: Any, user_info: Any) -> None:
        self.user_id = user_id
        self.user_info = user_info
        self.sockets = 0


def add_socket(members: dict[str, Member], key: str, user_id: Any, user_info: Any) -> bool:
    """Count one more socket of the user `key`; True if it is the user's first here (the
    first socket's `user_info` stays the member's, as Pusher keeps it)."""
    record = members.get(key)
    if record is None:
        record = members[key] = Member(user_id, user_info)
        record.sockets = 1
        return True
    record.sockets += 1
    return False


def remove_socket(members: dict[str, Member], key: str) -> Member | None:
    """Count one socket of the user `key` less; the member if that was its last here."""
    record = members.get(key)
    if record is None:
        return None
    record.sockets -= 1
    if record.sockets > 0:
        return None
    del members[key]
    return record


def merged(remote: Members, local: dict[str, Member] | None) -> Members:
    """Every member of a channel: the other replicas' (`remote`, which is changed and
    returned) and this node's, which win for a user present on both."""
    if local:
        for key, record in local.items():
            remote[key] = (record.user_id, record.user_info)
    return remote


def roster(members: Members) -> dict[str, Any]:
    """The `presence` object of pusher_internal:subscription_succeeded."""
    return {
        "ids": [user_id for user_id, _ in members.values()],
        "hash": {key: info for key, (_, info) in members.items()},
        "count": len(members),
    }
