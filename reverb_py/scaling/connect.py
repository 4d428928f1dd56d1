"""The one place a Redis client is built: a single server, a Sentinel-watched master or a
Redis Cluster, each with TLS and credentials from `RedisSettings`.

redis-py does the topology work itself: a Sentinel client asks the sentinels for the master's
address on every new connection (so after a failover the next reconnect reaches the promoted
replica), and a Cluster client maps slots to nodes and refreshes the map on MOVED or a dead
node. The link only has to reconnect with a fresh client when a connection fails.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

from reverb_py.config import RedisSettings

RedisClient = aioredis.Redis | RedisCluster

# A dead peer is noticed by the keepalive and the periodic health check rather than by a
# write that hangs; a connection attempt to an unreachable host gives up quickly.
_SOCKET_OPTIONS: dict[str, Any] = {
    "socket_connect_timeout": 2,
    "socket_keepalive": True,
    "health_check_interval": 5,
}


def connect(settings: RedisSettings, socket_timeout: float | None = None) -> RedisClient:
    """A new client for `settings`; connections are opened lazily, on the first command.

    `socket_timeout` bounds every reply (the caller knows how long its blocking reads wait)."""
    socket_options = {**_SOCKET_OPTIONS, "socket_timeout": socket_timeout}
    if settings.mode == "sentinel":
        return _sentinel_master(settings, socket_options)
    if settings.mode == "cluster":
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in settings.cluster_nodes],
            # The link uses one key: a master down elsewhere must not stop a reconnect.
            require_full_coverage=False,
            username=settings.username,
            password=settings.password,
            **_tls_options(settings),
            **socket_options,
        )
    return aioredis.from_url(settings.url, **_tls_options(settings), **socket_options)


def _tls_options(settings: RedisSettings) -> dict[str, Any]:
    """redis-py's TLS arguments; for a URL the rediss:// scheme itself turns TLS on."""
    if not settings.tls:
        return {}
    options: dict[str, Any] = {
        "ssl_ca_certs": settings.ca_file,
        "ssl_certfile": settings.cert_file,
        "ssl_keyfile": settings.key_file,
    }
    if settings.mode != "single":
        options["ssl"] = True
    return options


class _SentinelMaster(aioredis.Redis):
    """The master's client, which also closes its connections to the sentinels: the link
    builds a new client on every reconnect, and the sentinel connections would leak."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        pool = self.connection_pool
        assert isinstance(pool, SentinelConnectionPool)  # master_for builds it so
        for sentinel in pool.sentinel_manager.sentinels:
            await sentinel.aclose()


def _sentinel_master(settings: RedisSettings, socket_options: dict[str, Any]) -> aioredis.Redis:
    tls = _tls_options(settings)
    sentinel = Sentinel(  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        settings.sentinels,
        sentinel_kwargs={
            "username": settings.sentinel_username,
            "password": settings.sentinel_password,
            **tls,
            **socket_options,
        },
        username=settings.username,
        password=settings.password,
        db=settings.db,
        **tls,
        **socket_options,
    )
    master: _SentinelMaster = sentinel.master_for(
        settings.sentinel_service, redis_class=_SentinelMaster
    )
    return master
