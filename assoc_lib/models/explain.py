"""Why is this recommended? Pairwise evidence shipped inside every export.

For each item i, its top-N partners j by confidence(i → j) over the training window,
with the co-occurrence count, confidence and lift. A recommended item j is explained
by the basket item i whose rule i → j has the highest confidence (no such rule: no
evidence, the recommendation comes from the model alone).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


@dataclass
class EvidenceTable:
    indices: np.ndarray  # int32 [V, N], -1 padding
    count: np.ndarray  # float32 [V, N] baskets holding both
    confidence: np.ndarray  # float32 [V, N] P(j | i)
    lift: np.ndarray  # float32 [V, N] confidence / support(j)

    @property
    def n_items(self) -> int:
        return self.indices.shape[0]


def evidence_table(X: sp.csr_matrix, top_n: int = 50, min_count: int = 2) -> EvidenceTable:
    """From the binary train baskets: each item's top-N partners by confidence (ties: count).

    Only pairs seen together ``min_count`` times with lift > 1 count as evidence."""
    from assoc_lib.models.baselines import cooccurrence

    n_baskets, v = X.shape
    C, item_count = cooccurrence(X)
    idx = np.full((v, top_n), -1, np.int32)
    cnt = np.zeros((v, top_n), np.float32)
    conf = np.zeros((v, top_n), np.float32)
    lift = np.zeros((v, top_n), np.float32)
    support = item_count / max(n_baskets, 1)
    for i in range(v):
        cols = C.indices[C.indptr[i] : C.indptr[i + 1]]
        vals = C.data[C.indptr[i] : C.indptr[i + 1]]
        c = vals / max(item_count[i], 1.0)
        keep = (vals >= min_count) & (c / np.maximum(support[cols], 1e-12) > 1.0)  # lift <= 1 is no evidence
        cols, vals, c = cols[keep], vals[keep], c[keep]
        if not len(cols):
            continue
        order = np.lexsort((-vals, -c))[:top_n]
        k = len(order)
        idx[i, :k], cnt[i, :k], conf[i, :k] = cols[order], vals[order], c[order]
        lift[i, :k] = c[order] / np.maximum(support[cols[order]], 1e-12)
    return EvidenceTable(idx, cnt, conf, lift)


def explain(table: EvidenceTable, basket: list[int], recommended: list[int]) -> list[dict]:
    """Reference implementation (the export computes the same in the graph)."""
    out = []
    for j in recommended:
        best = {"evidence_item": -1, "count": 0.0, "confidence": 0.0, "lift": 0.0}
        for i in basket:
            hits = np.flatnonzero(table.indices[i] == j)
            if len(hits) and table.confidence[i, hits[0]] > best["confidence"]:
                h = hits[0]
                best = {
                    "evidence_item": int(i),
                    "count": float(table.count[i, h]),
                    "confidence": float(table.confidence[i, h]),
                    "lift": float(table.lift[i, h]),
                }
        out.append(best)
    return out
