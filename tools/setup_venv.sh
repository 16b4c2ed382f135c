#!/usr/bin/env bash
# Create .venv with Python 3.11 (or $PYTHON) and install the pinned requirements, once.
# Sourced by run_all.sh and run_tests.sh; re-installs only when a requirements file changed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
python="${PYTHON:-$(command -v python3.11 || command -v python3)}"
requirements="${1:-requirements.txt}"
if [ ! -x "$venv/bin/python" ]; then
  echo "creating $venv with $python"
  "$python" -m venv "$venv"
fi
stamp="$venv/.installed-$(cat "$root/requirements.txt" "$root/$requirements" "$root/pyproject.toml" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "installing $requirements into $venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$root/$requirements" 2> >(grep -v "is ignored" >&2)
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e "$root" 2> >(grep -v "is ignored" >&2)
  rm -f "$venv"/.installed-*
  touch "$stamp"
fi
