"""The apps table in PostgreSQL or MySQL/MariaDB: its layout, its queries and the two drivers.

One row per app: `id`, `key`, `secret` and `enabled` are columns; every other per-app setting
lives in the JSON column `options` under the same names as a TOML `[[apps]]` table, and rows
are parsed by the same code as the TOML file (`config.app_from_mapping`), so a new per-app
setting needs no migration and is validated exactly as it is in the file.

Changes are noticed cheaply: `updated_at` moves on every update (a trigger on PostgreSQL,
`ON UPDATE CURRENT_TIMESTAMP` on MySQL), so `count(*)` and `max(updated_at)` change whenever a
row is added, changed or removed. On PostgreSQL a statement trigger also sends `NOTIFY`, so the
store reloads at once instead of at its next poll.

Drivers: asyncpg and aiomysql, both native asyncio drivers kept by their communities; each is an
optional extra (`reverb-py[postgres]`, `reverb-py[mysql]`) imported only when its URL is used.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import orjson

from reverb_py.config import App, ConfigError, app_from_mapping

# Columns of their own; everything else is a key of `options`.
COLUMNS = ("id", "key", "secret", "enabled")
Row = Sequence[Any]


class DatabaseError(Exception):
    """The database could not be reached or refused a statement; the message never holds a
    password."""


@dataclass(frozen=True, slots=True)
class Dialect:
    """What differs between PostgreSQL and MySQL/MariaDB: quoting, placeholders and DDL."""

    name: str
    extra: str  # the pip extra that installs the driver
    quote_char: str
    numbered_params: bool  # $1, $2 (asyncpg) rather than %s (aiomysql)

    def q(self, identifier: str) -> str:
        return f"{self.quote_char}{identifier}{self.quote_char}"

    def params(self, count: int) -> list[str]:
        return [f"${i}" if self.numbered_params else "%s" for i in range(1, count + 1)]


POSTGRES = Dialect("postgresql", "postgres", '"', numbered_params=True)
MYSQL = Dialect("mysql", "mysql", "`", numbered_params=False)


def dialect_for(url: str) -> Dialect:
    scheme = urlsplit(url).scheme
    if scheme in ("postgresql", "postgres"):
        return POSTGRES
    if scheme in ("mysql", "mariadb"):
        return MYSQL
    raise ConfigError(f"REVERB_APPS_DATABASE_URL: unsupported scheme {scheme!r}")


def notify_channel(table: str) -> str:
    """The PostgreSQL NOTIFY channel of one apps table."""
    return f"{table}_reverb_changed"


class Queries:
    """Every statement the store and the `apps` CLI run, for one table in one dialect."""

    def __init__(self, dialect: Dialect, table: str) -> None:
        self.dialect = dialect
        self.table = table
        t, key = dialect.q(table), dialect.q("key")
        p = dialect.params(5)
        self.select_apps = f"SELECT id, {key}, secret, enabled, options FROM {t} ORDER BY id"
        self.select_listing = f"SELECT id, {key}, enabled, options FROM {t} ORDER BY id"
        self.select_options = f"SELECT options FROM {t} WHERE id = {p[0]}"
        self.select_taken = f"SELECT id FROM {t} WHERE id = {p[0]} OR {key} = {p[1]}"
        self.fingerprint = f"SELECT count(*), max(updated_at) FROM {t}"
        self.insert = (
            f"INSERT INTO {t} (id, {key}, secret, enabled, options) "
            f"VALUES ({p[0]}, {p[1]}, {p[2]}, {p[3]}, {p[4]})"
        )
        self.set_enabled = f"UPDATE {t} SET enabled = {p[0]} WHERE id = {p[1]}"
        self.set_secret = f"UPDATE {t} SET secret = {p[0]} WHERE id = {p[1]}"
        self.set_options = f"UPDATE {t} SET options = {p[0]} WHERE id = {p[1]}"
        self.delete = f"DELETE FROM {t} WHERE id = {p[0]}"

    def create(self) -> list[str]:
        """CREATE TABLE IF NOT EXISTS, and on PostgreSQL the triggers (replaced each time, so
        running it again upgrades them)."""
        t, table = self.dialect.q(self.table), self.table
        if self.dialect is MYSQL:
            return [
                f"CREATE TABLE IF NOT EXISTS {t} ("
                "id VARCHAR(255) NOT NULL PRIMARY KEY, "
                "`key` VARCHAR(255) NOT NULL UNIQUE, "
                "secret VARCHAR(255) NOT NULL, "
                "enabled BOOLEAN NOT NULL DEFAULT TRUE, "
                "options JSON NOT NULL DEFAULT ('{}'), "
                "created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), "
                "updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) "
                "ON UPDATE CURRENT_TIMESTAMP(6)"
                ") DEFAULT CHARSET=utf8mb4"
            ]
        touch, notify = f"{table}_reverb_touch", f"{table}_reverb_notify"
        return [
            f"CREATE TABLE IF NOT EXISTS {t} ("
            "id VARCHAR(255) PRIMARY KEY, "
            '"key" VARCHAR(255) NOT NULL UNIQUE, '
            "secret VARCHAR(255) NOT NULL, "
            "enabled BOOLEAN NOT NULL DEFAULT TRUE, "
            "options JSONB NOT NULL DEFAULT '{}'::jsonb, "
            "created_at TIMESTAMPTZ NOT NULL DEFAULT now(), "
            "updated_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())",
            f"CREATE OR REPLACE FUNCTION {touch}() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN NEW.updated_at := clock_timestamp(); RETURN NEW; END $$",
            f"CREATE OR REPLACE FUNCTION {notify}() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN PERFORM pg_notify('{notify_channel(table)}', ''); RETURN NULL; END $$",
            f"DROP TRIGGER IF EXISTS {touch} ON {t}",
            f"CREATE TRIGGER {touch} BEFORE UPDATE ON {t} FOR EACH ROW EXECUTE FUNCTION {touch}()",
            f"DROP TRIGGER IF EXISTS {notify} ON {t}",
            f"CREATE TRIGGER {notify} AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {t} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {notify}()",
        ]


def app_from_row(row: Row) -> App:
    """One row (id, key, secret, enabled, options) as an App, validated like a TOML table."""
    app_id, key, secret, enabled, options = row
    where = f"apps row {app_id!r}"
    raw = load_options(where, options)
    clashing = sorted(set(raw) & {*COLUMNS, "app_id"})
    if clashing:
        raise ConfigError(f"{where}: options must not hold {', '.join(clashing)} (columns)")
    return app_from_mapping(
        where, {**raw, "id": app_id, "key": key, "secret": secret, "enabled": bool(enabled)}
    )


def load_options(where: str, options: Any) -> dict[str, Any]:
    if isinstance(options, str | bytes):
        try:
            options = orjson.loads(options)
        except orjson.JSONDecodeError:
            raise ConfigError(f"{where}: options is not valid JSON") from None
    if not isinstance(options, dict):
        raise ConfigError(f"{where}: options must be a JSON object")
    return options


class Connection(Protocol):
    """The little the store and the CLI need from a driver connection."""

    queries: Queries

    async def fetch(self, query: str, *args: Any) -> list[Row]: ...

    async def execute(self, query: str, *args: Any) -> int: ...

    async def listen(self, on_notify: Callable[[], None]) -> None: ...

    async def close(self) -> None: ...


def _driver(module: str, dialect: Dialect) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DatabaseError(
            f"the {dialect.name} driver is not installed: pip install 'reverb-py[{dialect.extra}]'"
        ) from None


class _Postgres:
    def __init__(self, raw: Any, queries: Queries) -> None:
        self.raw = raw
        self.queries = queries

    async def fetch(self, query: str, *args: Any) -> list[Row]:
        return [tuple(record) for record in await self.raw.fetch(query, *args)]

    async def execute(self, query: str, *args: Any) -> int:
        status = await self.raw.execute(query, *args)  # e.g. "UPDATE 1"
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    async def listen(self, on_notify: Callable[[], None]) -> None:
        await self.raw.add_listener(notify_channel(self.queries.table), lambda *_: on_notify())

    async def close(self) -> None:
        self.raw.terminate()  # never waits on a dead server


class _MySQL:
    def __init__(self, raw: Any, queries: Queries) -> None:
        self.raw = raw
        self.queries = queries

    async def fetch(self, query: str, *args: Any) -> list[Row]:
        async with self.raw.cursor() as cursor:
            await cursor.execute(query, args or None)
            return list(await cursor.fetchall())

    async def execute(self, query: str, *args: Any) -> int:
        async with self.raw.cursor() as cursor:
            with warnings.catch_warnings():  # "table already exists" on a repeated init-db
                warnings.simplefilter("ignore")
                return int(await cursor.execute(query, args or None))

    async def listen(self, on_notify: Callable[[], None]) -> None:
        return None  # MySQL has no notifications: polling alone keeps the store current

    async def close(self) -> None:
        self.raw.close()


async def connect(url: str, table: str, timeout: float) -> Connection:
    """One connection to the apps database, or DatabaseError with a password-free reason."""
    dialect = dialect_for(url)
    queries = Queries(dialect, table)
    parts = urlsplit(url)
    try:
        if dialect is POSTGRES:
            asyncpg = _driver("asyncpg", dialect)
            raw = await asyncpg.connect(dsn=url, timeout=timeout, command_timeout=timeout)
            return _Postgres(raw, queries)
        aiomysql = _driver("aiomysql", dialect)
        raw = await aiomysql.connect(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 3306,
            user=unquote(parts.username or "root"),
            password=unquote(parts.password or ""),
            db=unquote(parts.path.lstrip("/")) or None,
            autocommit=True,
            connect_timeout=timeout,
            # Rows matched, not changed: disabling a disabled app is not "no such app".
            client_flag=importlib.import_module("pymysql.constants.CLIENT").FOUND_ROWS,
            charset="utf8mb4",
        )
        return _MySQL(raw, queries)
    except DatabaseError:
        raise
    except Exception as exc:  # each driver raises its own families (and OSError, TimeoutError)
        raise DatabaseError(describe(exc, url)) from None


def describe(exc: BaseException, url: str) -> str:
    """A one-line reason for logs and errors, with the URL's password scrubbed out."""
    text = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
    parts = urlsplit(url)
    passwords = {parts.password or "", *parse_qs(parts.query).get("password", [])}
    for secret in {*passwords, *(unquote(p) for p in passwords)} - {""}:
        text = text.replace(secret, "***")
    return text[:300]


def options_json(options: dict[str, Any]) -> str:
    return orjson.dumps(options, option=orjson.OPT_SORT_KEYS).decode()
