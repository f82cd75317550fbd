"""How close does the served (sparsified) EASE come to the full matrix? (docs/design.md §5)

    python benchmarks/ease_tables.py --prep W/prep --out ease_tables.json \
        [--dense W/train/candidates/ease_dense.npz.dense.npy]

--prep: a preprocessed split (``benchmarks/quality.py --work-dir W`` leaves one in W/prep). Fits EASE on
every item (or memory-maps ``--dense``, the matrix the quality benchmark saved) and scores the anonymous
validation and test hold-outs with the full matrix and with per-item tables of N neighbours: the N largest
positive weights (the old served form) and the N largest |weights| of either sign (the served form now).
Prints NDCG@10 and the ratio to the full matrix, measured in the same run, and the table's size.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from assoc_lib import evaluate
from assoc_lib.config import load_config
from assoc_lib.data.preprocess import load_split, split_baskets
from assoc_lib.models import baselines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prep", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--dense", type=Path, help="a saved full EASE matrix (.npy) of this split")
    ap.add_argument("--sizes", default="200,500", help="neighbours per item to try")
    args = ap.parse_args(argv)
    cfg = load_config()
    baskets, vocab = load_split(args.prep)
    n_items = len(vocab)
    splits = split_baskets(baskets)
    X = baselines.baskets_to_csr(splits["train"], n_items)
    pop = baselines.popularity_counts(X)
    started = time.perf_counter()
    if args.dense:
        B = np.load(args.dense, mmap_mode="r")
    else:
        B = baselines.EASE(l2=cfg.models.ease_l2, max_items=n_items).fit(X).B
    fit_seconds = time.perf_counter() - started
    holdouts = {
        name: evaluate.hold_out(splits[name], n_items, cfg.models.eval_seed + offset)
        for offset, name in enumerate(("validation", "test"))
    }

    def ndcg(score_fn) -> dict:
        return {n: evaluate.evaluate_scores(score_fn, h, n_items)["ndcg@10"] for n, h in holdouts.items()}

    rows = [
        {
            "form": "full matrix",
            "n": n_items,
            "size_mb": B.nbytes / 2**20,
            **ndcg(lambda Xb: np.asarray(Xb @ B) + baselines.TIE_BREAK * pop),
        }
    ]
    for n in (int(x) for x in args.sizes.split(",")):
        for label, magnitude in (("largest positive", False), ("largest abs(w)", True)):
            table = baselines.NeighbourTable(*baselines.top_n_table(B, n, magnitude), baselines.TIE_BREAK * pop, "sum")
            size = (table.indices.nbytes + table.weights.nbytes) / 2**20
            rows.append({"form": f"{label} {n}", "n": n, "size_mb": size, **ndcg(table.score)})
    for r in rows:
        r["test_ratio_to_full"] = r["test"] / rows[0]["test"]
    print("| served form | neighbours | size MB | val NDCG@10 | test NDCG@10 | test / full |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        scores = f"{r['validation']:.4f} | {r['test']:.4f} | {r['test_ratio_to_full']:.3f}"
        print(f"| {r['form']} | {r['n']} | {r['size_mb']:.0f} | {scores} |")
    payload = {"prep": str(args.prep), "n_items": n_items, "fit_seconds": fit_seconds, "rows": rows}
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\n{n_items} items; {holdouts['test'].n} test baskets; JSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
