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
command -v cc >/dev/null 2>&1 || missing+=(gcc)  # the benchmark smoke test builds the C load generator
if [ ${#missing[@]} -gt 0 ]; then
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
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
