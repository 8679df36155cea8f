#!/bin/sh
# The chaos soak (design/cluster.md §6): three switchboard nodes on a throwaway PostgreSQL
# and redis-server under light load; N cycles (default 100) of kill -9 of one node and a
# new process in its place, then one node stopped (SIGSTOP) for twice the node lease and
# continued. Prints cycles, acknowledged messages, lost (must be 0), duplicates and
# presence convergence times; exits non-zero on any loss, duplicate, phantom or gap.
#
#   benches/chaos-soak.sh [cycles]
#
# Needs redis-server and PostgreSQL's server binaries (as tests/cluster.rs does). A cycle
# takes 1-7 s (presence is waited for up to lease + 2 s); 100 cycles take 3-12 minutes.
set -eu
cycles="${1:-100}"
case "$cycles" in
    ''|*[!0-9]*) echo "usage: $0 [cycles]" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
SWITCHBOARD_SOAK_CYCLES="$cycles" exec cargo test --release --test chaos -- --ignored --exact soak --nocapture
