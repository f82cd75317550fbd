"""Search-horizon benchmark: how the search's proxy ranks the configured values against other values when
trials are stopped after a fixed number of epochs, and when they run to their peaks (docs/design.md §5).

    python benchmarks/search_horizon.py --prep W/prep --out horizon.json \
        [--epochs 6] [--values learning_rate=0.00602526,embedding_dim=256,input_dropout=0.3863,history_dropout=0.1106]

``W/prep`` is the split written by ``benchmarks/quality.py --work-dir W``. Each set of values (the configured
ones first, then every ``--values``) trains on the search's proxy (``tuning.proxy_split``: the most recent
``deep_tune_max_baskets`` train baskets, ``deep_tune_max_val`` validation baskets) for ``--epochs`` epochs with
no early stopping, as ``train.train_deep`` runs a trial. Prints each validation curve, and each set's figure
after 2 epochs (the old search's horizon) and at its peak, relative to the configured values'; writes JSON.
The default ``--values`` is the trial the two-epoch search drew and chose on Complete Journey (seed 1234).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

DRAWN = "learning_rate=0.00602526,embedding_dim=256,input_dropout=0.3863,history_dropout=0.1106"


def parse_values(text: str) -> dict:
    out = {}
    for part in text.split(","):
        key, value = part.split("=", 1)
        out[key.strip()] = int(value) if key.strip() == "embedding_dim" else float(value)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prep", required=True, type=Path, help="a prepared split (quality.py's W/prep)")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--values", action="append", help=f"key=value,... (default: {DRAWN})")
    ap.add_argument("--set", action="append", default=[], help="config override, e.g. models.deep_batch_size=256")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from assoc_lib import evaluate, tuning
    from assoc_lib.config import apply_overrides, load_config
    from assoc_lib.data.preprocess import load_split, split_baskets
    from assoc_lib.models.baselines import baskets_to_csr
    from assoc_lib.train import deep_params, train_deep

    cfg = apply_overrides(load_config(), dict(s.split("=", 1) for s in args.set))
    m = cfg.models
    baskets, vocab = load_split(args.prep)
    X = baskets_to_csr(split_baskets(baskets)["train"], len(vocab))
    params = deep_params(cfg)
    holdouts, history = evaluate.make_holdouts(
        baskets, len(vocab), m.eval_seed, m.history_max_items, decays=(0.0,), train_decays=(params.history_decay,)
    )
    params.personal = history is not None
    train_history = history[np.flatnonzero((baskets["split"] == "train").to_numpy())] if params.personal else None
    proxy, val, H = tuning.proxy_split(
        X, holdouts["validation"], train_history, m.deep_tune_max_baskets, m.deep_tune_max_val, params.seed
    )
    sets = [{k: getattr(params, k) for k in tuning.SEARCHED}] + [parse_values(v) for v in (args.values or [DRAWN])]
    rows = []
    for values in sets:
        trial = replace(params, **values, epochs=args.epochs, patience=args.epochs + 1)
        t0 = time.perf_counter()
        run = train_deep(proxy, val, trial, history=H, verbose=False)
        curve = [h["val_ndcg@10"] for h in run.history]
        rows.append({"values": values, "val_ndcg@10_by_epoch": curve, "seconds": time.perf_counter() - t0})
    base = rows[0]["val_ndcg@10_by_epoch"]
    for row in rows:
        curve = row["val_ndcg@10_by_epoch"]
        row["after_2_epochs"] = max(curve[:2])
        row["peak"], row["peak_epoch"] = max(curve), int(np.argmax(curve)) + 1
        row["after_2_epochs_vs_configured"] = row["after_2_epochs"] / max(base[:2]) - 1.0
        row["peak_vs_configured"] = row["peak"] / max(base) - 1.0
        row["peaked_within_epochs"] = tuning.peaked(curve, params.patience)
        print(
            f"{json.dumps(row['values'])}\n  curve {[round(x, 4) for x in curve]} ({row['seconds']:.0f}s)\n"
            f"  after 2 epochs {row['after_2_epochs']:.4f} ({row['after_2_epochs_vs_configured']:+.1%}),"
            f" peak {row['peak']:.4f} at epoch {row['peak_epoch']} ({row['peak_vs_configured']:+.1%})"
        )
    out = {"prep": str(args.prep), "proxy_baskets": proxy.shape[0], "proxy_validation": val.n, "sets": rows}
    if args.out:
        args.out.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
