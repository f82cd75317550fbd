"""How much of a task log is ours: lines from the project's loggers (assoc_lib, assoc_airflow) against the rest.

    python benchmarks/log_lines.py artifacts/dag-test-2017-10-26.log [more logs...] --out log_lines.json

Reads both formats Airflow 3 writes: the console log of ``airflow dags test`` (structlog lines
``<ts> [level] event [logger] k=v``, a multi-line event continuing on the lines below it) and the JSON-lines
task logs the scheduler's workers write under ``$AIRFLOW_HOME/logs`` (one object per line with ``logger``).
A line that belongs to no record (C++ output on stderr, a bare warning) counts as "other". Prints a table
and writes JSON: per file, project / other lines, the share that is ours, and the top foreign sources.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
from pathlib import Path

OURS = ("assoc_lib", "assoc_airflow", "task.stdout")  # print() from our tasks arrives as task.stdout
RECORD = re.compile(r"^\d{4}-\d\d-\d\dT[\d:.]+Z? \[\s*\w+\s*\] ")
LOGGER = re.compile(r" \[([A-Za-z_][\w.]*)\](?: |$)")


def source_of_json(line: str) -> tuple[str, int] | None:
    """(logger, lines the record shows in the UI: its event's own line breaks count) of a JSON record."""
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    if not isinstance(rec, dict):
        return None
    return str(rec.get("logger") or rec.get("chan") or "unknown"), str(rec.get("event", "")).count("\n") + 1


def count(path: Path) -> dict:
    by_source: collections.Counter = collections.Counter()
    pending = 0  # lines of a multi-line record whose logger tag (on its last line) is still to come
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        rec = source_of_json(line) if line.startswith("{") else None
        if rec is not None:
            by_source[rec[0]] += rec[1]
            continue
        starts = bool(RECORD.match(line))
        if not starts and not pending:
            by_source["stderr/other"] += 1  # C++ output, a bare print to stderr: nobody's logger
            continue
        if starts and pending:
            by_source["unknown"] += pending  # a record that never named its logger
            pending = 0
        loggers = LOGGER.findall(line)
        if loggers:
            by_source[loggers[-1]] += pending + 1
            pending = 0
        else:
            pending += 1
    if pending:
        by_source["unknown"] += pending
    ours = sum(n for s, n in by_source.items() if s.startswith(OURS))
    total = sum(by_source.values())
    foreign = collections.Counter({s: n for s, n in by_source.items() if not s.startswith(OURS)})
    return {
        "file": str(path),
        "lines": total,
        "project": ours,
        "other": total - ours,
        "project_share": round(ours / total, 3) if total else None,
        "top_other_sources": dict(foreign.most_common(8)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("logs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    rows = [count(p) for p in args.logs]
    if len(rows) > 1:
        total: collections.Counter = collections.Counter()
        for r in rows:
            total.update(r["top_other_sources"])
        lines, ours = sum(r["lines"] for r in rows), sum(r["project"] for r in rows)
        rows.append(
            {
                "file": f"TOTAL of {len(rows)} logs",
                "lines": lines,
                "project": ours,
                "other": lines - ours,
                "project_share": round(ours / lines, 3) if lines else None,
                "top_other_sources": dict(total.most_common(8)),
            }
        )
    print(f"{'log':60} {'lines':>6} {'ours':>6} {'other':>6} {'ours %':>7}")
    for r in rows:
        print(
            f"{r['file'][-60:]:60} {r['lines']:6d} {r['project']:6d} {r['other']:6d} "
            f"{100 * (r['project_share'] or 0):6.1f}%"
        )
        print("   other sources: " + ", ".join(f"{s} {n}" for s, n in r["top_other_sources"].items()))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
