"""Classical basket scorers behind one interface, and their exportable neighbour tables.

Every scorer is fitted on a binary basket-by-item CSR matrix and scores a batch
of baskets against the whole vocabulary. Each can describe itself as a
:class:`NeighbourTable` (per item, its top-N neighbours with weights, an
aggregation and a bias vector): that is what the export turns into a TF graph,
so whichever model wins the gate is served the same way.

Aggregations
- ``sum``: score_j = sum over basket items i of w(i, j)  (item-kNN, EASE)
- ``max``: score_j = max over basket items i of w(i, j)  (association rules: the
  strongest single rule i → j, i.e. max confidence; ties broken by popularity)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from assoc_lib.config import ModelsConfig
from assoc_lib.records import ModelKind

log = logging.getLogger(__name__)

TIE_BREAK = 1e-6  # popularity share added to sparse scorers so empty/tied scores rank popular items first


def baskets_to_csr(baskets: Sequence[Sequence[int]], n_items: int) -> sp.csr_matrix:
    """Binary CSR matrix [n_baskets, n_items] from lists of vocabulary indices."""
    indptr = np.zeros(len(baskets) + 1, dtype=np.int64)
    lengths = np.fromiter((len(b) for b in baskets), dtype=np.int64, count=len(baskets))
    np.cumsum(lengths, out=indptr[1:])
    indices = np.fromiter((i for b in baskets for i in b), dtype=np.int32, count=int(indptr[-1]))
    data = np.ones(len(indices), dtype=np.float32)
    m = sp.csr_matrix((data, indices, indptr), shape=(len(baskets), n_items))
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


@dataclass
class NeighbourTable:
    """Sparse, exportable form of an item-item scorer."""

    indices: np.ndarray  # int32 [n_items, N], -1 where fewer neighbours
    weights: np.ndarray  # float32 [n_items, N]
    bias: np.ndarray  # float32 [n_items]
    aggregation: str  # "sum" or "max"

    @classmethod
    def bias_only(cls, bias: np.ndarray) -> "NeighbourTable":
        """No neighbours: every basket gets ``bias`` (popularity-style scorers)."""
        v = len(bias)
        return cls(np.full((v, 1), -1, np.int32), np.zeros((v, 1), np.float32), bias.astype(np.float32), "sum")

    def score(self, X: sp.csr_matrix) -> np.ndarray:
        n, v = X.shape
        out = np.zeros((n, v), dtype=np.float32) if self.aggregation == "sum" else np.full((n, v), -np.inf, np.float32)
        for r in range(n):
            items = X.indices[X.indptr[r] : X.indptr[r + 1]]
            if len(items) == 0:
                continue
            idx, w = self.indices[items].ravel(), self.weights[items].ravel()
            keep = idx >= 0
            if self.aggregation == "sum":
                np.add.at(out[r], idx[keep], w[keep])
            else:
                np.maximum.at(out[r], idx[keep], w[keep])
        if self.aggregation == "max":
            out[np.isneginf(out)] = 0.0
        return out + self.bias[None, :]


def top_n_table(matrix, n: int, by_magnitude: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top-n of a dense or sparse square matrix: by value, positive only; or, with
    ``by_magnitude`` (dense only), the n largest |weights| of either sign (what a linear model such as
    EASE needs: its negative weights carry as much as the positive ones)."""
    if by_magnitude:
        return _top_n_by_magnitude(np.asarray(matrix), n)
    v = matrix.shape[0]
    n = min(n, v)
    idx = np.full((v, n), -1, dtype=np.int32)
    w = np.zeros((v, n), dtype=np.float32)
    if sp.issparse(matrix):
        m = matrix.tocsr()
        for i in range(v):
            cols, vals = m.indices[m.indptr[i] : m.indptr[i + 1]], m.data[m.indptr[i] : m.indptr[i + 1]]
            pos = vals > 0
            cols, vals = cols[pos], vals[pos]
            if len(vals) > n:
                top = np.argpartition(-vals, n - 1)[:n]
                cols, vals = cols[top], vals[top]
            order = np.argsort(-vals, kind="stable")
            idx[i, : len(order)], w[i, : len(order)] = cols[order], vals[order]
    else:
        dense = np.asarray(matrix)
        for start in range(0, v, 1024):
            block = dense[start : start + 1024]
            top = np.argpartition(-block, n - 1, axis=1)[:, :n] if n < v else np.tile(np.arange(v), (len(block), 1))
            vals = np.take_along_axis(block, top, axis=1)
            order = np.argsort(-vals, axis=1, kind="stable")
            top, vals = np.take_along_axis(top, order, axis=1), np.take_along_axis(vals, order, axis=1)
            keep = vals > 0
            idx[start : start + len(block)] = np.where(keep, top, -1)
            w[start : start + len(block)] = np.where(keep, vals, 0.0)
    return idx, w


