"""Probes: score terms measured on a trained quality run, kept out of the product unless validation says so.

    python benchmarks/probes.py --work-dir W --out probes.json

``W`` is a quality run's work directory (``benchmarks/quality.py --work-dir W``): its prepared split
(``W/prep``) and its saved candidates (``W/train/candidates``). Nothing is trained again. Each probe adds one
term to a trained candidate's personalised score, with its weight chosen on validation from a small grid
(0 included, so the probe can decline), and reports the test NDCG@10 of the candidate with and without it,
their ratio and the paired bootstrap 95% interval of the difference (the comparison's own seed).

The probes are the literature's other grocery signals, each built the way the served graph could build it:

- ``trend``: the item's purchase rate over the last ``--trend-days`` of train against its rate over all of
  train, log((recent + 1) / (overall + 1)) with rates per 10,000 baskets; one vector frozen when training ends (as a
  served model would be), so it ages over the validation and test windows. Seasonal items rise.
- ``history_ease``: the candidate's neighbour table applied to the shopper's history weighted by
  log(1 + decayed count) instead of to the basket (TIFU-KNN's neighbour part, item-based: other shoppers
  enter only through the item-item table); per-basket z-score. Tables that sum their neighbours only (a
  max-aggregated one is skipped).
- ``trip_rate``: the prior as a rate per trip, log(1 + decayed count / decayed number of past trips), inside
  the candidate's repeat/explore gate beside its own prior.
- ``raw_mix`` (candidates with a network and a table): the network's logits plus c · the table's scores in
  place of the mix of z-scores, with the prior and co-occurrence weights chosen again on the same grid.

The reranker that was probed here (a small network reordering the top 100), for shoppers with a history and
then for baskets without, is now a product stage (``assoc_lib/models/rerank.py``, the ``+rerank``
candidates): the quality run measures it.

Each added term is scaled by the per-basket standard deviation of the candidate's base score (the network
and table part), so one grid serves every candidate.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from assoc_lib import evaluate
from assoc_lib.config import load_config
from assoc_lib.data.preprocess import load_split
from assoc_lib.models.network import numpy_logits, standardise
from assoc_lib.models.servable import ServableModel

PROBES = ("trend", "history_ease", "trip_rate", "raw_mix")
WEIGHTS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.4)
RAW_GRID = tuple(itertools.product((20.0, 40.0, 80.0), (2.0, 3.5, 5.0), (2.0, 3.0, 4.0)))  # (c, beta, gamma)
DECAY = 60.0  # days: the decayed counts the history probes read


def trend_feature(train_baskets: list, train_days: np.ndarray, n_items: int, days: float) -> np.ndarray:
    """float64 [items]: log((recent rate + 1) / (overall rate + 1)), rates per 10,000 train baskets, recent =
    the baskets within ``days`` of the last one; standardised over the items."""

    def rate(rows):
        items = np.concatenate([np.asarray(train_baskets[i], np.int64) for i in rows]) if len(rows) else []
        return 1e4 * np.bincount(items, minlength=n_items) / max(len(rows), 1)

    everything = np.arange(len(train_baskets))
    recent = everything[train_days > train_days.max() - days]
    f = np.log((rate(recent) + 1.0) / (rate(everything) + 1.0))
    return (f - f.mean()) / max(f.std(), 1e-12)


def trips(past, tau: float) -> np.ndarray:
    """float64 [rows]: each row's past baskets, each counted exp(-days ago / tau)."""
    return np.array(
        [
            np.exp(-np.maximum(past.now[i] - past.days[past.start[i] : past.stop[i]], 0.0) / tau).sum()
            for i in range(len(past))
        ]
    )


def table_matrix(table) -> sp.csr_matrix:
    """A neighbour table as a sparse [items, items] matrix (sum aggregation)."""
    v, k = table.indices.shape
    rows, cols, w = np.repeat(np.arange(v), k), table.indices.ravel(), table.weights.ravel()
    keep = cols >= 0
    return sp.csr_matrix((w[keep], (rows[keep], cols[keep])), shape=(v, v))


def ndcg(scores, X, hidden) -> np.ndarray:
    return evaluate.ndcg10_per_basket(evaluate.hidden_ranks(np.array(scores, np.float32), X, hidden))


