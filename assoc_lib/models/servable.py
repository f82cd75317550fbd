"""The servable model: one numpy scorer for evaluation, exported with the same maths as a TF SavedModel.

A :class:`ServableModel` is a neighbour table (classical models), a deep
network, or both mixed at score level (per-basket standardised scores,
``(1-w)·deep + w·table``), plus the personal terms and, optionally, a second stage that reorders the
top items (``models/rerank.py``): one reranker for a shopper with a history, one for a basket without.
Whatever wins the gate is exported the same way (``assoc_lib.serving.export``). It is what training writes,
evaluation scores and the export reads: it lives here, below all three.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from assoc_lib.data.history import as_history
from assoc_lib.models import rerank
from assoc_lib.models.baselines import NeighbourTable
from assoc_lib.models.explain import EvidenceTable
from assoc_lib.models.network import mix, numpy_logits, standardise
from assoc_lib.records import ModelKind

# the network's arrays besides its layers (network.forward_spec), as saved and loaded
DEEP_ARRAYS = (
    "embeddings",
    "bag_bias",
    "out_kernel",
    "out_bias",
    "hist_embeddings",
    "repeat_weight",
    "recency_weight",
    "history_decay",
)


def repeat_share(X: sp.csr_matrix, H) -> np.ndarray:
    """float64 [rows]: the share of each basket's items that are in the shopper's history (0 for an empty
    basket or history), what the repeat/explore gate reads."""
    X = sp.csr_matrix(X)
    hits = np.asarray((X != 0).multiply(sp.csr_matrix(as_history(H).counts) > 0).sum(axis=1), np.float64).ravel()
    return hits / np.maximum(X.getnnz(axis=1), 1)


def repeat_gate(share, scale: float, slope: float):
    """The repeat/explore gate max(scale + slope·(share - 1/2), 0) (``ServableModel.personal_scale``)."""
    return np.maximum(scale + slope * (share - 0.5), 0.0)


@dataclass
class ServableModel:
    name: str
    kind: ModelKind
    vocab: list[str]
    popularity: np.ndarray  # float32 [V]: empty baskets get these
    table: NeighbourTable | None = None
    deep: dict | None = None  # model.forward_spec
    mix_weight: float = 0.0  # weight of the table when both parts exist
    # weight of the table for a basket without history (None: mix_weight); the personal and the anonymous
    # task want different mixes (the network carries the repeat purchases, EASE the basket alone)
    mix_weight_anonymous: float | None = None
    params: dict = field(default_factory=dict)
    history_weight: float = 0.0  # personalised protocol: + history_weight · log(1 + (decayed) purchase count)
    history_decay: float = 0.0  # days: the prior counts each purchase as exp(-days ago / decay); 0: plain counts
    evidence: EvidenceTable | None = None  # pairwise evidence that explains each recommendation
    dense: np.ndarray | None = None  # reference models only: a dense item-item matrix added to the table's scores
    # + cooc_weight · log(1 + personal co-occurrence with the basket), the shopper's earlier baskets weighted
    # by their overlap with it and by exp(-days ago / cooc_decay) (0: no decay); served from the request's
    # history rows, those with the same days being one past basket (export.personal_cooc)
    cooc_weight: float = 0.0
    cooc_decay: float = 0.0
    # the repeat/explore gate: the personal terms (prior + co-occurrence) are multiplied per basket by
    # max(personal_scale + repeat_slope·(s - 1/2), 0), s the share of the basket's items the shopper bought
    # before (a basket of things they buy again asks for more of them); (1, 0): no gate
    personal_scale: float = 1.0
    repeat_slope: float = 0.0
    # the history a model reads: each shopper's this-many most-bought items (``History.capped``; the cap the
    # evaluation's histories were built with), in numpy and in the served graph alike; 0: every item
    history_max_items: int = 0
    # the second stage (models/rerank.py): reorders the top items of a basket with a history (``reranker``)
    # and of one without (``reranker_anonymous``: an anonymous request, an empty history); each stage's two
    # halves (each fitted on the other half of validation, ``rerank.fold_of``) score validation honestly
    reranker: rerank.Reranker | None = None
    reranker_folds: tuple | None = None
    fold_seed: int = 0
    reranker_anonymous: rerank.Reranker | None = None
    reranker_anonymous_folds: tuple | None = None

    @property
    def network_decay(self) -> float:
        """Decay time (days) of the network's recency feature; 0 when the network reads no history."""
        return float(self.deep["history_decay"]) if self.personal and "history_decay" in self.deep else 0.0

    @property
    def decays(self) -> tuple[float, ...]:
        """Every decay time its scores read from a history: the prior's and the network's (0: plain counts)."""
        return tuple(sorted({self.history_decay, self.network_decay}))

    @property
    def reads_past(self) -> bool:
        """Whether its scores read the shopper's past baskets (``History.past``): the personal co-occurrence,
        as a term or as a reranker feature."""
        return bool(self.cooc_weight) or self.reranked

    @property
    def reranked(self) -> bool:
        """Whether it has a second stage (for baskets with a history, without, or both)."""
        return self.reranker is not None or self.reranker_anonymous is not None

    @property
    def rerank_k(self) -> int:
        """How many top items its second stage reorders."""
        return (self.reranker or self.reranker_anonymous).k

    @property
    def cross_fitted(self) -> bool:
        """Whether its second stage was fitted on validation by halves (evaluate.cross_fitted_ranks)."""
        return bool(self.reranker_folds or self.reranker_anonymous_folds)

    def half(self, h: int) -> "ServableModel":
        """The same model with each second stage replaced by the one fitted on half ``1 - h`` of validation:
        what scores the validation baskets of half ``h``."""
        return dataclasses.replace(
            self,
            reranker=self.reranker_folds[h] if self.reranker_folds else self.reranker,
            reranker_anonymous=self.reranker_anonymous_folds[h]
            if self.reranker_anonymous_folds
            else self.reranker_anonymous,
        )

    @property
    def servable(self) -> bool:
        """Whether the export can serve it (a dense [V, V] matrix is evaluated, never exported)."""
        return self.dense is None

    @property
    def n_items(self) -> int:
        return len(self.vocab)

    @property
    def personal(self) -> bool:
        """Whether the network itself reads the history (a second input)."""
        return self.deep is not None and "hist_embeddings" in self.deep

    def score(self, X: sp.csr_matrix, H=None) -> np.ndarray:
        """Scores [rows, vocabulary]; ``H`` (a :class:`History`, or purchase counts) switches on personalisation."""
        H = self.read_history(H)
        if self.reranker_anonymous is not None or (self.reranker is not None and H is not None):
            return self._second_stage(X, H, self.reranker, self.reranker_anonymous, self.rerank_k)[0]
        return self._first_stage(X, H)[0]

    def read_history(self, H):
        """``H`` as a :class:`History`, capped at ``history_max_items`` (None stays None)."""
        H = as_history(H)
        return H.capped(self.history_max_items) if H is not None and self.history_max_items else H

    def _first_stage(self, X: sp.csr_matrix, H):
        """(score before any reranking, the network's logits or None, the table part or None)."""
        parts = self._parts(X, H)
        out = self.base_score(X, H, parts)
        if H is not None and (self.history_weight or self.cooc_weight):
            out += self.personal_gate(X, H) * self.personal_terms(X, H)
        return (out, *parts)

    def _parts(self, X: sp.csr_matrix, H):
        """(the network's logits or None, the table's scores (+ the dense matrix) or None)."""
        logits = numpy_logits(self.deep, X, H) if self.deep is not None else None
        table = self.table.score(X) if self.table is not None else None
        if self.dense is not None:
            table = table + np.asarray(X @ self.dense, dtype=np.float32)
        return logits, table

    def rerank_lists(self, X: sp.csr_matrix, H, k: int = rerank.TOP_K):
        """(first-stage scores, top items [rows, k], features [rows, k, F], bool [rows]: the rows with a
        history): what a second stage reads, and fits on. ``H`` None: the anonymous lists (the history
        features 0, no row with a history), what ``reranker_anonymous`` reads."""
        return self._second_stage(X, self.read_history(H), None, None, k)

    def _second_stage(
        self,
        X: sp.csr_matrix,
        H,
        reranker: rerank.Reranker | None,
        reranker_anonymous: rerank.Reranker | None,
        k: int,
    ):
        """:meth:`rerank_lists` on a history already read, the scores reordered by ``reranker`` (if any) on the
        rows with a history and by ``reranker_anonymous`` (if any) on the others. An empty history gives the
        features of no history at all (every history feature is 0), so it gets the anonymous answer."""
        score, logits, table = self._first_stage(X, H)
        if H is not None and H.past is None:
            raise ValueError(
                f"{self.name}: the reranker reads the personal co-occurrence; the history needs the past baskets"
            )
        none = np.zeros(score.shape, np.float32)
        counts = H.counts.toarray() if H is not None else none
        top = rerank.top_items(score, X, k)
        feats = rerank.features(
            top,
            score,
            None if logits is None else standardise(logits),
            None if table is None else standardise(table),
            H.weights(self.history_decay).toarray() if H is not None else none,
            counts,
            H.past.cooc(X, self.cooc_decay).toarray() if H is not None else none,
            repeat_share(X, H) if H is not None else np.zeros(X.shape[0]),
            X,
            rerank.log_popularity(self.popularity),
        )
        rows = (counts > 0).any(axis=1)
        if reranker is not None and rows.any():
            score = rerank.reorder(score, top, reranker.forward(feats), rows)
        if reranker_anonymous is not None and not rows.all():
            score = rerank.reorder(score, top, reranker_anonymous.forward(feats), ~rows)
        return score, top, feats, rows

    def base_score(self, X: sp.csr_matrix, H=None, parts=None) -> np.ndarray:
        """:meth:`score` without the personal terms (the prior and the co-occurrence) and the reranker: the
        table, the network (which reads ``H`` itself when it is personal) or their mix, popularity for empty
        baskets. ``parts``: :meth:`_parts`, when already computed."""
        H = as_history(H)
        logits, table = parts if parts is not None else self._parts(X, H)
        if logits is not None and table is not None:
            out = mix(logits, table, self.row_mix_weights(X.shape[0], H))
        else:
            out = logits if logits is not None else table
        out = np.array(out, dtype=np.float32, copy=True)
        empty = np.diff(X.indptr) == 0
        if empty.any():
            out[empty] = self.popularity
        return out

    def personal_terms(self, X: sp.csr_matrix, H) -> np.ndarray:
        """[rows, items]: β·log(1 + decayed purchase count) + γ·log(1 + personal co-occurrence), before the gate."""
        H = as_history(H)
        out = np.zeros((X.shape[0], self.n_items), np.float32)
        if self.history_weight:
            out += self.history_weight * np.log1p(H.weights(self.history_decay).toarray())
        if self.cooc_weight:
            if H.past is None:
                raise ValueError(f"{self.name} scores personal co-occurrence: the history needs the past baskets")
            out += self.cooc_weight * np.log1p(H.past.cooc(X, self.cooc_decay).toarray())
        return out

    def personal_gate(self, X: sp.csr_matrix, H):
        """The repeat/explore gate per basket, [rows, 1] (a scalar without a slope): see ``personal_scale``."""
        if not self.repeat_slope:
            return np.float32(max(self.personal_scale, 0.0))
        return repeat_gate(repeat_share(X, H), self.personal_scale, self.repeat_slope).astype(np.float32)[:, None]

    def row_mix_weights(self, n: int, H=None):
        """The table's weight in the mix for each of ``n`` baskets: ``mix_weight_anonymous`` where the basket
        has no history, ``mix_weight`` where it has one (a scalar when every row gets the same)."""
        if self.mix_weight_anonymous is None or self.mix_weight_anonymous == self.mix_weight:
            return self.mix_weight
        if H is None:
            return self.mix_weight_anonymous
        empty = np.diff(as_history(H).counts.tocsr().indptr) == 0
        return np.where(empty, self.mix_weight_anonymous, self.mix_weight).astype(np.float32)[:, None]

    # ---------------------------------------------------------------- persistence between tasks
    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"popularity": self.popularity, "vocab": np.asarray(self.vocab, dtype=object)}
        meta = {
            "name": self.name,
            "kind": self.kind,
            "mix_weight": self.mix_weight,
            "mix_weight_anonymous": self.mix_weight_anonymous,
            "params": self.params,
            "history_weight": self.history_weight,
            "history_decay": self.history_decay,
            "cooc_weight": self.cooc_weight,
            "cooc_decay": self.cooc_decay,
            "personal_scale": self.personal_scale,
            "repeat_slope": self.repeat_slope,
            "dense": self.dense is not None,
            "table_aggregation": self.table.aggregation if self.table else None,
            "deep_layers": [l["type"] for l in self.deep["layers"]] if self.deep else None,
            "deep_eps": [l.get("epsilon") for l in self.deep["layers"]] if self.deep else None,
            "reranker": _stage_meta(self.reranker, self.reranker_folds),
            "reranker_anonymous": _stage_meta(self.reranker_anonymous, self.reranker_anonymous_folds),
            "fold_seed": self.fold_seed,
            "history_max_items": self.history_max_items,
        }
        if self.table is not None:
            arrays.update(
                table_indices=self.table.indices, table_weights=self.table.weights, table_bias=self.table.bias
            )
        if self.evidence is not None:
            arrays.update(
                ev_indices=self.evidence.indices,
                ev_count=self.evidence.count,
                ev_confidence=self.evidence.confidence,
                ev_lift=self.evidence.lift,
            )
        if self.deep is not None:
            for key in DEEP_ARRAYS:
                if key in self.deep:
                    arrays[f"deep_{key}"] = self.deep[key]
            for i, layer in enumerate(self.deep["layers"]):
                for key, value in layer.items():
                    if isinstance(value, np.ndarray):
                        arrays[f"deep_layer{i}_{key}"] = value
        for prefix, stage, folds in (
            ("rr", self.reranker, self.reranker_folds),
            ("rra", self.reranker_anonymous, self.reranker_anonymous_folds),
        ):
            if stage is not None:
                arrays.update(stage.arrays(f"{prefix}_"))
                for i, fold in enumerate(folds or ()):
                    arrays.update(fold.arrays(f"{prefix}{i}_"))
        arrays["meta"] = np.asarray(json.dumps(meta))
        if self.dense is not None:  # beside the archive, memory-mapped when loaded
            dense_tmp = path.with_name(f".{path.name}.dense.tmp.npy")
            dense_tmp.unlink(missing_ok=True)
            source = mapped_file(self.dense)  # the whole of another model's .npy, memory-mapped
            try:
                if source is None or self.dense.dtype != np.float32 or not self.dense.flags.c_contiguous:
                    raise OSError("no file to link")
                os.link(source, dense_tmp)  # a model derived from a saved one (+personal_cooc) shares its matrix
            except OSError:
                np.save(dense_tmp, np.ascontiguousarray(self.dense, np.float32))  # C order: see baselines
            dense_tmp.replace(path.with_name(f"{path.name}.dense.npy"))
        tmp = path.with_name(f".{path.name}.tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ServableModel":
        z = np.load(path, allow_pickle=True)
        meta = json.loads(str(z["meta"]))
        table = deep = None
        if meta["table_aggregation"]:
            table = NeighbourTable(z["table_indices"], z["table_weights"], z["table_bias"], meta["table_aggregation"])
        if meta["deep_layers"] is not None:
            deep = {k: z[f"deep_{k}"] for k in DEEP_ARRAYS if f"deep_{k}" in z}
            deep["layers"] = []
            for i, (kind, eps) in enumerate(zip(meta["deep_layers"], meta["deep_eps"])):
                if kind == "dense_tanh":
                    deep["layers"].append(
                        {"type": kind, "kernel": z[f"deep_layer{i}_kernel"], "bias": z[f"deep_layer{i}_bias"]}
                    )
                else:
                    deep["layers"].append(
                        {
                            "type": kind,
                            "gamma": z[f"deep_layer{i}_gamma"],
                            "beta": z[f"deep_layer{i}_beta"],
                            "epsilon": eps,
                        }
                    )
        evidence = (
            EvidenceTable(z["ev_indices"], z["ev_count"], z["ev_confidence"], z["ev_lift"])
            if "ev_indices" in z
            else None
        )
        reranker, reranker_folds = _load_stage(z, "rr", meta.get("reranker"))
        reranker_anonymous, reranker_anonymous_folds = _load_stage(z, "rra", meta.get("reranker_anonymous"))
        return cls(
            reranker=reranker,
            reranker_folds=reranker_folds,
            reranker_anonymous=reranker_anonymous,
            reranker_anonymous_folds=reranker_anonymous_folds,
            fold_seed=meta.get("fold_seed", 0),
            history_max_items=meta.get("history_max_items", 0),
            name=meta["name"],
            kind=ModelKind(meta["kind"]),
            vocab=[str(v) for v in z["vocab"]],
            evidence=evidence,
            popularity=z["popularity"],
            table=table,
            deep=deep,
            mix_weight=meta["mix_weight"],
            mix_weight_anonymous=meta.get("mix_weight_anonymous"),
            params=meta["params"],
            history_weight=meta.get("history_weight", 0.0),
            history_decay=meta.get("history_decay", 0.0),
            cooc_weight=meta.get("cooc_weight", 0.0),
            cooc_decay=meta.get("cooc_decay", 0.0),
            personal_scale=meta.get("personal_scale", 1.0),
            repeat_slope=meta.get("repeat_slope", 0.0),
            dense=map_dense(f"{path}.dense.npy") if meta.get("dense") else None,
        )


_DENSE_MAPS: "weakref.WeakValueDictionary[tuple, np.memmap]" = weakref.WeakValueDictionary()
_DENSE_LOCK = threading.Lock()


def map_dense(path: str | os.PathLike) -> np.memmap:
    """A reference model's dense matrix, memory-mapped read-only, one mapping per file in this process.

    The models derived from a saved one (``+personal_cooc``, ``+rerank``) hard-link its ``.npy``; loaded side
    by side (evaluation loads every candidate) they share one mapping instead of one each: every mapping's
    resident pages count in the process's resident memory, and each would fault the same pages in again.
    A file replaced since (another inode, size or time) gets a new mapping."""
    key = _file_key(path)
    with _DENSE_LOCK:
        mapped = _DENSE_MAPS.get(key)
        if mapped is None:
            mapped = np.load(path, mmap_mode="r")
            _DENSE_MAPS[key] = mapped
        return mapped


def mapped_file(array) -> str | None:
    """The ``.npy`` that ``array`` is the whole mapping of (an array :func:`map_dense` returned), while that
    file is still the one mapped; else None. A view of a mapping (a slice, a reshape) carries the mapping's
    ``filename`` too, and a file replaced since holds other numbers: linking either would save the wrong
    matrix, so those are written out instead."""
    with _DENSE_LOCK:
        key = next((k for k, m in _DENSE_MAPS.items() if m is array), None)
    if key is None:
        return None
    try:
        return array.filename if _file_key(array.filename) == key else None
    except OSError:
        return None


def _file_key(path: str | os.PathLike) -> tuple:
    """A file's identity for :func:`map_dense`: replaced (another inode) or rewritten, it is another file."""
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _stage_meta(stage: rerank.Reranker | None, folds) -> dict | None:
    """What :meth:`ServableModel.load` needs to read a second stage back."""
    return None if stage is None else {"k": stage.k, "layers": len(stage.kernels), "folds": bool(folds)}


def _load_stage(z, prefix: str, meta: dict | None) -> tuple:
    """(the reranker, its two halves or None) saved under ``prefix`` (None, None when there is none)."""
    if not meta:
        return None, None
    read = lambda p: rerank.Reranker.from_arrays(z, p, meta["k"], meta["layers"])  # noqa: E731
    return read(f"{prefix}_"), tuple(read(f"{prefix}{i}_") for i in (0, 1)) if meta["folds"] else None
