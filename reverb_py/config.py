"""Settings and apps, loaded from flags, the environment, a Laravel `.env` and a TOML file.

Precedence is flags > process environment > `.env` file > TOML file > defaults, so that a
Laravel deployment's existing `.env` works unchanged and a flag always wins. Every invalid value
stops start-up with a `ConfigError` whose message names the setting, never a traceback.
"""

from __future__ import annotations

import re
import secrets
import string
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypedDict
from urllib.parse import quote, urlsplit, urlunsplit

import orjson
from dotenv import dotenv_values

from reverb_py.ratelimit import parse_networks

ClientEventsFrom = Literal["all", "members", "none"]
LogFormat = Literal["text", "json"]


class ConfigError(ValueError):
    """An invalid or missing setting; the message names the setting and the problem."""


# The app store's database (see reverb_py.apps.sql): PostgreSQL or MySQL/MariaDB.
DATABASE_SCHEMES = ("postgresql", "postgres", "mysql", "mariadb")
_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,47}")


def mask_url(url: str) -> str:
    """The URL with its password and query (libpq accepts `?password=`) replaced by `***`,
    for messages: never print a secret."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            netloc = f"{parts.username or ''}:***@{netloc.rsplit('@', 1)[1]}"
        return urlunsplit(parts._replace(netloc=netloc, query="***" if parts.query else ""))
    except ValueError:  # not parseable: show nothing of it rather than risk a password
        return "<unparseable URL>"


WEBHOOK_KINDS = (
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_event",
    "cache_miss",
    "subscription_count",
)


@dataclass(frozen=True, slots=True)
class Webhook:
    """One webhook target of an app (Pusher's format, as soketi and Pusher accept it).

    `channel_prefix`/`channel_suffix` are soketi's `filter.channel_name_starts_with` /
    `channel_name_ends_with`: only events on matching channels are sent to this URL."""

    url: str
    event_types: tuple[str, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    channel_prefix: str | None = None
    channel_suffix: str | None = None

    def __repr__(self) -> str:  # the URL may carry a token; headers often do
        return f"Webhook(events={','.join(self.event_types)})"

    def accepts(self, channel: str) -> bool:
        if self.channel_prefix is not None and not channel.startswith(self.channel_prefix):
            return False
        return self.channel_suffix is None or channel.endswith(self.channel_suffix)


@dataclass(frozen=True, slots=True)
class App:
    """One Pusher application: its credentials and the limits enforced for it.

    Defaults follow Pusher's published limits where Pusher has one and Reverb's where it is
    Reverb-specific (ping interval, activity timeout, message size).
    """

    id: str
    key: str
    secret: str
    enabled: bool = True
    ping_interval: float = 60.0
    activity_timeout: int = 30
    pong_timeout: float = 30.0
    max_connections: int | None = None
    max_message_size: int = 10_000
    accept_client_events_from: ClientEventsFrom = "members"
    allowed_origins: tuple[str, ...] = ("*",)
    allow_missing_origin: bool = True
    max_event_data_size: int = 10_240
    max_event_channels: int = 100
    max_batch_size: int = 10
    max_event_name_length: int = 200
    max_channel_name_length: int = 164
    max_presence_members: int = 100
    max_presence_user_info_size: int = 1_024
    max_user_id_length: int = 128
    max_subscriptions_per_connection: int = 500
    max_public_channels: int = 100_000
    client_event_rate_limit: int = 10
    rate_limiting_enabled: bool = False
    rate_limit_max_attempts: int = 60
    rate_limit_decay_seconds: float = 60.0
    rate_limit_terminate: bool = False
    cache_ttl: float = 1_800.0
    subscription_count: bool = False
    watchlist_events: bool = False
    webhooks: tuple[Webhook, ...] = ()

    def __repr__(self) -> str:  # never show the secret, even in a debugger or a traceback
        return f"App(id={self.id!r}, key={self.key!r})"


Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """Where the replicas meet: one server (`url`), a master watched by Sentinel
    (`sentinels`), or a Redis Cluster (`cluster_nodes`); at most one of the last two is set.

    In single-server mode the URL carries the credentials and the TLS scheme; in the other two
    `username`/`password`/`db`/`tls` do. The CA, certificate and key files apply to every mode
    (sentinels included), so one managed-Redis set-up works whatever the topology."""

    url: str = "redis://127.0.0.1:6379/0"
    sentinels: tuple[Address, ...] = ()
    sentinel_service: str = "mymaster"
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    cluster_nodes: tuple[Address, ...] = ()
    username: str | None = None
    password: str | None = None
    db: int = 0
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @property
    def mode(self) -> Literal["single", "sentinel", "cluster"]:
        if self.sentinels:
            return "sentinel"
        return "cluster" if self.cluster_nodes else "single"

    def describe(self) -> str:
        """Where Redis is, for logs: hosts and ports, never a credential."""
        if self.mode == "single":
            url = urlsplit(self.url)
            return (
                f"unix://{url.path}"
                if url.scheme == "unix"
                else f"{url.scheme}://{url.hostname}:{url.port or 6379}"
            )
        nodes = ",".join(f"{host}:{port}" for host, port in self.sentinels or self.cluster_nodes)
        tls = " tls" if self.tls else ""
        if self.mode == "sentinel":
            return f"sentinel {self.sentinel_service}@{nodes}{tls}"
        return f"cluster {nodes}{tls}"

    def __repr__(self) -> str:  # the URL and the passwords stay out of tracebacks
        return f"RedisSettings({self.describe()})"


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "0.0.0.0"
    port: int = 8080
    path: str = ""
    hostname: str | None = None
    debug: bool = False
    max_request_size: int = 262_144
    max_header_size: int = 16_384
    write_buffer_limit: int = 1_048_576
    request_timeout: float = 60.0
    http_idle_timeout: float = 60.0
    max_connections_per_ip: int = 0
    scaling_enabled: bool = False
    scaling_channel: str = "reverb"
    scaling_node_timeout: float = 10.0
    scaling_stream_length: int = 10_000
    scaling_backlog_seconds: float = 60.0
    redis: RedisSettings = field(default_factory=RedisSettings)
    drain_seconds: float = 10.0
    metrics_enabled: bool = False
    metrics_port: int | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    log_format: LogFormat = "text"
    max_connections_per_ip_per_second: int = 0
    trusted_proxies: tuple[str, ...] = ()
    webhook_delay: float = 3.0
    webhook_batch_window: float = 0.05
    webhook_timeout: float = 5.0
    webhook_retry_base: float = 1.0
    webhook_retry_for: float = 300.0
    webhook_queue_size: int = 10_000
    webhook_queue_share: int = 1_000
    require_app: bool = False
    apps_database_url: str | None = field(default=None, repr=False)  # may hold a password
    apps_database_table: str = "apps"
    apps_database_poll_interval: float = 2.0
    address_file: str | None = None
    apps: tuple[App, ...] = ()
    generated_app: bool = False
    # With a generated app: the Reverb-looking variables that were set anyway (names only),
    # the usual sign of a misspelt or empty REVERB_APP_* in a .env.
    ignored_app_variables: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------
# Value parsing: each parser gets the setting's name so that its error can name it.


def _to_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name}: expected true or false, got {value!r}")


def _to_int(name: str, value: Any, minimum: int = 0, maximum: int | None = None) -> int:
    try:
        number = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise ConfigError(f"{name}: expected an integer, got {value!r}") from None
    if maximum is not None and not minimum <= number <= maximum:
        raise ConfigError(f"{name}: must be between {minimum} and {maximum}, got {number}")
    if number < minimum:
        raise ConfigError(f"{name}: must be at least {minimum}, got {number}")
    return number


def _to_positive_float(name: str, value: Any) -> float:
    try:
        number = float(str(value).strip()) if not isinstance(value, int | float) else value
    except ValueError:
        raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if number <= 0:
        raise ConfigError(f"{name}: must be greater than 0, got {number}")
    return float(number)


def _to_non_negative_float(name: str, value: Any) -> float:
    try:
        number = float(str(value).strip()) if not isinstance(value, int | float) else value
    except ValueError:
        raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if number < 0:
        raise ConfigError(f"{name}: must not be negative, got {number}")
    return float(number)


def _to_optional_int(name: str, value: Any) -> int | None:
    if value is None or str(value).strip() in ("", "null", "none"):
        return None
    return _to_int(name, value, minimum=1)


def _to_str(name: str, value: Any) -> str:
    text = str(value).strip()
    if not text:
        raise ConfigError(f"{name}: must not be empty")
    return text


def _to_client_events(name: str, value: Any) -> ClientEventsFrom:
    match str(value).strip().lower():
        case "all" | "members" | "none" as text:
            return text
    raise ConfigError(f"{name}: expected all, members or none, got {value!r}")


def _to_origins(name: str, value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    origins = tuple(str(item).strip() for item in items if str(item).strip())
    if not origins:
        raise ConfigError(f"{name}: needs at least one host pattern (use * to allow all)")
    return origins


def _to_path(name: str, value: Any) -> str:
    text = str(value).strip().strip("/")
    if any(char.isspace() or char in "?#" for char in text):
        raise ConfigError(f"{name}: not a valid URL path prefix: {value!r}")
    return f"/{text}" if text else ""


def _to_log_format(name: str, value: Any) -> LogFormat:
    match str(value).strip().lower():
        case "text" | "json" as text:
            return text
    raise ConfigError(f"{name}: expected text or json, got {value!r}")


def _to_networks(name: str, value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    texts = [str(item).strip() for item in items if str(item).strip()]
    try:
        return tuple(str(network) for network in parse_networks(name, texts))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _to_database_url(name: str, value: Any) -> str:
    text = _to_str(name, value)
    if urlsplit(text).scheme not in DATABASE_SCHEMES:
        raise ConfigError(
            f"{name}: expected a URL starting with {', '.join(DATABASE_SCHEMES)}:// "
            f"(got {mask_url(text)})"
        )
    return text


def _to_table_name(name: str, value: Any) -> str:
    text = str(value).strip()
    if not _TABLE_NAME.fullmatch(text):
        raise ConfigError(
            f"{name}: a table name is letters, digits and underscores (at most 48), got {value!r}"
        )
    return text


def _to_webhooks(name: str, value: Any) -> tuple[Webhook, ...]:
    if isinstance(value, str):
        try:
            value = orjson.loads(value) if value.strip() else []
        except orjson.JSONDecodeError:
            raise ConfigError(f"{name}: expected a JSON list of webhooks") from None
    if not isinstance(value, list):
        raise ConfigError(f"{name}: expected a list of webhooks")
    hooks = []
    for index, item in enumerate(value):
        where = f"{name}[{index}]"
        if not isinstance(item, dict) or not isinstance(item.get("url"), str):
            raise ConfigError(f"{where}: each webhook needs a url")
        url = item["url"]
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"{where}.url: must start with http:// or https://")
        event_types = item.get("event_types", [])
        headers = item.get("headers", {})
        flt = item.get("filter")
        flt = {} if flt is None else flt
        if not isinstance(event_types, list) or not isinstance(headers, dict):
            raise ConfigError(f"{where}: event_types must be a list and headers an object")
        if not isinstance(flt, dict):
            raise ConfigError(f"{where}.filter: expected an object")
        # An empty or misspelt list would silently send nothing: refuse it at start-up.
        unknown = [str(kind) for kind in event_types if kind not in WEBHOOK_KINDS]
        if not event_types or unknown:
            raise ConfigError(
                f"{where}.event_types: list one or more of {', '.join(WEBHOOK_KINDS)}"
                + (f" (unknown: {', '.join(unknown)})" if unknown else "")
            )
        prefix = flt.get("channel_name_starts_with")
        suffix = flt.get("channel_name_ends_with")
        hooks.append(
            Webhook(
                url=url,
                event_types=tuple(dict.fromkeys(str(kind) for kind in event_types)),
                headers=tuple((str(k), str(v)) for k, v in headers.items()),
                channel_prefix=str(prefix) if prefix is not None else None,
                channel_suffix=str(suffix) if suffix is not None else None,
            )
        )
    return tuple(hooks)


# Per-app settings: TOML key -> (environment variable for the single env-defined app, parser).
_APP_SETTINGS: dict[str, tuple[str, Callable[[str, Any], Any]]] = {
    "enabled": ("REVERB_APP_ENABLED", _to_bool),
    "ping_interval": ("REVERB_APP_PING_INTERVAL", _to_positive_float),
    "activity_timeout": ("REVERB_APP_ACTIVITY_TIMEOUT", lambda n, v: _to_int(n, v, minimum=1)),
    "pong_timeout": ("REVERB_APP_PONG_TIMEOUT", _to_positive_float),
    "max_connections": ("REVERB_APP_MAX_CONNECTIONS", _to_optional_int),
    "max_message_size": ("REVERB_APP_MAX_MESSAGE_SIZE", lambda n, v: _to_int(n, v, minimum=64)),
    "accept_client_events_from": ("REVERB_APP_ACCEPT_CLIENT_EVENTS_FROM", _to_client_events),
    "allowed_origins": ("REVERB_APP_ALLOWED_ORIGINS", _to_origins),
    "allow_missing_origin": ("REVERB_APP_ALLOW_MISSING_ORIGIN", _to_bool),
    "max_event_data_size": ("REVERB_APP_MAX_EVENT_DATA_SIZE", lambda n, v: _to_int(n, v, 1)),
    "max_event_channels": ("REVERB_APP_MAX_EVENT_CHANNELS", lambda n, v: _to_int(n, v, 1)),
    "max_batch_size": ("REVERB_APP_MAX_BATCH_SIZE", lambda n, v: _to_int(n, v, 1)),
    "max_event_name_length": ("REVERB_APP_MAX_EVENT_NAME_LENGTH", lambda n, v: _to_int(n, v, 1)),
    "max_channel_name_length": (
        "REVERB_APP_MAX_CHANNEL_NAME_LENGTH",
        lambda n, v: _to_int(n, v, 1),
    ),
    "max_presence_members": ("REVERB_APP_MAX_PRESENCE_MEMBERS", lambda n, v: _to_int(n, v, 1)),
    "max_presence_user_info_size": (
        "REVERB_APP_MAX_PRESENCE_USER_INFO_SIZE",
        lambda n, v: _to_int(n, v, 1),
    ),
    "max_user_id_length": ("REVERB_APP_MAX_USER_ID_LENGTH", lambda n, v: _to_int(n, v, 1)),
    "max_subscriptions_per_connection": (
        "REVERB_APP_MAX_SUBSCRIPTIONS_PER_CONNECTION",
        lambda n, v: _to_int(n, v, 1),
    ),
    "max_public_channels": ("REVERB_APP_MAX_PUBLIC_CHANNELS", lambda n, v: _to_int(n, v, 1)),
    "client_event_rate_limit": (
        "REVERB_APP_CLIENT_EVENT_RATE_LIMIT",
        lambda n, v: _to_int(n, v, 0),
    ),
    "rate_limiting_enabled": ("REVERB_APP_RATE_LIMITING_ENABLED", _to_bool),
    "rate_limit_max_attempts": (
        "REVERB_APP_RATE_LIMIT_MAX_ATTEMPTS",
        lambda n, v: _to_int(n, v, 1),
    ),
    "rate_limit_decay_seconds": ("REVERB_APP_RATE_LIMIT_DECAY_SECONDS", _to_positive_float),
    "rate_limit_terminate": ("REVERB_APP_RATE_LIMIT_TERMINATE", _to_bool),
    "cache_ttl": ("REVERB_APP_CACHE_TTL", _to_positive_float),
    "subscription_count": ("REVERB_APP_SUBSCRIPTION_COUNT", _to_bool),
    "watchlist_events": ("REVERB_APP_WATCHLIST_EVENTS", _to_bool),
    "webhooks": ("REVERB_APP_WEBHOOKS", _to_webhooks),
}

# Server settings: field -> (environment variable, parser). Flags use the field names.
_SERVER_SETTINGS: dict[str, tuple[str, Callable[[str, Any], Any]]] = {
    "host": ("REVERB_SERVER_HOST", _to_str),
    "port": ("REVERB_SERVER_PORT", lambda n, v: _to_int(n, v, 0, 65535)),
    "path": ("REVERB_SERVER_PATH", _to_path),
    "hostname": ("REVERB_HOST", _to_str),
    "max_request_size": ("REVERB_MAX_REQUEST_SIZE", lambda n, v: _to_int(n, v, 1024)),
    "max_header_size": ("REVERB_MAX_HEADER_SIZE", lambda n, v: _to_int(n, v, 1024)),
    "write_buffer_limit": ("REVERB_WRITE_BUFFER_LIMIT", lambda n, v: _to_int(n, v, 16_384)),
    "request_timeout": ("REVERB_REQUEST_TIMEOUT", _to_positive_float),
    "http_idle_timeout": ("REVERB_HTTP_IDLE_TIMEOUT", _to_positive_float),
    "max_connections_per_ip": ("REVERB_MAX_CONNECTIONS_PER_IP", lambda n, v: _to_int(n, v, 0)),
    "scaling_enabled": ("REVERB_SCALING_ENABLED", _to_bool),
    "scaling_channel": ("REVERB_SCALING_CHANNEL", _to_str),
    "scaling_node_timeout": ("REVERB_SCALING_NODE_TIMEOUT", _to_positive_float),
    "scaling_stream_length": ("REVERB_SCALING_STREAM_LENGTH", lambda n, v: _to_int(n, v, 100)),
    "scaling_backlog_seconds": ("REVERB_SCALING_BACKLOG_SECONDS", _to_positive_float),
    "drain_seconds": ("REVERB_DRAIN_SECONDS", _to_non_negative_float),
    "metrics_enabled": ("REVERB_METRICS_ENABLED", _to_bool),
    "metrics_port": ("REVERB_METRICS_PORT", lambda n, v: _to_int(n, v, 1, 65535)),
    "tls_cert": ("REVERB_TLS_CERT", _to_str),
    "tls_key": ("REVERB_TLS_KEY", _to_str),
    "log_format": ("REVERB_LOG_FORMAT", _to_log_format),
    "max_connections_per_ip_per_second": (
        "REVERB_MAX_CONNECTIONS_PER_IP_PER_SECOND",
        lambda n, v: _to_int(n, v, 0),
    ),
    "trusted_proxies": ("REVERB_TRUSTED_PROXIES", _to_networks),
    "webhook_delay": ("REVERB_WEBHOOK_DELAY", _to_non_negative_float),
    "webhook_batch_window": ("REVERB_WEBHOOK_BATCH_WINDOW", _to_non_negative_float),
    "webhook_timeout": ("REVERB_WEBHOOK_TIMEOUT", _to_positive_float),
    "webhook_retry_base": ("REVERB_WEBHOOK_RETRY_BASE", _to_positive_float),
    "webhook_retry_for": ("REVERB_WEBHOOK_RETRY_FOR", _to_non_negative_float),
    "webhook_queue_size": ("REVERB_WEBHOOK_QUEUE_SIZE", lambda n, v: _to_int(n, v, 1)),
    "webhook_queue_share": ("REVERB_WEBHOOK_QUEUE_SHARE", lambda n, v: _to_int(n, v, 1)),
    "require_app": ("REVERB_REQUIRE_APP", _to_bool),
    "apps_database_url": ("REVERB_APPS_DATABASE_URL", _to_database_url),
    "apps_database_table": ("REVERB_APPS_DATABASE_TABLE", _to_table_name),
    "apps_database_poll_interval": (
        "REVERB_APPS_DATABASE_POLL_INTERVAL",
        _to_positive_float,
    ),
    "address_file": ("REVERB_ADDRESS_FILE", _to_str),
}

# Laravel's Redis connection variables and reverb-py's own for Sentinel, Cluster and TLS files;
# the TOML [redis] table takes the same names in lower case without the prefix
# (`REDIS_HOST` -> `host`, `REDIS_SENTINELS` -> `sentinels`) and nothing else.
REDIS_VARIABLES = (
    "REDIS_URL",
    "REDIS_SCHEME",
    "REDIS_HOST",
    "REDIS_PORT",
    "REDIS_USERNAME",
    "REDIS_PASSWORD",
    "REDIS_DB",
    "REDIS_SENTINELS",
    "REDIS_SENTINEL_SERVICE",
    "REDIS_SENTINEL_USERNAME",
    "REDIS_SENTINEL_PASSWORD",
    "REDIS_CLUSTER_NODES",
    "REDIS_CA_FILE",
    "REDIS_CERT_FILE",
    "REDIS_KEY_FILE",
)
_SENTINEL_ONLY = ("REDIS_SENTINEL_SERVICE", "REDIS_SENTINEL_USERNAME", "REDIS_SENTINEL_PASSWORD")


class _RedisTlsFiles(TypedDict):
    """The file settings every Redis mode shares, passed to `RedisSettings` by keyword."""

    ca_file: str | None
    cert_file: str | None
    key_file: str | None


def _redis_optional(env: Mapping[str, str], name: str) -> str | None:
    """A credential or a path; empty and Laravel's `null` mean unset."""
    value = env.get(name) or ""
    return None if value.strip().lower() in ("", "null") else value


def _to_addresses(name: str, value: str) -> tuple[Address, ...]:
    addresses = []
    for item in (part.strip() for part in value.split(",")):
        host, colon, port = item.rpartition(":")
        if not colon or not host.strip("[]"):
            raise ConfigError(f"{name}: expected host:port[,host:port...], got {item!r}")
        addresses.append((host.strip("[]"), _to_int(name, port, 1, 65535)))
    return tuple(addresses)


def _redis_url(env: Mapping[str, str]) -> str:
    """Laravel's Redis connection settings as one URL (REDIS_URL wins, as in Laravel)."""
    if env.get("REDIS_URL"):
        url = env["REDIS_URL"]
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError("REDIS_URL: must start with redis://, rediss:// or unix://")
        try:
            urlsplit(url).port  # noqa: B018 - parsing it is the check
        except ValueError:  # the message leaves the URL out: it may hold the password
            raise ConfigError("REDIS_URL: the port is not a number from 0 to 65535") from None
        return url
    scheme = "rediss" if _redis_scheme_is_tls(env) else "redis"
    host = env.get("REDIS_HOST") or "127.0.0.1"
    port = _to_int("REDIS_PORT", env.get("REDIS_PORT") or 6379, 1, 65535)
    database = _to_int("REDIS_DB", env.get("REDIS_DB") or 0, 0)
    user = _redis_optional(env, "REDIS_USERNAME") or ""
    password = _redis_optional(env, "REDIS_PASSWORD") or ""
    credentials = ""
    if user or password:
        credentials = f"{quote(user, safe='')}:{quote(password, safe='')}@"
    return f"{scheme}://{credentials}{host}:{port}/{database}"


def _redis_scheme_is_tls(env: Mapping[str, str]) -> bool:
    scheme = (env.get("REDIS_SCHEME") or "").strip().lower()
    if scheme not in ("", "tcp", "redis", "tls", "rediss"):
        raise ConfigError(f"REDIS_SCHEME: expected tcp, redis, tls or rediss, got {scheme!r}")
    return scheme in ("tls", "rediss")


def _redis_tls_files(env: Mapping[str, str], tls: bool) -> _RedisTlsFiles:
    ca, cert, key = (
        _redis_optional(env, variable)
        for variable in ("REDIS_CA_FILE", "REDIS_CERT_FILE", "REDIS_KEY_FILE")
    )
    if (cert is None) != (key is None):
        raise ConfigError("REDIS_CERT_FILE/REDIS_KEY_FILE: give both the certificate and the key")
    for variable, path in (
        ("REDIS_CA_FILE", ca),
        ("REDIS_CERT_FILE", cert),
        ("REDIS_KEY_FILE", key),
    ):
        if path is not None and not tls:
            raise ConfigError(f"{variable}: needs TLS (a rediss:// URL or REDIS_SCHEME=tls)")
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"{variable}: {path} does not exist")
    return _RedisTlsFiles(ca_file=ca, cert_file=cert, key_file=key)


