#!/usr/bin/env bash
# Create .venv with Python 3.11 (or $PYTHON) and install a pinned requirements file into it, once.
# Run by run_all.sh (requirements.txt) and run_tests.sh (requirements-dev.txt, which includes requirements.txt);
# re-installs only when the requirements or pyproject.toml changed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
python="${PYTHON:-$(command -v python3.11 || command -v python3)}"
requirements="${1:-requirements.txt}"
if [ ! -x "$venv/bin/python" ]; then
  echo "creating $venv with $python"
  "$python" -m venv "$venv"
fi
stamp_of() { echo "$venv/.installed-$1-$(cat "$root/requirements.txt" "$root/$1" "$root/pyproject.toml" | sha256sum | cut -c1-16)"; }
if [ ! -f "$(stamp_of "$requirements")" ]; then
  echo "installing $requirements into $venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$root/$requirements" 2> >(grep -v "is ignored" >&2)
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e "$root" 2> >(grep -v "is ignored" >&2)
  rm -f "$venv"/.installed-*
  touch "$(stamp_of "$requirements")"
  [ "$requirements" = requirements-dev.txt ] && touch "$(stamp_of requirements.txt)"
fi
exit 0
