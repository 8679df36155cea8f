#!/usr/bin/env bash
# Run the Autobahn TestSuite fuzzing client against a WebSocket echo server.
#
# Usage: tests/autobahn/run.sh URL [options]
#
#   URL                 ws:// URL of an echo server (echoes every text and
#                       binary message back unchanged), e.g. ws://127.0.0.1:9001
#   --cases LIST        comma-separated case patterns to run (default: *)
#   --exclude LIST      comma-separated case patterns to skip, replacing the
#                       default 12.*,13.* (permessage-deflate, which the
#                       server does not implement); '' excludes nothing
#   --with-perf         also run 9.* (large messages / many frames, slow);
#                       without it 9.* is always excluded
#   --agent NAME        server name used in the reports (default: switchboard)
#   --timeout SECS      give up on wstest after SECS (default: 1800,
#                       3600 with --with-perf)
#   --wait SECS         wait up to SECS for the server's port to accept TCP
#                       connections before starting (default: 15)
#
# Patterns use Autobahn's syntax: case ids with '*' wildcards (1.*, 5.1*, 7.7.1).
# Reports go to tests/autobahn/reports/ (emptied at the start of every run):
# index.html / index.json from wstest, wstest.log, fuzzingclient.json (the
# generated spec) and summary.md.
#
# Exit status: that of summarize.py (0 all passed, 1 a case failed, 2 no usable
# report), or 2/3 for usage errors / a missing setup / unreachable server, or
# 124 if wstest timed out.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv"
REPORTS="$HERE/reports"

usage() { awk 'NR>1 && /^#/ {sub(/^# ?/, ""); print; next} NR>1 {exit}' "$0"; }
die() { echo "run.sh: $*" >&2; exit 2; }

URL=""
CASES="*"
EXCLUDE="12.*,13.*"
WITH_PERF=0
AGENT="switchboard"
TIMEOUT=""
WAIT=15

while [ $# -gt 0 ]; do
  case "$1" in
    --cases)     [ $# -ge 2 ] || die "--cases needs a value"; CASES="$2"; shift 2 ;;
    --cases=*)   CASES="${1#*=}"; shift ;;
    --exclude)   [ $# -ge 2 ] || die "--exclude needs a value"; EXCLUDE="$2"; shift 2 ;;
    --exclude=*) EXCLUDE="${1#*=}"; shift ;;
    --with-perf) WITH_PERF=1; shift ;;
    --agent)     [ $# -ge 2 ] || die "--agent needs a value"; AGENT="$2"; shift 2 ;;
    --agent=*)   AGENT="${1#*=}"; shift ;;
    --timeout)   [ $# -ge 2 ] || die "--timeout needs a value"; TIMEOUT="$2"; shift 2 ;;
    --timeout=*) TIMEOUT="${1#*=}"; shift ;;
    --wait)      [ $# -ge 2 ] || die "--wait needs a value"; WAIT="$2"; shift 2 ;;
    --wait=*)    WAIT="${1#*=}"; shift ;;
    -h|--help)   usage; exit 0 ;;
    -*)          die "unknown option: $1 (try --help)" ;;
    *)           [ -z "$URL" ] || die "only one URL, got '$URL' and '$1'"; URL="$1"; shift ;;
  esac
done

[ -n "$URL" ] || { usage >&2; exit 2; }
case "$URL" in ws://*|wss://*) ;; *) die "URL must start with ws:// or wss://, got '$URL'" ;; esac
[ -n "$TIMEOUT" ] || { [ "$WITH_PERF" = 1 ] && TIMEOUT=3600 || TIMEOUT=1800; }
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || die "--timeout must be a number of seconds"
[[ "$WAIT" =~ ^[0-9]+$ ]] || die "--wait must be a number of seconds"

if [ ! -x "$VENV/bin/wstest" ]; then
  echo "run.sh: wstest not installed; run tests/autobahn/setup.sh first" >&2
  exit 3
fi

mkdir -p "$REPORTS"
find "$REPORTS" -mindepth 1 -delete
SPEC="$REPORTS/fuzzingclient.json"

# Write the spec with Python so patterns and URL are JSON-escaped properly.
# Also resolve the case list now: wstest would wait forever on an empty one.
NCASES="$("$VENV/bin/python" - "$SPEC" "$URL" "$AGENT" "$REPORTS" "$CASES" "$EXCLUDE" "$WITH_PERF" <<'PY'
import json, sys
spec_path, url, agent, outdir, cases, exclude, with_perf = sys.argv[1:]
split = lambda s: [p.strip() for p in s.split(",") if p.strip()]
excl = split(exclude)
if with_perf != "1" and "9.*" not in excl:
    excl.append("9.*")
spec = {
    "options": {"failByDrop": False},
    "outdir": outdir,
    "servers": [{"agent": agent, "url": url}],
    "cases": split(cases) or ["*"],
    "exclude-cases": excl,
    "exclude-agent-cases": {},
}
with open(spec_path, "w") as f:
    json.dump(spec, f, indent=2)
    f.write("\n")
from autobahntestsuite.case import Cases, CaseSetname, CaseBasename, CaseCategories, CaseSubCategories
from autobahntestsuite.caseset import CaseSet
cs = CaseSet(CaseSetname, CaseBasename, Cases, CaseCategories, CaseSubCategories)
print(len(cs.parseSpecCases(spec)))
PY
)"
[ "$NCASES" -gt 0 ] || die "no case selected by --cases '$CASES' --exclude '$EXCLUDE'$([ "$WITH_PERF" = 1 ] || echo ' (9.* is excluded without --with-perf)')"

# Wait for the server to accept TCP connections (it may have just been started).
"$VENV/bin/python" - "$URL" "$WAIT" <<'PY' || { echo "run.sh: nothing accepts connections at $URL" >&2; exit 3; }
import socket, sys, time, urlparse
u = urlparse.urlparse(sys.argv[1])
port = u.port or (443 if u.scheme == "wss" else 80)
deadline = time.time() + int(sys.argv[2])
while True:
    try:
        socket.create_connection((u.hostname, port), timeout=2).close()
        break
    except socket.error:
        if time.time() >= deadline:
            sys.exit(1)
        time.sleep(0.25)
PY

echo "run.sh: $NCASES Autobahn cases against $URL (spec: $SPEC, timeout ${TIMEOUT}s)"
START=$(date +%s)
set +e
# -u 0: no embedded web server; the fuzzing client needs none.
timeout --signal=TERM --kill-after=10 "$TIMEOUT" \
  "$VENV/bin/wstest" -m fuzzingclient -s "$SPEC" -u 0 > "$REPORTS/wstest.log" 2>&1
WSTEST_RC=$?
set -e
echo "run.sh: wstest finished in $(( $(date +%s) - START ))s with status $WSTEST_RC (log: $REPORTS/wstest.log)"
if [ "$WSTEST_RC" -ne 0 ]; then
  tail -n 20 "$REPORTS/wstest.log" >&2 || true
fi

set +e
python3 "$HERE/summarize.py" "$REPORTS" --markdown "$REPORTS/summary.md"
SUMMARY_RC=$?
set -e

if [ "$WSTEST_RC" -eq 124 ]; then
  echo "run.sh: wstest timed out after ${TIMEOUT}s" >&2
  exit 124
fi
if [ "$WSTEST_RC" -ne 0 ] && [ "$SUMMARY_RC" -eq 0 ]; then
  exit 2
fi
exit "$SUMMARY_RC"