def _redis_settings(env: Mapping[str, str]) -> RedisSettings:
    """One server, Sentinel or Cluster, decided by which of REDIS_SENTINELS and
    REDIS_CLUSTER_NODES is set; a combination that cannot mean one thing is refused."""
    sentinels = (env.get("REDIS_SENTINELS") or "").strip()
    cluster_nodes = (env.get("REDIS_CLUSTER_NODES") or "").strip()
    if sentinels and cluster_nodes:
        raise ConfigError("REDIS_SENTINELS/REDIS_CLUSTER_NODES: set one (Sentinel or Cluster)")
    stray = next((name for name in _SENTINEL_ONLY if env.get(name) and not sentinels), None)
    if stray is not None:
        raise ConfigError(f"{stray}: only used together with REDIS_SENTINELS")
    if not sentinels and not cluster_nodes:
        url = _redis_url(env)
        tls = url.startswith("rediss://")
        return RedisSettings(url=url, tls=tls, **_redis_tls_files(env, tls))
    if env.get("REDIS_URL"):
        raise ConfigError(
            "REDIS_URL: names a single server; with REDIS_SENTINELS or REDIS_CLUSTER_NODES "
            "use REDIS_USERNAME, REDIS_PASSWORD and REDIS_SCHEME instead"
        )
    database = _to_int("REDIS_DB", env.get("REDIS_DB") or 0, 0)
    if cluster_nodes and database:
        raise ConfigError("REDIS_DB: Redis Cluster has only database 0")
    tls = _redis_scheme_is_tls(env)
    return RedisSettings(
        sentinels=_to_addresses("REDIS_SENTINELS", sentinels) if sentinels else (),
        sentinel_service=_to_str(
            "REDIS_SENTINEL_SERVICE", env.get("REDIS_SENTINEL_SERVICE") or "mymaster"
        ),
        sentinel_username=_redis_optional(env, "REDIS_SENTINEL_USERNAME"),
        sentinel_password=_redis_optional(env, "REDIS_SENTINEL_PASSWORD"),
        cluster_nodes=_to_addresses("REDIS_CLUSTER_NODES", cluster_nodes) if cluster_nodes else (),
        username=_redis_optional(env, "REDIS_USERNAME"),
        password=_redis_optional(env, "REDIS_PASSWORD"),
        db=database,
        tls=tls,
        **_redis_tls_files(env, tls),
    )


