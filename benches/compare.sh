#!/usr/bin/env bash
# Runs the same loads against switchboard, the Node `ws` peer and the Django Channels peer
# (and, if asked, switchboard on PostgreSQL or a baseline build), each started fresh (new
# loopback port, new temporary database) for every run, in alternation, the server pinned
# to CPU 0 and the load generator to CPU 1; prints a table of medians with switchboard's
# ratio to each of the others and writes it to benches/results/latest.md.
#
#   benches/compare.sh [--quick] [--runs N] [--servers "switchboard node django"] [--soak]
#                      [--only "CASE ..."] [--no-build]
#
# Raw JSON lines (one per scenario run, the load generator's line plus "case" and "run")
# go to benches/results/<stamp>.jsonl, each run's full output to benches/results/<stamp>/.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: benches/compare.sh [options]
  --quick            small sizes, for a smoke run (idle 2000, fanout 200 and 1000, chat 10 pairs x 5 s,
                     storm 1000 clients in 10 rooms with 20 messages of history, cross 2 s per rate
                     instead of 10)
  --runs N           repetitions of every scenario per server (default 3); the table shows medians
  --servers LIST     which servers, space- or comma-separated (default "switchboard node django");
                     "baseline" is switchboard built from another commit (SWITCHBOARD_BASELINE_BIN),
                     for a before/after comparison in the same run; "postgres" is switchboard
                     storing in PostgreSQL (a throwaway server for the whole comparison,
                     benches/pg-server.sh, a fresh database for every server start)
  --soak             also run the soak scenario (full: 5000 connections x 120 s; quick: 500 x 30 s)
  --only LIST        run only these cases, space- or comma-separated; a word selects the case of
                     that name and every case whose name starts with it and a dash:
                     idle, floor, fanout, fanout-1000, chat, chat-50-paced, soak, storm, cross, ...
                     (Django's fanout-10000 and storm need fanout-1000-paced / idle in the same run;
                     cross, delivery between two PostgreSQL nodes, runs for "postgres" only;
                     so does cluster: three nodes with Redis, cluster-1000, cluster-5000,
                     cluster-fault-pubsub, cluster-fault-restart, cluster-fanout-3 and -1)
  --no-build         use the binaries already built
Env: SWITCHBOARD_BIN (default: the static binary that .ci/build-static builds; with
--no-build, ${CARGO_TARGET_DIR:-<repo>/target}/release/switchboard), also for "postgres".
"postgres" needs Debian's PostgreSQL server (benches/pg-server.sh installs it when missing) and psql;
the cluster cases also redis-server and redis-cli (apt-get install redis-server when missing).
EOF
}

QUICK=0
RUNS=3
SERVERS="switchboard node django"
SOAK=0
BUILD=1
ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --runs) RUNS="${2:?--runs needs a number}"; shift ;;
    --runs=*) RUNS="${1#*=}" ;;
    --servers) SERVERS="${2:?--servers needs a list}"; shift ;;
    --servers=*) SERVERS="${1#*=}" ;;
    --soak) SOAK=1 ;;
    --only) ONLY="${2:?--only needs a list of cases}"; shift ;;
    --only=*) ONLY="${1#*=}" ;;
    --no-build) BUILD=0 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "compare.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "compare.sh: --runs wants a positive number" >&2; exit 2; }
SERVERS="${SERVERS//,/ }"
for s in $SERVERS; do
  case "$s" in switchboard | baseline | postgres | node | django) ;; *) echo "compare.sh: unknown server $s" >&2; exit 2 ;; esac
done
ONLY="${ONLY//,/ }"
for w in $ONLY; do
  case "${w%%-*}" in idle | floor | fanout | chat | soak | storm | cross | cluster) ;; *) echo "compare.sh: --only: no case $w" >&2; exit 2 ;; esac
done
[[ " $ONLY " == *" soak"* ]] && SOAK=1
# want CASE: is CASE selected (all are without --only)?
want() {
  [ -z "$ONLY" ] && return 0
  local w
  for w in $ONLY; do
    [[ "$1" == "$w" || "$1" == "$w"-* ]] && return 0
  done
  return 1
}

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)" # benches/
ROOT="$(cd "$HERE/.." && pwd)"
LOADGEN="$HERE/loadgen/target/release/loadgen"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
SB_BIN="${SWITCHBOARD_BIN:-$TARGET_DIR/release/switchboard}"
RESULTS="$HERE/results"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
RAW="$RESULTS/$STAMP.jsonl"
OUTDIR="$RESULTS/$STAMP"
# At least 16 characters (switchboard's minimum); fresh for every comparison.
SECRET="bench-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"

log() { echo "compare: $*"; }
die() { echo "compare.sh: error: $*" >&2; exit 1; }

exec </dev/null
mkdir -p "$OUTDIR"

# ------------------------------------------------------------------ build and install
if [ "$BUILD" = 1 ]; then
  log "building the load generator (benches/loadgen, its own target/)"
  (cd "$HERE/loadgen" && env -u CARGO_TARGET_DIR cargo build --release --quiet) || die "building the load generator failed"
  if [[ " $SERVERS " == *" switchboard "* || " $SERVERS " == *" postgres "* ]] && [ -z "${SWITCHBOARD_BIN:-}" ]; then
    # The binary users run: the static one .ci/build-static makes.
    log "building switchboard's static binary (.ci/build-static; may wait for another build's lock)"
    SB_BIN="$ROOT/$(cd "$ROOT" && .ci/build-static 2>/dev/null | tail -n 1)" || die "building switchboard failed"
  fi
fi
[ -x "$LOADGEN" ] || die "no load generator at $LOADGEN (run without --no-build)"
if [[ " $SERVERS " == *" switchboard "* || " $SERVERS " == *" postgres "* ]]; then
  [ -x "$SB_BIN" ] || die "no switchboard binary at $SB_BIN"
fi
BASELINE_BIN="${SWITCHBOARD_BASELINE_BIN:-}"
if [[ " $SERVERS " == *" baseline "* ]]; then
  [ -f "$BASELINE_BIN" ] && [ -x "$BASELINE_BIN" ] || die "baseline needs SWITCHBOARD_BASELINE_BIN, an executable switchboard binary"
fi

peers_installed() {
  [ -x "$HERE/peers/django/.venv/bin/daphne" ] \
    && (cd "$HERE/peers/node" && node -e 'require("better-sqlite3")(":memory:"); require("ws"); require("jsonwebtoken")') >/dev/null 2>&1
}
if [[ " $SERVERS " == *" node "* || " $SERVERS " == *" django "* ]] && ! peers_installed; then
  log "installing the peers (benches/peers/install.sh)"
  "$HERE/peers/install.sh" || die "benches/peers/install.sh failed"
fi

if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
  PIN_SERVER=(taskset -c 0)
  PIN_LOAD=(taskset -c 1)
  PINNING="server on CPU 0, load generator on CPU 1"
  SERVER_CPU=0
else
  PIN_SERVER=()
  PIN_LOAD=()
  PINNING="not pinned (taskset missing or fewer than 2 CPUs)"
  SERVER_CPU=0
  log "warning: $PINNING"
fi

# ------------------------------------------------------------------ servers
SERVER_PID=""
SERVER_DB=""
SERVER_DIR=""
NODE_B_PID="" # the cross case's second node (on $NODE_B_PORT), besides $SERVER_PID
NODE_B_PORT=""
EXTRA_PIDS=() # the cluster cases' nodes 2 and 3 (on EXTRA_PORTS), besides $SERVER_PID
EXTRA_PORTS=()
CASE_REDIS_URL="" # the cluster cases' Redis, given to every "postgres" node started meanwhile
PORT=$((20000 + RANDOM % 10000)) # below the ephemeral range (32768-60999)

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

next_port() {
  PORT=$((PORT + 1))
  [ "$PORT" -lt 32000 ] || PORT=20000
  while port_open "$PORT"; do PORT=$((PORT + 1)); done
}

# PostgreSQL, for the "postgres" server: one throwaway server (benches/pg-server.sh) for
# the whole comparison, started below when "postgres" is among --servers and stopped by
# the exit trap; every start of a "postgres" server gets a fresh database in it (sb_1,
# sb_2, ...), dropped when that server stops. Not pinned: its processes run on either CPU.
PG_DIR=""
PG_ADMIN=""
PG_DBS=0

