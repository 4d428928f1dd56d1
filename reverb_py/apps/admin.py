"""What `reverb-py apps ...` does to the apps table: each operation validates first, so the
table never holds a row the server would skip."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from reverb_py.apps import sql
from reverb_py.config import App, ConfigError, random_token


class AdminError(Exception):
    """An operation that cannot be done (unknown app, duplicate id or key)."""


@dataclass(frozen=True, slots=True)
class Listing:
    """One app as `apps list` shows it: never its secret, nor option values (webhook URLs and
    headers often carry tokens)."""

    id: str
    key: str
    enabled: bool
    options: tuple[str, ...]


def new_secret() -> str:
    """32 characters of [a-z0-9] (165 bits), in the alphabet Reverb's generator uses."""
    return random_token(32)


def parse_value(text: str) -> Any:
    """A `set` value: JSON when it parses (numbers, true, lists, objects), else the text."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


async def init_db(db: sql.Connection) -> None:
    for statement in db.queries.create():
        await db.execute(statement)


async def add(
    db: sql.Connection, app_id: str, key: str, options: dict[str, Any], enabled: bool = True
) -> App:
    app = sql.app_from_row((app_id, key, new_secret(), enabled, options))
    if await db.fetch(db.queries.select_taken, app.id, app.key):
        raise AdminError(f"an app with id {app.id!r} or key {app.key!r} already exists")
    await db.execute(
        db.queries.insert, app.id, app.key, app.secret, enabled, sql.options_json(options)
    )
    return app


async def listing(db: sql.Connection) -> list[Listing]:
    return [
        Listing(str(row[0]), str(row[1]), bool(row[2]), tuple(sorted(_options(row[0], row[3]))))
        for row in await db.fetch(db.queries.select_listing)
    ]


async def set_enabled(db: sql.Connection, app_id: str, enabled: bool) -> None:
    _found(app_id, await db.execute(db.queries.set_enabled, enabled, app_id))


async def rotate_secret(db: sql.Connection, app_id: str) -> str:
    secret = new_secret()
    _found(app_id, await db.execute(db.queries.set_secret, secret, app_id))
    return secret


async def set_option(db: sql.Connection, app_id: str, name: str, value: Any) -> None:
    """Set (or with value None, remove) one per-app setting, checked as the TOML file is."""
    rows = await db.fetch(db.queries.select_options, app_id)
    if not rows:
        raise AdminError(f"no app with id {app_id!r}")
    options = _options(app_id, rows[0][0])
    if value is None:
        options.pop(name, None)
    else:
        options[name] = value
    sql.app_from_row((app_id, "key", "secret", True, options))  # raises ConfigError if invalid
    await db.execute(db.queries.set_options, sql.options_json(options), app_id)


async def delete(db: sql.Connection, app_id: str) -> None:
    _found(app_id, await db.execute(db.queries.delete, app_id))


def _options(app_id: Any, raw: Any) -> dict[str, Any]:
    try:
        return sql.load_options(f"app {app_id!r}", raw)
    except ConfigError as exc:
        raise AdminError(str(exc)) from None


def _found(app_id: str, rows: int) -> None:
    if rows == 0:
        raise AdminError(f"no app with id {app_id!r}")
