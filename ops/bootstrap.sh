# Sourced by ops/run and ops/test: make sure .venv exists and holds this checkout's dependencies.
# Re-installs only when pyproject.toml changed since the last install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "cbec-gateway needs Python 3.11 or newer (found: $("$PYTHON" --version 2>&1))" >&2
  exit 2
fi
# A venv without pip is one whose creation failed half-way (Debian and Ubuntu without python3-venv leave one):
# made again rather than kept, or every later run would fail the same way.
if [ -x .venv/bin/python ] && ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  echo "removing .venv: it has no pip (an earlier creation failed)" >&2
  rm -rf .venv
fi
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv ..." >&2
  if ! "$PYTHON" -m venv .venv || ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
    rm -rf .venv
    echo "could not create a virtual environment with pip in it; on Debian or Ubuntu: apt install python3-venv" >&2
    exit 2
  fi
fi
stamp=".venv/.cbec-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "installing cbec-gateway and its dependencies into .venv ..." >&2
  .venv/bin/python -m pip install --quiet --upgrade pip >&2
  .venv/bin/python -m pip install --quiet -e '.[dev]' >&2
  echo "$want" > "$stamp"
fi
export PATH="$ROOT/.venv/bin:$PATH"
