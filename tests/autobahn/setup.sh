#!/usr/bin/env bash
# Build the environments for the Autobahn TestSuite harness.
#
#   tests/autobahn/.venv   Python 2.7 virtualenv with `wstest` (autobahntestsuite)
#   tests/autobahn/.venv3  Python 3 venv with `websockets`, only for the
#                          reference echo server (echo_server.py)
#
# Usage: tests/autobahn/setup.sh [--no-echo-server] [--force]
#
#   --no-echo-server  skip the Python 3 venv (.venv3)
#   --force           delete and rebuild both venvs
#
# Idempotent and non-interactive: a venv whose stamp file matches its
# requirements file is left alone, so a second run takes about a second.
#
# Environment overrides:
#   PYTHON2  path to a Python 2.7 interpreter
#            (default: $(pyenv root)/versions/2.7.18/bin/python2.7)
#   PYTHON3  Python 3 interpreter for .venv3 (default: python3)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv"
VENV3="$HERE/.venv3"
REQ2="$HERE/requirements-py2.txt"
REQ3="$HERE/requirements-py3.txt"
VIRTUALENV_PIN='virtualenv==16.7.12'   # last line with Python 2.7 support: <20

WITH_PY3=1
FORCE=0
for arg in "$@"; do
  case "$arg" in
    --no-echo-server) WITH_PY3=0 ;;
    --force) FORCE=1 ;;
    -h|--help) awk 'NR>1 && /^#/ {sub(/^# ?/, ""); print; next} NR>1 {exit}' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done

# Never prompt; keep pip quiet about Python 2 end of life.
export PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_PYTHON_VERSION_WARNING=1

log() { echo "setup.sh: $*"; }

stamp_of() {  # stamp = requirements content + interpreter version
  { cat "$1"; "$2" -c 'import sys; print(sys.version)' 2>&1; } | sha256sum | cut -d' ' -f1
}

# ---------------------------------------------------------------- Python 2.7
if [ -z "${PYTHON2:-}" ]; then
  if command -v pyenv >/dev/null 2>&1; then
    PYENV_ROOT_DIR="$(pyenv root)"
  else
    PYENV_ROOT_DIR="${PYENV_ROOT:-$HOME/.pyenv}"
  fi
  PYTHON2="$PYENV_ROOT_DIR/versions/2.7.18/bin/python2.7"
fi
if [ ! -x "$PYTHON2" ] || ! "$PYTHON2" -c 'import sys; sys.exit(sys.version_info[:2] != (2, 7))' >/dev/null 2>&1; then
  echo "setup.sh: Python 2.7.18 not found at $PYTHON2 (Autobahn's wstest needs Python 2): install it with 'pyenv install 2.7.18' or set PYTHON2=/path/to/python2.7" >&2
  exit 1
fi

if [ "$FORCE" = 1 ]; then rm -rf "$VENV" "$VENV3"; fi

want2="$(stamp_of "$REQ2" "$PYTHON2")"
if [ -x "$VENV/bin/wstest" ] && [ "$(cat "$VENV/.setup-stamp" 2>/dev/null)" = "$want2" ]; then
  log "wstest venv up to date: $VENV"
else
  log "building Python 2.7 venv with wstest at $VENV (takes about a minute)"
  rm -rf "$VENV"
  BOOT="$(mktemp -d)"
  trap 'rm -rf "$BOOT"' EXIT
  # pyenv's pip 19.2 prints a Python 2 end-of-life notice it has no switch for:
  # keep its output, and show it only if the install fails.
  "$PYTHON2" -m pip install --quiet --no-input --target "$BOOT/lib" "$VIRTUALENV_PIN" \
    > "$BOOT/pip.log" 2>&1 || { cat "$BOOT/pip.log" >&2; exit 1; }
  PYTHONPATH="$BOOT/lib" "$PYTHON2" -m virtualenv --quiet "$VENV"
  rm -rf "$BOOT"; trap - EXIT
  # Everything is pinned in requirements-py2.txt; --no-deps is not used so that
  # pip would still complain if a pin ever went missing from the file.
  "$VENV/bin/pip" install --quiet --no-input -r "$REQ2"
  "$VENV/bin/wstest" -a >/dev/null
  echo "$want2" > "$VENV/.setup-stamp"
  log "installed: $("$VENV/bin/wstest" -a | tr '\n' ' ')"
fi

# ---------------------------------------------------------------- Python 3
if [ "$WITH_PY3" = 1 ]; then
  PYTHON3="${PYTHON3:-python3}"
  if ! "$PYTHON3" -c 'import sys; sys.exit(sys.version_info < (3, 9))' >/dev/null 2>&1; then
    echo "setup.sh: Python >= 3.9 not found as '$PYTHON3' (needed only for echo_server.py; use --no-echo-server to skip)" >&2
    exit 1
  fi
  want3="$(stamp_of "$REQ3" "$PYTHON3")"
  if [ -x "$VENV3/bin/python" ] && [ "$(cat "$VENV3/.setup-stamp" 2>/dev/null)" = "$want3" ]; then
    log "echo server venv up to date: $VENV3"
  else
    log "building Python 3 venv for echo_server.py at $VENV3"
    rm -rf "$VENV3"
    "$PYTHON3" -m venv "$VENV3"
    "$VENV3/bin/pip" install --quiet --no-input -r "$REQ3"
    "$VENV3/bin/python" -c 'import websockets.asyncio.server'
    echo "$want3" > "$VENV3/.setup-stamp"
    log "installed: websockets $("$VENV3/bin/python" -c 'import websockets; print(websockets.__version__)')"
  fi
fi

log "ready. Run: tests/autobahn/run.sh ws://127.0.0.1:9001"
