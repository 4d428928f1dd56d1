#!/usr/bin/env bash
# Refreshes the pinned, hashed dependency locks from pyproject.toml:
#   requirements.lock       what the container image installs (pip --require-hashes): the
#                           runtime dependencies plus the build backend (setuptools)
#   requirements-test.lock  what scripts/test.sh installs (pip --require-hashes): the same
#                           runtime pins plus the `test` extra and the build backend
# Both are universal (one file for every supported Python, 3.11 and up, and every platform:
# linux amd64 and arm64 wheels and the sdists are all hashed), made with uv's resolver, which
# writes environment markers where Pythons differ (redis needs async-timeout before 3.11.3).
# Run it after changing dependencies in pyproject.toml, or to take newer releases; commit the
# result. `uv` is installed into the project's .venv if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

[ -x .venv/bin/python ] || python3 -m venv .venv
[ -x .venv/bin/uv ] || .venv/bin/python -m pip install -q --disable-pip-version-check 'uv>=0.5'

compile() {
  .venv/bin/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes \
    --annotation-style line --custom-compile-command 'bash scripts/lock.sh' "$@"
}
# setuptools is the build backend ([build-system] requires): both installs build reverb-py
# itself offline with the pinned one (pip --no-build-isolation).
build_backend=$(.venv/bin/python -c \
  'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")')
# The image holds the core dependencies only; REVERB_IMAGE_EXTRAS adds extras to its lock,
# e.g. `REVERB_IMAGE_EXTRAS=postgres bash scripts/lock.sh` for the PostgreSQL apps store.
image_extras=()
for extra in ${REVERB_IMAGE_EXTRAS:-}; do image_extras+=(--extra "$extra"); done
echo "$build_backend" | compile pyproject.toml - "${image_extras[@]}" --output-file requirements.lock
echo "$build_backend" | compile pyproject.toml - --extra test --output-file requirements-test.lock
