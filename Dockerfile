# reverb-py container image.
#
# Two stages: the builder installs the package and its locked dependencies into a virtualenv
# (/opt/venv); the runtime stage copies only that virtualenv onto the same slim Python base,
# so no pip, build backend or source tree ships in the image. Both stages use the same base
# image so the virtualenv's interpreter symlink stays valid.
#
#   docker build -t reverb-py .
#   podman build --format docker -t reverb-py .     (podman drops HEALTHCHECK without it)
#   docker run --rm -p 8080:8080 -e REVERB_APP_ID -e REVERB_APP_KEY -e REVERB_APP_SECRET reverb-py
#
# All dependencies (uvloop, orjson, httptools, websockets, redis) publish manylinux wheels for
# amd64 and arm64, so no compiler is needed in the builder.

# The base image. A tag moves (new Python patch releases, Debian security updates); for a build
# that is the same every time, pin it by digest, and bump the digest on purpose:
#   --build-arg PYTHON_IMAGE=python:3.12-slim-bookworm@sha256:<digest>
# docs/deployment.md ("Reproducible builds") says how to find the digest.
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder

# Only for a build that must use a private index or mirror instead of PyPI. Build arguments of
# this stage never reach the runtime image (only the runtime stage's history ships).
ARG PIP_INDEX_URL=https://pypi.org/simple
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Every dependency, and the build backend, at the version and hash in requirements.lock
# (refresh it with scripts/lock.sh). Copied before the source so that this layer stays cached
# while only the code changes.
COPY requirements.lock ./
RUN pip install --require-hashes --no-deps -r requirements.lock
# pyproject.toml names README.md as the long description, so setuptools needs it to build.
COPY pyproject.toml README.md ./
COPY reverb_py ./reverb_py
# reverb-py itself, built offline with the locked setuptools: nothing unpinned is fetched.
# `pip check` fails the build when pyproject.toml gained a dependency the lock lacks.
# pip compiles the .pyc files at install time, which matters because the runtime stage runs
# with PYTHONDONTWRITEBYTECODE and a read-only root filesystem. pip and the build backend are
# removed afterwards: the runtime image never installs anything.
RUN pip install --no-deps --no-build-isolation --no-index . \
 && pip check \
 && pip uninstall --yes setuptools pip


FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="reverb-py" \
      org.opencontainers.image.description="Pusher Channels protocol WebSocket server, a drop-in replacement for Laravel Reverb" \
      org.opencontainers.image.licenses="MIT"

# REVERB_ADDRESS_FILE: the server writes the address it listens on there at start-up, and the
# health check reads it, so the check finds the server however it was configured (flags,
# --env-file, --config or the environment). /tmp stays writable under a read-only root
# filesystem: podman mounts a tmpfs there by itself, Docker with --tmpfs /tmp, compose.yaml and
# the Kubernetes Deployment mount one.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    REVERB_ADDRESS_FILE=/tmp/reverb-py/address.json

# No app configured (a misspelt REVERB_APP_* in the .env) is a start-up error, not a random
# development app that looks healthy while every publish gets 401. `-e REVERB_REQUIRE_APP=false`
# to try the image without credentials.
ENV REVERB_REQUIRE_APP=true

# A fixed numeric uid/gid so that Kubernetes' runAsNonRoot can verify it without a passwd
# lookup, and so deploy/kubernetes/deployment.yaml can name the same ids.
RUN groupadd --system --gid 10001 reverb \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
            --home-dir /nonexistent --shell /usr/sbin/nologin reverb

COPY --from=builder /opt/venv /opt/venv
COPY deploy/docker/healthcheck.py /opt/reverb-py/healthcheck.py

# The working directory is where a Laravel .env can be mounted (/app/.env, used with
# --env-file /app/.env). Nothing is written here.
WORKDIR /app
USER 10001:10001

# The server's default port (REVERB_SERVER_PORT) and the conventional separate metrics port
# (REVERB_METRICS_PORT=9601, off unless set). Neither is set in the image on purpose:
# precedence is flags > env > config file, so an ENV here would silently override a mounted
# config file.
EXPOSE 8080 9601

# SIGTERM starts the graceful drain: /ready fails, clients are closed with 4200 (reconnect
# now, to another replica) over REVERB_DRAIN_SECONDS, then the process exits 0. Python as PID 1
# is fine here because the server installs its own SIGTERM/SIGINT handlers.
STOPSIGNAL SIGTERM

# Docker / compose health (Kubernetes ignores this and uses the probes in the Deployment).
# Stdlib only: the slim image has no curl or wget.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "/opt/reverb-py/healthcheck.py"]

ENTRYPOINT ["reverb-py"]
CMD ["start"]