def run_probes(model: ServableModel, holdout: evaluate.HoldOut, trend: np.ndarray, probes, batch: int = 512) -> dict:
    """Per probe and grid point, the per-basket NDCG@10 on ``holdout`` (the point 0 of each probe is the model)."""
    summed = model.table is not None and model.table.aggregation == "sum"
    table = table_matrix(model.table) if summed else None  # history_ease: a table that sums its neighbours
    out: dict = {}
    for start in range(0, holdout.n, batch):
        X = holdout.inputs[start : start + batch]
        H = holdout.history[start : start + batch]
        hidden = holdout.hidden[start : start + batch]
        base, gate, personal = model.base_score(X, H), model.personal_gate(X, H), model.personal_terms(X, H)
        scale = np.std(base, axis=1, keepdims=True)
        score = base + gate * personal
        rows: dict = {}
        for probe in probes:
            if probe == "trend":
                term = scale * trend[None, :]
            elif probe == "history_ease":
                if table is None:
                    continue
                W = sp.csr_matrix(H.weights(DECAY), dtype=np.float32, copy=True)
                W.data = np.log1p(W.data)
                term = scale * standardise(np.asarray((W @ table).todense()))
            elif probe == "trip_rate":
                rate = H.weights(DECAY).multiply(1.0 / np.maximum(trips(H.past, DECAY), 1e-6)[:, None])
                term = gate * np.log1p(sp.csr_matrix(rate).toarray())
            elif probe == "raw_mix":
                if model.deep is None or model.table is None:
                    continue
                logits, tscores = numpy_logits(model.deep, X, H), model.table.score(X)
                prior = np.log1p(H.weights(model.history_decay).toarray())
                cooc = np.log1p(H.past.cooc(X, model.cooc_decay).toarray())
                rows[(probe, "served")] = ndcg(score, X, hidden)
                for c, b, g in RAW_GRID:
                    rows[(probe, (c, b, g))] = ndcg(logits + c * tscores + gate * (b * prior + g * cooc), X, hidden)
                continue
            else:
                raise ValueError(f"unknown probe {probe}")
            for w in WEIGHTS:
                rows[(probe, w)] = ndcg(score + w * term, X, hidden)
        for key, values in rows.items():
            out.setdefault(key, []).append(values)
    return {key: np.concatenate(parts) for key, parts in out.items()}


def summarise(model_name: str, val: dict, test: dict, seed: int) -> list[dict]:
    results = []
    for probe in dict.fromkeys(k[0] for k in val):
        points = [k for k in val if k[0] == probe]
        reference = (probe, "served") if (probe, "served") in val else (probe, 0.0)
        chosen = max(points, key=lambda k: (val[k].mean(), k == reference))
        ci = evaluate.paired_bootstrap(test[chosen], test[reference], seed=seed)
        results.append(
            {
                "model": model_name,
                "probe": probe,
                "chosen": chosen[1] if not isinstance(chosen[1], tuple) else list(chosen[1]),
                "val_ndcg@10_model": float(val[reference].mean()),
                "val_ndcg@10_probe": float(val[chosen].mean()),
                "test_ndcg@10_model": float(test[reference].mean()),
                "test_ndcg@10_probe": float(test[chosen].mean()),
                "test_ratio": float(test[chosen].mean() / test[reference].mean()),
                "interval": ci,
                "val_grid": {str(k[1]): round(float(v.mean()), 5) for k, v in val.items() if k[0] == probe},
                "test_grid": {str(k[1]): round(float(v.mean()), 5) for k, v in test.items() if k[0] == probe},
            }
        )
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work-dir", required=True, type=Path)
    ap.add_argument("--model", action="append", help="candidates to probe (default: the two below)")
    ap.add_argument("--probe", action="append", choices=PROBES + ("none",), help="default: every probe")
    ap.add_argument("--trend-days", type=float, default=28.0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    names = args.model or ["deep+ease+personal_cooc", "ease+personal_cooc"]
    cand_dir = args.work_dir / "train" / "candidates"
    try:
        baskets, vocab = load_split(args.work_dir / "prep")
        models = [ServableModel.load(cand_dir / f"{name}.npz") for name in names]
    except (OSError, ValueError) as exc:
        print(
            f"error: {exc} (a work dir of benchmarks/quality.py --work-dir holds prep/ and train/candidates/)",
            file=sys.stderr,
        )
        return 2
    if baskets["user_id"].isna().all():
        print("error: the probes are personalised; this split has no user ids", file=sys.stderr)
        return 2
    cfg = load_config().models
    started = time.perf_counter()
    decays = sorted({DECAY, *(d for m in models for d in m.decays)})
    network = sorted({m.network_decay for m in models if m.network_decay})
    holdouts, _ = evaluate.make_holdouts(
        baskets, len(vocab), cfg.eval_seed, cfg.history_max_items, decays=decays, train_decays=network, past=True
    )
    train = baskets[baskets["split"] == "train"]
    days = (train["ts"] - train["ts"].min()).dt.total_seconds().to_numpy() / 86400.0
    trend = trend_feature(list(train["items"]), days, len(vocab), args.trend_days)
    results = []
    for name, model in zip(names, models):
        probes = [p for p in (args.probe or PROBES) if p != "none"]
        if not probes:
            continue
        val = run_probes(model, holdouts["validation"], trend, probes)
        test = run_probes(model, holdouts["test"], trend, probes)
        results += summarise(name, val, test, cfg.eval_seed)
    for r in results:
        ci = r["interval"]
        print(
            f"{r['model']} + {r['probe']} (chosen {r['chosen']}): validation {r['val_ndcg@10_model']:.4f} -> "
            f"{r['val_ndcg@10_probe']:.4f}; test {r['test_ndcg@10_model']:.4f} -> {r['test_ndcg@10_probe']:.4f} "
            f"= {r['test_ratio']:.3f}x, difference {ci['mean']:+.4f} [{ci['low']:+.4f}, {ci['high']:+.4f}]"
        )
    print(f"{time.perf_counter() - started:.0f}s")
    if args.out:
        record = {"work_dir": str(args.work_dir), "probes": results}
        args.out.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
