#!/usr/bin/env bash
# Runs the Node.js peer in the foreground. Prints "listening on HOST:PORT" when ready.
# Env: PEER_LISTEN (127.0.0.1:8100), PEER_DB (./peer-node.db), PEER_JWT_SECRET (bench-secret).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
[ -d "$HERE/node/node_modules" ] || { echo "run-node.sh: run $HERE/install.sh first" >&2; exit 1; }
export PEER_LISTEN="${PEER_LISTEN:-127.0.0.1:8100}"
export PEER_DB="${PEER_DB:-./peer-node.db}"
export PEER_JWT_SECRET="${PEER_JWT_SECRET:-bench-secret}"
exec node "$HERE/node/server.js"
