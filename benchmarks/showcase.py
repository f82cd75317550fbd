"""Explained answers and the insights report for a benchmark's trained candidates.

    python benchmarks/showcase.py --work-dir /tmp/bench/cj --data-dir DATA --artifacts-dir ART \
        --ds 2017-12-31 --model deep+ease [--baskets 2]

Exports the chosen candidate, serves it with ``assoc serve`` (in-process, a free port), sends
real test baskets (with the shopper's history) over gRPC with ``assoc query --explain``, and
runs the insights task (FBT tables, category accuracy, report.html) on the same split.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

from assoc_lib import pipeline
from assoc_lib.cli import main as assoc
from assoc_lib.config import load_config
from assoc_lib.data.preprocess import load_split
from assoc_lib.evaluate import make_holdouts
from assoc_lib.models.servable import ServableModel
from assoc_lib.serving import push, server
from assoc_lib.serving.export import export_saved_model


def run(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work-dir", type=Path, required=True, help="benchmarks/quality.py --work-dir")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--artifacts-dir", required=True)
    ap.add_argument("--ds", required=True)
    ap.add_argument("--model", default="deep+ease")
    ap.add_argument("--baskets", type=int, default=2)
    ap.add_argument("--window-days", type=int, default=365)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_config(
        overrides={
            "paths.data_dir": args.data_dir,
            "paths.artifacts_dir": args.artifacts_dir,
            "preprocess.window_days": args.window_days,
        }
    )
    summary = json.loads((args.work_dir / "train" / "train_summary.json").read_text())
    run_dir = pipeline.run_dir(cfg, args.ds)
    (run_dir / "evaluation").mkdir(parents=True, exist_ok=True)
    shutil.copy(args.work_dir / "evaluation" / "comparison.json", run_dir / "evaluation" / "comparison.json")
    insights = pipeline.insights_day(cfg, args.ds, str(args.work_dir / "prep"), summary["candidates"])
    print(json.dumps(insights.to_dict(), indent=2))

    cand = next(c for c in summary["candidates"] if c["name"] == args.model)
    model = ServableModel.load(cand["path"])
    export = export_saved_model(
        model,
        args.work_dir / "showcase" / "export",
        {"data_version": "benchmark"},
        cfg.serving.model_name,
        cfg.serving.k,
    )
    root = args.work_dir / "showcase" / "serving"
    shutil.rmtree(root, ignore_errors=True)
    push.push(export, root, cfg.serving.model_name)
    srv, registry, port = server.serve(str(root / "models.config"), port=0, block=False)
    try:
        baskets, vocab = load_split(args.work_dir / "prep")
        holdouts, _ = make_holdouts(baskets, len(vocab), cfg.models.eval_seed, cfg.models.history_max_items)
        test = holdouts["test"]
        shown = 0
        for r in range(test.n):
            items = [vocab[i] for i in test.inputs[r].indices]
            if not 3 <= len(items) <= 5:
                continue
            history = test.history[r] if test.history is not None else None
            cmd = [
                "query",
                "--server",
                f"127.0.0.1:{port}",
                "--items",
                *items,
                "--k",
                "5",
                "--explain",
                "--catalog",
                str(cfg.paths.catalog_path),
            ]
            if history is not None and history.nnz:
                top = history.indices[history.data.argsort()[::-1][:5]]
                cmd += [
                    "--history",
                    *[vocab[i] for i in top],
                    "--history-counts",
                    *[str(float(history[0, i])) for i in top],
                ]
            print("\n$ assoc " + " ".join(cmd[:1] + ["--items", *items, "--k", "5", "--explain"]))
            assoc(cmd[: cmd.index("--history")] if "--history" in cmd else cmd)
            if "--history" in cmd:
                print("\n$ (same basket, with the shopper's 5 most-bought items as history)")
                assoc(cmd)
            shown += 1
            if shown >= args.baskets:
                break
    finally:
        registry.stop()
        srv.stop(0)
    return 0


if __name__ == "__main__":
    sys.exit(run())
