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
