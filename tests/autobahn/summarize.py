#!/usr/bin/env python3
"""Summarize an Autobahn TestSuite fuzzingclient report.

    summarize.py REPORTDIR [--markdown FILE] [--agent NAME]

Reads REPORTDIR/index.json (written by `wstest -m fuzzingclient`), prints the
number of cases per result ("behavior") and per closing-handshake result
("behaviorClose"), and lists every case whose behavior is not one of
OK, NON-STRICT, INFORMATIONAL, UNIMPLEMENTED.

Exit status: 0 if no case failed, 1 if any case failed, 2 if the report is
missing, unreadable or holds no case at all.

Standard library only; runs on Python 3.6 or newer.
"""

import argparse
import json
import os
import sys

# Every value Autobahn's Case class can report, in the order we print them.
RESULTS = [
    "OK",
    "NON-STRICT",
    "INFORMATIONAL",
    "UNIMPLEMENTED",
    "FAILED",
    "WRONG CODE",
    "UNCLEAN",
    "FAILED BY CLIENT",
]
PASSING = {"OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED"}


def case_key(case_id):
    """Sort '1.1.10' after '1.1.2'."""
    parts = []
    for p in case_id.split("."):
        parts.append((0, int(p), "") if p.isdigit() else (1, 0, p))
    return parts


def load(report_dir):
    path = os.path.join(report_dir, "index.json")
    try:
        with open(path) as f:
            return json.load(f), path
    except FileNotFoundError:
        raise SystemExit2("no report at %s (did wstest run?)" % path)
    except (OSError, ValueError) as exc:
        raise SystemExit2("cannot read %s: %s" % (path, exc))


class SystemExit2(Exception):
    pass


def count(cases, field):
    counts = {}
    for c in cases.values():
        value = c.get(field) or "(none)"
        counts[value] = counts.get(value, 0) + 1
    order = [r for r in RESULTS if r in counts] + sorted(set(counts) - set(RESULTS))
    return [(r, counts[r]) for r in order]


def summarize_agent(agent, cases):
    failed = sorted(
        (cid for cid, c in cases.items() if c.get("behavior") not in PASSING),
        key=case_key)
    return {
        "agent": agent,
        "total": len(cases),
        "behavior": count(cases, "behavior"),
        "behaviorClose": count(cases, "behaviorClose"),
        "failed": [(cid, cases[cid]) for cid in failed],
    }


def table_rows(summary):
    close = dict(summary["behaviorClose"])
    beh = dict(summary["behavior"])
    names = [r for r in RESULTS if r in beh or r in close]
    names += sorted((set(beh) | set(close)) - set(RESULTS))
    return [(n, beh.get(n, 0), close.get(n, 0)) for n in names]


def print_text(summary, out):
    print("Autobahn fuzzingclient results for agent '%s': %d cases"
          % (summary["agent"], summary["total"]), file=out)
    rows = table_rows(summary)
    w = max([len("result")] + [len(r[0]) for r in rows])
    print("  %-*s  %8s  %13s" % (w, "result", "behavior", "behaviorClose"), file=out)
    print("  %s  %s  %s" % ("-" * w, "-" * 8, "-" * 13), file=out)
    for name, b, c in rows:
        print("  %-*s  %8d  %13d" % (w, name, b, c), file=out)
    print("  %-*s  %8d  %13d" % (w, "total", summary["total"], summary["total"]), file=out)
    if summary["failed"]:
        print("\n%d failing case(s) (behavior not OK/NON-STRICT/INFORMATIONAL/UNIMPLEMENTED):"
              % len(summary["failed"]), file=out)
        for cid, c in summary["failed"]:
            print("  %-10s %-16s close=%-16s remoteCloseCode=%s  %s"
                  % (cid, c.get("behavior"), c.get("behaviorClose"),
                     c.get("remoteCloseCode"), c.get("reportfile", "")), file=out)
    else:
        print("\nNo failing cases.", file=out)


def markdown(summaries, report_dir):
    lines = ["# Autobahn TestSuite results", ""]
    for s in summaries:
        verdict = "FAIL" if s["failed"] else "PASS"
        lines += ["## Agent `%s`: %s (%d cases, %d failing)"
                  % (s["agent"], verdict, s["total"], len(s["failed"])), ""]
        lines += ["| result | behavior | behaviorClose |", "| --- | ---: | ---: |"]
        for name, b, c in table_rows(s):
            lines.append("| %s | %d | %d |" % (name, b, c))
        lines.append("| **total** | %d | %d |" % (s["total"], s["total"]))
        lines.append("")
        if s["failed"]:
            lines += ["### Failing cases", "",
                      "| case | behavior | behaviorClose | remoteCloseCode | report |",
                      "| --- | --- | --- | --- | --- |"]
            for cid, c in s["failed"]:
                lines.append("| %s | %s | %s | %s | %s |" % (
                    cid, c.get("behavior"), c.get("behaviorClose"),
                    c.get("remoteCloseCode"), c.get("reportfile", "")))
            lines.append("")
    lines.append("Per-case reports: `%s` (open index.html)." % report_dir)
    lines.append("")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Summarize an Autobahn fuzzingclient report.")
    ap.add_argument("report_dir", metavar="REPORTDIR",
                    help="directory holding index.json")
    ap.add_argument("--markdown", metavar="FILE", help="also write a markdown summary here")
    ap.add_argument("--agent", help="only this agent (default: every agent in the report)")
    args = ap.parse_args(argv)

    try:
        index, path = load(args.report_dir)
    except SystemExit2 as exc:
        print("summarize.py: %s" % exc, file=sys.stderr)
        return 2
    if not isinstance(index, dict):
        print("summarize.py: %s is not an Autobahn index (expected an object)" % path,
              file=sys.stderr)
        return 2
    agents = sorted(index)
    if args.agent is not None:
        agents = [a for a in agents if a == args.agent]
    summaries = [summarize_agent(a, index[a]) for a in agents if index[a]]
    if not summaries:
        print("summarize.py: %s holds no test case%s (server unreachable, or every case "
              "excluded?)" % (path, " for agent %r" % args.agent if args.agent else ""),
              file=sys.stderr)
        return 2

    for i, s in enumerate(summaries):
        if i:
            print()
        print_text(s, sys.stdout)

    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(summaries, args.report_dir))
        print("\nMarkdown summary written to %s" % args.markdown)

    return 1 if any(s["failed"] for s in summaries) else 0


if __name__ == "__main__":
    sys.exit(main())
