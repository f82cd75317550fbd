"""Export a :class:`~assoc_lib.models.servable.ServableModel` as a TF Serving SavedModel: the same maths
as its numpy scorer, with the signatures of the serving contract (docs/design.md), the vocabulary inside
the graph, warm-up requests and a model card.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from assoc_lib.fsutil import atomic_directory
from assoc_lib.models import rerank
from assoc_lib.models.network import head, mix, scatter_rows, standardise, tf_ops
from assoc_lib.models.servable import ServableModel
from assoc_lib.tfrt import tensorflow

log = logging.getLogger(__name__)

WARMUP_FILE = "tf_serving_warmup_requests"
MODEL_CARD = "model_card.json"
DEFAULT_K = 100


# -------------------------------------------------------------------- TensorFlow graph
# The exported graph, piece by piece. Each piece is the TensorFlow twin of the numpy scorer it names
# (tests compare them on the same inputs): the neighbour-table scorer (``NeighbourTable.score``), the
# network (``network.head`` after the bag, the same function numpy evaluation runs), the mix
# (``network.mix``), the personal prior (``ServableModel.score``), the personal co-occurrence
# (``PastBaskets.cooc``) and the explanations (``explain.explain``).


def _constants(tf, arrays: dict) -> dict:
    """numpy arrays (and nested layer lists) as TF constants; other values unchanged."""
    out = {}
    for key, value in arrays.items():
        if isinstance(value, np.ndarray) and value.ndim == 0:
            out[key] = value.item()  # a scalar setting (the network's decay time), not a tensor
        elif isinstance(value, np.ndarray):
            out[key] = tf.constant(value)
        elif key == "layers":
            out[key] = [_constants(tf, layer) for layer in value]
        else:
            out[key] = value
    return out


def table_scores(tf, table: dict, aggregation: str, ids, valid, n_items: int):
    """Neighbour-table scores [batch, V]: each basket item's neighbour weights, summed (or max), + bias."""
    batch = tf.shape(ids)[0]
    safe = tf.maximum(ids, 0)
    nbr = tf.gather(table["indices"], safe)  # [B, n, N]
    w = tf.gather(table["weights"], safe)
    ok = tf.logical_and(valid[:, :, None], nbr >= 0)
    rows = tf.broadcast_to(tf.range(batch, dtype=tf.int32)[:, None, None], tf.shape(nbr))
    seg = tf.boolean_mask(rows * n_items + nbr, ok)
    vals = tf.boolean_mask(w, ok)
    if aggregation == "max":
        flat = tf.math.unsorted_segment_max(vals, seg, batch * n_items)
        flat = tf.where(flat < -1e30, tf.zeros_like(flat), flat)
    else:
        flat = tf.math.unsorted_segment_sum(vals, seg, batch * n_items)
    return tf.reshape(flat, [batch, n_items]) + table["bias"]


def history_matrices(tf, hist_ids, counts, days, decays, n_items: int) -> dict:
    """Dense [batch, V] per-item sums of the request's history rows: ``0.0`` → purchase counts, and each
    decay time τ → decayed counts sum(count · exp(-days / τ)). Rows naming the same item add up, so a
    client may send one row per purchase (exact) or one per item with the days since its last purchase."""
    ok = hist_ids >= 0
    counts = tf.where(ok, tf.maximum(tf.cast(counts, tf.float32), 0.0), 0.0)
    days = tf.maximum(tf.cast(days, tf.float32), 0.0)
    out = {0.0: scatter_rows(hist_ids, counts, n_items)}
    for tau in sorted({float(t) for t in decays if t}):
        out[tau] = scatter_rows(hist_ids, counts * tf.exp(-days / tau), n_items)
    return out


def cap_history(tf, hist: dict, max_items: int, n_items: int) -> dict:
    """``History.capped`` on :func:`history_matrices`: each row's ``max_items`` most-bought items (the
    largest counts, ties to the lower index, as ``tf.math.top_k``), every matrix zero elsewhere."""
    if not max_items or max_items >= n_items:
        return hist
    top = tf.math.top_k(hist[0.0], k=max_items)
    rows = tf.broadcast_to(tf.range(tf.shape(top.indices)[0])[:, None], tf.shape(top.indices))
    keep = tf.scatter_nd(
        tf.stack([rows, top.indices], axis=-1), tf.cast(top.values > 0.0, tf.float32), tf.shape(hist[0.0])
    )
    return {t: m * keep for t, m in hist.items()}