def app_from_mapping(where: str, raw: Mapping[str, Any]) -> App:
    """Build one app from a TOML table (snake_case keys, like Reverb's config/reverb.php); the
    database app store builds its rows through here too, so both accept exactly the same."""
    known = {f.name for f in fields(App)}
    unknown = set(raw) - known - {"app_id"}
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(sorted(unknown))}")
    app_id = raw.get("id", raw.get("app_id"))
    if app_id is None or "key" not in raw or "secret" not in raw:
        raise ConfigError(f"{where}: every app needs id, key and secret")
    values: dict[str, Any] = {
        "id": _to_str(f"{where}.id", app_id),
        "key": _to_str(f"{where}.key", raw["key"]),
        "secret": _to_str(f"{where}.secret", raw["secret"]),
    }
    for name, (_, parse) in _APP_SETTINGS.items():
        if name in raw:
            values[name] = parse(f"{where}.{name}", raw[name])
    return App(**values)


def _app_from_env(env: Mapping[str, str]) -> App | None:
    """The single app that Laravel's REVERB_APP_* variables describe, if any."""
    names = ("REVERB_APP_ID", "REVERB_APP_KEY", "REVERB_APP_SECRET")
    present = [name for name in names if env.get(name)]
    if not present:
        return None
    missing = [name for name in names if not env.get(name)]
    if missing:
        raise ConfigError(f"{missing[0]}: must be set together with {', '.join(present)}")
    values: dict[str, Any] = {
        "id": env["REVERB_APP_ID"].strip(),
        "key": env["REVERB_APP_KEY"].strip(),
        "secret": env["REVERB_APP_SECRET"].strip(),
    }
    for name, (variable, parse) in _APP_SETTINGS.items():
        if env.get(variable, "").strip():
            values[name] = parse(variable, env[variable])
    return App(**values)


