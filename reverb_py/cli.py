"""`reverb-py`: the command line. Builds Settings from flags, environment and files, then runs."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn

import click

from reverb_py import __version__, logs
from reverb_py.apps.cli import apps
from reverb_py.apps.sql import DatabaseError
from reverb_py.config import ConfigError, Settings, load_settings, mask_url
from reverb_py.server import Server, raise_fd_limit

logger = logging.getLogger("reverb_py")


@click.group()
@click.version_option(__version__, prog_name="reverb-py")
def main() -> None:
    """A Pusher Channels protocol server: a drop-in replacement for Laravel Reverb."""


def _load(options: dict[str, Any], config: str | None, env_file: str | None) -> Settings:
    try:
        return load_settings(
            flags=options, environ=os.environ, config_file=config, env_file=env_file
        )
    except ConfigError as exc:
        _configuration_error(exc)


def _configuration_error(exc: ConfigError) -> NoReturn:
    click.echo(f"reverb-py: configuration error: {exc}", err=True)
    sys.exit(2)


@main.command()
@click.option("--host", help="Address to bind (REVERB_SERVER_HOST, default 0.0.0.0).")
@click.option("--port", type=int, help="Port to bind (REVERB_SERVER_PORT, default 8080).")
@click.option("--path", help="Path prefix for every route (REVERB_SERVER_PATH).")
@click.option("--hostname", help="Public hostname clients use (REVERB_HOST).")
@click.option("--debug", is_flag=True, default=None, help="Log every frame.")
@click.option("--config", "config_file", type=click.Path(), help="TOML file (several apps).")
@click.option("--env-file", type=click.Path(), help="A Laravel .env file to read.")
@click.option(
    "--scaling/--no-scaling",
    "scaling_enabled",
    default=None,
    help="Link replicas through Redis (REVERB_SCALING_ENABLED).",
)
@click.option(
    "--drain-seconds",
    type=float,
    help="Graceful drain window in seconds, decimals allowed (REVERB_DRAIN_SECONDS).",
)
@click.option("--tls-cert", help="PEM certificate: serve wss:// and https:// (REVERB_TLS_CERT).")
@click.option("--tls-key", help="PEM private key for --tls-cert (REVERB_TLS_KEY).")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    help="Log format (REVERB_LOG_FORMAT, default text).",
)
@click.option(
    "--metrics/--no-metrics",
    "metrics_enabled",
    default=None,
    help="Serve Prometheus metrics at /metrics (REVERB_METRICS_ENABLED, default off).",
)
@click.option(
    "--metrics-port",
    type=int,
    help="Serve /metrics on this port instead of the main one (REVERB_METRICS_PORT).",
)
@click.option(
    "--max-connections-per-ip-per-second",
    type=int,
    help="New WebSockets per client IP per second, 0 = no limit "
    "(REVERB_MAX_CONNECTIONS_PER_IP_PER_SECOND, default 0).",
)
@click.option(
    "--max-connections-per-ip",
    type=int,
    help="Open WebSockets per client IP, 0 = no limit (REVERB_MAX_CONNECTIONS_PER_IP, default 0).",
)
@click.option(
    "--request-timeout",
    type=float,
    help="Seconds an HTTP request (head and body) may take to arrive; then 408 "
    "(REVERB_REQUEST_TIMEOUT, default 60).",
)
@click.option(
    "--http-idle-timeout",
    type=float,
    help="Seconds an idle HTTP keep-alive connection stays open (REVERB_HTTP_IDLE_TIMEOUT, "
    "default 60).",
)
@click.option(
    "--trusted-proxies",
    help="Comma-separated proxy IPs/CIDRs whose X-Forwarded-For is believed "
    "(REVERB_TRUSTED_PROXIES).",
)
@click.option(
    "--require-app/--no-require-app",
    "require_app",
    default=None,
    help="Refuse to start without a configured app instead of generating a development one "
    "(REVERB_REQUIRE_APP, default off).",
)
@click.option(
    "--apps-database-url",
    help="Read apps from this PostgreSQL or MySQL/MariaDB database too "
    "(REVERB_APPS_DATABASE_URL; see docs/apps-database.md).",
)
def start(config_file: str | None, env_file: str | None, **options: Any) -> None:
    """Start the server."""
    settings = _load(options, config_file, env_file)
    logs.configure(settings.log_format, settings.debug)
    if settings.ignored_app_variables:
        logger.warning(
            "No app configured although Reverb settings are present (%s): REVERB_APP_ID, "
            "REVERB_APP_KEY and REVERB_APP_SECRET must all be set and spelt exactly so. Serving "
            "a development app with fresh credentials instead: your backend's publishes will "
            "get 401. Set REVERB_REQUIRE_APP=true to refuse to start in this case.",
            ", ".join(settings.ignored_app_variables),
        )
    if settings.generated_app:
        app = settings.apps[0]
        click.echo(
            "No app configured: serving a development app with fresh credentials\n"
            f"  REVERB_APP_ID={app.id}\n  REVERB_APP_KEY={app.key}\n"
            f"  REVERB_APP_SECRET={app.secret}\n"
            "Put these in your Laravel .env (and restart with --env-file) to keep them.",
            err=True,
        )
    runner: Callable[[Coroutine[Any, Any, None]], None]
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported OS
        runner = asyncio.run
    else:
        runner = uvloop.run
    fds = raise_fd_limit()
    try:
        runner(_serve(settings, fds))
    except ConfigError as exc:  # found only when the server opens it: a TLS certificate
        _configuration_error(exc)
    except OSError as exc:  # a port in use or not allowed
        click.echo(f"reverb-py: cannot start: {exc.strerror or exc}", err=True)
        sys.exit(1)
    except DatabaseError as exc:  # the apps database did not answer at start
        click.echo(f"reverb-py: cannot start: {exc}", err=True)
        sys.exit(1)


async def _serve(settings: Settings, fds: int) -> None:
    server = Server(settings)
    await server.start()
    logger.info(
        "reverb-py %s listening on %s:%d (%s) %s",
        __version__,
        settings.host,
        server.port,
        "https/wss" if settings.tls_cert else "http/ws",
        summary(settings, server, fds),
    )
    await server.run_until_signalled()


def summary(settings: Settings, server: Server, fds: int) -> str:
    """The effective configuration in one line, for the start-up log: never a secret, so app
    keys and ids yes, secrets and Redis credentials no."""
    if server.metrics_port is not None:
        metrics = f":{server.metrics_port}/metrics"
    elif server.metrics is not None:
        metrics = f"{settings.path}/metrics"
    else:
        metrics = "off"
    scaling = "off"
    if settings.scaling_enabled:
        scaling = f"redis({settings.redis.describe()}, channel={settings.scaling_channel})"
    per_ip = settings.max_connections_per_ip_per_second
    apps_database = "off"
    if settings.apps_database_url is not None:
        apps_database = f"{mask_url(settings.apps_database_url)}#{settings.apps_database_table}"
    parts = {
        "path": settings.path or "/",
        "hostname": settings.hostname or "none",
        "apps": ",".join(f"{app.id}(key={app.key})" for app in settings.apps),
        "apps_database": apps_database,
        "scaling": scaling,
        "metrics": metrics,
        "drain": f"{settings.drain_seconds:g}s",
        "per_ip_limit": f"{per_ip}/s" if per_ip else "off",
        "per_ip_open": str(settings.max_connections_per_ip or "off"),
        "request_timeout": f"{settings.request_timeout:g}s",
        "trusted_proxies": ",".join(settings.trusted_proxies) or "none",
        "fd_limit": str(fds),
        "debug": "on" if settings.debug else "off",
    }
    return " ".join(f"{name}={value}" for name, value in parts.items())


main.add_command(apps)
