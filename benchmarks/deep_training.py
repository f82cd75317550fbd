"""Deep-stage benchmark: the hyperparameter search and the final training on a prepared split, as the
pipeline runs them (``train.fit_deep``), with time, examples/second, the breakdown and peak memory.

    python benchmarks/deep_training.py --prep W/prep --out deep.json [--set models.deep_sampled_softmax=0]

``W/prep`` is the split written by ``benchmarks/quality.py --work-dir W`` (the README's Complete Journey
command). Only what the deep stage needs is loaded (the split, the histories, the validation hold-out), so
the peak resident memory is the deep stage's own. Prints a summary and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prep", required=True, type=Path, help="a prepared split (quality.py's W/prep)")
    ap.add_argument("--set", action="append", default=[], help="config override, e.g. models.deep_epochs=4")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from assoc_lib import evaluate
    from assoc_lib.config import apply_overrides, load_config
    from assoc_lib.data.preprocess import load_split, split_baskets
    from assoc_lib.models.baselines import baskets_to_csr
    from assoc_lib.train import deep_params, fit_deep, peak_rss_mb

    cfg = apply_overrides(load_config(), dict(s.split("=", 1) for s in args.set))
    started = time.perf_counter()
    baskets, vocab = load_split(args.prep)
    n_items = len(vocab)
    X = baskets_to_csr(split_baskets(baskets)["train"], n_items)
    params = deep_params(cfg)
    holdouts, history = evaluate.make_holdouts(
        baskets,
        n_items,
        cfg.models.eval_seed,
        cfg.models.history_max_items,
        decays=(0.0,),
        train_decays=(params.history_decay,),
    )
    params.personal = history is not None
    train_rows = np.flatnonzero((baskets["split"] == "train").to_numpy())
    data_seconds = time.perf_counter() - started
    chosen, result, search = fit_deep(
        X, holdouts["validation"], params, cfg.models, None, history[train_rows] if params.personal else None
    )
    trace = search.get("hyperparameter_search", {})
    epochs_train = sum(h["seconds"] for h in result.history)
    out = {
        "prep": str(args.prep),
        "overrides": args.set,
        "train_baskets": X.shape[0],
        "items": n_items,
        "placement": result.placement,
        "data_seconds": data_seconds,
        "search_seconds": trace.get("seconds", 0.0),
        "search_trials": len(trace.get("trials", [])),
        "final_train_seconds": result.train_seconds,
        "final_epochs": len(result.history),
        "final_epoch_train_seconds": epochs_train,
        "final_validation_seconds": result.train_seconds - epochs_train,
        "deep_stage_seconds": trace.get("seconds", 0.0) + result.train_seconds,
        "examples_per_second": result.examples_per_second,
        "examples_per_second_training_only": X.shape[0] * len(result.history) / max(epochs_train, 1e-9),
        "best_epoch": result.best_epoch,
        "best_val_ndcg@10": result.best_val_ndcg10,
        "deep_max_seconds": cfg.models.deep_max_seconds,
        "stopped_by_time_budget": result.stopped_by_time_budget,
        "chosen": trace.get("chosen", {}),
        "search": trace,
        "history": result.history,
        "peak_rss_mb": peak_rss_mb(),
    }
    print(
        f"deep stage on {X.shape[0]:,} baskets x {n_items:,} items ({result.placement}): "
        f"{out['deep_stage_seconds']:.0f} s = search {out['search_seconds']:.0f} s ({out['search_trials']} trials) "
        f"+ final training {result.train_seconds:.0f} s ({out['final_epochs']} epochs: "
        f"{epochs_train:.0f} s training, {out['final_validation_seconds']:.0f} s validation); "
        f"{out['examples_per_second_training_only']:,.0f} examples/s while training; best epoch "
        f"{result.best_epoch}, val NDCG@10 {result.best_val_ndcg10:.4f}"
        f"{' (stopped by the time budget)' if result.stopped_by_time_budget else ''}; "
        f"peak RSS {out['peak_rss_mb']:,.0f} MB "
        f"(data loading {data_seconds:.0f} s, not counted)"
    )
    if args.out:
        args.out.write_text(json.dumps(out, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
