"""The machine's PostgreSQL and MariaDB for app store tests, a table of its own per test, and a
TCP proxy to cut, so that an outage is real without stopping the servers others use."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from reverb_py.apps import sql

# scripts/test.sh starts (or installs) both servers; CI machines run them.
URLS = {
    "postgresql": "postgresql://postgres@127.0.0.1:5432/test",
    "mysql": "mysql://root@127.0.0.1:3306/test",
}


@dataclass
class Database:
    url: str
    table: str

    def via(self, port: int) -> str:
        """The same database through another local port (a TcpProxy)."""
        parts = urlsplit(self.url)
        userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        return urlunsplit(parts._replace(netloc=f"{userinfo}127.0.0.1:{port}"))

    async def execute(self, statement: str, *args: object) -> int:
        """Run one statement (placeholders in the dialect's style) outside the CLI."""
        db = await sql.connect(self.url, self.table, 10.0)
        try:
            return await db.execute(statement, *args)
        finally:
            await db.close()


@contextlib.asynccontextmanager
async def private_table(dialect: str) -> AsyncIterator[Database]:
    """An apps table (and PostgreSQL triggers) named for this test only, dropped after."""
    database = Database(URLS[dialect], f"t_{uuid.uuid4().hex[:12]}")
    try:
        yield database
    finally:
        drops = [f"DROP TABLE IF EXISTS {database.table}"]
        if dialect == "postgresql":
            drops += [
                f"DROP FUNCTION IF EXISTS {database.table}_reverb_{name}() CASCADE"
                for name in ("touch", "notify")
            ]
        for statement in drops:
            await database.execute(statement)


class TcpProxy:
    """Forwards a local port to `target_port`; `cut` drops the listener and every forwarded
    connection (the database seems gone), `resume` listens on the same port again."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        await self._server.wait_closed()

    async def resume(self) -> None:
        await self.start()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            self._writers.discard(writer)
            writer.transport.abort()


def port_of(url: str) -> int:
    return urlsplit(url).port or 0
