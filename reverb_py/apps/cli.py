"""`reverb-py apps ...`: manage the apps table that the servers read (docs/apps-database.md).

The database URL comes from the same setting as the server's (`--database-url`, then
REVERB_APPS_DATABASE_URL, a `--env-file`, the `--config` file's `[server] apps_database_url`).
A secret is printed once, when it is made (`add`, `rotate-secret`), and never otherwise.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import click

from reverb_py.apps import admin, sql
from reverb_py.config import ConfigError, Settings, load_settings, random_app_id, random_token

T = TypeVar("T")
CONNECT_TIMEOUT = 10.0


def _settings(ctx: click.Context) -> Settings:
    options = ctx.obj
    flags = {
        "apps_database_url": options["database_url"],
        "apps_database_table": options["table"],
    }
    try:
        settings = load_settings(
            flags=flags,
            environ=os.environ,
            config_file=options["config_file"],
            env_file=options["env_file"],
        )
    except ConfigError as exc:
        _fail(f"configuration error: {exc}", status=2)
    if settings.apps_database_url is None:
        _fail("no database: give --database-url or set REVERB_APPS_DATABASE_URL", status=2)
    return settings


def _run(ctx: click.Context, operation: Callable[[sql.Connection], Awaitable[T]]) -> T:
    """Connect, run one operation, disconnect; any failure is one line on stderr."""
    settings = _settings(ctx)
    url = settings.apps_database_url
    assert url is not None  # _settings refuses a missing one

    async def run() -> T:
        db = await sql.connect(url, settings.apps_database_table, CONNECT_TIMEOUT)
        try:
            return await operation(db)
        finally:
            await db.close()

    try:
        return asyncio.run(run())
    except (admin.AdminError, ConfigError, sql.DatabaseError) as exc:
        _fail(str(exc))
    except Exception as exc:  # a driver error while running a statement
        _fail(sql.describe(exc, url))


def _fail(message: str, status: int = 1) -> NoReturn:
    click.echo(f"reverb-py apps: {message}", err=True)
    sys.exit(status)


@click.group("apps")
@click.option("--database-url", help="postgresql://... or mysql://... (REVERB_APPS_DATABASE_URL).")
@click.option("--table", help="The apps table (REVERB_APPS_DATABASE_TABLE, default apps).")
@click.option("--config", "config_file", type=click.Path(), help="TOML file to read settings from.")
@click.option("--env-file", type=click.Path(), help="A Laravel .env file to read.")
@click.pass_context
def apps(
    ctx: click.Context,
    database_url: str | None,
    table: str | None,
    config_file: str | None,
    env_file: str | None,
) -> None:
    """Manage apps in the database the servers read (changes apply within seconds)."""
    ctx.obj = {
        "database_url": database_url,
        "table": table,
        "config_file": config_file,
        "env_file": env_file,
    }


@apps.command("init-db")
@click.pass_context
def init_db(ctx: click.Context) -> None:
    """Create the apps table (and on PostgreSQL its change triggers) if missing."""
    _run(ctx, admin.init_db)
    click.echo("apps table ready")


@apps.command("add")
@click.option("--id", "app_id", help="App id (default: a random 6-digit number).")
@click.option("--key", help="App key (default: 20 random characters).")
@click.option("--disabled", is_flag=True, help="Create it disabled.")
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="NAME=VALUE",
    help="A per-app setting, as in a TOML [[apps]] table (repeatable).",
)
@click.pass_context
def add(
    ctx: click.Context,
    app_id: str | None,
    key: str | None,
    disabled: bool,
    settings: tuple[str, ...],
) -> None:
    """Create an app; prints its secret, the only time it is shown."""
    options: dict[str, Any] = {}
    for item in settings:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            _fail(f"--set {item!r}: expected NAME=VALUE", status=2)
        options[name.strip()] = admin.parse_value(value)
    app = _run(
        ctx,
        lambda db: admin.add(
            db, app_id or random_app_id(), key or random_token(), options, not disabled
        ),
    )
    click.echo(f"REVERB_APP_ID={app.id}\nREVERB_APP_KEY={app.key}\nREVERB_APP_SECRET={app.secret}")
    click.echo("The secret is shown only now: store it with the app's backend.", err=True)


@apps.command("list")
@click.pass_context
def list_apps(ctx: click.Context) -> None:
    """Every app: id, key, enabled and the names of its settings (never secrets)."""
    for item in _run(ctx, admin.listing):
        state = "enabled" if item.enabled else "disabled"
        options = ",".join(item.options) or "-"
        click.echo(f"{item.id}\tkey={item.key}\t{state}\toptions={options}")


def _switch(name: str, enabled: bool, help_text: str) -> None:
    """`apps disable ID` / `apps enable ID`: the same command but for the value written."""

    @apps.command(name, help=help_text)
    @click.argument("app_id")
    @click.pass_context
    def command(ctx: click.Context, app_id: str) -> None:
        _run(ctx, lambda db: admin.set_enabled(db, app_id, enabled))
        click.echo(f"app {app_id} {name}d")


_switch(
    "disable", False, "Refuse the app's connections (4003) and API calls (403); close open ones."
)
_switch("enable", True, "Serve a disabled app again.")


@apps.command("rotate-secret")
@click.argument("app_id")
@click.pass_context
def rotate_secret(ctx: click.Context, app_id: str) -> None:
    """Give the app a new secret (the old one stops working); prints it once."""
    secret = _run(ctx, lambda db: admin.rotate_secret(db, app_id))
    click.echo(f"REVERB_APP_SECRET={secret}")


@apps.command("set")
@click.argument("app_id")
@click.argument("name")
@click.argument("value")
@click.pass_context
def set_option(ctx: click.Context, app_id: str, name: str, value: str) -> None:
    """Set one per-app setting (a TOML [[apps]] name; VALUE is JSON or text)."""
    _run(ctx, lambda db: admin.set_option(db, app_id, name, admin.parse_value(value)))
    click.echo(f"app {app_id}: {name} set")


@apps.command("unset")
@click.argument("app_id")
@click.argument("name")
@click.pass_context
def unset_option(ctx: click.Context, app_id: str, name: str) -> None:
    """Remove one per-app setting: the default applies again."""
    _run(ctx, lambda db: admin.set_option(db, app_id, name, None))
    click.echo(f"app {app_id}: {name} unset")


@apps.command("delete")
@click.argument("app_id")
@click.pass_context
def delete(ctx: click.Context, app_id: str) -> None:
    """Remove the app: its connections are closed (4001) and its key is unknown from then."""
    _run(ctx, lambda db: admin.delete(db, app_id))
    click.echo(f"app {app_id} deleted")
