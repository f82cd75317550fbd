"""One evaluation protocol for every model (design.md §5).

For each basket with at least two items, one item is hidden (seeded choice);
the model ranks the whole vocabulary from the remaining items, which are
excluded from the ranking. With one hidden item Recall@K equals HitRate@K.
Ranks are pessimistic on ties (an item tied with the hidden one ranks above it).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import scipy.sparse as sp

from assoc_lib.baselines import baskets_to_csr

log = logging.getLogger(__name__)

METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "mrr", "hitrate@10", "coverage@10")


@dataclass
class HoldOut:
    """Evaluation inputs: the visible items (CSR) and the hidden item per basket."""

    inputs: sp.csr_matrix
    hidden: np.ndarray
    basket_rows: np.ndarray  # row of each evaluated basket in the original split

    @property
    def n(self) -> int:
        return len(self.hidden)


def hold_out(baskets: Sequence[Sequence[int]], n_items: int, seed: int = 0) -> HoldOut:
    """Hide one seeded item from every basket with >= 2 items."""
    rng = np.random.default_rng(seed)
    rows, visible, hidden = [], [], []
    for r, basket in enumerate(baskets):
        basket = list(basket)
        if len(basket) < 2:
            continue
        h = int(rng.integers(len(basket)))
        rows.append(r)
        hidden.append(basket[h])
        visible.append(basket[:h] + basket[h + 1:])
    return HoldOut(baskets_to_csr(visible, n_items), np.asarray(hidden, dtype=np.int64), np.asarray(rows, dtype=np.int64))


def ranks_of_hidden(scores: np.ndarray, inputs: sp.csr_matrix, hidden: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1-based rank of each hidden item among non-input items, and each row's top-10 items."""
    scores = np.array(scores, dtype=np.float64, copy=True)
    rows, cols = inputs.nonzero()
    scores[rows, cols] = -np.inf
    target = scores[np.arange(len(hidden)), hidden]
    ranks = (scores >= target[:, None]).sum(axis=1)  # pessimistic: ties count above (incl. itself)
    k = min(10, scores.shape[1])
    top10 = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return ranks.astype(np.int64), top10


def metrics_from_ranks(ranks: np.ndarray, top_items: np.ndarray | None, n_items: int) -> dict[str, float]:
    ranks = np.asarray(ranks, dtype=np.float64)
    out = {}
    for k in (10, 20):
        hit = ranks <= k
        out[f"recall@{k}"] = float(hit.mean()) if len(ranks) else 0.0
        out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0).mean()) if len(ranks) else 0.0
    out["hitrate@10"] = out["recall@10"]
    out["mrr"] = float((1.0 / ranks).mean()) if len(ranks) else 0.0
    out["coverage@10"] = float(len(np.unique(top_items)) / n_items) if top_items is not None and n_items else 0.0
    out["n_eval_baskets"] = int(len(ranks))
    return out


def evaluate_scores(score_fn: Callable[[sp.csr_matrix], np.ndarray], holdout: HoldOut, n_items: int,
                    batch_size: int = 512) -> dict[str, float]:
    """Run ``score_fn`` over the hold-out in batches and compute every metric."""
    all_ranks, all_top = [], []
    for start in range(0, holdout.n, batch_size):
        X = holdout.inputs[start: start + batch_size]
        ranks, top = ranks_of_hidden(score_fn(X), X, holdout.hidden[start: start + batch_size])
        all_ranks.append(ranks)
        all_top.append(top)
    if not all_ranks:
        return metrics_from_ranks(np.array([]), None, n_items)
    return metrics_from_ranks(np.concatenate(all_ranks), np.concatenate(all_top), n_items)


def comparison_table(rows: list[dict], metrics: Sequence[str] = METRICS) -> str:
    """Markdown table, one row per model."""
    head = "| model | kind | protocol | " + " | ".join(metrics) + " | baskets | train s |"
    sep = "|" + "---|" * (len(metrics) + 5)
    lines = [head, sep]
    for r in rows:
        vals = " | ".join(f"{r.get(m, float('nan')):.4f}" for m in metrics)
        train_s = r.get("train_seconds")
        lines.append(f"| {r['name']} | {r.get('kind', '')} | {r.get('protocol', 'anonymous')} | {vals} | "
                     f"{r.get('n_eval_baskets', '')} | {'' if train_s is None else f'{train_s:.1f}'} |")
    return "\n".join(lines)


def write_comparison(rows: list[dict], out_dir: str | Path, extra: dict | None = None) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "comparison.md").write_text(comparison_table(rows) + "\n")
    payload = {**(extra or {}), "models": rows}
    (out_dir / "comparison.json").write_text(json.dumps(payload, indent=2, default=float) + "\n")
    return payload


