#!/usr/bin/env bash
# Installs the benchmark peers' dependencies. Idempotent and non-interactive.
#   node/          npm ci (npm install when there is no package-lock.json)
#   django/.venv   python3 -m venv + pip install -r django/requirements.txt
# Also installs `websockets` and PyJWT (in requirements.txt) for smoke_test.py.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NODE_DIR="$HERE/node"
DJANGO_DIR="$HERE/django"
VENV="$DJANGO_DIR/.venv"
PYTHON="${PYTHON:-python3}"

export CI="${CI:-true}"
export npm_config_yes=true npm_config_fund=false npm_config_audit=false npm_config_update_notifier=false
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

die() {
  echo "install.sh: error: $*" >&2
  exit 1
}

exec </dev/null

# ---------------------------------------------------------------- node peer
command -v node >/dev/null || die "node not found (Node.js 20 or newer is needed)"
command -v npm >/dev/null || die "npm not found"
node_major="$(node -p 'process.versions.node.split(".")[0]')"
[ "$node_major" -ge 20 ] || die "Node.js $(node --version) is too old (need 20 or newer)"

echo "install.sh: node peer ($NODE_DIR)"
cd "$NODE_DIR"
if node -e 'require("better-sqlite3")(":memory:"); require("ws"); require("jsonwebtoken")' 2>/dev/null \
  && [ -f node_modules/.package-lock.json ] && [ package-lock.json -ot node_modules/.package-lock.json ]; then
  echo "install.sh: node_modules up to date"
else
  if [ -f package-lock.json ]; then
    npm ci --no-audit --no-fund || die "npm ci failed in $NODE_DIR"
  else
    npm install --no-audit --no-fund || die "npm install failed in $NODE_DIR"
  fi
fi
# better-sqlite3 is a native addon: when no prebuilt binary can be downloaded it is
# compiled from source (needs python3, make and a C++ compiler). Make sure it loads.
if ! node -e 'require("better-sqlite3")(":memory:")' 2>/dev/null; then
  echo "install.sh: better-sqlite3 does not load; rebuilding it from source"
  npm rebuild better-sqlite3 --build-from-source || die "building better-sqlite3 failed (need python3, make, g++)"
  node -e 'require("better-sqlite3")(":memory:")' || die "better-sqlite3 still does not load"
fi

# ---------------------------------------------------------------- django peer
command -v "$PYTHON" >/dev/null || die "$PYTHON not found"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || die "Python 3.10 or newer is needed for Django 5.2"

echo "install.sh: django peer ($VENV)"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV" || die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
fi
"$VENV/bin/python" -m pip install --quiet -r "$DJANGO_DIR/requirements.txt" \
  || die "pip install -r $DJANGO_DIR/requirements.txt failed"
"$VENV/bin/python" -c 'import django, channels, daphne, jwt, websockets' \
  || die "the venv at $VENV cannot import its packages"

echo "install.sh: done"
echo "  node $(node --version); $(cd "$NODE_DIR" && node -p '["ws","better-sqlite3","jsonwebtoken"].map(p => p + " " + require(p + "/package.json").version).join(", ")')"
echo "  $("$VENV/bin/python" --version); $("$VENV/bin/python" -m pip freeze | grep -iE '^(django|channels|daphne|pyjwt|websockets)==' | tr '\n' ' ')"