def personal_cooc(tf, hist_ids, counts, days, ids, valid, tau: float, n_items: int):
    """``PastBaskets.cooc`` from the request's history rows, [batch, V]: the rows of one request row with the
    same ``history_days`` are one past basket b (one row per purchase: a basket's rows share its days), and
    each of b's items scores exp(-days / τ)·|x ∩ b| (τ 0: no decay), x the basket's known items. Rows with a
    count <= 0 or an unknown item are left out; an empty history scores 0 everywhere."""
    ok = tf.logical_and(hist_ids >= 0, tf.cast(counts, tf.float32) > 0.0)
    days = tf.maximum(tf.cast(days, tf.float32), 0.0) + 0.0  # + 0.0 turns -0.0 into 0.0: one key per day value
    hit = tf.logical_and(tf.equal(hist_ids[:, :, None], ids[:, None, :]), valid[:, None, :])
    in_x = tf.cast(tf.logical_and(tf.reduce_any(hit, axis=2), ok), tf.float32)  # [batch, h]: row's item in x
    rows = tf.broadcast_to(tf.range(tf.shape(ids, out_type=tf.int64)[0])[:, None], tf.shape(hist_ids))
    # one key per (request row, days): the float's bits (days >= 0, so the sign bit is 0) beside the row
    key = rows * (2**31) + tf.cast(tf.bitcast(days, tf.int32), tf.int64)
    groups, seg = tf.unique(tf.reshape(key, [-1]), out_idx=tf.int64)
    overlap = tf.math.unsorted_segment_sum(tf.reshape(in_x, [-1]), seg, tf.size(groups, out_type=tf.int64))
    weight = tf.reshape(tf.gather(overlap, seg), tf.shape(in_x)) * tf.cast(ok, tf.float32)
    if tau:
        weight *= tf.exp(-days / tau)
    return scatter_rows(tf.where(ok, hist_ids, -1), weight, n_items)


def first_occurrences(tf, ids):
    """[batch, n] bool: the known ids (>= 0) at their first position in the row. A basket is a set (the
    evaluation's baskets are binary, ``baselines.baskets_to_csr``): an item a client sends twice counts once
    in every score."""
    n = tf.shape(ids)[1]
    earlier = tf.range(n)[None, :] < tf.range(n)[:, None]  # [i, j]: j before i
    repeated = tf.reduce_any(tf.logical_and(tf.equal(ids[:, :, None], ids[:, None, :]), earlier[None]), axis=2)
    return tf.logical_and(ids >= 0, tf.logical_not(repeated))


def repeat_share(tf, counts, ids, valid):
    """``servable.repeat_share``, [batch, 1]: the share of the basket's known items with a purchase count > 0
    in the request's history (``counts``: [batch, V])."""
    mask = tf.cast(valid, tf.float32)
    bought = tf.cast(tf.gather(counts, tf.maximum(ids, 0), batch_dims=1) > 0.0, tf.float32) * mask
    return tf.reduce_sum(bought, axis=1, keepdims=True) / tf.maximum(tf.reduce_sum(mask, axis=1, keepdims=True), 1.0)


def repeat_gate(tf, counts, ids, valid, scale: float, slope: float):
    """``ServableModel.personal_gate``, [batch, 1]: max(scale + slope·(s - 1/2), 0), s the repeat share."""
    if not slope:
        return tf.constant(max(float(scale), 0.0), tf.float32)
    return tf.maximum(scale + slope * (repeat_share(tf, counts, ids, valid) - 0.5), 0.0)


