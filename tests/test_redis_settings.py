"""Redis settings for the three modes (one server, Sentinel, Cluster) with TLS and credentials:
parsing from Laravel-style variables and TOML, the refused combinations, secrets kept out of
every repr and log summary, and the redis-py client each mode builds (no server needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import SSLConnection
from redis.asyncio.sentinel import SentinelConnectionPool, SentinelManagedSSLConnection

from reverb_py.config import ConfigError, RedisSettings, load_settings
from reverb_py.scaling.connect import connect

SCALING = {"REVERB_SCALING_ENABLED": "true"}


def redis_settings(**env: str) -> RedisSettings:
    return load_settings(environ={**SCALING, **env}).redis


@pytest.fixture
def pem(tmp_path: Path) -> dict[str, str]:
    """Paths that exist (the settings only check that; the client reads them on connect)."""
    paths = {}
    for name in ("ca", "cert", "key"):
        path = tmp_path / f"{name}.pem"
        path.write_text("not read until a connection is made\n")
        paths[name] = str(path)
    return paths


def test_sentinel_from_laravel_style_names() -> None:
    settings = redis_settings(
        REDIS_HOST="127.0.0.1",  # in every Laravel .env; ignored in Sentinel mode
        REDIS_SENTINELS="10.0.0.1:26379, 10.0.0.2:26380,[::1]:26381",
        REDIS_SENTINEL_SERVICE="alerts",
        REDIS_SENTINEL_PASSWORD="sentinel-secret",
        REDIS_USERNAME="reverb",
        REDIS_PASSWORD="master-secret",
        REDIS_DB="3",
    )
    assert settings.mode == "sentinel"
    assert settings.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26380), ("::1", 26381))
    assert settings.sentinel_service == "alerts"
    assert (settings.username, settings.password, settings.db) == ("reverb", "master-secret", 3)
    assert settings.sentinel_password == "sentinel-secret"
    assert not settings.tls


def test_cluster_from_toml_lists(tmp_path: Path) -> None:
    toml = tmp_path / "reverb.toml"
    toml.write_text(
        "[server]\nscaling_enabled = true\n[redis]\n"
        'cluster_nodes = ["10.0.0.1:7000", "10.0.0.2:7000"]\n'
        'password = "from-toml"\nscheme = "tls"\n'
    )
    settings = load_settings(environ={}, config_file=str(toml)).redis
    assert settings.mode == "cluster"
    assert settings.cluster_nodes == (("10.0.0.1", 7000), ("10.0.0.2", 7000))
    assert settings.password == "from-toml"
    assert settings.tls


def test_environment_wins_over_toml(tmp_path: Path) -> None:
    toml = tmp_path / "reverb.toml"
    toml.write_text('[server]\nscaling_enabled = true\n[redis]\nsentinels = ["a:1"]\n')
    settings = load_settings(environ={"REDIS_SENTINELS": "b:2"}, config_file=str(toml)).redis
    assert settings.sentinels == (("b", 2),)


def test_laravel_null_password_means_none() -> None:
    settings = redis_settings(REDIS_CLUSTER_NODES="n:7000", REDIS_PASSWORD="null")
    assert settings.password is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"REDIS_SENTINELS": "a:1", "REDIS_CLUSTER_NODES": "b:2"},
            "REDIS_SENTINELS/REDIS_CLUSTER_NODES: set one",
        ),
        ({"REDIS_SENTINELS": "a:1", "REDIS_URL": "redis://x"}, "REDIS_URL: names a single"),
        ({"REDIS_URL": "redis://:secret@cache:99999/0"}, "REDIS_URL: the port is not"),
        ({"REDIS_SENTINELS": "a"}, "REDIS_SENTINELS: expected host:port"),
        ({"REDIS_SENTINELS": "a:1,,b:2"}, "REDIS_SENTINELS: expected host:port"),
        ({"REDIS_CLUSTER_NODES": "a:99999"}, "REDIS_CLUSTER_NODES: must be between 1 and 65535"),
        ({"REDIS_CLUSTER_NODES": "a:1", "REDIS_DB": "2"}, "REDIS_DB: Redis Cluster has only"),
        ({"REDIS_SENTINEL_SERVICE": "m"}, "REDIS_SENTINEL_SERVICE: only used together"),
        ({"REDIS_SCHEME": "https"}, "REDIS_SCHEME: expected tcp, redis, tls or rediss"),
        ({"REDIS_CA_FILE": "/nonexistent/ca.pem"}, "REDIS_CA_FILE: needs TLS"),
        (
            {"REDIS_URL": "rediss://h", "REDIS_CA_FILE": "/nonexistent/ca.pem"},
            "REDIS_CA_FILE: /nonexistent/ca.pem does not exist",
        ),
        ({"REDIS_SCHEME": "tls", "REDIS_CERT_FILE": "/x"}, "give both the certificate and"),
    ],
)
def test_invalid_combinations_are_one_clear_error(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as refused:
        redis_settings(**env)
    assert "secret" not in str(refused.value)


def test_unknown_toml_key_is_refused(tmp_path: Path) -> None:
    toml = tmp_path / "reverb.toml"
    toml.write_text('[redis]\nsentinel = "a:1"\n')
    with pytest.raises(ConfigError, match=r"\[redis\]: unknown setting\(s\) sentinel"):
        load_settings(environ={}, config_file=str(toml))


@pytest.mark.parametrize(
    ("env", "described"),
    [
        ({"REDIS_URL": "rediss://u:url-secret@cache:6380/1"}, "rediss://cache:6380"),
        (
            {"REDIS_SENTINELS": "s1:26379,s2:26379", "REDIS_SENTINEL_PASSWORD": "url-secret"},
            "sentinel mymaster@s1:26379,s2:26379",
        ),
        (
            {"REDIS_CLUSTER_NODES": "n1:7000", "REDIS_SCHEME": "tls"},
            "cluster n1:7000 tls",
        ),
    ],
)
def test_descriptions_and_reprs_hold_no_secret(env: dict[str, str], described: str) -> None:
    settings = redis_settings(REDIS_PASSWORD="password-secret", **env)
    assert settings.describe() == described
    for shown in (repr(settings), repr(load_settings(environ={**SCALING, **env}))):
        assert "secret" not in shown


def test_single_server_client_with_tls_files(pem: dict[str, str]) -> None:
    settings = redis_settings(
        REDIS_URL="rediss://:pw@cache:6380/2",
        REDIS_CA_FILE=pem["ca"],
        REDIS_CERT_FILE=pem["cert"],
        REDIS_KEY_FILE=pem["key"],
    )
    pool = connect(settings).connection_pool
    assert pool.connection_class is SSLConnection
    kwargs = pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"], kwargs["password"]) == (
        "cache",
        6380,
        2,
        "pw",
    )
    assert (kwargs["ssl_ca_certs"], kwargs["ssl_certfile"], kwargs["ssl_keyfile"]) == (
        pem["ca"],
        pem["cert"],
        pem["key"],
    )


def test_sentinel_client_authenticates_to_sentinels_and_master(pem: dict[str, str]) -> None:
    settings = redis_settings(
        REDIS_SENTINELS="s1:26379,s2:26379",
        REDIS_SENTINEL_SERVICE="alerts",
        REDIS_SENTINEL_USERNAME="watcher",
        REDIS_SENTINEL_PASSWORD="sentinel-pw",
        REDIS_USERNAME="reverb",
        REDIS_PASSWORD="master-pw",
        REDIS_DB="1",
        REDIS_SCHEME="tls",
        REDIS_CA_FILE=pem["ca"],
    )
    pool = connect(settings).connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "alerts"
    assert pool.connection_class is SentinelManagedSSLConnection
    master = pool.connection_kwargs
    assert (master["username"], master["password"], master["db"]) == ("reverb", "master-pw", 1)
    assert master["ssl_ca_certs"] == pem["ca"]
    sentinels = pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["host"] for s in sentinels] == ["s1", "s2"]
    watched = sentinels[0].connection_pool
    assert watched.connection_kwargs["username"] == "watcher"
    assert watched.connection_kwargs["password"] == "sentinel-pw"
    assert watched.connection_class is SSLConnection


def test_cluster_client_with_credentials_and_tls(pem: dict[str, str]) -> None:
    settings = redis_settings(
        REDIS_CLUSTER_NODES="n1:7000,n2:7001",
        REDIS_USERNAME="reverb",
        REDIS_PASSWORD="cluster-pw",
        REDIS_SCHEME="tls",
        REDIS_CA_FILE=pem["ca"],
        REDIS_CERT_FILE=pem["cert"],
        REDIS_KEY_FILE=pem["key"],
    )
    client = connect(settings)
    assert isinstance(client, RedisCluster)
    nodes = client.nodes_manager.startup_nodes
    assert sorted(nodes) == ["n1:7000", "n2:7001"]
    assert not client.nodes_manager.require_full_coverage  # a dead master elsewhere is fine
    kwargs = client.nodes_manager.connection_kwargs
    assert (kwargs["username"], kwargs["password"]) == ("reverb", "cluster-pw")
    assert kwargs["connection_class"] is SSLConnection
    assert kwargs["ssl_ca_certs"] == pem["ca"]
    assert kwargs["ssl_certfile"] == pem["cert"]