# --------------------------------------------------------------------------- candidates and production
def evaluate_topk(topk_fn: Callable[[list[list[str]]], list[list[str]]], holdout: HoldOut, vocab: list[str],
                  batch_size: int = 256) -> dict[str, float]:
    """Metrics for a model that only returns its top-K ids (a served SavedModel).

    A hidden item outside the returned K counts as rank K+1: Recall/NDCG@10/20 are
    exact when K >= 20; MRR is truncated at K (misses add 0).
    """
    ranks, tops, k_seen = [], [], 0
    for start in range(0, holdout.n, batch_size):
        X = holdout.inputs[start: start + batch_size]
        baskets = [[vocab[i] for i in X.indices[X.indptr[r]: X.indptr[r + 1]]] for r in range(X.shape[0])]
        returned = topk_fn(baskets)
        for r, ids in enumerate(returned):
            k_seen = max(k_seen, len(ids))
            target = vocab[holdout.hidden[start + r]]
            ranks.append(ids.index(target) + 1 if target in ids else np.inf)
            tops.append(ids[:10])
    ranks = np.asarray(ranks, dtype=np.float64)
    out = metrics_from_ranks(np.where(np.isinf(ranks), k_seen + 1, ranks), None, len(vocab))
    out["mrr"] = float(np.where(np.isinf(ranks), 0.0, 1.0 / ranks).mean()) if len(ranks) else 0.0
    out["coverage@10"] = float(len({i for t in tops for i in t}) / len(vocab)) if vocab else 0.0
    out["k"] = k_seen
    return out


def saved_model_topk(export_dir: str | Path) -> Callable[[list[list[str]]], list[list[str]]]:
    """Call an exported model's ``complete_basket`` signature in-process."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(export_dir))
    fn = loaded.signatures["complete_basket"]

    def topk(baskets: list[list[str]]) -> list[list[str]]:
        width = max(1, max(len(b) for b in baskets))
        items = tf.constant([b + [""] * (width - len(b)) for b in baskets])
        ids = fn(items=items)["item_ids"].numpy()
        return [[x.decode() for x in row] for row in ids]

    return topk


def evaluate_candidates(prep_dir: str | Path, candidates: list[dict], cfg, out_dir: str | Path,
                        production: dict | None = None) -> dict:
    """Every candidate (and production, when given) on the same validation and test hold-outs.

    ``production``: ``{"path": export dir, "version": n}`` of the model now served.
    Writes comparison.md / comparison.json; returns the payload.
    """
    from assoc_lib.export import ServableModel
    from assoc_lib.preprocess import load_split
    from assoc_lib.train import split_baskets

    baskets, vocab = load_split(prep_dir)
    splits = split_baskets(baskets)
    n_items = len(vocab)
    holdouts = {"validation": hold_out(splits["validation"], n_items, cfg.models.eval_seed),
                "test": hold_out(splits["test"], n_items, cfg.models.eval_seed + 1)}
    rows = []
    for cand in candidates:
        model = ServableModel.load(cand["path"])
        if model.vocab != vocab:
            raise ValueError(f"candidate {cand['name']} was trained on another vocabulary than {prep_dir}")
        val = evaluate_scores(model.score, holdouts["validation"], n_items)
        test = evaluate_scores(model.score, holdouts["test"], n_items)
        rows.append({"name": cand["name"], "kind": cand["kind"], "protocol": "anonymous", **test,
                     "val_ndcg@10": val["ndcg@10"], "val_n_eval_baskets": val["n_eval_baskets"],
                     "train_seconds": cand.get("train_seconds"), "path": cand["path"]})
    if production:
        topk = saved_model_topk(production["path"])
        val = evaluate_topk(topk, holdouts["validation"], vocab)
        test = evaluate_topk(topk, holdouts["test"], vocab)
        rows.append({"name": f"production v{production.get('version')}", "kind": "production",
                     "protocol": "anonymous", **test, "val_ndcg@10": val["ndcg@10"],
                     "val_n_eval_baskets": val["n_eval_baskets"], "train_seconds": None,
                     "path": str(production["path"]), "version": production.get("version")})
    payload = write_comparison(rows, out_dir, {
        "prep_dir": str(prep_dir), "n_eval_baskets": holdouts["test"].n,
        "n_val_baskets": holdouts["validation"].n, "n_items": n_items})
    log.info("model comparison on %d test baskets (winner picked on %d validation baskets):\n%s",
             holdouts["test"].n, holdouts["validation"].n, comparison_table(rows, ("val_ndcg@10",) + METRICS))
    return payload
