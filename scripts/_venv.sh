# Sourced by scripts/start and scripts/test: make .venv (Python 3.10+) with the project in it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
extras="${1:-}"
if [ ! -x .venv/bin/python ]; then
  py=""
  for cand in python3 python3.13 python3.12 python3.11 python3.10; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
      py="$cand"; break
    fi
  done
  [ -n "$py" ] || { echo "llama-launcher needs Python 3.10 or newer; install it and run this again." >&2; exit 1; }
  echo "creating .venv with $($py --version)" >&2
  "$py" -m venv .venv
fi
echo "installing llama-launcher${extras:+ [$extras]} into .venv" >&2
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extras:+[$extras]}"
# cmake can come from PyPI when the system has none (install-server looks beside .venv's python)
if ! command -v cmake >/dev/null && [ ! -x .venv/bin/cmake ]; then
  echo "no cmake on PATH: installing it from PyPI into .venv" >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check cmake
fi
