"""Train + evaluate time per day of the main job, from its ``airflow dags test`` logs, against the 5-minute target.

    bash scripts/run_main.sh
    python benchmarks/daily_times.py artifacts/dag-test-*.log --out daily_times.json

Reads the ``[DAG TEST] starting task_id=X`` / ``end task task_id=X`` lines Airflow 3 writes to the console,
and from our own lines the deep stage's split (``deep stage: Ns (search Ns, final training Ns)``) and
whether the day searched or reused an earlier day's search (``tuning: ...``). Prints a table and writes
JSON: per day, every task's seconds, train + evaluate (from the start of train to the end of evaluate), its
ratio to the target (300 s) and the deep stage's figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
from pathlib import Path

TARGET_SECONDS = 300.0
TASK = re.compile(r"^(\S+?)Z? .*\[DAG TEST\] (starting task_id|end task task_id)=(\w+)")
DEEP = re.compile(r"deep stage: (\d+)s \(search (\d+)s, final training (\d+)s\)")
DAY = re.compile(r"dag-test-(\d{4}-\d\d-\d\d)\.log$")


def day_times(text: str) -> dict:
    """Per task seconds, train + evaluate, and the deep stage's split from one ``dags test`` log."""
    starts, ends = {}, {}
    for line in text.splitlines():
        m = TASK.match(line)
        if m:
            when = dt.datetime.fromisoformat(m.group(1))
            (starts if m.group(2).startswith("starting") else ends)[m.group(3)] = when
    tasks = {t: round((ends[t] - starts[t]).total_seconds(), 1) for t in starts if t in ends}
    out: dict = {"tasks": tasks}
    if "train" in starts and "evaluate" in ends:
        both = (ends["evaluate"] - starts["train"]).total_seconds()
        out |= {"train_evaluate_seconds": round(both, 1), "ratio_to_target": round(both / TARGET_SECONDS, 3)}
    deep = DEEP.search(text)
    if deep:
        out["deep_stage"] = dict(zip(("seconds", "search_seconds", "final_seconds"), map(int, deep.groups())))
    out["search"] = "reused" if "tuning: no search; reusing" in text else "searched" if "tuning: " in text else "none"
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("logs", nargs="+", type=Path)
    p.add_argument(
        "--out",
        type=Path,
        default=Path("artifacts/daily_times.json"),
        help="(git-ignored, beside the logs, by default)",
    )
    args = p.parse_args(argv)
    days = {}
    for path in sorted(args.logs):
        m = DAY.search(path.name)
        days[m.group(1) if m else path.name] = day_times(path.read_text(errors="replace"))
    print(f"{'day':<12} {'train':>7} {'evaluate':>9} {'train+eval':>11} {'/ 300 s':>8}  deep stage (search)  search")

    def sec(v) -> str:
        return "-" if v is None else f"{v:.0f}s"

    for day, d in days.items():
        t, deep = d["tasks"], d.get("deep_stage", {})
        ratio = d.get("ratio_to_target")
        print(
            f"{day:<12} {sec(t.get('train')):>7} {sec(t.get('evaluate')):>9} "
            f"{sec(d.get('train_evaluate_seconds')):>11} "
            f"{'-' if ratio is None else f'{ratio:.2f}':>8}  "
            f"{sec(deep.get('seconds')):>5} ({sec(deep.get('search_seconds'))}){'':>8}  {d['search']}"
        )
    payload = {"target_seconds": TARGET_SECONDS, "days": days}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    missing = [day for day, d in days.items() if "train_evaluate_seconds" not in d]
    if missing:
        print(f"no train + evaluate in {', '.join(missing)} (the run failed or the log is cut)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