def rerank_top(tf, rr, rr_anonymous, k: int, scores, masked, parts: dict, counts, ids, valid, log_popularity):
    """``ServableModel``'s second stage (``rerank_lists``, ``Reranker.forward``, ``rerank.reorder``): the
    features of the ``k`` best items of ``masked`` (the scores with the basket's items at -inf), the
    layers of ``rr`` on rows with a history and of ``rr_anonymous`` on the others (either None: those rows
    unchanged), and the listed items lifted above the rest in its order (row max + 1 + (r − min r)).
    ``parts``: dense [batch, V] arrays by feature name (None: the part is absent); ``counts`` None: no
    history (an anonymous request)."""
    if counts is None:
        counts = tf.zeros_like(scores)
    top = tf.math.top_k(masked, k=k).indices  # best first, ties by the lower index
    batch = tf.shape(top)[0]

    def at(a):
        return tf.zeros(tf.shape(top), tf.float32) if a is None else tf.gather(a, top, batch_dims=1)

    def per_basket(v):  # [batch, 1] -> [batch, k]
        return tf.broadcast_to(tf.cast(v, tf.float32), tf.shape(top))

    mask = tf.cast(valid, tf.float32)
    c = at(counts)
    cols = [
        at(scores),
        at(parts["network_z"]),
        at(parts["table_z"]),
        tf.math.log1p(at(parts["decayed"])),
        tf.math.log1p(c),
        tf.math.log1p(at(parts["cooc"])),
        per_basket(repeat_share(tf, counts, ids, valid)),
        per_basket(tf.math.log1p(tf.reduce_sum(tf.cast(counts > 0.0, tf.float32), axis=1, keepdims=True))),
        per_basket(tf.reduce_sum(mask, axis=1, keepdims=True)),
        tf.cast(c > 0.0, tf.float32),
        tf.gather(log_popularity, top),
        per_basket(tf.range(k, dtype=tf.float32)[None, :]),
    ]
    feats = tf.stack(cols, axis=-1)
    at_top = tf.stack([tf.broadcast_to(tf.range(batch)[:, None], tf.shape(top)), top], axis=-1)

    def reranked(r):
        if r is None:
            return scores
        h = (feats - r["mean"]) / r["scale"]
        for i, (w, b) in enumerate(zip(r["kernels"], r["biases"])):
            h = tf.tensordot(h, w, axes=1) + b
            if i < len(r["kernels"]) - 1:
                h = tf.nn.relu(h)
        new = h[..., 0]
        lifted = tf.reduce_max(scores, axis=1, keepdims=True) + 1.0 + (new - tf.reduce_min(new, axis=1, keepdims=True))
        return tf.tensor_scatter_nd_update(scores, at_top, lifted)

    has_history = tf.reduce_any(counts > 0.0, axis=1, keepdims=True)
    return tf.where(has_history, reranked(rr), reranked(rr_anonymous))


def deep_scores(tf, spec: dict, ids, valid, history=None):
    """The network's logits: the embedding-bag (plus the history bag), then ``network.head``, then the
    repeat prior. ``history``: :func:`history_matrices` (counts and the network's decayed counts)."""
    mask = tf.cast(valid, tf.float32)
    vec = tf.reduce_sum(tf.gather(spec["embeddings"], tf.maximum(ids, 0)) * mask[:, :, None], axis=1)
    count = tf.maximum(tf.reduce_sum(mask, axis=1, keepdims=True), 1.0)
    pre = vec / tf.sqrt(count) + spec["bag_bias"]
    personal = history is not None and "hist_embeddings" in spec
    if personal:
        W = tf.math.log1p(history[0.0])  # [batch, V], one entry per distinct history item
        nz = tf.where(W > 0)  # the history bag reads the distinct items only
        w = tf.gather_nd(W, nz)
        rows = tf.cast(nz[:, 0], tf.int32)
        batch = tf.shape(W)[0]
        hv = tf.math.unsorted_segment_sum(tf.gather(spec["hist_embeddings"], nz[:, 1]) * w[:, None], rows, batch)
        norm = tf.sqrt(tf.maximum(tf.math.unsorted_segment_sum(w * w, rows, batch), 1e-6))
        pre += hv / norm[:, None]
    logits = head(pre, spec, tf_ops())
    if personal:
        logits += W * spec["repeat_weight"][None, :]
        if "recency_weight" in spec:
            logits += tf.math.log1p(history[float(spec["history_decay"])]) * spec["recency_weight"][None, :]
    return logits


def exclude_inputs(tf, scores, ids, valid):
    """-inf for the basket's own items: a recommendation never repeats the input."""
    batch = tf.shape(ids)[0]
    rows = tf.broadcast_to(tf.range(batch, dtype=tf.int64)[:, None], tf.shape(ids))
    coords = tf.boolean_mask(tf.stack([rows, ids], axis=-1), valid)
    seen = tf.scatter_nd(coords, tf.ones(tf.shape(coords)[:1], tf.float32), tf.cast(tf.shape(scores), tf.int64))
    return tf.where(seen > 0, tf.fill(tf.shape(scores), float("-inf")), scores)