def random_token(length: int = 20) -> str:
    """Random [a-z0-9] characters, as Reverb's `reverb:install` makes keys and secrets."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


def random_app_id() -> str:
    return str(100_000 + secrets.randbelow(900_000))


def generate_development_app() -> App:
    """Fresh credentials in Reverb's `reverb:install` format: never a fixed default secret."""
    return App(id=random_app_id(), key=random_token(), secret=random_token())


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with Path(path).open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"--config: cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config: {path} is not valid TOML: {exc}") from None


def _read_env_file(path: str) -> dict[str, str]:
    if Path(path).is_dir():
        raise ConfigError(f"--env-file: {path} is a directory; give the .env file in it")
    if not Path(path).is_file():
        raise ConfigError(f"--env-file: {path} does not exist")
    try:
        values = dotenv_values(path)
    except OSError as exc:
        raise ConfigError(f"--env-file: cannot read {path}: {exc.strerror}") from None
    return {key: value for key, value in values.items() if value is not None}


def _reverb_looking(env: Mapping[str, str]) -> tuple[str, ...]:
    """Names (never values) of variables that look like Reverb settings, apart from the one
    that asks for an app."""
    require_app = _SERVER_SETTINGS["require_app"][0]
    return tuple(sorted(n for n in env if "REVERB" in n.upper() and n != require_app))


