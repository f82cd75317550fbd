"""A second stage that reorders a candidate's top items for a shopper (learning to rank).

The idea: a candidate's score is a fixed sum of parts (the network, the neighbour table, the shopper's
decayed purchases, what they bought together with the basket), weighted the same for every basket and item.
Which part to trust depends on the pair: a shopper's staple next to a basket of staples, a new item next to
a basket of new things. The reranker reads, for each of the candidate's top ``k`` items (the basket's own
items excluded), the parts themselves and a few facts about the basket, and gives the item a new score; the
top ``k`` are reordered by it and stay above every other item. It is a small network (two ReLU layers of
32, one score per item) trained with a softmax over each basket's list on validation baskets whose hidden
item is in the list (``train.fit_reranker``). A model has up to two: one fitted on baskets with a history
(personalised protocol), one on baskets without (anonymous protocol: every history feature is 0, so the
network, table, score, basket size, popularity and position decide). An empty history has the features of
no history, so it gets the anonymous stage: the anonymous answer.

Features, per (basket, item), in this order (:data:`FEATURES`); a part the candidate lacks is 0:

    score       the candidate's own score (prior, co-occurrence and gate included)
    network_z   the network's logits, z-scored over the vocabulary per basket
    table_z     the neighbour table's scores (+ the dense matrix of a reference model), z-scored the same way
    decayed     log(1 + decayed purchase count), at the candidate's prior decay time (0: plain counts)
    counts      log(1 + purchase count)
    cooc        log(1 + personal co-occurrence) at the candidate's co-occurrence decay time
    share       the basket's repeat share (the gate's s)
    history     log(1 + number of distinct items in the history)
    basket      the number of distinct known items in the basket
    bought      1 when the shopper bought the item before
    popularity  log(1 + 10,000 · popularity / the most popular item's)
    position    the item's position in the candidate's order, 0 first

Numpy only: training lives in ``train``, the TensorFlow twin in ``serving/export`` (tested equal).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

FEATURES = (
    "score",
    "network_z",
    "table_z",
    "decayed",
    "counts",
    "cooc",
    "share",
    "history",
    "basket",
    "bought",
    "popularity",
    "position",
)
TOP_K = 100


@dataclass
class Reranker:
    """The fitted network: standardisation, then ReLU layers, then one linear score per item."""

    mean: np.ndarray  # float32 [F]
    scale: np.ndarray  # float32 [F]
    kernels: list  # float32 [F, h1], [h1, h2], ..., [h_last, 1]
    biases: list
    k: int = TOP_K

    def forward(self, feats: np.ndarray) -> np.ndarray:
        """float32 [rows, k]: the new score of each listed item."""
        h = (np.asarray(feats, np.float32) - self.mean) / self.scale
        for i, (w, b) in enumerate(zip(self.kernels, self.biases)):
            h = h @ w + b
            if i < len(self.kernels) - 1:
                h = np.maximum(h, 0.0)
        return h[..., 0].astype(np.float32)

    def arrays(self, prefix: str) -> dict:
        out = {f"{prefix}mean": self.mean, f"{prefix}scale": self.scale}
        for i, (w, b) in enumerate(zip(self.kernels, self.biases)):
            out[f"{prefix}kernel{i}"], out[f"{prefix}bias{i}"] = w, b
        return out

    @classmethod
    def from_arrays(cls, z, prefix: str, k: int, layers: int) -> "Reranker":
        return cls(
            z[f"{prefix}mean"],
            z[f"{prefix}scale"],
            [z[f"{prefix}kernel{i}"] for i in range(layers)],
            [z[f"{prefix}bias{i}"] for i in range(layers)],
            k,
        )


def fold_of(order_ids, seed: int) -> np.ndarray:
    """int [rows]: 0 or 1 per basket, from a hash of (seed, order id): the two halves of validation that
    cross-fit a reranker. Its own stream: the draw that hid each basket's item must not pick its half."""
    return np.array([zlib.crc32(f"{seed}:{o}".encode()) & 1 for o in order_ids], np.int64)


def top_items(score: np.ndarray, inputs, k: int) -> np.ndarray:
    """int64 [rows, k]: each row's k best items by ``score`` with the basket's own items left out, best
    first, ties by the lower item index (as ``tf.math.top_k``)."""
    masked = np.array(score, np.float64, copy=True)
    rows, cols = inputs.nonzero()
    masked[rows, cols] = -np.inf
    k = min(k, masked.shape[1])
    part = np.argpartition(-masked, k - 1, axis=1)[:, :k]
    values = np.take_along_axis(masked, part, 1)
    order = np.lexsort((part, -values), axis=1)  # by value descending, then index ascending
    return np.take_along_axis(part, order, 1)


def features(
    top: np.ndarray,
    score: np.ndarray,
    network_z,
    table_z,
    decayed: np.ndarray,
    counts: np.ndarray,
    cooc,
    share: np.ndarray,
    inputs,
    log_popularity: np.ndarray,
) -> np.ndarray:
    """float32 [rows, k, len(FEATURES)] at ``top`` (dense [rows, V] arrays; None for a missing part)."""
    n, k = top.shape

    def at(a):
        return np.zeros((n, k)) if a is None else np.take_along_axis(np.asarray(a), top, 1)

    def per_basket(v):
        return np.repeat(np.asarray(v, np.float64)[:, None], k, 1)

    c = at(counts)
    cols = [
        at(score),
        at(network_z),
        at(table_z),
        np.log1p(at(decayed)),
        np.log1p(c),
        np.log1p(at(cooc)),
        per_basket(share),
        per_basket(np.log1p((np.asarray(counts) > 0).sum(1))),
        per_basket(np.diff(inputs.indptr)),
        (c > 0).astype(np.float64),
        log_popularity[top],
        np.tile(np.arange(k, dtype=np.float64), (n, 1)),
    ]
    return np.stack(cols, -1).astype(np.float32)


def log_popularity(popularity: np.ndarray) -> np.ndarray:
    """float32 [V]: the popularity feature."""
    p = np.asarray(popularity, np.float64)
    return np.log1p(1e4 * p / max(float(p.max()), 1e-12)).astype(np.float32)


def reorder(score: np.ndarray, top: np.ndarray, new: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``score`` with the listed items of ``rows`` (bool [rows]) lifted above every other item in the order of
    ``new``: row max + 1 + (new − min new). Other rows unchanged."""
    out = np.array(score, np.float32, copy=True)
    lifted = out.max(1, keepdims=True) + 1.0 + (new - new.min(1, keepdims=True))
    r = np.flatnonzero(rows)
    out[r[:, None], top[r]] = lifted[r]
    return out
