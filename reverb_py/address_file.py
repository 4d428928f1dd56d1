"""The address file: where this server listens, for a health check that cannot see its flags.

A container's HEALTHCHECK runs as a separate process. It sees the container's environment but
not the server's command-line flags, nor the `--env-file` or `--config` file the server read,
so a port set there would be probed in the wrong place and a healthy server reported unhealthy
forever. With `REVERB_ADDRESS_FILE` set (the image sets it), the server writes its effective
address there once it listens, and deploy/docker/healthcheck.py reads it. The format is a small
JSON object, the contract between the two:

    {"host": "0.0.0.0", "port": 8080, "path": "/reverb", "tls": false}

`host` is the configured bind address (a wildcard means "probe loopback"), `port` the bound
port, `path` the route prefix ("" for none) and `tls` whether the port speaks TLS.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import orjson

from reverb_py.config import Settings

logger = logging.getLogger("reverb_py.server")


def write_address_file(settings: Settings, port: int) -> None:
    """Write atomically (a reader never sees half a file), when the setting asks for it. A
    failure is logged, not raised: serving clients matters more than the health check."""
    file = settings.address_file
    if not file:
        return
    tls = settings.tls_cert is not None
    record = orjson.dumps({"host": settings.host, "port": port, "path": settings.path, "tls": tls})
    target = Path(file)
    temporary = target.with_name(f".{target.name}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_bytes(record)
        temporary.replace(target)
    except OSError as exc:
        logger.warning(
            "cannot write the address file %s (REVERB_ADDRESS_FILE): %s; the container health "
            "check falls back to REVERB_SERVER_* from the environment",
            file,
            exc.strerror or exc,
        )


def remove_address_file(settings: Settings) -> None:
    """At exit, so that a stale address never outlives the server that wrote it."""
    if settings.address_file:
        with contextlib.suppress(OSError):
            Path(settings.address_file).unlink()
