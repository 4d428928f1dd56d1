"""Configuration: Laravel's names, precedence, validation, and the CLI around it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from reverb_py.config import ConfigError, load_settings
from tests.replicas import free_port, wait_for

LARAVEL_ENV = """
BROADCAST_CONNECTION=reverb
REVERB_APP_ID=881836
REVERB_APP_KEY=ieurikyi90hjoyrlif8g
REVERB_APP_SECRET="grgxyfennnjmjond6hu6"
REVERB_HOST=localhost
REVERB_PORT=8080
REVERB_SCHEME=http
VITE_REVERB_APP_KEY="${REVERB_APP_KEY}"
REVERB_SERVER_PORT=9000
REVERB_APP_ACTIVITY_TIMEOUT=45
REVERB_APP_MAX_MESSAGE_SIZE=20000
REVERB_APP_ACCEPT_CLIENT_EVENTS_FROM=all
REVERB_APP_MAX_CONNECTIONS=
# comments and blank values are fine
"""


def test_laravel_env_file_works_unchanged(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(LARAVEL_ENV)
    settings = load_settings(environ={}, env_file=str(env_file))
    (app,) = settings.apps
    assert (app.id, app.key, app.secret) == (
        "881836",
        "ieurikyi90hjoyrlif8g",
        "grgxyfennnjmjond6hu6",
    )
    assert app.activity_timeout == 45
    assert app.max_message_size == 20_000
    assert app.accept_client_events_from == "all"
    assert app.max_connections is None
    assert settings.port == 9000
    assert settings.hostname == "localhost"
    assert not settings.generated_app


def test_precedence_flags_then_env_then_files(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("REVERB_SERVER_PORT=1111\nREVERB_SERVER_HOST=10.0.0.1\n")
    toml = tmp_path / "reverb.toml"
    toml.write_text('[server]\nport = 2222\nhost = "10.0.0.2"\npath = "/from-toml"\n')
    settings = load_settings(
        flags={"port": 3333, "host": None},
        environ={"REVERB_SERVER_HOST": "10.0.0.3"},
        config_file=str(toml),
        env_file=str(env_file),
    )
    assert settings.port == 3333  # flag
    assert settings.host == "10.0.0.3"  # environment over .env and TOML
    assert settings.path == "/from-toml"  # only in the TOML file


def test_several_apps_from_toml(tmp_path: Path) -> None:
    toml = tmp_path / "reverb.toml"
    toml.write_text(
        '[[apps]]\nid = "1"\nkey = "k1"\nsecret = "s1"\nmax_connections = 10\n'
        '[[apps]]\nid = "2"\nkey = "k2"\nsecret = "s2"\nallowed_origins = ["*.example.com"]\n'
    )
    settings = load_settings(environ={}, config_file=str(toml))
    assert [app.id for app in settings.apps] == ["1", "2"]
    assert settings.apps[0].max_connections == 10
    assert settings.apps[1].allowed_origins == ("*.example.com",)


def test_no_app_generates_fresh_development_credentials() -> None:
    first = load_settings(environ={})
    second = load_settings(environ={})
    assert first.generated_app
    assert first.apps[0].secret != second.apps[0].secret
    assert len(first.apps[0].key) == 20


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"REVERB_SERVER_PORT": "eighty"}, "REVERB_SERVER_PORT"),
        ({"REVERB_SERVER_PORT": "70000"}, "REVERB_SERVER_PORT"),
        ({"REVERB_APP_ID": "1", "REVERB_APP_KEY": "k"}, "REVERB_APP_SECRET"),
        (
            {
                "REVERB_APP_ID": "1",
                "REVERB_APP_KEY": "k",
                "REVERB_APP_SECRET": "s",
                "REVERB_APP_ACCEPT_CLIENT_EVENTS_FROM": "everyone",
            },
            "REVERB_APP_ACCEPT_CLIENT_EVENTS_FROM",
        ),
        (
            {
                "REVERB_APP_ID": "1",
                "REVERB_APP_KEY": "k",
                "REVERB_APP_SECRET": "s",
                "REVERB_APP_PING_INTERVAL": "-1",
            },
            "REVERB_APP_PING_INTERVAL",
        ),
        ({"REVERB_SCALING_ENABLED": "maybe"}, "REVERB_SCALING_ENABLED"),
        ({"REVERB_SCALING_STREAM_LENGTH": "5"}, "REVERB_SCALING_STREAM_LENGTH"),
        ({"REVERB_SCALING_BACKLOG_SECONDS": "0"}, "REVERB_SCALING_BACKLOG_SECONDS"),
        ({"REDIS_URL": "http://nope"}, "REDIS_URL"),
        (
            {
                "REVERB_APP_ID": "1",
                "REVERB_APP_KEY": "k",
                "REVERB_APP_SECRET": "s",
                "REVERB_APP_WEBHOOKS": "[{}]",
            },
            "REVERB_APP_WEBHOOKS",
        ),
    ],
)
def test_invalid_values_name_the_setting(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(environ=environ)


def test_redis_settings_from_laravel_names() -> None:
    settings = load_settings(
        environ={
            "REVERB_SCALING_ENABLED": "true",
            "REDIS_HOST": "redis.internal",
            "REDIS_PORT": "6380",
            "REDIS_PASSWORD": "p@ss/word",
            "REDIS_DB": "2",
        }
    )
    assert settings.scaling_enabled
    assert settings.redis.url == "redis://:p%40ss%2Fword@redis.internal:6380/2"
    assert "p@ss" not in repr(settings)


def test_stream_bounds_from_environment_and_toml(tmp_path: Path) -> None:
    config = tmp_path / "reverb.toml"
    config.write_text("[server]\nscaling_stream_length = 500\n", encoding="utf-8")
    settings = load_settings(
        environ={"REVERB_SCALING_BACKLOG_SECONDS": "45"}, config_file=str(config)
    )
    assert (settings.scaling_stream_length, settings.scaling_backlog_seconds) == (500, 45.0)
    defaults = load_settings(environ={})
    assert (defaults.scaling_stream_length, defaults.scaling_backlog_seconds) == (10_000, 60.0)


def test_transport_limits_from_flags_environment_and_toml(tmp_path: Path) -> None:
    config = tmp_path / "reverb.toml"
    config.write_text("[server]\nmax_header_size = 4096\nhttp_idle_timeout = 5\n", encoding="utf-8")
    settings = load_settings(
        flags={"request_timeout": 12.5},
        environ={"REVERB_MAX_CONNECTIONS_PER_IP": "20"},
        config_file=str(config),
    )
    assert settings.max_header_size == 4096  # was accepted in TOML and ignored
    assert (settings.request_timeout, settings.http_idle_timeout) == (12.5, 5.0)
    assert settings.max_connections_per_ip == 20
    defaults = load_settings(environ={})
    assert (defaults.request_timeout, defaults.max_connections_per_ip) == (60.0, 0)
    with pytest.raises(ConfigError, match="REVERB_REQUEST_TIMEOUT"):
        load_settings(environ={"REVERB_REQUEST_TIMEOUT": "0"})


def test_secrets_stay_out_of_reprs() -> None:
    settings = load_settings(
        environ={
            "REVERB_APP_ID": "1",
            "REVERB_APP_KEY": "k",
            "REVERB_APP_SECRET": "super-secret-value",
        }
    )
    assert "super-secret-value" not in repr(settings)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "reverb_py", *args],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith(("REVERB_", "REDIS_"))},
            **(env or {}),
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_up(port: int) -> None:
    wait_for(f"http://127.0.0.1:{port}/up")


def test_cli_invalid_config_is_one_clear_line() -> None:
    process = run_cli("start", env={"REVERB_SERVER_PORT": "eighty"})
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 2
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines == [
        "reverb-py: configuration error: REVERB_SERVER_PORT: expected an integer, got 'eighty'"
    ]


def test_cli_starts_with_no_config_and_prints_dev_credentials() -> None:
    port = free_port()
    process = run_cli("start", "--host", "127.0.0.1", "--port", str(port))
    try:
        wait_up(port)
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=20)
    assert process.returncode == 0
    assert "REVERB_APP_KEY=" in stderr
    assert "REVERB_APP_SECRET=" in stderr


def test_misspelt_app_variables_are_named_never_their_values() -> None:
    settings = load_settings(
        environ={"REVERB_APP_KYE": "secret-ish-value", "REVERB_APP_ID": "", "PATH": "/bin"}
    )
    assert settings.generated_app
    assert settings.ignored_app_variables == ("REVERB_APP_ID", "REVERB_APP_KYE")
    assert load_settings(environ={"PATH": "/bin"}).ignored_app_variables == ()
    asked = load_settings(environ={"REVERB_REQUIRE_APP": "false"})
    assert asked.generated_app and asked.ignored_app_variables == ()


def test_require_app_makes_a_missing_app_an_error() -> None:
    with pytest.raises(ConfigError, match=r"REVERB_REQUIRE_APP: no app configured.*REVERB_APPKEY"):
        load_settings(environ={"REVERB_REQUIRE_APP": "true", "REVERB_APPKEY": "hidden-value"})
    configured = load_settings(
        environ={
            "REVERB_REQUIRE_APP": "true",
            "REVERB_APP_ID": "1",
            "REVERB_APP_KEY": "k",
            "REVERB_APP_SECRET": "s",
        }
    )
    assert not configured.generated_app


@pytest.mark.parametrize(
    ("flags", "environ", "message"),
    [
        ({"port": 70000}, {}, "--port: must be between 0 and 65535, got 70000"),
        (
            {"port": 8080, "metrics_port": 8080},
            {},
            "--metrics-port: must differ from the main port 8080",
        ),
        ({}, {"REVERB_METRICS_PORT": "8080"}, "REVERB_METRICS_PORT: must differ"),
        ({}, {"REVERB_DRAIN_SECONDS": "-1"}, "REVERB_DRAIN_SECONDS: must not be negative"),
    ],
)
def test_flag_errors_are_one_clear_line(
    flags: dict[str, object], environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(flags=flags, environ=environ)
    assert str(caught.value).startswith(message)


def test_drain_seconds_accept_decimals() -> None:
    assert load_settings(environ={"REVERB_DRAIN_SECONDS": "2.5"}).drain_seconds == 2.5
    assert load_settings(flags={"drain_seconds": 0.5}, environ={}).drain_seconds == 0.5


def test_env_file_that_is_a_directory_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_settings(environ={}, env_file=str(tmp_path))


def test_unknown_redis_key_in_toml_is_refused(tmp_path: Path) -> None:
    toml = tmp_path / "reverb.toml"
    toml.write_text('[redis]\nhost = "cache"\npasword = "typo"\n')
    with pytest.raises(ConfigError, match=r"\[redis\]: unknown setting\(s\) pasword"):
        load_settings(environ={}, config_file=str(toml))


def test_cli_warns_when_a_misspelt_env_file_starts_a_development_app(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("REVERB_ID=881836\nREVERB_KEY=abc\nREVERB_SECRET=topsecret\n")
    process = run_cli("start", "--port", "70000", "--env-file", str(env_file))
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 2
    assert stderr.strip() == (
        "reverb-py: configuration error: --port: must be between 0 and 65535, got 70000"
    )
    port = free_port()
    process = run_cli(
        "start", "--host", "127.0.0.1", "--port", str(port), "--env-file", str(env_file)
    )
    try:
        wait_up(port)
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=20)
    warning = next(line for line in stderr.splitlines() if "No app configured" in line)
    assert "REVERB_ID, REVERB_KEY, REVERB_SECRET" in warning
    assert "topsecret" not in stderr
    process = run_cli("start", "--require-app", "--env-file", str(env_file))
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 2
    assert stderr.count("\n") == 1 and "--require-app: no app configured" in stderr


def test_cli_unreadable_tls_files_exit_2(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    port = str(free_port())
    process = run_cli("start", "--port", port, "--tls-cert", missing, "--tls-key", missing)
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 2
    last = stderr.splitlines()[-1]
    assert last.startswith("reverb-py: configuration error: --tls-cert/--tls-key: cannot load")
    assert "Traceback" not in stderr


def test_cli_logs_the_hostname(tmp_path: Path) -> None:
    port = free_port()
    process = run_cli(
        "start", "--host", "127.0.0.1", "--port", str(port), "--hostname", "ws.example.com"
    )
    try:
        wait_up(port)
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=20)
    assert "hostname=ws.example.com" in stderr


def test_redis_table_in_toml(tmp_path: Path) -> None:
    toml = tmp_path / "reverb.toml"
    toml.write_text('[server]\nscaling_enabled = true\n[redis]\nhost = "cache"\nport = 6380\n')
    settings = load_settings(environ={}, config_file=str(toml))
    assert settings.scaling_enabled
    assert settings.redis.url == "redis://cache:6380/0"


def test_every_setting_is_documented() -> None:
    """docs/configuration.md must name every environment variable the server reads."""
    from reverb_py import config

    documented = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    names = [env for env, _ in config._APP_SETTINGS.values()]
    names += [env for env, _ in config._SERVER_SETTINGS.values()]
    names += list(config.REDIS_VARIABLES)
    missing = [name for name in names if f"`{name}`" not in documented]
    assert missing == []
