"""The apps a server knows, held in memory and kept current.

The router never asks a database: it keeps one hub per known app and is told of every change
through `listener(old, new)` (`old` None: added; `new` None: removed). `AppStore` serves a
fixed set (flags, environment, TOML). `DatabaseAppStore` loads a SQL table at start, then a
supervised background task keeps it current: on PostgreSQL at once through NOTIFY, and on
both databases by polling a cheap fingerprint (row count, newest `updated_at`) every
`poll_interval` seconds, with a full re-read every FULL_RELOAD_POLLS polls as a safety net for
changes whose `updated_at` went backwards (a long transaction committing late). While the
database is unreachable, the apps already known keep being served unchanged; `up` and
`stale_seconds` say so and one log line marks each change of state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable
from typing import Any

from reverb_py.apps import sql
from reverb_py.config import App, ConfigError, Settings, mask_url

logger = logging.getLogger("reverb_py.apps")

Listener = Callable[[App | None, App | None], None]

FULL_RELOAD_POLLS = 30
QUERY_TIMEOUT = 5.0
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 10.0


class AppStore:
    """A fixed set of apps: the configured ones. Also the base of the database store."""

    def __init__(self, apps: Iterable[App] = ()) -> None:
        self.apps: dict[str, App] = {app.id: app for app in apps}
        self.listener: Listener | None = None
        self.up = True

    async def start(self) -> None:
        """Load what the store serves; raises when that is impossible at start."""

    async def close(self) -> None:
        """Stop keeping current."""

    def stale_seconds(self, now: float) -> float:
        """How long the apps served may have been out of date (0 while the source answers)."""
        return 0.0

    def replace(self, apps: Iterable[App]) -> None:
        """Serve exactly these apps from now on, telling the listener what changed."""
        old, new = self.apps, {app.id: app for app in apps}
        self.apps = new
        listener = self.listener
        if listener is None:
            return
        for app_id, app in old.items():
            if app_id not in new:
                listener(app, None)
        for app_id, app in new.items():
            before = old.get(app_id)
            if before is not app and before != app:  # unchanged rows keep their App
                listener(before, app)


class DatabaseAppStore(AppStore):
    """The configured apps plus the rows of a SQL table, kept current (module docstring)."""

    def __init__(
        self,
        url: str,
        table: str,
        poll_interval: float,
        fixed: Iterable[App] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fixed = tuple(fixed)
        super().__init__(self.fixed)
        self.url = url
        self.table = table
        self.poll_interval = poll_interval
        self.clock = clock
        self.last_success = clock()
        self._connection: sql.Connection | None = None
        self._fingerprint: tuple[Any, ...] | None = None
        self._polls = 0
        self._changed = asyncio.Event()
        self._parsed: dict[str, tuple[tuple[Any, ...], App | None]] = {}  # None: invalid
        self._clashes: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    def stale_seconds(self, now: float) -> float:
        return 0.0 if self.up else max(0.0, now - self.last_success)

    async def start(self) -> None:
        """The first load must succeed: a server with no apps would refuse everyone."""
        try:
            await self._sync(force=True)
        except sql.DatabaseError as exc:
            await self._disconnect()
            raise sql.DatabaseError(
                f"cannot load apps from {mask_url(self.url)} (table {self.table}): {exc}"
            ) from None
        logger.info(
            "app store: %d app(s) from the %s table %s, polled every %g s%s",
            len(self.apps) - len(self.fixed),
            sql.dialect_for(self.url).name,
            self.table,
            self.poll_interval,
            " and notified at once" if sql.dialect_for(self.url) is sql.POSTGRES else "",
        )
        self._task = asyncio.get_running_loop().create_task(self._supervise())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._disconnect()

    async def _supervise(self) -> None:
        """Keep current forever: every failure drops the connection and retries with
        exponential back-off (jittered, so replicas do not reconnect in step)."""
        delay = BACKOFF_FIRST
        while True:
            try:
                if self._connection is not None:  # else reconnect at once, after the back-off
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), self.poll_interval)
                self._changed.clear()
                await self._sync(force=self._connection is None)
                delay = BACKOFF_FIRST
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a driver error, or a bug: neither may stop the store
                self._failed(exc)
                await self._disconnect()
                await asyncio.sleep(delay * (0.75 + random.random() / 2))
                delay = min(delay * 2, BACKOFF_MAX)

    async def _sync(self, force: bool) -> None:
        """One poll: reconnect if needed; re-read the table if it changed (or on `force`)."""
        connection = self._connection
        if connection is None:
            connection = self._connection = await sql.connect(self.url, self.table, QUERY_TIMEOUT)
            await self._call(connection.listen(self._changed.set))
            force = True  # notifications may have been missed while disconnected
        queries = connection.queries
        rows = await self._call(connection.fetch(queries.fingerprint))
        fingerprint = tuple(rows[0])
        self._polls += 1
        if force or fingerprint != self._fingerprint or self._polls >= FULL_RELOAD_POLLS:
            rows = await self._call(connection.fetch(queries.select_apps))
            self._polls = 0
            self._fingerprint = fingerprint
            self._load(rows)
        self._succeeded()

    async def _call(self, operation: Any) -> Any:
        try:
            return await asyncio.wait_for(operation, QUERY_TIMEOUT)
        except sql.DatabaseError:
            raise
        except Exception as exc:
            raise sql.DatabaseError(sql.describe(exc, self.url)) from None

    def _load(self, rows: list[sql.Row]) -> None:
        """Serve the table's rows. Only rows that differ from the last read are parsed
        (parsing every row of a large table at every poll would stall the event loop), and an
        invalid row is logged once per change of that row."""
        parsed: dict[str, tuple[tuple[Any, ...], App | None]] = {}
        for raw in rows:
            row = tuple(raw)
            app_id = str(row[0])
            known = self._parsed.get(app_id)
            if known is not None and known[0] == row:
                parsed[app_id] = known
                continue
            try:
                parsed[app_id] = (row, sql.app_from_row(row))
            except ConfigError as exc:
                # A slip in a hand-edited row must not cut a tenant's clients off: the last
                # valid version of the app, if any, stays served.
                last = known[1] if known is not None else None
                logger.error(
                    "app store: invalid row for app %s: %s (%s)",
                    app_id,
                    exc,
                    "still serving its last valid version" if last else "skipped",
                )
                parsed[app_id] = (row, last)
        self._parsed = parsed
        apps = [app for _, app in parsed.values() if app is not None]
        taken_ids = {app.id for app in self.fixed}
        taken_keys = {app.key for app in self.fixed}
        clashes = {app.id for app in apps if app.id in taken_ids or app.key in taken_keys}
        for app_id in sorted(clashes - self._clashes):
            logger.error("app store: skipping app %s: its id or key is a configured app's", app_id)
        self._clashes = clashes
        served = [*self.fixed, *(app for app in apps if app.id not in clashes)]
        self.replace(served)

    def _succeeded(self) -> None:
        if not self.up:
            logger.info(
                "app store: reading apps again after %.1f s: they are current",
                self.clock() - self.last_success,
            )
        self.up = True
        self.last_success = self.clock()

    def _failed(self, exc: BaseException) -> None:
        if self.up:
            logger.error(
                "app store: cannot read apps (%s): serving the %d app(s) known until the "
                "database answers again",
                exc if isinstance(exc, sql.DatabaseError) else sql.describe(exc, self.url),
                len(self.apps),
            )
        self.up = False

    async def _disconnect(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()


def app_store(settings: Settings) -> AppStore:
    """The database store when a URL is configured (the configured apps served alongside),
    else the configured apps alone."""
    if settings.apps_database_url is None:
        return AppStore(settings.apps)
    return DatabaseAppStore(
        settings.apps_database_url,
        settings.apps_database_table,
        settings.apps_database_poll_interval,
        fixed=settings.apps,
    )
