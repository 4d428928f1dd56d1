"""Container health check for reverb-py: exit 0 when `GET /up` answers 200, else exit 1.

Docker's HEALTHCHECK (and compose's `depends_on: condition: service_healthy`) run this inside
the container. It uses only the standard library because the slim runtime image has no curl or
wget, and it deliberately does not import reverb_py: a check that runs every few seconds should
cost a bare interpreter start, not the server's import graph.

It reads the same environment the server does, so it probes the port and scheme the server
actually listens on:

- REVERB_SERVER_PORT (default 8080);
- REVERB_SERVER_HOST: a wildcard bind (0.0.0.0, ::, empty) is probed on loopback, a specific
  address is probed on that address;
- REVERB_SERVER_PATH: the server serves /up under its path prefix, like every other route;
- REVERB_TLS_CERT: when set the server speaks TLS itself, so the probe uses https. The
  certificate is issued for the public hostname, not for loopback, so it is not verified; this
  checks liveness, not the certificate.

An optional first argument replaces the path (default /up), e.g. `healthcheck.py /ready`.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.error
import urllib.request

WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]", "*"}
TIMEOUT_SECONDS = 3.0


def probe_url(env: dict[str, str], path: str = "/up") -> str:
    """Build the URL to probe from the server's own settings, so both always agree."""
    host = env.get("REVERB_SERVER_HOST", "0.0.0.0").strip()
    if host in WILDCARD_HOSTS:
        host = "127.0.0.1"
    host = host.strip("[]")
    if ":" in host:  # a literal IPv6 address needs brackets in a URL
        host = f"[{host}]"
    port = env.get("REVERB_SERVER_PORT", "").strip() or "8080"
    scheme = "https" if env.get("REVERB_TLS_CERT", "").strip() else "http"
    prefix = env.get("REVERB_SERVER_PATH", "").strip().strip("/")
    if prefix:
        path = f"/{prefix}{path}"
    return f"{scheme}://{host}:{port}{path}"


def check(url: str, timeout: float = TIMEOUT_SECONDS) -> tuple[bool, str]:
    """Return (healthy, reason). Only an HTTP 200 counts as healthy."""
    context = None
    if url.startswith("https://"):
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        return False, f"{url} answered HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        return False, f"{url} unreachable: {exc}"
    if status != 200:
        return False, f"{url} answered HTTP {status}"
    return True, f"{url} answered HTTP 200"


def main(argv: list[str]) -> int:
    path = argv[1] if len(argv) > 1 else "/up"
    healthy, reason = check(probe_url(dict(os.environ), path))
    if not healthy:
        print(reason, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
