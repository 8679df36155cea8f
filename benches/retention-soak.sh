#!/bin/sh
# The retention soak: one switchboard (release build) on a SQLite file with
# SWITCHBOARD_RETENTION_DAYS set to 20 seconds, four clients chatting 200 messages/s each
# (~400 bytes) in two rooms over loopback for SECS seconds (default 120); prints the
# database file's size, the WAL's, the messages kept and the free pages every 5 s, then
# the retention steps' times (p50, p99, longest) from the server's log. Fails if the file
# keeps growing once the retention has passed twice. Stops by itself.
#
#   benches/retention-soak.sh [secs]
set -eu
secs="${1:-120}"
case "$secs" in
    ''|*[!0-9]*) echo "usage: $0 [secs]" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
SWITCHBOARD_SOAK_SECS="$secs" exec cargo test --release --test retention -- --ignored --exact soak --nocapture