def explain_top(tf, evidence: dict, vocab, ids, valid, top):
    """For each recommended item: the basket item with the most confident rule towards it, with its
    count, confidence and lift (empty / zeros where no basket item has evidence)."""
    nbr = tf.gather(evidence["indices"], tf.maximum(ids, 0))  # [B, n, N]
    stats = tf.gather(evidence["stats"], tf.maximum(ids, 0))  # [B, n, N, 3]
    match = tf.logical_and(tf.equal(nbr[:, None, :, :], top[:, :, None, None]), valid[:, None, :, None])
    conf = tf.where(match, tf.broadcast_to(stats[:, None, :, :, 1], tf.shape(match)), -1.0)  # [B, K, n, N]
    shape = tf.shape(conf)
    flat = tf.reshape(conf, [shape[0], shape[1], -1])
    best = tf.argmax(flat, axis=-1, output_type=tf.int32)  # position in n*N
    found = tf.reduce_max(flat, axis=-1) > 0
    evidence_ids = tf.gather(ids, best // tf.shape(nbr)[2], batch_dims=1)
    picked = tf.gather(tf.reshape(stats, [shape[0], -1, 3]), best, batch_dims=1)  # [B, K, 3]
    zeros = tf.zeros_like(picked[..., 0])
    return {
        "evidence_item": tf.where(found, tf.gather(vocab, tf.maximum(evidence_ids, 0)), ""),
        "evidence_count": tf.where(found, picked[..., 0], zeros),
        "confidence": tf.where(found, picked[..., 1], zeros),
        "lift": tf.where(found, picked[..., 2], zeros),
    }


def _reranker_constants(tf, r) -> dict | None:
    """A second stage's weights as graph constants (None stays None)."""
    if r is None:
        return None
    return {
        "mean": tf.constant(r.mean),
        "scale": tf.constant(r.scale),
        "kernels": [tf.constant(w) for w in r.kernels],
        "biases": [tf.constant(b) for b in r.biases],
    }


def _reranker_card(model: ServableModel) -> dict | None:
    """The model card's ``reranker``: its top k, features, training record, and each stage (None: absent)."""
    if not model.reranked:
        return None
    record = model.params.get("reranker", {})
    return {
        "top_k": model.rerank_k,
        "features": list(rerank.FEATURES),
        **record,
        "personal": (record.get("personal") or {}) if model.reranker is not None else None,
        "anonymous": (record.get("anonymous") or {}) if model.reranker_anonymous is not None else None,
    }


def _build_module(model: ServableModel, k: int):
    """A tf.Module whose signatures compose the pieces above for ``model``."""
    tf = tensorflow()
    V, k = model.n_items, min(k, model.n_items)

    class BasketModule(tf.Module):
        def __init__(self):
            super().__init__(name="assoc_basket_model")
            self.vocab = tf.constant(model.vocab, dtype=tf.string)
            self.lookup = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(self.vocab, tf.range(V, dtype=tf.int64)), default_value=-1
            )
            self.popularity = tf.constant(model.popularity, tf.float32)
            t, e = model.table, model.evidence
            self.table = (
                None if t is None else _constants(tf, {"indices": t.indices, "weights": t.weights, "bias": t.bias})
            )
            self.spec = None if model.deep is None else _constants(tf, model.deep)
            self.reranker = _reranker_constants(tf, model.reranker)
            self.reranker_anonymous = _reranker_constants(tf, model.reranker_anonymous)
            self.log_popularity = tf.constant(rerank.log_popularity(model.popularity))
            self.evidence = (
                None
                if e is None
                else _constants(
                    tf, {"indices": e.indices.astype(np.int64), "stats": np.stack([e.count, e.confidence, e.lift], -1)}
                )
            )

        def _mix_weights(self, hist):
            """``ServableModel.row_mix_weights``: the anonymous weight for rows without history."""
            w, w_anon = model.mix_weight, model.mix_weight_anonymous
            if w_anon is None or w_anon == w:
                return w
            if hist is None:
                return w_anon
            empty = tf.reduce_sum(hist[0.0], axis=1, keepdims=True) <= 0.0
            return tf.where(empty, tf.constant(w_anon, tf.float32), tf.constant(w, tf.float32))

        def _complete(self, items, history=None, history_counts=None, history_days=None):
            ids = self.lookup.lookup(items)  # unknown ids and "" padding -> -1, ignored
            valid = first_occurrences(tf, ids)
            hist = hist_ids = None
            if history is not None:
                # NaN or infinite counts or days would turn every score into NaN (and let the basket's own
                # items through): refuse them, INVALID_ARGUMENT over gRPC and REST as any op error
                history_counts = tf.debugging.assert_all_finite(history_counts, "history_counts must be finite")
                history_days = tf.debugging.assert_all_finite(history_days, "history_days must be finite")
                hist_ids = self.lookup.lookup(history)
                hist = history_matrices(tf, hist_ids, history_counts, history_days, model.decays, V)
                # the evaluation's histories hold each shopper's most-bought items only: so does the graph's
                hist = cap_history(tf, hist, model.history_max_items, V)
            deep = table = cooc = None
            if self.spec is not None:
                deep = deep_scores(tf, self.spec, ids, valid, hist)
            if self.table is not None:
                table = table_scores(tf, self.table, model.table.aggregation, ids, valid, V)
            if deep is not None and table is not None:
                scores = mix(deep, table, self._mix_weights(hist), tf_ops())
            else:
                scores = deep if deep is not None else table
            empty = tf.logical_not(tf.reduce_any(valid, axis=1))
            scores = tf.where(empty[:, None], tf.broadcast_to(self.popularity[None, :], tf.shape(scores)), scores)
            if hist is not None and (model.cooc_weight or model.reranker is not None):
                # what this shopper bought together with the basket (the personal term and a reranker feature)
                cooc = personal_cooc(tf, hist_ids, history_counts, history_days, ids, valid, model.cooc_decay, V)
            if hist is not None and (model.history_weight or model.cooc_weight):
                personal = tf.zeros_like(scores)
                if model.history_weight:
                    # the personal prior: + β·log(1 + decayed count)
                    personal += model.history_weight * tf.math.log1p(hist[float(model.history_decay)])
                if model.cooc_weight:
                    # the personal co-occurrence: + γ·log(1 + what this shopper bought together with the basket)
                    personal += model.cooc_weight * tf.math.log1p(cooc)
                scores += repeat_gate(tf, hist[0.0], ids, valid, model.personal_scale, model.repeat_slope) * personal
            masked = exclude_inputs(tf, scores, ids, valid)
            if (hist is not None and model.reranker is not None) or model.reranker_anonymous is not None:
                # the second stage: the top items reordered, by the shoppers' reranker where there is a
                # history, by the anonymous one where there is none
                parts = {
                    "network_z": None if deep is None else standardise(deep, tf_ops()),
                    "table_z": None if table is None else standardise(table, tf_ops()),
                    "decayed": None if hist is None else hist[float(model.history_decay)],
                    "cooc": cooc,
                }
                scores = rerank_top(
                    tf,
                    self.reranker if hist is not None else None,  # no history: not built into the graph
                    self.reranker_anonymous,
                    min(model.rerank_k, V),
                    scores,
                    masked,
                    parts,
                    None if hist is None else hist[0.0],
                    ids,
                    valid,
                    self.log_popularity,
                )
                masked = exclude_inputs(tf, scores, ids, valid)
            top = tf.math.top_k(masked, k=k)
            out = {"item_ids": tf.gather(self.vocab, top.indices), "scores": top.values}
            if self.evidence is not None:
                out.update(explain_top(tf, self.evidence, self.vocab, ids, valid, tf.cast(top.indices, tf.int64)))
            return out

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.string, name="items")])
        def complete_basket(self, items):
            return self._complete(items)

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, None], tf.string, name="items"),
                tf.TensorSpec([None, None], tf.string, name="history"),
                tf.TensorSpec([None, None], tf.float32, name="history_counts"),
                tf.TensorSpec([None, None], tf.float32, name="history_days"),
            ]
        )
        def complete_basket_personal(self, items, history, history_counts, history_days):
            return self._complete(items, history, history_counts, history_days)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="item")])
        def related_items(self, item):
            return self._complete(item[:, None])

    return BasketModule()


