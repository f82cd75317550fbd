"""One evaluation protocol for every model (docs/design.md §5).

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

from assoc_lib.data.history import History, as_history
from assoc_lib.models.baselines import baskets_to_csr
from assoc_lib.records import ModelKind, Protocol
from assoc_lib.tfrt import tensorflow

log = logging.getLogger(__name__)

PER_BASKET_FILE = "per_basket.parquet"
METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "mrr", "hitrate@10", "coverage@10")


@dataclass
class HoldOut:
    """Evaluation inputs: the visible items (CSR) and the hidden item per basket."""

    inputs: sp.csr_matrix
    hidden: np.ndarray
    basket_rows: np.ndarray  # row of each evaluated basket in the original split
    history: History | None = None  # personalised protocol: earlier purchases (counts, decayed counts)
    frame_rows: np.ndarray | None = None  # row of each evaluated basket in the baskets frame (order and user ids)

    @property
    def n(self) -> int:
        return len(self.hidden)

    @property
    def protocol(self) -> Protocol:
        return Protocol.ANONYMOUS if self.history is None else Protocol.PERSONALISED

    def anonymous(self) -> "HoldOut":
        return HoldOut(self.inputs, self.hidden, self.basket_rows, None, self.frame_rows)

    def subset(self, rows: np.ndarray) -> "HoldOut":
        """The evaluated baskets at positions ``rows`` (with their histories)."""
        return HoldOut(
            self.inputs[rows],
            self.hidden[rows],
            self.basket_rows[rows],
            None if self.history is None else self.history[rows],
            None if self.frame_rows is None else self.frame_rows[rows],
        )


def _hide(baskets, n_items: int, history, positions: Callable[[int], Sequence[int]]) -> HoldOut:
    """One row per (basket with >= 2 items, position in ``positions(len(basket))``): that item hidden,
    the rest visible, the basket's history row."""
    rows, visible, hidden = [], [], []
    for r, basket in enumerate(baskets):
        basket = list(basket)
        if len(basket) < 2:
            continue
        for h in positions(len(basket)):
            rows.append(r)
            hidden.append(basket[h])
            visible.append(basket[:h] + basket[h + 1 :])
    rows = np.asarray(rows, dtype=np.int64)
    return HoldOut(
        baskets_to_csr(visible, n_items),
        np.asarray(hidden, dtype=np.int64),
        rows,
        as_history(history)[rows] if history is not None else None,
    )


def hold_out(baskets: Sequence[Sequence[int]], n_items: int, seed: int = 0, history=None) -> HoldOut:
    """Hide one seeded item from every basket with >= 2 items.

    ``history`` (rows aligned with ``baskets``) switches on the personalised protocol; history
    items are not excluded from the ranking (buying again is the point).
    """
    rng = np.random.default_rng(seed)
    return _hide(baskets, n_items, history, lambda n: (int(rng.integers(n)),))


def hold_out_lists(
    baskets: Sequence[Sequence[int]], n_items: int, per_basket: int, seed: int = 0, history=None
) -> HoldOut:
    """Training lists for a second stage: every basket with >= 2 items hides up to ``per_basket`` of its
    items (seeded, distinct), one row each, the rest visible (``per_basket`` 0: every item in turn).
    ``basket_rows`` repeats a basket's row once per list, so its lists share its order id (and its half of
    a cross-fit). The evaluation's own hold-out (:func:`hold_out`) hides one item; this one gives a
    reranker up to ``per_basket`` times as many examples from the same baskets."""
    if per_basket < 0:
        raise ValueError(f"per_basket must be >= 0 (0: every item), got {per_basket}")
    rng = np.random.default_rng(seed)
    return _hide(baskets, n_items, history, lambda n: rng.permutation(n)[: per_basket or n])


