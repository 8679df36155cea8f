#!/usr/bin/env bash
# A throwaway PostgreSQL for benchmarks, from Debian's `postgresql` package
# (/usr/lib/postgresql/<version>/bin; installed with apt-get when missing, as .ci/test does).
#
#   benches/pg-server.sh start DIR PORT   # a new cluster in DIR, listening on 127.0.0.1:PORT;
#                                         # prints the admin URL postgres://postgres@127.0.0.1:PORT/postgres
#   benches/pg-server.sh stop DIR         # pg_ctl stop -m fast, then removes DIR
#
# A benchmark of durable commits: fsync and synchronous_commit are left ON (PostgreSQL's
# defaults), so a message switchboard confirmed is on disk, as in production; unlike the
# tests' server (tests/util/pg.rs), which turns both off. Trust authentication on loopback
# only, max_connections 200 (each switchboard node holds a few). Run as the `postgres` user
# when started by root (initdb refuses root): DIR is given to that user.
# Not pinned to a CPU: compare.sh pins the server to CPU 0 and the load generator to CPU 1,
# PostgreSQL's processes run wherever the kernel puts them.
set -euo pipefail

die() { echo "pg-server.sh: $*" >&2; exit 1; }
usage() { echo "usage: benches/pg-server.sh start DIR PORT | stop DIR" >&2; exit 2; }

# Written into DIR at start: `stop` removes only a directory that holds it.
MARK=".switchboard-bench-pg"

bin_dir() {
  local newest
  newest="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
  [ -n "$newest" ] && [ -x "$newest/initdb" ] || return 1
  echo "$newest"
}

# as_pg CMD...: runs CMD as the server's user (`postgres` when we are root).
as_pg() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

start() {
  local dir="$1" port="$2"
  [[ "$port" =~ ^[0-9]+$ ]] || die "PORT must be a number (got $port)"
  local bin
  if ! bin="$(bin_dir)"; then
    [ "$(id -u)" = 0 ] || die "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin (apt-get install postgresql)"
    echo "pg-server.sh: installing Debian's postgresql" >&2
    export DEBIAN_FRONTEND=noninteractive
    timeout 300 apt-get update -qq >&2
    timeout 600 apt-get install -y -qq --no-install-recommends postgresql postgresql-client >/dev/null
    bin="$(bin_dir)" || die "apt-get installed no /usr/lib/postgresql/*/bin/initdb"
  fi
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  [ -z "$(ls -A "$dir")" ] || die "$dir is not empty"
  touch "$dir/$MARK"
  if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$dir"; fi
  # --no-sync: only initdb's own files; the server's commits are fsynced (below).
  as_pg "$bin/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
  # fsync and synchronous_commit: the defaults (on), stated so that nobody wonders.
  local opts="-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=on -c synchronous_commit=on"
  if ! as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -o "$opts" -w -t 60 start >/dev/null; then
    tail -n 20 "$dir/log" >&2 || true
    die "PostgreSQL did not start on 127.0.0.1:$port (log: $dir/log)"
  fi
  echo "postgres://postgres@127.0.0.1:$port/postgres"
}

stop() {
  local dir="$1"
  [ -d "$dir" ] || return 0
  [ -e "$dir/$MARK" ] || die "$dir was not made by pg-server.sh start; not touching it"
  local bin
  bin="$(bin_dir)" || die "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin"
  if [ -f "$dir/data/postmaster.pid" ]; then
    as_pg "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null \
      || as_pg "$bin/pg_ctl" -D "$dir/data" -m immediate -w -t 30 stop >/dev/null \
      || die "PostgreSQL in $dir did not stop"
  fi
  rm -rf "$dir"
}

case "${1:-}" in
  start) [ $# = 3 ] || usage; start "$2" "$3" ;;
  stop) [ $# = 2 ] || usage; stop "$2" ;;
  *) usage ;;
esac