def warmup_requests(model_name: str, examples: list[list[str]]) -> list:
    """PredictionLog records (TF Serving's warm-up format) for both signatures."""
    tf = tensorflow()
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    logs = []
    width = max(1, max(len(e) for e in examples))
    padded = [e + [""] * (width - len(e)) for e in examples]
    history = [list(reversed(e)) + [""] * (width - len(e)) for e in examples]
    counts = [[float(len(e) - i) if i < len(e) else 0.0 for i in range(width)] for e in examples]
    # rows two by two on one day: past baskets of two items, so the warm-up runs the co-occurrence's grouping
    days = [[7.0 * (i // 2 + 1) if i < len(e) else 0.0 for i in range(width)] for e in examples]
    requests = (
        ("complete_basket", {"items": padded}),
        ("serving_default", {"items": padded}),
        (
            "complete_basket_personal",
            {"items": padded, "history": history, "history_counts": counts, "history_days": days},
        ),
        ("related_items", {"item": [e[0] if e else "" for e in examples]}),
    )
    for signature, inputs in requests:
        req = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature))
        for key, value in inputs.items():
            dtype = tf.float32 if key in ("history_counts", "history_days") else tf.string
            req.inputs[key].CopyFrom(tf.make_tensor_proto(value, dtype=dtype))
        logs.append(prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=req)))
    return logs