def ranks_of_hidden(scores: np.ndarray, inputs: sp.csr_matrix, hidden: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1-based rank of each hidden item among non-input items, and each row's top-10 items."""
    # a float32 model's scores stay float32 (the same comparisons, half the memory and time); others float64
    scores = np.asarray(scores)
    scores = np.array(scores, dtype=np.result_type(scores.dtype, np.float32), copy=True)
    ranks = hidden_ranks(scores, inputs, hidden)  # marks the inputs -inf in ``scores``
    k = min(10, scores.shape[1])
    np.negative(scores, out=scores)
    top10 = np.argpartition(scores, k - 1, axis=1)[:, :k].copy()  # a copy: a view would pin the whole array
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
    covered = len(np.unique(top_items)) if top_items is not None and len(top_items) else 0
    out["coverage@10"] = float(covered / n_items) if n_items else 0.0
    out["n_eval_baskets"] = int(len(ranks))
    return out


def evaluate_scores(
    score_fn: Callable[..., np.ndarray], holdout: HoldOut, n_items: int, batch_size: int = 512
) -> dict[str, float]:
    """Run ``score_fn(X)`` (anonymous) or ``score_fn(X, H)`` (personalised) in batches; every metric."""
    return metrics_from_ranks(*score_ranks(score_fn, holdout, batch_size), n_items)


def score_ranks(
    score_fn: Callable[..., np.ndarray], holdout: HoldOut, batch_size: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """Rank of each basket's hidden item (1-based, pessimistic) and each basket's top-10, in hold-out order."""
    all_ranks, all_top = [], []
    for start in range(0, holdout.n, batch_size):
        X = holdout.inputs[start : start + batch_size]
        scores = score_fn(X) if holdout.history is None else score_fn(X, holdout.history[start : start + batch_size])
        ranks, top = ranks_of_hidden(scores, X, holdout.hidden[start : start + batch_size])
        all_ranks.append(ranks)
        all_top.append(top)
    if not all_ranks:
        return np.zeros(0, np.int64), np.zeros((0, 10), np.int64)
    return np.concatenate(all_ranks), np.concatenate(all_top)


def cross_fitted_ranks(model, holdout: HoldOut, order_ids) -> tuple[np.ndarray, np.ndarray]:
    """:func:`score_ranks` of a model whose second stage was fitted on ``holdout`` (validation): each basket
    is scored with the rerankers fitted on the other half (``rerank.fold_of`` of its order id; the stage for
    baskets with a history and the anonymous one alike), so the figure is one the gate may compare with the
    others'."""
    from assoc_lib.models.rerank import fold_of

    fold = fold_of(order_ids, model.fold_seed)
    ranks, top = np.zeros(holdout.n, np.int64), np.zeros((holdout.n, min(10, model.n_items)), np.int64)
    for h in (0, 1):
        rows = np.flatnonzero(fold == h)
        ranks[rows], top[rows] = score_ranks(model.half(h).score, holdout.subset(rows))
    return ranks, top


def tune_on_validation(
    holdout: HoldOut,
    n_items: int,
    parts_fn: Callable,
    combine: Callable,
    grid: Sequence,
    batch_size: int = 512,
    decays: Sequence[float] = (0.0,),
) -> dict:
    """Validation NDCG@10 of ``combine(parts, priors, g)`` for every ``g`` in ``grid``, scoring each batch once.

    ``parts_fn(X, H)`` returns the expensive score parts; ``priors[tau]`` is the personal prior
    log(1 + decayed counts) for each decay time in ``decays`` (tau 0: plain counts) as a dense array
    (zeros on the anonymous protocol).
    """
    gains = {g: 0.0 for g in grid}
    for start in range(0, holdout.n, batch_size):
        X = holdout.inputs[start : start + batch_size]
        H = holdout.history[start : start + batch_size] if holdout.history is not None else None
        parts = parts_fn(X, H)
        priors = {
            t: (np.log1p(H.weights(t).toarray()).astype(np.float32) if H is not None else np.float32(0.0))
            for t in decays
        }
        for g in grid:
            scores = np.asarray(combine(parts, priors, g), dtype=np.float32)
            r = hidden_ranks(scores, X, holdout.hidden[start : start + batch_size])
            gains[g] += float(ndcg10_per_basket(r).sum())
    return {g: (gains[g] / holdout.n if holdout.n else 0.0) for g in grid}


def hidden_ranks(scores: np.ndarray, inputs: sp.csr_matrix, hidden: np.ndarray) -> np.ndarray:
    """1-based rank of each hidden item among the non-input items, pessimistic on ties (an item tied with
    the hidden one ranks above it). In place: the inputs of ``scores`` become -inf (grid searches pass
    fresh float32 arrays and skip the copy and the top-10 of :func:`ranks_of_hidden`)."""
    rows, cols = inputs.nonzero()
    scores[rows, cols] = -np.inf
    target = scores[np.arange(len(hidden)), hidden]
    return (scores >= target[:, None]).sum(axis=1).astype(np.int64)


def make_holdouts(
    baskets,
    n_items: int,
    seed: int,
    history_max_items: int = 200,
    decays: Sequence[float] = (),
    train_decays=(),
    past: bool = False,
) -> tuple[dict[str, HoldOut], History | None]:
    """Validation and test hold-outs (with history when the data has user ids) and the full history.

    Each history keeps the shopper's ``history_max_items`` most-bought items, with decayed counts for
    every decay time in ``decays`` on validation and test baskets, and for ``train_decays`` on every
    basket (what the network trains on). ``past``: the evaluation baskets' histories also hold the earlier
    baskets themselves (personal co-occurrence, :class:`~assoc_lib.data.history.PastBaskets`).
    """
    from assoc_lib.data.history import build_history, build_past_baskets
    from assoc_lib.data.preprocess import split_baskets

    has_users = bool(baskets["user_id"].notna().any()) if len(baskets) else False
    H = None
    if has_users:
        evaluated = (baskets["split"] != "train").to_numpy()
        masks = {float(t): evaluated for t in decays if t}
        masks.update({float(t): None for t in train_decays if t})
        H = build_history(baskets, n_items, history_max_items, sorted(masks), masks)
        if past:
            H.past = build_past_baskets(baskets, n_items)
    splits = split_baskets(baskets)
    out = {}
    for offset, name in enumerate(("validation", "test")):
        rows = np.flatnonzero((baskets["split"] == name).to_numpy())
        out[name] = hold_out(splits[name], n_items, seed + offset, H[rows] if H is not None else None)
        out[name].frame_rows = rows[out[name].basket_rows]
    return out, H


def ndcg10_per_basket(ranks: np.ndarray) -> np.ndarray:
    """Each basket's NDCG@10 (one hidden item): 1/log2(rank + 1) inside the top 10, else 0."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return np.where(ranks <= 10, 1.0 / np.log2(ranks + 1.0), 0.0)


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict:
    """95% percentile interval of mean(a - b) over baskets resampled with replacement (the same
    baskets for both models: a paired bootstrap)."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    n = len(d)
    if n == 0:
        return {"mean": None, "low": None, "high": None, "n": 0, "n_boot": n_boot}
    rng = np.random.default_rng(seed)
    means = np.concatenate(
        [d[rng.integers(0, n, size=(min(200, n_boot - s), n))].mean(axis=1) for s in range(0, n_boot, 200)]
    )
    low, high = np.percentile(means, [2.5, 97.5])
    return {"mean": float(d.mean()), "low": float(low), "high": float(high), "n": int(n), "n_boot": int(n_boot)}


def deep_vs_classical_interval(
    rows: list[dict], ranks: dict, n_boot: int = 2000, seed: int = 0, servable_only: bool = False
) -> dict:
    """Per protocol: the paired bootstrap interval of (best deep - best classical) test NDCG@10, each
    side the model with the best *validation* NDCG@10 of its kind (no selection on test); ``servable_only``
    leaves the evaluation references out (what a shop can be served)."""
    out = {}
    for protocol in sorted({r["protocol"] for r in rows}):
        pick = {}
        for kind in (ModelKind.DEEP, ModelKind.CLASSICAL):
            pool = [
                r
                for r in rows
                if r["protocol"] == protocol
                and r["kind"] == kind
                and r["name"] in ranks[protocol]
                and (r.get("servable", True) or not servable_only)
            ]
            if pool:
                pick[kind] = max(pool, key=lambda r: r["val_ndcg@10"])["name"]
        if len(pick) < 2:
            continue
        deep, classical = pick[ModelKind.DEEP], pick[ModelKind.CLASSICAL]
        interval = paired_bootstrap(
            ndcg10_per_basket(ranks[protocol][deep]), ndcg10_per_basket(ranks[protocol][classical]), n_boot, seed
        )
        out[protocol] = {"deep": deep, "classical": classical, "metric": "ndcg@10 (test)", **interval}
    return out


def per_basket_frame(baskets, vocab: list[str], holdout: HoldOut, split: str, protocol: str, ranks: dict):
    """One row per evaluated basket: split, protocol, order and (pseudonymised) user id, the hidden item,
    whether the shopper bought it before (``hidden_in_history``: in the history the models read; empty on
    the anonymous protocol), and the hidden item's rank under every model (``rank:<model>``)."""
    import pandas as pd

    frame_rows = holdout.frame_rows  # set by make_holdouts
    repeat = pd.array([None] * holdout.n, dtype="boolean")
    if holdout.history is not None:
        counts = holdout.history.counts.tocsr()
        repeat = pd.array(np.asarray(counts[np.arange(holdout.n), holdout.hidden]).ravel() > 0, dtype="boolean")
    out = pd.DataFrame(
        {
            "split": split,
            "protocol": str(protocol),
            "order_id": baskets["order_id"].to_numpy()[frame_rows].astype(str),
            "user_id": baskets["user_id"].to_numpy(dtype=object)[frame_rows],
            "hidden_item": np.asarray(vocab, dtype=object)[holdout.hidden],
            "hidden_in_history": repeat,
        }
    )
    for name, r in ranks.items():
        out[f"rank:{name}"] = np.asarray(r, np.int64)
    return out


def comparison_table(rows: list[dict], metrics: Sequence[str] = METRICS) -> str:
    """Markdown table, one row per model."""
    head = "| model | kind | protocol | " + " | ".join(metrics) + " | baskets | train s |"
    sep = "|" + "---|" * (len(metrics) + 5)
    lines = [head, sep]
    for r in rows:
        vals = " | ".join(f"{r.get(m, float('nan')):.4f}" for m in metrics)
        train_s = r.get("train_seconds")
        lines.append(
            f"| {r['name']} | {r.get('kind', '')} | {r.get('protocol', 'anonymous')} | {vals} | "
            f"{r.get('n_eval_baskets', '')} | {'' if train_s is None else f'{train_s:.1f}'} |"
        )
    return "\n".join(lines)


def write_comparison(rows: list[dict], out_dir: str | Path, extra: dict | None = None) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "comparison.md").write_text(comparison_table(rows) + "\n")
    payload = {**(extra or {}), "models": rows}
    (out_dir / "comparison.json").write_text(json.dumps(payload, indent=2, default=float) + "\n")
    return payload


# --------------------------------------------------------------------------- candidates and production
def request_days(counts: np.ndarray, decayed: np.ndarray | None, decay: float) -> np.ndarray:
    """Days to send with one history row per item so that a served model's decayed count is exact:
    count · exp(-days / decay) = decayed count, i.e. days = decay · ln(count / decayed)."""
    if decayed is None or not decay:
        return np.zeros_like(counts, dtype=np.float64)
    with np.errstate(divide="ignore"):
        days = decay * np.log(np.asarray(counts, np.float64) / np.asarray(decayed, np.float64))
    return np.clip(np.nan_to_num(days, nan=0.0, posinf=1e6), 0.0, 1e6)


def evaluate_topk(
    topk_fn: Callable[..., list[list[str]]],
    holdout: HoldOut,
    vocab: list[str],
    batch_size: int = 256,
    decay: float = 0.0,
    per_purchase: bool = False,
) -> dict[str, float]:
    """Metrics for a model that only returns its top-K ids (a served SavedModel).

    A hidden item outside the returned K counts as rank K+1: Recall/NDCG@10/20 are
    exact when K >= 20; MRR is truncated at K (misses add 0). ``decay``: the served model's decay time;
    each history row carries the days that make its decayed count exact (:func:`request_days`).
    ``per_purchase`` (the history holds its past baskets): one history row per purchase instead, count 1
    and the days since it, as a shop sends them (the served personal co-occurrence needs the baskets); every
    visible purchase (the served graph keeps the shopper's ``history_max_items`` most-bought items, as the
    candidates' histories here hold them: ``ServableModel.history_max_items``)."""
    ranks, tops, k_seen = [], [], 0
    for start in range(0, holdout.n, batch_size):
        X = holdout.inputs[start : start + batch_size]
        baskets = [[vocab[i] for i in X.indices[X.indptr[r] : X.indptr[r + 1]]] for r in range(X.shape[0])]
        if holdout.history is None:
            returned = topk_fn(baskets)
        elif per_purchase and holdout.history.past is not None:
            past = holdout.history.past
            histories = []
            for r in range(start, start + X.shape[0]):
                items, ago = past.purchases(r)
                histories.append(([vocab[i] for i in items], [1.0] * len(items), ago.tolist()))
            returned = topk_fn(baskets, histories)
        else:
            hist = holdout.history[start : start + batch_size]
            H = hist.counts.tocsr()
            days = request_days(H.data, hist.weights_at_counts(decay) if decay else None, decay)
            histories = [
                (
                    [vocab[i] for i in H.indices[H.indptr[r] : H.indptr[r + 1]]],
                    H.data[H.indptr[r] : H.indptr[r + 1]].tolist(),
                    days[H.indptr[r] : H.indptr[r + 1]].tolist(),
                )
                for r in range(H.shape[0])
            ]
            returned = topk_fn(baskets, histories)
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


def saved_model_topk(export_dir: str | Path, personal: bool = False) -> Callable[..., list[list[str]]]:
    """Call an exported model in-process: ``complete_basket``, or ``complete_basket_personal`` with history
    (an export without that signature answers the personalised protocol anonymously)."""
    tf = tensorflow()

    loaded = tf.saved_model.load(str(export_dir))
    has_personal = "complete_basket_personal" in loaded.signatures
    fn = loaded.signatures["complete_basket_personal" if personal and has_personal else "complete_basket"]

    def pad(rows, fill):
        width = max(1, max(len(r) for r in rows))
        return [list(r) + [fill] * (width - len(r)) for r in rows]

    def topk(baskets: list[list[str]], histories=None) -> list[list[str]]:
        kwargs = {"items": tf.constant(pad(baskets, ""))}
        if personal and has_personal:
            histories = histories or [([], [], [])] * len(baskets)
            kwargs["history"] = tf.constant(pad([h[0] for h in histories], ""))
            kwargs["history_counts"] = tf.constant(pad([h[1] for h in histories], 0.0), dtype=tf.float32)
            if "history_days" in fn.structured_input_signature[1]:
                kwargs["history_days"] = tf.constant(pad([h[2] for h in histories], 0.0), dtype=tf.float32)
        ids = fn(**kwargs)["item_ids"].numpy()
        return [[x.decode() for x in row] for row in ids]

    return topk


def model_card(export_dir: str | Path) -> dict:
    """An export's model card ({} when it has none)."""
    card = Path(export_dir) / "model_card.json"
    return json.loads(card.read_text()) if card.exists() else {}


def served_decay(card: dict) -> float:
    """The decay time (days) an export's personal signature applies to history rows (from its model card)."""
    return float(card.get("network_history_decay") or card.get("history_decay") or 0.0)


def served_cooc(card: dict) -> bool:
    """Whether an export reads the past baskets from its history rows (the personal co-occurrence, as a
    term or as a feature of the reranker for shoppers with a history, from its model card): it needs
    per-purchase rows. (A card without ``reranker.personal`` predates the anonymous stage: its reranker was
    the personal one.)"""
    rr = card.get("reranker") or {}
    return bool(card.get("cooc_weight")) or (bool(rr) and rr.get("personal", True) is not None)


def evaluate_candidates(
    prep_dir: str | Path, candidates: list[dict], cfg, out_dir: str | Path, production: dict | None = None
) -> dict:
    """Every candidate (and production, when given) on the same validation and test hold-outs.

    ``production``: ``{"path": export dir, "version": n}`` of the model now served.
    Writes comparison.md / comparison.json; returns the payload.
    """
    from assoc_lib.data.preprocess import load_split
    from assoc_lib.models.servable import ServableModel

    baskets, vocab = load_split(prep_dir)
    n_items = len(vocab)
    models = [ServableModel.load(c["path"]) for c in candidates]
    card = model_card(production["path"]) if production else {}
    production_decay, production_cooc = served_decay(card), served_cooc(card)
    decays = {d for m in models for d in m.decays} | {production_decay}
    holdouts, history = make_holdouts(
        baskets,
        n_items,
        cfg.models.eval_seed,
        cfg.models.history_max_items,
        decays=sorted(decays),
        past=any(m.reads_past for m in models) or production_cooc,
    )
    protocols = [Protocol.ANONYMOUS] + ([Protocol.PERSONALISED] if history is not None else [])

    def view(split: str, protocol: str) -> HoldOut:
        return holdouts[split] if protocol == Protocol.PERSONALISED else holdouts[split].anonymous()

    rows = []
    test_ranks: dict = {p: {} for p in protocols}
    val_order_ids = baskets["order_id"].to_numpy()[holdouts["validation"].frame_rows]  # rerankers' halves
    for cand, model in zip(candidates, models):
        if model.vocab != vocab:
            raise ValueError(f"candidate {cand['name']} was trained on another vocabulary than {prep_dir}")
        for protocol in protocols:
            if protocol == Protocol.ANONYMOUS and cand.get("personal_only"):
                continue
            if model.cross_fitted:  # its second stage was fitted on validation: cross-fitted there
                ranks, top = cross_fitted_ranks(model, view("validation", protocol), val_order_ids)
                val = metrics_from_ranks(ranks, top, n_items)
            else:
                val = evaluate_scores(model.score, view("validation", protocol), n_items)
            ranks, top = score_ranks(model.score, view("test", protocol))
            test = metrics_from_ranks(ranks, top, n_items)
            test_ranks[protocol][cand["name"]] = ranks
            rows.append(
                {
                    "name": cand["name"],
                    "kind": cand["kind"],
                    "protocol": protocol,
                    **test,
                    "val_ndcg@10": val["ndcg@10"],
                    "val_n_eval_baskets": val["n_eval_baskets"],
                    "train_seconds": cand.get("train_seconds"),
                    "path": cand["path"],
                    "history_weight": model.history_weight if protocol == Protocol.PERSONALISED else 0.0,
                    "history_decay": model.history_decay if protocol == Protocol.PERSONALISED else 0.0,
                    "servable": model.servable,
                }
            )
    if production:
        for protocol in protocols:
            topk = saved_model_topk(production["path"], personal=protocol == Protocol.PERSONALISED)
            val = evaluate_topk(
                topk, view("validation", protocol), vocab, decay=production_decay, per_purchase=production_cooc
            )
            test = evaluate_topk(
                topk, view("test", protocol), vocab, decay=production_decay, per_purchase=production_cooc
            )
            rows.append(
                {
                    "name": f"production v{production.get('version')}",
                    "kind": ModelKind.PRODUCTION,
                    "protocol": protocol,
                    **test,
                    "val_ndcg@10": val["ndcg@10"],
                    "val_n_eval_baskets": val["n_eval_baskets"],
                    "train_seconds": None,
                    "path": str(production["path"]),
                    "version": production.get("version"),
                }
            )
    import pandas as pd

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    pd.concat(
        [per_basket_frame(baskets, vocab, view("test", p), "test", p, test_ranks[p]) for p in protocols],
        ignore_index=True,
    ).to_parquet(Path(out_dir) / PER_BASKET_FILE, index=False)
    interval = deep_vs_classical_interval(rows, test_ranks, seed=cfg.models.eval_seed)
    served_interval = deep_vs_classical_interval(rows, test_ranks, seed=cfg.models.eval_seed, servable_only=True)
    for protocol, ci in interval.items():
        log.info(
            "%s: %s - %s test NDCG@10 %+.4f, paired bootstrap 95%% interval [%+.4f, %+.4f] over %d baskets",
            protocol,
            ci["deep"],
            ci["classical"],
            ci["mean"],
            ci["low"],
            ci["high"],
            ci["n"],
        )
    payload = write_comparison(
        rows,
        out_dir,
        {
            "prep_dir": str(prep_dir),
            "n_eval_baskets": holdouts["test"].n,
            "protocols": protocols,
            "n_val_baskets": holdouts["validation"].n,
            "n_items": n_items,
            "deep_minus_classical": interval,
            "deep_minus_classical_servable": served_interval,
            "per_basket": str(Path(out_dir) / PER_BASKET_FILE),
        },
    )
    log.info(
        "model comparison on %d test baskets (winner picked on %d validation baskets):\n%s",
        holdouts["test"].n,
        holdouts["validation"].n,
        comparison_table(rows, ("val_ndcg@10",) + METRICS),
    )
    return payload
