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
# The container tests (marker `container`): rootful podman with runc (crun refuses this host's
# cgroup layout), its network stack (netavark needs iptables; aardvark-dns resolves compose
# service names), podman-compose, and debootstrap for the stand-in base images.
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v runc >/dev/null 2>&1 || missing+=(runc)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
command -v iptables >/dev/null 2>&1 || missing+=(iptables)
command -v podman-compose >/dev/null 2>&1 || missing+=(podman-compose)
[ -x /usr/lib/podman/netavark ] || missing+=(netavark aardvark-dns)
if [ ${#missing[@]} -gt 0 ]; then
  as_root apt-get update -qq
  # Only what is listed: recommended packages would pull in ~100 more, daemons included.
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

# PostgreSQL and MariaDB for the apps-database tests (tests/test_apps_database.py): CI machines
# run them (127.0.0.1:5432, trust auth, user postgres; 127.0.0.1:3306, root without a password;
# database `test` in both). Install what is missing, start what is stopped; never stop them.
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_listening() {
  for _ in $(seq 1 60); do listening "$1" && return 0; sleep 0.5; done
  echo "nothing listens on 127.0.0.1:$1 after starting $2" >&2
  return 1
}
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
    postgresql >/dev/null
  hba="/etc/postgresql/$(ls /etc/postgresql)/main/pg_hba.conf"
  printf 'local all all trust\nhost all all 127.0.0.1/32 trust\n' | as_root tee "$hba" >/dev/null
  as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main reload 2>/dev/null \
    || true  # started by the install: read the new rules; stopped: started below
fi
if ! listening 5432; then
  as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
  wait_listening 5432 PostgreSQL
fi
psql -h 127.0.0.1 -U postgres -Atc "SELECT 1 FROM pg_database WHERE datname = 'test'" \
  | grep -q 1 || psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE test"
if [ ! -x /usr/sbin/mariadbd ]; then
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
    mariadb-server >/dev/null
fi
if ! listening 3306; then
  as_root install -d -o mysql -g mysql /run/mysqld
  as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
  wait_listening 3306 MariaDB
fi
if ! mariadb -h 127.0.0.1 -u root -e "CREATE DATABASE IF NOT EXISTS test" 2>/dev/null; then
  # A fresh install: root logs in through the socket only; allow it over TCP without a password.
  as_root mariadb -u root -e "CREATE USER IF NOT EXISTS root@'127.0.0.1' IDENTIFIED BY '';
    GRANT ALL ON *.* TO root@'127.0.0.1' WITH GRANT OPTION; CREATE DATABASE IF NOT EXISTS test"
fi

# Python: the locked dependencies (exact versions, hashes checked; refresh with
# scripts/lock.sh), then the package itself, editable and built offline with the locked
# setuptools, in a project-local virtualenv.
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --require-hashes \
  -r requirements-test.lock
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation \
  -e .
# A dependency in pyproject.toml that the lock lacks fails here, not as an ImportError later.
.venv/bin/python -m pip check --disable-pip-version-check >/dev/null

# Node packages for the interop and browser tests (pinned by their lock files).
for dir in tests/interop examples/panic-alerts; do
  if [ -f "$dir/package-lock.json" ]; then
    npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error >/dev/null
  fi
done

.venv/bin/ruff check .
.venv/bin/ruff format --check .
# Type checking: strict, configured in pyproject.toml's [tool.mypy] (see CONTRIBUTING.md).
.venv/bin/mypy

# The suite in two runs (tests/conftest.py picks them by REVERB_TESTS_ALONE). First every test
# that asserts no bound on time, over parallel workers: those tests mostly wait on servers,
# Redis, subprocesses and sockets, so four workers keep two cores busy; tests of one file share a
# worker (module fixtures, one image build). Then the tests marked `alone`, one at a time, so
# that no other test's load can break their bounds. Pytest arguments apply to both runs.
#
# The protocol core (pyproject.toml's [tool.coverage.run] include: pusher/, hub/, scaling/state
# and scaling/cluster) must keep 95 % line and branch coverage from in-process tests alone, no
# replica process. A full run (no arguments, as CI runs it) takes the files that drive the core
# in-process out of the parallel run and runs them first, with coverage: each test still runs
# once, and only the core is traced. With arguments nothing is measured.
core_tests=(
  tests/test_auth.py tests/test_messages.py tests/test_channels.py tests/test_limits.py
  tests/test_websocket_protocol.py tests/test_session_liveness.py
  tests/test_session_signin_and_events.py tests/test_features.py tests/test_http_api.py
  tests/test_http_api_answers.py tests/test_trigger_fast_path.py tests/test_hub_delivery.py
  tests/test_hub_parts.py tests/test_webhooks.py tests/test_app_store.py tests/test_cluster_core.py
)
set +e
core=0
parallel_args=("$@")
if [ $# -eq 0 ]; then
  REVERB_TESTS_ALONE=skip .venv/bin/python -m pytest -n 4 --dist loadfile "${core_tests[@]}" \
    --cov --cov-report=term-missing:skip-covered --cov-fail-under=95
  core=$?
  [ "$core" -eq 5 ] && core=1  # the core's tests must exist
  parallel_args=("${core_tests[@]/#/--ignore=}")
fi
REVERB_TESTS_ALONE=skip .venv/bin/python -m pytest -n 4 --dist loadfile "${parallel_args[@]}"
parallel=$?
REVERB_TESTS_ALONE=only .venv/bin/python -m pytest "$@"
alone=$?
set -e
# pytest exit code 5 means no test ran: fine for one run (a selection may hold no `alone` test),
# a failure for both.
if [ "$parallel" -eq 5 ] && [ "$alone" -eq 5 ]; then
  echo "pytest collected no tests" >&2
  exit 1
fi
for status in "$core" "$parallel" "$alone"; do
  if [ "$status" -ne 0 ] && [ "$status" -ne 5 ]; then
    exit "$status"
  fi
done