start_pg() {
  PG_DIR="$(mktemp -d "${TMPDIR:-/tmp}/sb-compare-pg.XXXXXX")"
  next_port
  PG_ADMIN="$("$HERE/pg-server.sh" start "$PG_DIR" "$PORT")" || die "PostgreSQL did not start (benches/pg-server.sh)"
  log "PostgreSQL $(psql "$PG_ADMIN" -XAtc 'SHOW server_version') for \"postgres\" at $PG_ADMIN (fsync and synchronous_commit on; not pinned)"
}

stop_pg() {
  if [ -n "$PG_DIR" ]; then
    cp "$PG_DIR/log" "$OUTDIR/postgres.log" 2>/dev/null || true
    "$HERE/pg-server.sh" stop "$PG_DIR" || true
    PG_DIR=""
  fi
}

# pg_sql SQL...: runs each SQL (its own transaction) on PostgreSQL's admin database;
# quiet unless it fails.
pg_sql() {
  local cmds=() c
  for c in "$@"; do cmds+=(-c "$c"); done
  psql "$PG_ADMIN" -X -q -v ON_ERROR_STOP=1 "${cmds[@]}" >/dev/null
}

# pg_cpu_us: CPU time PostgreSQL has used so far, in µs (clock ticks, 10 ms resolution):
# the postmaster's utime+stime, its exited children's (cutime+cstime: the postmaster
# reaps its backends) and its live children's, so that backends that come and go count.
pg_cpu_us() {
  [ -n "$PG_DIR" ] || return 0
  python3 - "$PG_DIR/data/postmaster.pid" <<'PY' 2>/dev/null || true
import os, sys
hz = os.sysconf("SC_CLK_TCK")
pm = int(open(sys.argv[1]).readline())
def stat(pid):  # fields from the state on (field 3), after the command's ')'
    s = open(f"/proc/{pid}/stat").read()
    return s[s.rfind(")") + 2:].split()
ticks = 0
for p in os.listdir("/proc"):
    if p.isdigit():
        try:
            f = stat(p)
        except OSError:
            continue
        if int(f[1]) == pm:  # a child: utime + stime
            ticks += int(f[11]) + int(f[12])
f = stat(pm)  # utime, stime, cutime, cstime
ticks += sum(int(x) for x in f[11:15])
print(ticks * 1_000_000 // hz)
PY
}

# proc_cpu_us PID: utime+stime of one process so far, in µs (empty when it is gone).
proc_cpu_us() {
  python3 - "$1" <<'PY' 2>/dev/null || true
import os, sys
s = open(f"/proc/{sys.argv[1]}/stat").read()
f = s[s.rfind(")") + 2:].split()
print((int(f[11]) + int(f[12])) * 1_000_000 // os.sysconf("SC_CLK_TCK"))
PY
}

# start_server NAME: a fresh server on a fresh port with a fresh database (for
# "postgres": a new database in the comparison's PostgreSQL).
start_server() {
  SERVER_DIR="$(mktemp -d "${TMPDIR:-/tmp}/sb-compare.XXXXXX")"
  next_port
  if [ "$1" = postgres ]; then
    PG_DBS=$((PG_DBS + 1))
    if ! pg_sql "CREATE DATABASE sb_$PG_DBS"; then
      echo "  postgres: CREATE DATABASE sb_$PG_DBS failed" >&2
      return 1
    fi
    SERVER_DB="${PG_ADMIN%/*}/sb_$PG_DBS"
  fi
  launch_server "$1"
}

# launch_server NAME [LOG-SUFFIX]: starts NAME on $PORT with its database in $SERVER_DIR
# (for "postgres": at the URL $SERVER_DB) and waits until it listens.
launch_server() {
  local name="$1"
  local logf="$OUTDIR/server-$CASE-$name-$RUN${2:+-$2}.log"
  case "$name" in
    switchboard | baseline | postgres)
      local bin="$SB_BIN" pg=()
      [ "$name" = baseline ] && bin="$BASELINE_BIN"
      if [ "$name" = postgres ]; then
        # SWITCHBOARD_DB is not used then; each node has its own all the same.
        pg=(SWITCHBOARD_DATABASE_URL="$SERVER_DB")
        # With a Redis (yours, e.g. `redis-server --port 6390 --save ''`), the nodes
        # use it as their bus: SWITCHBOARD_BENCH_REDIS_URL=redis://127.0.0.1:6390. The
        # cluster cases start their own ($CASE_REDIS_URL).
        local redis="${CASE_REDIS_URL:-${SWITCHBOARD_BENCH_REDIS_URL:-}}"
        [ -n "$redis" ] && pg+=(SWITCHBOARD_REDIS_URL="$redis")
        local sqlite="$SERVER_DIR/unused${2:+-$2}.db"
      else
        SERVER_DB="$SERVER_DIR/sb.db"
        local sqlite="$SERVER_DB"
      fi
      env "${pg[@]}" SWITCHBOARD_LISTEN="127.0.0.1:$PORT" SWITCHBOARD_API_LISTEN=127.0.0.1:0 SWITCHBOARD_DB="$sqlite" \
        SWITCHBOARD_JWT_SECRET="$SECRET" SWITCHBOARD_MAX_CONNECTIONS=19500 \
        SWITCHBOARD_MAX_CONNECTIONS_PER_USER=20000 SWITCHBOARD_RATE_LIMIT_PER_MINUTE=100000000 \
        SWITCHBOARD_LOG=warn "${PIN_SERVER[@]}" "$bin" >"$logf" 2>&1 &
      ;;
    node)
      SERVER_DB="$SERVER_DIR/peer-node.db"
      PEER_LISTEN="127.0.0.1:$PORT" PEER_DB="$SERVER_DB" PEER_JWT_SECRET="$SECRET" \
        "${PIN_SERVER[@]}" "$HERE/peers/run-node.sh" >"$logf" 2>&1 &
      ;;
    django)
      SERVER_DB="$SERVER_DIR/peer-django.db"
      PEER_LISTEN="127.0.0.1:$PORT" PEER_DB="$SERVER_DB" PEER_JWT_SECRET="$SECRET" \
        "${PIN_SERVER[@]}" "$HERE/peers/run-django.sh" >"$logf" 2>&1 &
      ;;
  esac
  SERVER_PID=$! # env, taskset and the run scripts exec, so this is the server process itself
  local i
  for i in $(seq 1200); do # 120 s: Django migrates its database first
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      echo "  $name exited before listening; its log:" >&2
      tail -5 "$logf" >&2
      SERVER_PID=""
      return 1
    fi
    port_open "$PORT" && return 0
    sleep 0.1
  done
  echo "  $name did not listen on 127.0.0.1:$PORT within 120 s" >&2
  return 1
}

# start_node_b: the cross case's second switchboard node, on the database of the
# "postgres" server just started ($SERVER_DB) and on a port of its own ($NODE_B_PORT),
# pinned like the first; its PID in $NODE_B_PID. $PORT and $SERVER_PID stay node A's.
start_node_b() {
  local a_pid="$SERVER_PID" a_port="$PORT" rc=0
  next_port
  launch_server postgres node-b || rc=$?
  NODE_B_PID="$SERVER_PID"
  NODE_B_PORT="$PORT"
  SERVER_PID="$a_pid"
  PORT="$a_port"
  return "$rc"
}

# start_extra_node N: the cluster cases' node N (2, 3), like start_node_b: on the
# database of the "postgres" server just started, on a port of its own, pinned like the
# first; its PID and port appended to EXTRA_PIDS and EXTRA_PORTS.
start_extra_node() {
  local a_pid="$SERVER_PID" a_port="$PORT" rc=0
  next_port
  launch_server postgres "node-$1" || rc=$?
  EXTRA_PIDS+=("$SERVER_PID") # empty when it exited; still running when it did not listen
  EXTRA_PORTS+=("$PORT")
  SERVER_PID="$a_pid"
  PORT="$a_port"
  return "$rc"
}