def _redis_table(toml: Mapping[str, Any]) -> dict[str, str]:
    """The [redis] table as the REDIS_* variables it stands for."""
    table = toml.get("redis", {})
    if not isinstance(table, dict):
        raise ConfigError("--config: [redis] must be a table")
    variables = {f"REDIS_{key.upper()}": key for key in table}
    unknown = [key for variable, key in variables.items() if variable not in REDIS_VARIABLES]
    if unknown:
        raise ConfigError(f"[redis]: unknown setting(s) {', '.join(sorted(unknown))}")
    return {
        variable: ",".join(map(str, value)) if isinstance(value := table[key], list) else str(value)
        for variable, key in variables.items()
    }


def load_settings(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | None = None,
    env_file: str | None = None,
) -> Settings:
    """Merge every source into validated Settings.

    `flags` holds only the options given on the command line (None values are ignored).
    With no app configured anywhere, a development app with fresh credentials is generated.
    """
    flags = {key: value for key, value in (flags or {}).items() if value is not None}
    file_values = _read_env_file(env_file) if env_file else {}
    env: dict[str, str] = {**file_values, **(environ or {})}
    toml = _read_toml(config_file) if config_file else {}

    values: dict[str, Any] = {}
    where: dict[str, str] = {}  # the name each setting was given under, for error messages
    toml_server = toml.get("server", {})
    if not isinstance(toml_server, dict):
        raise ConfigError("--config: [server] must be a table")
    unknown = set(toml_server) - set(_SERVER_SETTINGS) - {"debug"}
    if unknown:
        raise ConfigError(f"[server]: unknown setting(s) {', '.join(sorted(unknown))}")
    for name, (variable, parse) in _SERVER_SETTINGS.items():
        if name in flags:
            where[name] = f"--{name.replace('_', '-')}"
            values[name] = parse(where[name], flags[name])
        elif env.get(variable, "").strip():
            where[name] = variable
            values[name] = parse(variable, env[variable])
        elif name in toml_server:
            where[name] = f"[server].{name}"
            values[name] = parse(where[name], toml_server[name])
    values["debug"] = bool(flags.get("debug")) or _to_bool(
        "[server].debug", toml_server.get("debug", False)
    )
    if (values.get("tls_cert") is None) != (values.get("tls_key") is None):
        raise ConfigError("--tls-cert/--tls-key: give both the certificate and the key")
    port = values.get("port", Settings.__dataclass_fields__["port"].default)
    if port and values.get("metrics_port") == port:
        raise ConfigError(
            f"{where['metrics_port']}: must differ from the main port {port} "
            "(leave it unset to serve /metrics on the main port)"
        )

    redis_env = {**_redis_table(toml), **env}
    places = ("REDIS_URL", "REDIS_HOST", "REDIS_SENTINELS", "REDIS_CLUSTER_NODES")
    if values.get("scaling_enabled") or any(redis_env.get(name) for name in places):
        values["redis"] = _redis_settings(redis_env)

    apps: dict[str, App] = {}
    toml_apps = toml.get("apps", [])
    if not isinstance(toml_apps, list):
        raise ConfigError("--config: apps must be an array of tables ([[apps]])")
    for index, raw in enumerate(toml_apps):
        app = app_from_mapping(f"[[apps]][{index}]", raw)
        apps[app.id] = app
    env_app = _app_from_env(env)
    if env_app is not None:
        apps[env_app.id] = env_app

    keys = [app.key for app in apps.values()]
    duplicate = next((key for key in keys if keys.count(key) > 1), None)
    if duplicate is not None:
        raise ConfigError(f"apps: the key {duplicate!r} is used by more than one app")
    generated = not apps and not values.get("apps_database_url")
    ignored: tuple[str, ...] = ()
    if generated:
        ignored = _reverb_looking(env)
        if values.get("require_app"):
            raise ConfigError(
                f"{where['require_app']}: no app configured; set REVERB_APP_ID, REVERB_APP_KEY "
                "and REVERB_APP_SECRET (or [[apps]] in --config)"
                + (f"; Reverb-looking variables found: {', '.join(ignored)}" if ignored else "")
            )
        dev = generate_development_app()
        apps[dev.id] = dev
    return Settings(
        **values,
        apps=tuple(apps.values()),
        generated_app=generated,
        ignored_app_variables=ignored,
    )