def _top_n_by_magnitude(dense: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    v = dense.shape[0]
    n = min(n, v)
    idx = np.full((v, n), -1, dtype=np.int32)
    w = np.zeros((v, n), dtype=np.float32)
    for start in range(0, v, 1024):
        block = np.asarray(dense[start : start + 1024], dtype=np.float32)
        mag = np.abs(block)
        top = np.argpartition(-mag, n - 1, axis=1)[:, :n] if n < v else np.tile(np.arange(v), (len(block), 1))
        order = np.argsort(-np.take_along_axis(mag, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        vals = np.take_along_axis(block, top, axis=1)
        keep = vals != 0
        idx[start : start + len(block)] = np.where(keep, top, -1)
        w[start : start + len(block)] = np.where(keep, vals, 0.0)
    return idx, w


def cooccurrence(X: sp.csr_matrix) -> tuple[sp.csr_matrix, np.ndarray]:
    """Pair counts (CSR, diagonal removed) and per-item basket counts of binary baskets."""
    C = (X.T @ X).tocsr().astype(np.float32)
    item_count = C.diagonal().copy()
    C.setdiag(0)
    C.eliminate_zeros()
    return C, item_count


def cosine_cooccurrence(X: sp.csr_matrix) -> sp.csr_matrix:
    """count(i, j) / sqrt(count(i) · count(j)), diagonal removed."""
    C, item_count = cooccurrence(X)
    D = sp.diags(1.0 / np.sqrt(np.maximum(item_count, 1e-12)))
    return (D @ C @ D).tocsr()


class Scorer:
    """Fit on train baskets; score baskets against the vocabulary through the exportable table."""

    name = "scorer"
    kind = ModelKind.CLASSICAL
    table: NeighbourTable

    def fit(self, X: sp.csr_matrix) -> "Scorer":
        raise NotImplementedError

    def score(self, X: sp.csr_matrix) -> np.ndarray:
        """Scores of the served form, so evaluation measures what ships."""
        return self.neighbour_table().score(X)

    def neighbour_table(self) -> NeighbourTable:
        return self.table

    def params(self) -> dict:
        return {}


def popularity_counts(X: sp.csr_matrix) -> np.ndarray:
    counts = np.asarray(X.sum(axis=0)).ravel().astype(np.float32)
    return counts / max(float(counts.max()), 1.0)


class Popularity(Scorer):
    name = "popularity"

    def fit(self, X):
        self.pop = popularity_counts(X)
        return self

    def score(self, X):
        return np.tile(self.pop, (X.shape[0], 1))

    def neighbour_table(self):
        return NeighbourTable.bias_only(self.pop)


class AssociationRules(Scorer):
    """Pairwise rules i → j from the sparse co-occurrence matrix; a basket scores j by its best rule."""

    name = "rules"

    def __init__(
        self,
        min_pair_count: int = ModelsConfig.rules_min_pair_count,
        min_confidence: float = ModelsConfig.rules_min_confidence,
        top_n: int = ModelsConfig.export_top_n,
    ):
        self.min_pair_count, self.min_confidence, self.top_n = min_pair_count, min_confidence, top_n

    def fit(self, X):
        n = X.shape[0]
        C, item_count = cooccurrence(X)
        C.data[C.data < self.min_pair_count] = 0
        C.eliminate_zeros()
        coo = C.tocoo()
        confidence = coo.data / np.maximum(item_count[coo.row], 1)
        support_j = item_count[coo.col] / n
        keep = confidence >= self.min_confidence
        self.pairs = {
            "antecedent": coo.row[keep],
            "consequent": coo.col[keep],
            "count": coo.data[keep],
            "support": coo.data[keep] / n,
            "confidence": confidence[keep],
            "lift": confidence[keep] / np.maximum(support_j[keep], 1e-12),
        }
        conf = sp.csr_matrix((confidence[keep], (coo.row[keep], coo.col[keep])), shape=C.shape)
        self.pop = popularity_counts(X)
        self.table = NeighbourTable(*top_n_table(conf, self.top_n), TIE_BREAK * self.pop, "max")
        return self

    def params(self):
        return {
            "min_pair_count": self.min_pair_count,
            "min_confidence": self.min_confidence,
            "top_n": self.top_n,
            "aggregation": "max confidence",
        }


class ItemKNN(Scorer):
    """Cosine similarity on co-occurrence, each item's top-k neighbours, summed over the basket."""

    name = "item_knn"

    def __init__(self, k: int = ModelsConfig.knn_k):
        self.k = k

    def fit(self, X):
        self.pop = popularity_counts(X)
        self.table = NeighbourTable(*top_n_table(cosine_cooccurrence(X), self.k), TIE_BREAK * self.pop, "sum")
        return self

    def params(self):
        return {"k": self.k}


def _spd_inverse_inplace(G: np.ndarray, block: int = 2048) -> np.ndarray:
    """Inverse of a symmetric positive-definite matrix in its own memory (Cholesky, LAPACK potrf/potri),
    returned C-ordered.

    np.linalg.inv needs about three more copies of a 15k x 15k matrix; this needs none. LAPACK works on
    the Fortran-ordered view; the inverse is symmetric, so its transpose is the same matrix C-ordered (no
    copy). The order matters downstream: ``X @ B`` (scipy, sparse times dense) copies a Fortran-ordered
    ``B`` into C order on every call (0.3 s and 481 MB for 11k items), which cost the daily evaluate task
    42 of its 57 s while the dense EASE matrix was kept Fortran-ordered.
    """
    from scipy.linalg import lapack

    potrf, potri = lapack.get_lapack_funcs(("potrf", "potri"), (G,))
    G = G.T if G.flags.c_contiguous else G  # symmetric: the transpose is the same matrix, Fortran-ordered, no copy
    c, info = potrf(G, lower=False, overwrite_a=True, clean=False)
    if info != 0:
        raise np.linalg.LinAlgError(f"EASE Gram matrix is not positive definite (potrf info {info})")
    P, info = potri(c, lower=False, overwrite_c=True)
    if info != 0:
        raise np.linalg.LinAlgError(f"EASE inverse failed (potri info {info})")
    m = P.shape[0]
    for start in range(0, m, block):  # potri fills the upper triangle: mirror it, block by block
        stop = min(start + block, m)
        P[stop:, start:stop] = P[start:stop, stop:].T
        sub = P[start:stop, start:stop]
        P[start:stop, start:stop] = np.triu(sub) + np.triu(sub, 1).T
    return P.T  # potri's output is Fortran-ordered (G was made so above); symmetric: the same matrix, C-ordered


class EASE(Scorer):
    """Steck (2019): B = I - P·diag(1/diag(P)), P = (XᵀX + λI)⁻¹, diag(B) = 0.

    The Gram matrix is dense [m, m]; above ``max_items`` only the most frequent
    ``max_items`` items get EASE scores (the vocabulary is frequency-ordered),
    the rest fall back to popularity, and the log says so. The served form keeps each
    item's ``top_n`` largest |weights|, negative ones included: on Complete Journey
    (25,857 items) that scores NDCG@10 0.0867 against 0.0875 for the full matrix, where the
    200 largest positive weights alone score 0.0837 (benchmarks/ease_tables.py).
    """

    name = "ease"

    def __init__(
        self,
        l2: float = ModelsConfig.ease_l2,
        max_items: int = ModelsConfig.ease_max_items,
        top_n: int = ModelsConfig.export_top_n,
    ):
        self.l2, self.max_items, self.top_n = l2, max_items, top_n

    def fit(self, X):
        v = X.shape[1]
        m = min(v, self.max_items)
        if m < v:
            log.warning(
                "EASE: vocabulary %d exceeds max_items %d; EASE covers the %d most frequent items, "
                "the rest are scored by popularity",
                v,
                self.max_items,
                m,
            )
        Xm = X[:, :m]
        # float32 halves the memory of the dense m x m matrices (15k items: ~0.9 GB each); the
        # ridge term keeps the Gram matrix well conditioned, so single precision ranks the same.
        G = (Xm.T @ Xm).tocsr().toarray()  # float32, like X
        G[np.diag_indices(m)] += self.l2
        P = _spd_inverse_inplace(G)
        P /= -np.diag(P)[None, :]
        P[np.diag_indices(m)] = 0.0
        B = P
        self.m = m
        self.B = B.astype(np.float32, copy=False)
        self._table = None
        self.pop = popularity_counts(X)
        self.covered = m
        return self

    def neighbour_table(self):
        if getattr(self, "_table", None) is None:
            v = len(self.pop)
            idx, w = top_n_table(self.B, self.top_n, by_magnitude=True)
            full_idx = np.full((v, idx.shape[1]), -1, np.int32)
            full_w = np.zeros((v, idx.shape[1]), np.float32)
            full_idx[: self.m], full_w[: self.m] = idx, w
            self._table = NeighbourTable(full_idx, full_w, TIE_BREAK * self.pop, "sum")
        return self._table

    def params(self):
        return {
            "l2": self.l2,
            "max_items": self.max_items,
            "items_covered": getattr(self, "covered", None),
            "export_top_n": self.top_n,
        }


def default_scorers(cfg=None) -> list[Scorer]:
    """Every classical scorer, set from ``cfg.models`` (the config's defaults when ``cfg`` is None)."""
    mc = cfg.models if cfg is not None else ModelsConfig()
    return [
        Popularity(),
        AssociationRules(min_pair_count=mc.rules_min_pair_count, min_confidence=mc.rules_min_confidence),
        ItemKNN(k=mc.knn_k),
        EASE(l2=mc.ease_l2, max_items=mc.ease_max_items, top_n=mc.export_top_n),
    ]


def fit_timed(scorer: Scorer, X: sp.csr_matrix) -> float:
    started = time.perf_counter()
    scorer.fit(X)
    return time.perf_counter() - started
