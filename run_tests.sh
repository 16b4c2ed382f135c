#!/usr/bin/env bash
# The test suite from nothing: creates .venv if needed, installs requirements-dev.txt, runs ruff and pytest.
set -euo pipefail
cd "$(dirname "$0")"
bash tools/setup_venv.sh requirements-dev.txt
.venv/bin/ruff check byol_lib tools tests bench
.venv/bin/python -m pytest "$@"