# kill_pid PID: SIGTERM to a server we started (what `systemctl stop` and a deploy send),
# SIGKILL after 10 s.
kill_pid() {
  kill -TERM "$1" 2>/dev/null || true
  local i
  for i in $(seq 100); do
    kill -0 "$1" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# kill_server: stops the server (and the cross case's node B); its directory stays.
kill_server() {
  if [ -n "$SERVER_PID" ]; then
    kill_pid "$SERVER_PID"
    SERVER_PID=""
  fi
  if [ -n "$NODE_B_PID" ]; then
    kill_pid "$NODE_B_PID"
    NODE_B_PID=""
  fi
  local p
  for p in "${EXTRA_PIDS[@]}"; do
    [ -z "$p" ] || kill_pid "$p"
  done
  EXTRA_PIDS=()
  EXTRA_PORTS=()
}

# restart_server NAME: the deploy: stop the server, start it again on the same port and
# the same database (a new process: cold caches, new PID in $SERVER_PID).
restart_server() {
  kill_server
  launch_server "$1" restarted
}

# stop_server: stops the server, removes its directory and drops its PostgreSQL database,
# then checkpoints, so that the next case does not write out this one's pages.
stop_server() {
  kill_server
  if [ -n "$SERVER_DIR" ]; then
    rm -rf "$SERVER_DIR"
    SERVER_DIR=""
  fi
  if [[ "$SERVER_DB" == postgres://* ]]; then
    [ -z "$PG_DIR" ] || pg_sql "DROP DATABASE IF EXISTS ${SERVER_DB##*/} WITH (FORCE)" CHECKPOINT \
      || echo "  postgres: could not drop ${SERVER_DB##*/}" >&2
    SERVER_DB=""
  fi
}

# A throwaway Redis for one cluster case: loopback, a fresh port, no persistence (Redis is
# not trusted with data), daemonized with a pidfile in its directory, so that the
# restart fault (run by the load generator) can start it again the same way and the
# script still knows the PID to stop. Not pinned, like PostgreSQL.
REDIS_DIR=""
REDIS_PORT=""
REDIS_ARGS=()

start_redis() {
  if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    [ "$(id -u)" = 0 ] || { echo "  the cluster cases need redis-server and redis-cli" >&2; return 1; }
    log "installing Debian's redis-server"
    (export DEBIAN_FRONTEND=noninteractive; timeout 300 apt-get update -qq && timeout 600 apt-get install -y -qq redis-server) >/dev/null \
      || { echo "  apt-get install redis-server failed" >&2; return 1; }
  fi
  REDIS_DIR="$(mktemp -d "${TMPDIR:-/tmp}/sb-compare-redis.XXXXXX")"
  next_port
  REDIS_PORT="$PORT"
  REDIS_ARGS=(redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes
    --dir "$REDIS_DIR" --pidfile "$REDIS_DIR/redis.pid" --logfile "$REDIS_DIR/redis.log")
  "${REDIS_ARGS[@]}" || return 1
  local i
  for i in $(seq 50); do
    [ -s "$REDIS_DIR/redis.pid" ] && redis-cli -p "$REDIS_PORT" PING 2>/dev/null | grep -q PONG && return 0
    sleep 0.1
  done
  echo "  redis-server did not answer on 127.0.0.1:$REDIS_PORT within 5 s" >&2
  return 1
}

# redis_pid: the running redis-server's PID (its pidfile; it changes with a restart).
redis_pid() {
  local p
  p="$(cat "$REDIS_DIR/redis.pid" 2>/dev/null || true)"
  [ -n "$p" ] && [ "$(cat "/proc/$p/comm" 2>/dev/null)" = redis-server ] && echo "$p" || true
}

stop_redis() {
  [ -n "$REDIS_DIR" ] || return 0
  local p
  p="$(redis_pid)"
  [ -z "$p" ] || kill_pid "$p"
  cp "$REDIS_DIR/redis.log" "$OUTDIR/redis-$CASE-$RUN.log" 2>/dev/null || true
  rm -rf "$REDIS_DIR"
  REDIS_DIR=""
  CASE_REDIS_URL=""
}

cleanup() {
  stop_server
  stop_redis
  stop_pg
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

# ------------------------------------------------------------------ one scenario run
# record JSON: appends the load generator's line with "case" and "run" in front.
record() {
  local json="$1"
  printf '{"case":"%s","run":%d,%s\n' "$CASE" "$RUN" "${json#\{}" >>"$RAW"
}

# with_fields JSON KEY VALUE...: JSON with these whole-number fields added (an empty
# VALUE is left out); the KEY "error" adds VALUE to "errors" and makes "ok" false. JSON
# as it was if it cannot be read.
with_fields() {
  python3 - "$@" <<'PY' 2>/dev/null || printf '%s\n' "$1"
import json, sys
r, a = json.loads(sys.argv[1]), sys.argv[2:]
for k, v in zip(a[::2], a[1::2]):
    if k == "error":
        r["ok"] = False
        r.setdefault("errors", []).append(v)
    elif v != "":
        r[k] = int(v)
print(json.dumps(r, ensure_ascii=False, separators=(",", ":")))
PY
}

# delta BEFORE AFTER: AFTER - BEFORE, or nothing when either is unknown.
delta() { [ -n "$1" ] && [ -n "$2" ] && echo $(($2 - $1)) || true; }

# drive SERVER MAX_SECONDS OUT LOADGEN-ARGS...: runs the load generator against the
# running server ($PORT, $SERVER_PID), its output to OUT; sets JSON to its JSON line (or
# a failure line) and DRIVE_RC to its exit status.
drive() {
  local server="$1" max="$2" out="$3"
  shift 3
  local limits=(--max-seconds "$max")
  if [ "$server" = django ]; then
    # Generous: Django takes minutes where the others take seconds.
    max=$((max * 4))
    limits=(--max-seconds "$max" --stall-seconds 120 --handshake-timeout 120)
  fi
  DRIVE_RC=0
  timeout --kill-after=10 $((max + 120)) "${PIN_LOAD[@]}" "$LOADGEN" "$@" --url "ws://127.0.0.1:$PORT" \
    --secret "$SECRET" --pid "$SERVER_PID" --label "$server" "${limits[@]}" >"$out" 2>&1 || DRIVE_RC=$?
  JSON="$(grep '^{' "$out" | tail -1 || true)"
  if [ -z "$JSON" ]; then
    JSON="{\"scenario\":\"$1\",\"server\":\"$server\",\"ok\":false,\"errors\":[\"no JSON line from the load generator (exit $DRIVE_RC)\"]}"
  fi
}

# summary SERVER OUT: the load generator's summary lines, without its first (what it is
# about to do) and without progress lines.
summary() {
  grep -v '^{' "$2" | grep -vE '^  ' | tail -n +2 | sed "s/^/  [$1] /" || true
}

# run_case SERVER MAX_SECONDS LOADGEN-ARGS...
run_case() {
  local server="$1" max="$2"
  shift 2
  local out="$OUTDIR/$CASE-$server-$RUN.txt"
  if ! start_server "$server"; then
    record "{\"scenario\":\"$1\",\"server\":\"$server\",\"ok\":false,\"errors\":[\"the server did not start\"]}"
    stop_server
    return
  fi
  local extra=()
  [ "$1" = soak ] && [ "$server" != postgres ] && extra=(--db "$SERVER_DB")
  local pg0=""
  [ "$server" = postgres ] && pg0="$(pg_cpu_us)"
  drive "$server" "$max" "$out" "$@" "${extra[@]}"
  # PostgreSQL's CPU over the whole case (connecting included), apart from the server's.
  [ "$server" = postgres ] && JSON="$(with_fields "$JSON" pg_cpu_us "$(delta "$pg0" "$(pg_cpu_us)")")"
  record "$JSON"
  stop_server
  summary "$server" "$out"
}

# run_storm SERVER N ROOMS HISTORY: the reconnect storm after a deploy, in two load
# generator runs around a restart that this script does, since it owns the servers:
#   1. `storm --phase seed`: one client per room stores HISTORY messages (and leaves);
#   2. the deploy: SIGTERM, then the same server again on the same port and database;
#   3. `storm --phase reconnect --pid NEWPID`: N clients connect at once, each must get
#      its room's HISTORY messages. The table shows this run's figures.
run_storm() {
  local server="$1" n="$2" rooms="$3" history="$4"
  local out="$OUTDIR/$CASE-$server-$RUN.txt" seed_out="$OUTDIR/$CASE-$server-$RUN-seed.txt"
  local args=(storm --connections "$n" --rooms "$rooms" --history "$history")
  if ! start_server "$server"; then
    record "{\"scenario\":\"storm\",\"server\":\"$server\",\"ok\":false,\"errors\":[\"the server did not start\"]}"
    stop_server
    return
  fi
  drive "$server" 300 "$seed_out" "${args[@]}" --phase seed
  if [ "$DRIVE_RC" != 0 ]; then
    record "$JSON" # the seed's line: "phase": "seed", its errors
    stop_server
    summary "$server" "$seed_out"
    return
  fi
  grep -E '^storm: [0-9]+ messages stored' "$seed_out" | sed "s/^/  [$server] /" || true
  if ! restart_server "$server"; then
    record "{\"scenario\":\"storm\",\"server\":\"$server\",\"ok\":false,\"errors\":[\"the server did not start again on its database\"]}"
    stop_server
    return
  fi
  local pg0=""
  [ "$server" = postgres ] && pg0="$(pg_cpu_us)"
  drive "$server" 600 "$out" "${args[@]}" --phase reconnect
  [ "$server" = postgres ] && JSON="$(with_fields "$JSON" pg_cpu_us "$(delta "$pg0" "$(pg_cpu_us)")")"
  record "$JSON"
  stop_server
  summary "$server" "$out"
}

# run_cross RATE MESSAGES: delivery from one switchboard node to another through their
# shared PostgreSQL database. Both nodes start fresh on one fresh database, pinned like any
# server (both to CPU 0), SWITCHBOARD_POLL_INTERVAL_MS at its default (250 ms: node B
# delivers what node A stored when its poll finds it). `fanout --subscriber-url`: one
# sender on node A ($PORT, --pid) sends MESSAGES at RATE/s, 10 subscribers on node B
# each get every one, in order. The sender may have 200 ms of messages un-echoed
# (--window), so node A's commit time does not hold back the offered rate. The CPU of
# node A, node B and PostgreSQL is measured here over the whole case.
run_cross() {
  local rate="$1" msgs="$2" server=postgres
  local out="$OUTDIR/$CASE-$server-$RUN.txt"
  if ! start_server "$server" || ! start_node_b; then
    record "{\"scenario\":\"fanout\",\"server\":\"$server\",\"ok\":false,\"errors\":[\"a node did not start\"]}"
    stop_server
    return
  fi
  local a0 b0 pg0 a1 b1 pg1 gone=()
  a0="$(proc_cpu_us "$SERVER_PID")"
  b0="$(proc_cpu_us "$NODE_B_PID")"
  pg0="$(pg_cpu_us)"
  drive "$server" 300 "$out" fanout --subscribers 10 --rate "$rate" --messages "$msgs" \
    --window $((rate / 5 > 64 ? rate / 5 : 64)) --subscriber-url "ws://127.0.0.1:$NODE_B_PORT"
  a1="$(proc_cpu_us "$SERVER_PID")"
  b1="$(proc_cpu_us "$NODE_B_PID")"
  pg1="$(pg_cpu_us)"
  kill -0 "$NODE_B_PID" 2>/dev/null || gone=(error "node B (the subscribers' node) is gone")
  JSON="$(with_fields "$JSON" node_a_cpu_us "$(delta "$a0" "$a1")" node_b_cpu_us "$(delta "$b0" "$b1")" \
    pg_cpu_us "$(delta "$pg0" "$pg1")" "${gone[@]}")"
  record "$JSON"
  stop_server
  summary "$server" "$out"
}

# run_cluster KIND ARG: three switchboard nodes (cluster-fanout-1: one) on one fresh
# PostgreSQL database with a fresh Redis as their bus, nodes pinned to CPU 0 like every
# server, Redis and PostgreSQL not pinned. One sender, on node 1 (--url, --pid).
#   cross RATE:       12 subscribers, 4 on each of nodes 2, 3 and 1; RATE messages/s for
#                     CLUSTER_SECS; the latency of nodes 2 and 3 (cross-node) and of node 1,
#                     of all sends and apart for the first 0.5 s (a fresh room) and after
#   fault pubsub|restart: the same at 1,000/s for FAULT_SECS; 2 s after the first send the
#                     load generator runs `redis-cli CLIENT KILL TYPE pubsub` (every node's
#                     subscription cut) or `SHUTDOWN NOSAVE`, 1 s, redis-server again;
#                     latency before (after the first 0.5 s), in the 3 s after (from 0.5 s
#                     before) and later
#   fanout NODES:     CFAN_N subscribers in one room, spread over the NODES nodes (nodes 2, 3,
#                     1), CFAN_MSGS messages at CFAN_RATE/s; latency also apart for the first
#                     0.5 s (a fresh room: 25 of the 500 messages, more than 1 %)
# CPU while publishing (the load generator samples /proc): every node, redis-server (not
# in the fault cases: it is restarted) and PostgreSQL's postmaster with its backends.
run_cluster() {
  local kind="$1" arg="$2" server=postgres nodes=3
  local out="$OUTDIR/$CASE-$server-$RUN.txt"
  [ "$kind" = fanout ] && nodes="$arg"
  if ! start_redis; then
    record "{\"scenario\":\"fanout\",\"server\":\"$server\",\"ok\":false,\"errors\":[\"redis-server did not start\"]}"
    stop_redis
    return
  fi
  CASE_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
  local started=1 i
  start_server "$server" || started=0
  for i in $(seq 2 "$nodes"); do
    [ "$started" = 1 ] && { start_extra_node "$i" || started=0; }
  done
  if [ "$started" = 0 ]; then
    record "{\"scenario\":\"fanout\",\"server\":\"$server\",\"ok\":false,\"errors\":[\"a node did not start\"]}"
    stop_server
    stop_redis
    return
  fi
  # Nodes 2 and 3 first: the sender's node 1 gets the last (smallest) share.
  local urls="" cpu="node1=$SERVER_PID" pm
  for i in "${!EXTRA_PORTS[@]}"; do
    urls+="ws://127.0.0.1:${EXTRA_PORTS[$i]},"
    cpu+=",node$((i + 2))=${EXTRA_PIDS[$i]}"
  done
  urls+="ws://127.0.0.1:$PORT"
  [ "$kind" = fault ] || cpu+=",redis=$(redis_pid)"
  pm="$(head -n 1 "$PG_DIR/data/postmaster.pid")"
  local args=(fanout --cpu "$cpu" --cpu-tree "postgres=$pm")
  case "$kind" in
    cross)
      args+=(--subscribers 12 --rate "$arg" --messages $((arg * CLUSTER_SECS)) --window $((arg / 5 > 64 ? arg / 5 : 64))
        --subscriber-url "$urls" --warmup-seconds 0.5)
      ;;
    fault)
      local cmd
      if [ "$arg" = pubsub ]; then
        cmd="redis-cli -p $REDIS_PORT CLIENT KILL TYPE pubsub"
      else
        printf -v cmd '%q ' "${REDIS_ARGS[@]}"
        cmd="redis-cli -p $REDIS_PORT SHUTDOWN NOSAVE >/dev/null 2>&1; sleep 1; $cmd"
      fi
      args+=(--subscribers 12 --rate 1000 --messages $((1000 * FAULT_SECS)) --window 200 --subscriber-url "$urls"
        --fault-at 2 --fault-cmd "$cmd" --fault-window 3 --warmup-seconds 0.5)
      ;;
    fanout)
      args+=(--subscribers "$CFAN_N" --rate "$CFAN_RATE" --messages "$CFAN_MSGS" --warmup-seconds 0.5)
      [ "$nodes" = 1 ] || args+=(--subscriber-url "$urls")
      ;;
  esac
  drive "$server" 300 "$out" "${args[@]}"
  local gone=()
  for i in "${!EXTRA_PIDS[@]}"; do
    kill -0 "${EXTRA_PIDS[$i]}" 2>/dev/null || gone+=(error "node $((i + 2)) is gone")
  done
  [ -n "$(redis_pid)" ] || gone+=(error "redis-server is gone")
  JSON="$(with_fields "$JSON" nodes "$nodes" "${gone[@]}")"
  record "$JSON"
  stop_server
  stop_redis
  summary "$server" "$out"
}

# Did SERVER's CASE succeed in this run? With "kept-up": and did its paced fanout keep up
# (deliveries/s at least 90 % of the target)?
run_ok() { # SERVER CASE [kept-up]
  [ -f "$RAW" ] || return 1
  python3 - "$RAW" "$2" "$1" "$RUN" "${3:-}" <<'EOF'
import json, sys
raw, case, server, run, kept_up = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
for line in open(raw):
    r = json.loads(line)
    if r.get("case") == case and r.get("server") == server and r.get("run") == run:
        ok = bool(r.get("ok"))
        if ok and kept_up:
            ok = r.get("deliveries_per_sec", 0) >= 0.9 * r.get("rate", 0) * r.get("subscribers", 0)
        sys.exit(0 if ok else 1)
sys.exit(1)
EOF
}

kept_up() { run_ok "$1" "$2" kept-up; }

# No server: what the one `send` a delivery needs costs on this machine (loopback runs
# the receiver's TCP path inside it), the floor for fanout CPU per delivery. The floor
# holds both ends of every connection in one process, two descriptors each, so under
# this machine's open-file limit it may use a few fewer sockets than the fanout it is
# the floor for (9,950 for 10,000 under a limit of 20,000); it says so.
run_floor() {
  local n="$1" msgs="$2" rate="$3"
  local fit=$(( ($(ulimit -Hn) - 100) / 2 ))
  local sockets=$(( n < fit ? n : fit ))
  CASE="floor-$n-paced"
  log "run $RUN: $CASE (bare writes to $sockets loopback sockets, $msgs messages at $rate/s, no server)"
  local out="$OUTDIR/$CASE-$RUN.txt"
  timeout --kill-after=10 720 "${PIN_LOAD[@]}" "$LOADGEN" floor --sockets "$sockets" --rate "$rate" \
    --messages "$msgs" --writer-cpu "$SERVER_CPU" --label floor >"$out" 2>&1 || true
  local json
  json="$(grep '^{' "$out" | tail -1 || true)"
  [ -n "$json" ] || json='{"scenario":"floor","server":"floor","ok":false,"errors":["no JSON line from the load generator"]}'
  record "$json"
  grep -v '^{' "$out" | tail -n +2 | sed "s/^/  [floor] /" || true
}

# ------------------------------------------------------------------ the scenarios
if [ "$QUICK" = 1 ]; then
  IDLE_N=2000
  FAN_S=200; FAN_S_MSGS=200
  FAN_L=1000; FAN_L_MSGS=100
  CHAT_PAIRS=10; CHAT_SECS=5; CHAT_RATE=1000
  SOAK_N=500; SOAK_SECS=30
  STORM_N=1000; STORM_ROOMS=10; STORM_HISTORY=20
  CROSS_SECS=2
  CLUSTER_SECS=2; FAULT_SECS=6
  CFAN_N=300; CFAN_MSGS=100
  MODE="quick"
else
  IDLE_N=19000
  FAN_S=1000; FAN_S_MSGS=500
  FAN_L=10000; FAN_L_MSGS=50
  CHAT_PAIRS=50; CHAT_SECS=20; CHAT_RATE=5000
  SOAK_N=5000; SOAK_SECS=120
  STORM_N=10000; STORM_ROOMS=100; STORM_HISTORY=50
  CROSS_SECS=10
  CLUSTER_SECS=10; FAULT_SECS=10
  CFAN_N=1000; CFAN_MSGS=500
  MODE="full"
fi
# Paced fanout: 50,000 deliveries/s in total, i.e. 50000/N messages/s.
FAN_S_RATE=$(python3 -c "print(50000/$FAN_S)")
FAN_L_RATE=$(python3 -c "print(50000/$FAN_L)")
CFAN_RATE=50 # cluster-fanout: 50 messages/s to 1,000 subscribers, 50,000 deliveries/s

log "$MODE comparison, $RUNS run(s) of each scenario per server: $SERVERS; $PINNING${ONLY:+; only: $ONLY}"
log "raw results: $RAW"
if [[ " $SERVERS " == *" postgres "* ]]; then
  start_pg
  command -v psql >/dev/null || die "the postgres server needs psql (apt-get install postgresql-client)"
elif [[ " $ONLY " == *" cross"* || " $ONLY " == *" cluster"* ]]; then
  log "warning: the cross and cluster cases run for the postgres server only (--servers \"... postgres\")"
fi
for RUN in $(seq "$RUNS"); do
  # Servers take turns going first: a server that follows another on the same machine
  # pays for what the first left behind (thousands of sockets in TIME_WAIT), measured
  # as up to 15 % fewer connections/s in the idle case.
  ORDER="$SERVERS"
  [ $((RUN % 2)) = 0 ] && ORDER="$(printf '%s\n' $SERVERS | tac | tr '\n' ' ')"
  CASE="idle-$IDLE_N"
  if want "$CASE"; then
    log "run $RUN: $CASE"
    for s in $ORDER; do run_case "$s" 600 idle --connections "$IDLE_N"; done
  fi

  want "floor-$FAN_S-paced" && run_floor "$FAN_S" "$FAN_S_MSGS" "$FAN_S_RATE"
  for pace in paced flat; do
    rate=$FAN_S_RATE
    [ "$pace" = flat ] && rate=0
    CASE="fanout-$FAN_S-$pace"
    want "$CASE" || continue
    log "run $RUN: $CASE ($FAN_S subscribers, $FAN_S_MSGS messages at $([ "$rate" = 0 ] && echo 'full speed' || echo "$rate/s"))"
    for s in $ORDER; do run_case "$s" 600 fanout --subscribers "$FAN_S" --rate "$rate" --messages "$FAN_S_MSGS"; done
  done

  want "floor-$FAN_L-paced" && run_floor "$FAN_L" "$FAN_L_MSGS" "$FAN_L_RATE"
  for pace in paced flat; do
    rate=$FAN_L_RATE
    [ "$pace" = flat ] && rate=0
    CASE="fanout-$FAN_L-$pace"
    want "$CASE" || continue
    log "run $RUN: $CASE ($FAN_L subscribers, $FAN_L_MSGS messages at $([ "$rate" = 0 ] && echo 'full speed' || echo "$rate/s"))"
    for s in $ORDER; do
      if [ "$s" = django ] && ! kept_up django "fanout-$FAN_S-paced"; then
        echo "  [django] not run: it did not settle at $FAN_S subscribers (fanout-$FAN_S-paced, or that case was not run) in this run"
        record "{\"scenario\":\"fanout\",\"server\":\"django\",\"ok\":false,\"skipped\":true,\"errors\":[\"not run: did not keep up with fanout-$FAN_S-paced in this run (or it was not run)\"]}"
        continue
      fi
      run_case "$s" 600 fanout --subscribers "$FAN_L" --rate "$rate" --messages "$FAN_L_MSGS"
    done
  done

  CASE="chat-$CHAT_PAIRS"
  if want "$CASE"; then
    log "run $RUN: $CASE ($CHAT_PAIRS pairs, closed loop, $CHAT_SECS s)"
    for s in $ORDER; do run_case "$s" $((CHAT_SECS + 120)) chat --pairs "$CHAT_PAIRS" --rate 0 --seconds "$CHAT_SECS"; done
  fi

  # The same pairs at a fixed offered load, below what Node sustains: latency, not queueing.
  CASE="chat-$CHAT_PAIRS-paced"
  if want "$CASE"; then
    log "run $RUN: $CASE ($CHAT_PAIRS pairs, $CHAT_RATE messages/s in total, $CHAT_SECS s)"
    for s in $ORDER; do run_case "$s" $((CHAT_SECS + 120)) chat --pairs "$CHAT_PAIRS" --rate "$CHAT_RATE" --seconds "$CHAT_SECS"; done
  fi

  CASE="soak-$SOAK_N"
  if [ "$SOAK" = 1 ] && want "$CASE"; then
    log "run $RUN: $CASE ($SOAK_N churning connections, $SOAK_SECS s)"
    for s in $ORDER; do run_case "$s" $((SOAK_SECS + 120)) soak --connections "$SOAK_N" --seconds "$SOAK_SECS"; done
  fi

  # Reconnect storm after a deploy: seed history, restart the server on its database,
  # everyone reconnects at once. Django only when it held the idle case's connections
  # (at least as many) in this run, as with its 10000-subscriber fanout.
  CASE="storm-$STORM_N"
  if want "$CASE"; then
    log "run $RUN: $CASE ($STORM_N clients in $STORM_ROOMS rooms, $STORM_HISTORY messages of history each; the server restarts on its database, then all reconnect at once)"
    for s in $ORDER; do
      if [ "$s" = django ] && ! run_ok django "idle-$IDLE_N"; then
        echo "  [django] not run: it did not hold $IDLE_N connections (idle-$IDLE_N, or that case was not run) in this run"
        record "{\"scenario\":\"storm\",\"server\":\"django\",\"ok\":false,\"skipped\":true,\"errors\":[\"not run: did not hold idle-$IDLE_N in this run (or it was not run)\"]}"
        continue
      fi
      run_storm "$s" "$STORM_N" "$STORM_ROOMS" "$STORM_HISTORY"
    done
  fi

  # Cross-node delivery: two switchboard nodes on one PostgreSQL database, the sender on
  # one, 10 subscribers on the other ("postgres" only).
  for rate in 1000 5000; do
    CASE="cross-$rate"
    want "$CASE" && [[ " $SERVERS " == *" postgres "* ]] || continue
    log "run $RUN: $CASE (node A: one sender, $((rate * CROSS_SECS)) messages at $rate/s; node B: 10 subscribers; one PostgreSQL database, node B polls every 250 ms)"
    run_cross "$rate" $((rate * CROSS_SECS))
  done

  # Three nodes with a Redis bus ("postgres" only): cross-node latency, the same during
  # Redis faults, and one room's fanout over three nodes against one (alternating which
  # goes first, as the servers do).
  [[ " $SERVERS " == *" postgres "* ]] || continue
  for rate in 1000 5000; do
    CASE="cluster-$rate"
    want "$CASE" || continue
    log "run $RUN: $CASE (three nodes, Redis bus; one sender on node 1, $((rate * CLUSTER_SECS)) messages at $rate/s; 12 subscribers, 4 on each node)"
    run_cluster cross "$rate"
  done
  for fault in pubsub restart; do
    CASE="cluster-fault-$fault"
    want "$CASE" || continue
    log "run $RUN: $CASE (as cluster-1000 for $FAULT_SECS s; at 2 s: $([ "$fault" = pubsub ] && echo 'CLIENT KILL TYPE pubsub' || echo 'Redis SHUTDOWN NOSAVE, 1 s, started again'))"
    run_cluster fault "$fault"
  done
  order="3 1"
  [ $((RUN % 2)) = 0 ] && order="1 3"
  for nodes in $order; do
    CASE="cluster-fanout-$nodes"
    want "$CASE" || continue
    log "run $RUN: $CASE ($CFAN_N subscribers in one room on $nodes node(s), $CFAN_MSGS messages at $CFAN_RATE/s; Redis bus)"
    run_cluster fanout "$nodes"
  done
done

[ -s "$RAW" ] || die "no case ran (--only $ONLY matched none)"

# ------------------------------------------------------------------ the table
python3 - "$RAW" "$RESULTS/latest.md" "$RESULTS/$STAMP.md" "$MODE" "$RUNS" "$PINNING" "$SERVERS" <<'EOF'
import json, statistics, sys, platform, os
raw, latest, stamped, mode, runs, pinning, servers = sys.argv[1:8]
servers = servers.split()
rows = [json.loads(l) for l in open(raw) if l.strip()]

FIGURES = {
    "idle": [("connections_per_sec", "connections/s", "↑"), ("rss_per_conn_kib", "RSS per connection (KiB)", "↓"),
             ("cpu_us_per_conn", "CPU per connection (µs)", "↓"), ("rss_settled_kib", "RSS with all open (KiB)", "↓"),
             ("listen_overflows", "accept-queue overflows", "↓")],
    "fanout": [("deliveries_per_sec", "deliveries/s", "↑"), ("latency_p50_ms", "latency p50 (ms)", "↓"),
               ("latency_p99_ms", "latency p99 (ms)", "↓"), ("latency_max_ms", "latency max (ms)", "↓"),
               ("cpu_us_per_delivery", "CPU per delivery (µs)", "↓")],
    "chat": [("messages_per_sec", "messages/s", "↑"), ("rtt_p50_ms", "round trip p50 (ms)", "↓"),
             ("rtt_p99_ms", "round trip p99 (ms)", "↓"), ("rtt_max_ms", "round trip max (ms)", "↓"),
             ("cpu_us_per_message", "CPU per message (µs)", "↓"), ("messages_per_cpu_sec", "messages per CPU second", "↑")],
    "floor": [("cpu_us_per_write", "CPU per write (µs)", "↓"), ("burst_p50_ms", "one message's writes, p50 (ms)", "↓"),
              ("burst_p99_ms", "one message's writes, p99 (ms)", "↓")],
    "storm": [("storm_seconds", "time until all are back (s)", "↓"),
              ("cpu_us_per_reconnect", "server CPU per reconnect (µs)", "↓"),
              ("reconnects_per_sec", "reconnects/s", "↑"), ("storm_cpu_seconds", "server CPU in that time (s)", "↓"),
              ("rss_after_kib", "RSS with all back (KiB)", "↓"), ("connection_failures", "connection failures", "↓")],
    "soak": [("rss_first_kib", "RSS first sample (KiB)", "↓"), ("rss_last_kib", "RSS last sample (KiB)", "↓"),
             ("fds_last", "open fds last sample", "↓"), ("fds_after_close", "open fds after closing all", "↓"),
             ("db_bytes_last", "DB + WAL bytes at the end", "↓"), ("messages_lost", "messages lost", "↓")],
    # Two nodes on one PostgreSQL database (cross-*): the fanout's figures, with each
    # process's CPU over the whole case per message sent.
    "cross": [("deliveries_per_sec", "deliveries/s", "↑"), ("latency_p50_ms", "latency p50 (ms)", "↓"),
              ("latency_p99_ms", "latency p99 (ms)", "↓"), ("latency_max_ms", "latency max (ms)", "↓"),
              ("node_a_cpu_us_per_message", "node A (sender's) CPU per message (µs)", "↓"),
              ("node_b_cpu_us_per_message", "node B (subscribers') CPU per message (µs)", "↓")],
}
# The "postgres" server: PostgreSQL's own CPU (compare.sh's pg_cpu_us) over the whole case,
# connecting included (storm: the reconnect phase), and per unit of work where that is
# most of the case (not fanout: there it is mostly the subscribers' opening reads).
PG_FIGURE = {
    "idle": ("pg_cpu_us_per_conn", "PostgreSQL CPU per connection (µs)", "connections_established"),
    "cross": ("pg_cpu_us_per_message", "PostgreSQL CPU per message (µs)", "messages_sent"),
    "chat": ("pg_cpu_us_per_message", "PostgreSQL CPU per message (µs)", "messages"),
    "storm": ("pg_cpu_us_per_reconnect", "PostgreSQL CPU per reconnect (µs)", "clients_back"),
}
def kind_of(r):
    return "cross" if str(r.get("case", "")).startswith("cross-") else r.get("scenario", "?")
for r in rows:
    if not isinstance(r.get("pg_cpu_us"), int):
        continue
    r["pg_cpu_ms"] = r["pg_cpu_us"] / 1000
    pg = PG_FIGURE.get(kind_of(r))
    n = r.get(pg[2]) if pg else None
    if pg and isinstance(n, int) and n > 0:
        r[pg[0]] = r["pg_cpu_us"] / n
    sent = r.get("messages_sent")
    for node in ("node_a", "node_b"):
        if isinstance(r.get(f"{node}_cpu_us"), int) and isinstance(sent, int) and sent > 0:
            r[f"{node}_cpu_us_per_message"] = r[f"{node}_cpu_us"] / sent

def fmt(v):
    if v is None:
        return "n/a"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"

cases = []
for r in rows:
    if r["case"] not in cases:
        cases.append(r["case"])

# The cluster cases' other_cpu_pct counts their other nodes, Redis and PostgreSQL as
# "other": their own share, apart from those, is other_cpu_pct_publish.
others = [r.get("other_cpu_pct_publish", r.get("other_cpu_pct")) for r in rows]
others = [o for o in others if isinstance(o, (int, float))]
load_note = (f" Other processes used {min(others):.0f}–{max(others):.0f} % of the machine's CPU during the runs"
             + (" — expect noise." if max(others) > 10 else ".")) if others else ""
pg_note = (" \"postgres\" is switchboard on PostgreSQL (on this machine, fsync and synchronous_commit on, "
           "not pinned); the server's CPU and RSS are switchboard's only, PostgreSQL's CPU has its own row."
           if "postgres" in servers else "")
out = [f"# switchboard vs peers ({mode}, {runs} run(s) per server)", "",
       f"{platform.node()}: {os.cpu_count()} CPUs; {pinning}. Medians over the runs that succeeded; "
       "\"n/a\": no successful run (see the notes). Ratio = switchboard ÷ peer; "
       "↑ higher is better, ↓ lower is better." + pg_note + load_note, ""]
notes = []
peers = [s for s in servers if s != "switchboard"]
def median_of(case, server, key):
    vals = [r[key] for r in rows if r["case"] == case and r.get("server") == server and r.get("ok")
            and isinstance(r.get(key), (int, float))]
    return statistics.median(vals) if vals else None

# The cluster cases (three nodes with a Redis bus): figures derived from each JSON line.
for r in rows:
    if not str(r.get("case", "")).startswith("cluster-"):
        continue
    for g in r.get("groups") or []:
        if not g.get("remote"):
            for q in ("p50", "p99", "max"):
                r[f"local_latency_{q}_ms"] = g.get(f"latency_{q}_ms")
    if isinstance(r.get("remote_latency_p99_ms"), (int, float)) and r.get("local_latency_p99_ms"):
        r["remote_over_local_p99"] = r["remote_latency_p99_ms"] / r["local_latency_p99_ms"]
    if isinstance(r.get("steady_remote_latency_p99_ms"), (int, float)) and r.get("steady_local_latency_p99_ms"):
        r["steady_remote_over_local_p99"] = r["steady_remote_latency_p99_ms"] / r["steady_local_latency_p99_ms"]
    if isinstance(r.get("after_fault_latency_p99_ms"), (int, float)) and r.get("before_fault_latency_p99_ms"):
        r["after_over_before_p99"] = r["after_fault_latency_p99_ms"] / r["before_fault_latency_p99_ms"]
    by, sent, dl = r.get("cpu_publish_us_by") or {}, r.get("messages_sent") or 0, r.get("deliveries") or 0
    nodes = [v for k, v in by.items() if k.startswith("node")]
    if nodes and all(isinstance(v, int) for v in nodes):
        by = dict(by, nodes=sum(nodes))
    for k, v in by.items():
        if isinstance(v, int) and sent:
            r[f"cpu_{k}_us_per_message"] = v / sent
        if isinstance(v, int) and dl:
            r[f"cpu_{k}_us_per_delivery"] = v / dl

def med_rows(rs, key):
    vals = [r[key] for r in rs if r.get("ok") and isinstance(r.get(key), (int, float))]
    return statistics.median(vals) if vals else None

def spread(rs, key):
    vals = [r[key] for r in rs if r.get("ok") and isinstance(r.get(key), (int, float))]
    return ", ".join(fmt(v) for v in vals) if vals else "n/a"

def cluster_rows(rs, figures):
    lines = ["| figure | median | the runs |", "|---|---|---|",
             f"| successful runs | {sum(1 for r in rs if r.get('ok'))}/{len(rs)} | |"]
    for key, label in figures:
        lines.append(f"| {label} | {fmt(med_rows(rs, key))} | {spread(rs, key)} |")
    return lines

CLUSTER_CPU = [("all_cpu_us_per_message", "CPU per message, all processes (µs) ↓")] + [
    (f"cpu_{k}_us_per_message", f"… {label} (µs)") for k, label in
    (("node1", "node 1 (sender's)"), ("node2", "node 2"), ("node3", "node 3"), ("redis", "redis-server"),
     ("postgres", "PostgreSQL (postmaster and backends)"))]
done_fanout = False
for case in cases:
    rs = [r for r in rows if r["case"] == case]
    scen = rs[0].get("scenario", "?")
    if case.startswith("cluster-fanout-"):
        if done_fanout:
            continue
        done_fanout = True
        r3 = [r for r in rows if r["case"] == "cluster-fanout-3"]
        r1 = [r for r in rows if r["case"] == "cluster-fanout-1"]
        r0 = next((r for r in r3 + r1 if "rate" in r), {})
        out += [f"## cluster-fanout: one room, {r0.get('subscribers', '?')} subscribers spread over three nodes "
                f"(cluster-fanout-3) or on one (cluster-fanout-1), one sender on node 1 at {fmt(r0.get('rate'))} "
                "messages/s; PostgreSQL and a Redis bus in both", "",
                "| figure | three nodes | one node | three ÷ one |", "|---|---|---|---|",
                f"| successful runs | {sum(1 for r in r3 if r.get('ok'))}/{len(r3)} | "
                f"{sum(1 for r in r1 if r.get('ok'))}/{len(r1)} | |"]
        for key, label in [("deliveries_per_sec", "deliveries/s ↑"), ("latency_p50_ms", "latency p50 (ms) ↓"),
                           ("latency_p99_ms", "latency p99 (ms) ↓"), ("latency_max_ms", "latency max (ms) ↓"),
                           ("steady_all_latency_p99_ms", "latency p99 after the first 0.5 s (ms) ↓"),
                           ("steady_all_latency_max_ms", "latency max after the first 0.5 s (ms) ↓"),
                           ("warmup_all_latency_p99_ms", "latency p99 in the first 0.5 s (ms)"),
                           ("all_cpu_us_per_delivery", "CPU per delivery, all processes (µs) ↓"),
                           ("cpu_nodes_us_per_delivery", "… the switchboard nodes (µs)"),
                           ("cpu_redis_us_per_delivery", "… redis-server (µs)"),
                           ("cpu_postgres_us_per_delivery", "… PostgreSQL (µs)"),
                           ("other_cpu_pct_publish", "other processes' CPU while publishing (% of the machine)")]:
            a, b = med_rows(r3, key), med_rows(r1, key)
            ratio = "n/a" if a is None or b is None or b == 0 else f"{a / b:.3g}×"
            out.append(f"| {label} | {fmt(a)} | {fmt(b)} | {ratio} |")
        out.append("")
        for r in r3 + r1:
            if not r.get("ok"):
                notes.append(f"- {r['case']}, run {r.get('run')}: {(r.get('errors') or ['failed'])[0][:300]}")
        continue
    if case.startswith("cluster-fault-"):
        r0 = next((r for r in rs if "fault_cmd" in r), {})
        what = "every node's Redis subscription cut (`CLIENT KILL TYPE pubsub`)" if case.endswith("pubsub") \
            else "Redis stopped (`SHUTDOWN NOSAVE`) and started again 1 s later"
        out += [f"## {case}: three nodes at {fmt(r0.get('rate'))} messages/s as in cluster-1000; "
                f"{fmt(r0.get('fault_at_s'))} s after the first send, {what}; cross-node latency (nodes 2 and 3) "
                f"by send time: before (from 0.5 s after the first send until 0.5 s before the fault), after (0.5 s before to "
                f"{fmt(r0.get('fault_window_s'))} s after), later", ""]
        out += cluster_rows(rs, [
            ("before_fault_latency_p50_ms", "before: p50 (ms)"), ("before_fault_latency_p99_ms", "before: p99 (ms)"),
            ("before_fault_latency_max_ms", "before: max (ms)"),
            ("after_fault_latency_p50_ms", "after: p50 (ms)"), ("after_fault_latency_p99_ms", "after: p99 (ms)"),
            ("after_fault_latency_max_ms", "after: max (ms)"),
            ("later_latency_p50_ms", "later: p50 (ms)"), ("later_latency_p99_ms", "later: p99 (ms)"),
            ("later_latency_max_ms", "later: max (ms)"),
            ("after_over_before_p99", "after p99 ÷ before p99"),
            ("degraded_seconds", f"degraded: until a whole second of {fmt(r0.get('timeline_ms'))} ms buckets had p99 under max(20 ms, 2 × before p99) (s after the fault)"),
            ("degraded_ms", "… that bound (ms)"),
            ("deliveries_per_sec", "deliveries/s"),
            ("other_cpu_pct_publish", "other processes' CPU while publishing (% of the machine)")])
        out.append("")
        for r in rs:
            if not r.get("ok"):
                notes.append(f"- {case}, run {r.get('run')}: {(r.get('errors') or ['failed'])[0][:300]}")
        continue
    if case.startswith("cluster-"):
        r0 = next((r for r in rs if "rate" in r), {})
        out += [f"## {case}: three nodes on one PostgreSQL database with a Redis bus, one sender on node 1 at "
                f"{fmt(r0.get('rate'))} messages/s, {r0.get('subscribers', '?')} subscribers split over nodes 2, 3 and 1", ""]
        out += cluster_rows(rs, [
            ("deliveries_per_sec", "deliveries/s ↑"),
            ("steady_remote_latency_p50_ms", "cross-node (nodes 2 and 3) latency p50, after the first 0.5 s (ms) ↓"),
            ("steady_remote_latency_p99_ms", "cross-node latency p99, after the first 0.5 s (ms) ↓"),
            ("steady_remote_latency_max_ms", "cross-node latency max, after the first 0.5 s (ms) ↓"),
            ("steady_local_latency_p50_ms", "node 1 (the sender's) latency p50, after the first 0.5 s (ms)"),
            ("steady_local_latency_p99_ms", "node 1 latency p99, after the first 0.5 s (ms)"),
            ("steady_remote_over_local_p99", "cross-node p99 ÷ node 1 p99, after the first 0.5 s"),
            ("remote_latency_p99_ms", "cross-node latency p99, all sends (ms) ↓"),
            ("remote_latency_max_ms", "cross-node latency max, all sends (ms) ↓"),
            ("warmup_remote_latency_p99_ms", "cross-node latency p99, the first 0.5 s (ms)"),
            ("warmup_local_latency_p99_ms", "node 1 latency p99, the first 0.5 s (ms)")] + CLUSTER_CPU + [
            ("other_cpu_pct_publish", "other processes' CPU while publishing (% of the machine)")])
        if r0.get("rate") == 5000:
            goal = []
            for key, what in (("remote_latency_p99_ms", "all sends"), ("steady_remote_latency_p99_ms", "after the first 0.5 s")):
                p99s = [r[key] for r in rs if r.get("ok") and isinstance(r.get(key), (int, float))]
                if p99s:
                    m = statistics.median(p99s)
                    goal.append(f"{what}: {'met' if m < 15 else 'not met'} (median {fmt(m)} ms; under 15 ms in "
                                f"{sum(1 for v in p99s if v < 15)} of {len(p99s)} runs)")
            if goal:
                out += ["", "Goal, cross-node p99 < 15 ms at 5,000 messages/s: " + "; ".join(goal) + "."]
        out.append("")
        for r in rs:
            if not r.get("ok"):
                notes.append(f"- {case}, run {r.get('run')}: {(r.get('errors') or ['failed'])[0][:300]}")
        continue
    if scen == "floor":
        fan = case.replace("floor-", "fanout-", 1)
        socks = median_of(case, "floor", "sockets")
        out += [f"## {case}: no server, bare writes to {fmt(socks)} sockets (the floor for {fan})", "",
                "| figure | bare writes | switchboard's " + fan + " ÷ bare writes |", "|---|---|---|"]
        ok = sum(1 for r in rs if r.get("ok"))
        out.append(f"| successful runs | {ok}/{len(rs)} | |")
        pairs = {"cpu_us_per_write": "cpu_us_per_delivery", "burst_p50_ms": "latency_p50_ms", "burst_p99_ms": "latency_p99_ms"}
        for key, label, better in FIGURES["floor"]:
            f = median_of(case, "floor", key)
            sb = median_of(fan, "switchboard", pairs[key]) if "switchboard" in servers else None
            ratio = "n/a" if f is None or sb is None or f == 0 else f"{sb / f:.3g}× ({fmt(sb)})"
            out.append(f"| {label} {better} | {fmt(f)} | {ratio} |")
        out.append("")
        for r in rs:
            if not r.get("ok"):
                notes.append(f"- {case}, run {r.get('run')}: {(r.get('errors') or ['failed'])[0][:300]}")
        continue
    kind = kind_of(rs[0])
    if kind == "cross":
        r0 = next((r for r in rs if "rate" in r), {})
        out.append(f"## {case}: two switchboard nodes on one PostgreSQL database, one sender on node A at "
                   f"{fmt(r0.get('rate'))} messages/s, {r0.get('subscribers', '?')} subscribers on node B "
                   "(delivered by its poll)")
    elif scen == "storm":
        r0 = next((r for r in rs if "rooms" in r), {})
        n_ = lambda k: f"{r0[k]:,}" if isinstance(r0.get(k), int) else "?"
        out.append(f"## {case}: {n_('connections')} clients in {n_('rooms')} rooms, {n_('history')} messages "
                   "of history each, reconnect at once to the restarted server")
    else:
        out.append(f"## {case}")
    out.append("")
    # The servers this case ran for (cross: "postgres" only).
    cs = [s for s in servers if any(r.get("server") == s for r in rs)]
    cpeers = [p for p in peers if p in cs]
    ok_runs = {s: sum(1 for r in rs if r.get("server") == s and r.get("ok")) for s in cs}
    total = {s: sum(1 for r in rs if r.get("server") == s) for s in cs}
    head = ["figure"] + cs + ([f"switchboard/{p}" for p in cpeers] if "switchboard" in cs else [])
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "---|" * len(head))
    out.append("| successful runs | " + " | ".join(f"{ok_runs[s]}/{total[s]}" for s in cs)
               + (" | " * len(cpeers) if "switchboard" in cs else "") + " |")
    figures = list(FIGURES.get(kind, []))
    if any("pg_cpu_ms" in r for r in rs):
        figures.append(("pg_cpu_ms", "PostgreSQL CPU in the whole case (ms)", "↓"))
    if kind in PG_FIGURE and any(PG_FIGURE[kind][0] in r for r in rs):
        figures.append((PG_FIGURE[kind][0], PG_FIGURE[kind][1], "↓"))
    for key, label, better in figures:
        med = {}
        for s in cs:
            vals = [r[key] for r in rs if r.get("server") == s and r.get("ok") and isinstance(r.get(key), (int, float))]
            med[s] = statistics.median(vals) if vals else None
        cells = [f"{label} {better}"] + [fmt(med[s]) for s in cs]
        if "switchboard" in cs:
            for p in cpeers:
                a, b = med["switchboard"], med[p]
                cells.append("n/a" if a is None or b is None or b == 0 else f"{a / b:.3g}×")
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    for r in rs:
        if not r.get("ok"):
            errs = r.get("errors") or ["failed"]
            notes.append(f"- {case}, {r.get('server')}, run {r.get('run')}: {errs[0][:300]}")
if notes:
    out += ["## Notes: failed or skipped runs", ""] + notes + [""]
out.append(f"Raw JSON lines: `{os.path.relpath(raw, os.path.dirname(os.path.dirname(latest)))}`")
text = "\n".join(out) + "\n"
for path in (latest, stamped):
    with open(path, "w") as f:
        f.write(text)
print(text)
EOF
log "table written to $RESULTS/latest.md"
