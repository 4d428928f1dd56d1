#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh machine, then runs the whole suite.
# README's test command and .ci/run both run exactly this script.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# System packages: a redis-server binary for the scaling tests (each test starts its own),
# Chromium for the browser test of the example.
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
# Without an emoji font the example's screenshots show empty boxes (assertions read text).
[ -e /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || missing+=(fonts-noto-color-emoji)
command -v node >/dev/null 2>&1 || missing+=(nodejs npm)
# The benchmark smoke test builds the C load generator (libc6-dev is only a gcc recommendation).
command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
# Debian/Ubuntu ship venv's pip bootstrap (ensurepip) in python3-venv; without it
# `python3 -m venv` below fails.
if [ ! -x .venv/bin/python ] && ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
  missing+=(python3-venv)
fi
if [ ${#missing[@]} -gt 0 ]; then
  as_root apt-get update -qq
  # Only what is listed: recommended packages would pull in ~100 more, daemons included.
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

# Python: the package itself plus the test extras, in a project-local virtualenv.
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'

# Node packages for the interop and browser tests (pinned by their lock files).
for dir in tests/interop examples/panic-alerts; do
  if [ -f "$dir/package-lock.json" ]; then
    npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error >/dev/null
  fi
done

.venv/bin/ruff check .
.venv/bin/ruff format --check .

set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
# pytest exit code 5 means no test ran: that is a failure here.
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests" >&2
  exit 1
fi
exit "$status"