def export_saved_model(
    model: ServableModel, out_dir: str | os.PathLike, model_card: dict, model_name: str = "assoc", k: int = DEFAULT_K
) -> Path:
    """Write the SavedModel (+ warm-up file + model card) to ``out_dir`` atomically."""
    if not model.servable:
        raise ValueError(f"{model.name} is an evaluation reference (a dense [V, V] matrix): it is not exported")
    tf = tensorflow()

    out_dir = Path(out_dir)
    started = time.perf_counter()
    with atomic_directory(out_dir) as export:
        module = _build_module(model, k)
        signatures = {
            "serving_default": module.complete_basket,
            "complete_basket": module.complete_basket,
            "complete_basket_personal": module.complete_basket_personal,
            "related_items": module.related_items,
        }
        tf.saved_model.save(module, str(export), signatures=signatures)
        extra = export / "assets.extra"
        extra.mkdir(parents=True, exist_ok=True)
        popular = [model.vocab[i] for i in np.argsort(-model.popularity)[:3]]
        examples = [popular[:2], [popular[0]], [], ["__unknown_item__"]]
        with tf.io.TFRecordWriter(str(extra / WARMUP_FILE)) as writer:
            for record in warmup_requests(model_name, examples):
                writer.write(record.SerializeToString())
        card = {
            **model_card,
            "model": model.name,
            "kind": model.kind,
            "vocabulary_size": model.n_items,
            "k": min(k, model.n_items),
            "params": model.params,
            "mix_weight": model.mix_weight,
            "mix_weight_anonymous": model.mix_weight_anonymous,
            "history_weight": model.history_weight,
            "history_decay": model.history_decay,
            "network_history_decay": model.network_decay or None,
            "cooc_weight": model.cooc_weight,
            "cooc_decay": model.cooc_decay,
            "personal_scale": model.personal_scale,
            "repeat_slope": model.repeat_slope,
            "personal_network": model.personal,
            "history_max_items": model.history_max_items,
            # the second stage (models/rerank.py): the top k reordered, by one reranker for a shopper with a
            # history ("personal") and one for a basket without ("anonymous"; None: that stage is absent);
            # their scores are then the row's first-stage maximum + 1 + the reranker's score, shifted to start there
            "reranker": _reranker_card(model),
            "signatures": {
                "complete_basket": {
                    "inputs": {"items": "string [batch, n]"},
                    "outputs": {"item_ids": "string [batch, K]", "scores": "float [batch, K]"},
                },
                "complete_basket_personal": {
                    "inputs": {
                        "items": "string [batch, n]",
                        "history": "string [batch, h]",
                        "history_counts": "float [batch, h]",
                        "history_days": "float [batch, h]: days since that purchase (or since the item's last); "
                        "rows with the same days are one past basket (personal co-occurrence)",
                    },
                    "outputs": {"item_ids": "string [batch, K]", "scores": "float [batch, K]"},
                },
                "related_items": {
                    "inputs": {"item": "string [batch]"},
                    "outputs": {"item_ids": "string [batch, K]", "scores": "float [batch, K]"},
                },
            },
        }
        (export / MODEL_CARD).write_text(json.dumps(card, indent=2, default=str) + "\n")
    log.info(
        "exported %s (%s, %d items) to %s in %.1fs",
        model.name,
        model.kind,
        model.n_items,
        out_dir,
        time.perf_counter() - started,
    )
    return out_dir
