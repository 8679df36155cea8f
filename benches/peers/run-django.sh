#!/usr/bin/env bash
# Migrates the database, then runs the Django/Channels peer under daphne in the
# foreground. Prints "listening on HOST:PORT" once the port accepts connections.
# Env: PEER_LISTEN (127.0.0.1:8200), PEER_DB (./peer-django.db), PEER_JWT_SECRET
# (bench-secret), PEER_DAPHNE_VERBOSITY (0: no per-connection access log).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/django/.venv"
[ -x "$VENV/bin/daphne" ] || { echo "run-django.sh: run $HERE/install.sh first" >&2; exit 1; }

export PEER_LISTEN="${PEER_LISTEN:-127.0.0.1:8200}"
# Resolve the DB path against the caller's directory (settings.py does too, but we cd).
PEER_DB="${PEER_DB:-./peer-django.db}"
case "$PEER_DB" in /*) ;; *) PEER_DB="$PWD/$PEER_DB" ;; esac
export PEER_DB
export PEER_JWT_SECRET="${PEER_JWT_SECRET:-bench-secret}"
export DJANGO_SETTINGS_MODULE=project.settings

if [[ "$PEER_LISTEN" =~ ^\[([^]]+)\]:([0-9]+)$ ]] || [[ "$PEER_LISTEN" =~ ^([^:]+):([0-9]+)$ ]]; then
  HOST="${BASH_REMATCH[1]}"
  PORT="${BASH_REMATCH[2]}"
else
  echo "run-django.sh: invalid PEER_LISTEN '$PEER_LISTEN' (want HOST:PORT)" >&2
  exit 2
fi
case "$HOST" in
  localhost | ::1 | 127.*) ;;
  *) echo "run-django.sh: PEER_LISTEN host $HOST is not a loopback address" >&2; exit 2 ;;
esac
[ "$HOST" = localhost ] && HOST=127.0.0.1
SHOWN="$HOST"
[[ "$HOST" == *:* ]] && SHOWN="[$HOST]"

cd "$HERE/django"
"$VENV/bin/python" manage.py migrate --noinput -v 0

# Announce readiness once daphne accepts connections (bounded: 60 s, stops if daphne dies).
SELF=$$
(
  for _ in $(seq 600); do
    kill -0 "$SELF" 2>/dev/null || exit 0
    if (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null; then
      echo "listening on $SHOWN:$PORT"
      exit 0
    fi
    sleep 0.1
  done
  echo "run-django.sh: daphne did not open $SHOWN:$PORT within 60 s" >&2
) &

exec "$VENV/bin/daphne" -v "${PEER_DAPHNE_VERBOSITY:-0}" -b "$HOST" -p "$PORT" project.asgi:application
