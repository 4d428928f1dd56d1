# syntax=docker/dockerfile:1

# reverb-py container image.
#
# Two stages: the builder installs the package and its dependencies into a virtualenv
# (/opt/venv); the runtime stage copies only that virtualenv onto the same slim Python base,
# so no pip cache, build backend or source tree ships in the image. Both stages use the same
# base image so the virtualenv's interpreter symlinks (/usr/local/bin/python3.X) stay valid.
#
#   docker build -t reverb-py .
#   docker run --rm -p 8080:8080 --env-file .env reverb-py
#
# All dependencies (uvloop, orjson, httptools, websockets, redis) publish manylinux wheels for
# amd64 and arm64, so no compiler is needed in the builder.

ARG PYTHON_VERSION=3.12

FROM python:${PYTHON_VERSION}-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# pyproject.toml names README.md as the long description, so setuptools needs it to build.
COPY pyproject.toml README.md ./
COPY reverb_py ./reverb_py
# pip compiles the .pyc files at install time, which matters because the runtime stage runs
# with PYTHONDONTWRITEBYTECODE (and, on Kubernetes, a read-only root filesystem). pip itself is
# removed afterwards: the runtime image never installs anything.
RUN pip install . \
 && pip uninstall --yes pip


FROM python:${PYTHON_VERSION}-slim AS runtime

LABEL org.opencontainers.image.title="reverb-py" \
      org.opencontainers.image.description="Pusher Channels protocol WebSocket server, a drop-in replacement for Laravel Reverb" \
      org.opencontainers.image.licenses="MIT"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

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

# The server's default port (REVERB_SERVER_PORT). It is not set in the image on purpose:
# precedence is flags > env > config file, so an ENV here would silently override a mounted
# config file.
EXPOSE 8080

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
