"""Quality benchmark: every model on the same split of any contract-shaped orders (docs/design.md §8).

    python benchmarks/quality.py --orders data/raw/orders --out quality.json \
        [--min-count 5] [--val-days 28 --test-days 28] [--set models.deep_embedding_dim=200 ...]

--orders: a data root, a partitions folder (ds=*/), a parquet file, or a basket CSV
(transaction_id,item). Time split when the orders carry real timestamps, seeded random
split otherwise (basket CSVs). Prints one row per model and writes JSON with training
seconds, the process's peak memory, and a paired bootstrap 95% interval of (best deep - best
classical) test NDCG@10 per protocol. The work dir's ``evaluation/per_basket.parquet`` holds every
test basket's hidden item and its rank under every model.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from assoc_lib import evaluate
from assoc_lib.config import load_config
from assoc_lib.data import adapters, contract, preprocess
from assoc_lib.train import peak_rss_mb, train_candidates

log = logging.getLogger("benchmark")


def read_orders(path: Path) -> tuple[pd.DataFrame, bool]:
    """Rows with order_id, user_id, item_id, ts; and whether the times are real."""
    if path.is_dir() and (path / "raw" / "orders").is_dir():
        path = path / "raw" / "orders"
    if path.is_dir():
        parts = contract.list_partitions(path)
        if not parts:
            raise SystemExit(f"{path}: no ds=*/ partitions")
        return pd.concat([contract.read_orders(p) for _, p in parts], ignore_index=True), True
    if path.suffix.lower() == ".csv":
        df = adapters.read_basket_csv(path)
        has_ts = "ts" in df.columns
        if not has_ts:
            df["ts"] = pd.Timestamp("2000-01-01", tz="UTC")
        else:
            df["ts"] = pd.to_datetime(df["ts"], utc=True)
        if "user_id" not in df.columns:
            df["user_id"] = None
        return df, has_ts
    return contract.read_orders(path), True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--orders", required=True, type=Path)
    ap.add_argument("--catalog", type=Path, help="(reported only)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--min-count", type=int, default=None)
    ap.add_argument("--val-days", type=int, default=0)
    ap.add_argument("--test-days", type=int, default=0)
    ap.add_argument("--end", help="last day (YYYY-MM-DD) of orders to use, e.g. 2017-12-31")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="config override, e.g. models.deep_epochs=15",
    )
    ap.add_argument("--work-dir", type=Path, help="keep the split and models here (default: a temp folder)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = dict(kv.split("=", 1) for kv in args.set)
    cfg = load_config(overrides=overrides)
    if args.min_count is not None:
        cfg.preprocess.min_count = args.min_count
    started = time.perf_counter()
    rows, has_time = read_orders(args.orders)
    if args.end:
        rows = rows[rows["ts"] < pd.Timestamp(args.end, tz="UTC") + pd.Timedelta(days=1)]
    split_method = "time" if has_time else "random"
    baskets, vocab, stats = preprocess.build_baskets(
        rows,
        cfg.preprocess.min_count,
        cfg.preprocess.val_fraction,
        cfg.preprocess.test_fraction,
        split_method,
        cfg.preprocess.seed,
        args.val_days,
        args.test_days,
    )
    del rows
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="assoc-bench-"))
    prep_dir = preprocess.write_split(baskets, vocab, stats, work / "prep")
    prep_seconds = time.perf_counter() - started
    summary = train_candidates(prep_dir, cfg, work / "train")
    memory = {"after_training_mb": peak_rss_mb()}
    payload = evaluate.evaluate_candidates(prep_dir, summary["candidates"], cfg, work / "evaluation")
    for row in payload["models"]:
        cand = next(c for c in summary["candidates"] if c["name"] == row["name"])
        for key in ("best_epoch", "examples_per_second", "mix_weight"):
            if key in cand:
                row[key] = cand[key]
        row.pop("path", None)
    result = {
        "dataset": {
            "orders": str(args.orders),
            "catalog": str(args.catalog) if args.catalog else None,
            "rows_in": stats["rows_in"],
            "rows_out": stats["rows_out"],
            "vocabulary_size": len(vocab),
            "min_count": cfg.preprocess.min_count,
        },
        "split": {
            "method": split_method,
            "val_days": args.val_days,
            "test_days": args.test_days,
            "end": args.end,
            "orders": stats["orders_out"],
            "bounds": stats["split_bounds"],
        },
        "n_eval_baskets": payload["n_eval_baskets"],
        "n_val_baskets": payload["n_val_baskets"],
        "placement": summary["placement"],
        "deep_history": summary["deep_history"],
        "config": {"models": cfg.to_dict()["models"]},
        "preprocess_seconds": prep_seconds,
        # the process's peak over the whole run (training and evaluation), and its peak when training ended
        "peak_rss_mb": peak_rss_mb(),
        "peak_rss_after_training_mb": memory["after_training_mb"],
        "total_seconds": time.perf_counter() - started,
        "models": payload["models"],
        # paired bootstrap over test baskets; each side is its kind's best model on validation
        "deep_minus_classical": payload["deep_minus_classical"],
        # the same between servable models only (the evaluation references left out)
        "deep_minus_classical_servable": payload["deep_minus_classical_servable"],
        "per_basket": payload["per_basket"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(evaluate.comparison_table(payload["models"], ("val_ndcg@10",) + evaluate.METRICS))
    print(
        f"\n{payload['n_eval_baskets']} test baskets, vocabulary {len(vocab)}, split {split_method}; "
        f"peak RSS {result['peak_rss_mb']:.0f} MB ({memory['after_training_mb']:.0f} MB when training ended); "
        f"JSON: {args.out}; per basket: {payload['per_basket']}"
    )
    for key, what in (("deep_minus_classical", ""), ("deep_minus_classical_servable", ", servable models")):
        for protocol, ci in payload[key].items():
            print(
                f"{protocol}{what}: {ci['deep']} - {ci['classical']} test NDCG@10 {ci['mean']:+.4f}, "
                f"95% paired bootstrap interval [{ci['low']:+.4f}, {ci['high']:+.4f}] ({ci['n']} baskets)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
