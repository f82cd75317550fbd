"""Insights for merchandisers: frequently-bought-together tables and product categories from associations.

- ``frequently_bought_together``: pairwise rules, multi-item rules (FP-growth) and the deep
  model's related items per product, with titles, as parquet and CSV. Rules with lift <= 1 or
  support below the threshold are never listed.
- ``category_prediction``: each product's category predicted from the deep model's item
  embeddings (kNN over categorised products), scored on held-out products against a
  popularity-only and a co-occurrence-only baseline, plus suggestions for uncategorised products.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from assoc_lib.models.baselines import baskets_to_csr, cosine_cooccurrence

log = logging.getLogger(__name__)


def load_catalog(catalog_path: str | Path | None) -> pd.DataFrame:
    cols = ["item_id", "title", "department", "category"]
    if catalog_path and Path(catalog_path).exists():
        import pyarrow.parquet as pq

        df = pq.read_table(catalog_path).to_pandas()
        return df[[c for c in cols if c in df.columns]].drop_duplicates("item_id").set_index("item_id")
    return pd.DataFrame(columns=cols).set_index("item_id")


def _titles(ids: pd.Series, catalog: pd.DataFrame) -> pd.Series:
    if "title" not in catalog.columns:
        return pd.Series([None] * len(ids), index=ids.index)
    return ids.map(catalog["title"])


def _write(df: pd.DataFrame, out_dir: Path, name: str) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    df.to_parquet(out_dir / f"{name}.parquet", index=False)
    df.to_csv(out_dir / f"{name}.csv", index=False, float_format="%.6g")
    return {"rows": len(df), "parquet": str(out_dir / f"{name}.parquet"), "csv": str(out_dir / f"{name}.csv")}


def pair_rules(
    X: sp.csr_matrix, vocab: list[str], min_support: float, min_lift: float = 1.0, top: int = 1000
) -> pd.DataFrame:
    """Pairs i → j with support >= min_support and lift > min_lift, strongest lift first."""
    n = X.shape[0]
    C = (X.T @ X).tocoo()
    counts = np.asarray(X.sum(axis=0)).ravel()
    keep = C.row != C.col
    i, j, c = C.row[keep], C.col[keep], C.data[keep].astype(float)
    support = c / n
    confidence = c / np.maximum(counts[i], 1)
    lift = confidence / np.maximum(counts[j] / n, 1e-12)
    ok = (support >= min_support) & (lift > min_lift)
    df = pd.DataFrame(
        {
            "antecedents": np.asarray(vocab, dtype=object)[i[ok]],
            "consequents": np.asarray(vocab, dtype=object)[j[ok]],
            "n_items": 2,
            "count": c[ok].astype(int),
            "support": support[ok],
            "confidence": confidence[ok],
            "lift": lift[ok],
        }
    )
    return (
        df.sort_values(["lift", "confidence", "antecedents", "consequents"], ascending=[False, False, True, True])
        .head(top)
        .reset_index(drop=True)
    )


def multi_item_rules(
    baskets: list[list[int]],
    vocab: list[str],
    min_support: float,
    min_confidence: float,
    max_len: int = 3,
    min_lift: float = 1.0,
    top: int = 1000,
) -> pd.DataFrame:
    """Rules with two or more antecedent items (FP-growth), lift > min_lift."""
    from mlxtend.frequent_patterns import association_rules, fpgrowth

    X = baskets_to_csr(baskets, len(vocab))
    frequent = np.flatnonzero(np.asarray(X.sum(axis=0)).ravel() / max(X.shape[0], 1) >= min_support)
    if len(frequent) == 0:
        return pd.DataFrame(columns=["antecedents", "consequents", "n_items", "support", "confidence", "lift"])
    onehot = pd.DataFrame.sparse.from_spmatrix(X[:, frequent].astype(bool), columns=[vocab[k] for k in frequent])
    itemsets = fpgrowth(onehot, min_support=min_support, use_colnames=True, max_len=max_len)
    if itemsets.empty:
        return pd.DataFrame(columns=["antecedents", "consequents", "n_items", "support", "confidence", "lift"])
    rules = association_rules(itemsets, num_itemsets=X.shape[0], metric="confidence", min_threshold=min_confidence)
    rules = rules[(rules["antecedents"].map(len) >= 2) & (rules["lift"] > min_lift)]
    df = pd.DataFrame(
        {
            "antecedents": [" & ".join(sorted(a)) for a in rules["antecedents"]],
            "consequents": [" & ".join(sorted(c)) for c in rules["consequents"]],
            "n_items": [len(a) + len(c) for a, c in zip(rules["antecedents"], rules["consequents"])],
            "support": rules["support"].to_numpy(),
            "confidence": rules["confidence"].to_numpy(),
            "lift": rules["lift"].to_numpy(),
        }
    )
    return (
        df.sort_values(["lift", "confidence", "antecedents"], ascending=[False, False, True])
        .head(top)
        .reset_index(drop=True)
    )


def related_items_table(model, vocab: list[str], k: int = 10, batch: int = 1024) -> pd.DataFrame:
    """Each product's top-k related items from a servable model (a single-item basket)."""
    rows = []
    v = len(vocab)
    for start in range(0, v, batch):
        items = list(range(start, min(start + batch, v)))
        X = baskets_to_csr([[i] for i in items], v)
        scores = model.score(X).astype(np.float64)
        scores[np.arange(len(items)), items] = -np.inf
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        for r, item in enumerate(items):
            for rank, j in enumerate(top[r], 1):
                rows.append((vocab[item], rank, vocab[j], float(scores[r, j])))
    return pd.DataFrame(rows, columns=["item_id", "rank", "related_item_id", "score"])


def frequently_bought_together(
    baskets: list[list[int]],
    vocab: list[str],
    deep_model,
    catalog_path,
    out_dir,
    min_support: float = 0.001,
    multi_min_support: float = 0.005,
    min_confidence: float = 0.2,
) -> dict:
    out_dir = Path(out_dir)
    catalog = load_catalog(catalog_path)
    X = baskets_to_csr(baskets, len(vocab))
    pairs = pair_rules(X, vocab, min_support)
    multi = multi_item_rules(baskets, vocab, multi_min_support, min_confidence)

    def titles(itemset: str) -> str:
        """'a & b' of item ids -> their catalogue titles (the id where the catalogue has none)."""
        known = catalog["title"] if "title" in catalog else {}
        return " & ".join(str(known.get(x, x)) for x in itemset.split(" & "))

    for df in (pairs, multi):
        df.insert(1, "antecedent_titles", df["antecedents"].map(titles))
        df.insert(3, "consequent_titles", df["consequents"].map(titles))
    related = related_items_table(deep_model, vocab) if deep_model is not None else pd.DataFrame()
    if len(related):
        related.insert(1, "title", _titles(related["item_id"], catalog))
        related["related_title"] = _titles(related["related_item_id"], catalog)
    out = {
        "pairs": _write(pairs, out_dir, "fbt_pairs"),
        "multi_item": _write(multi, out_dir, "fbt_multi_item"),
        "deep_related": _write(related, out_dir, "deep_related_items"),
    }
    log.info(
        "frequently bought together: %d pair rules, %d multi-item rules (lift > 1, support >= %g / %g), "
        "%d related-item rows -> %s",
        len(pairs),
        len(multi),
        min_support,
        multi_min_support,
        len(related),
        out_dir,
    )
    return out


# --------------------------------------------------------------------------- categories
def _knn_vote(sim: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Similarity-weighted majority vote of the k most similar labelled items."""
    k = min(k, sim.shape[1])
    top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    preds, conf = [], []
    for r in range(sim.shape[0]):
        votes: Counter = Counter()
        for j in top[r]:
            if sim[r, j] > 0:
                votes[labels[j]] += float(sim[r, j])
        if votes:
            label, weight = votes.most_common(1)[0]
            preds.append(label)
            conf.append(weight / sum(votes.values()))
        else:
            preds.append(None)
            conf.append(0.0)
    return np.asarray(preds, dtype=object), np.asarray(conf)


def _cosine(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    A = A / np.maximum(np.linalg.norm(A, axis=1, keepdims=True), 1e-12)
    B = B / np.maximum(np.linalg.norm(B, axis=1, keepdims=True), 1e-12)
    return A @ B.T


def category_prediction(
    baskets: list[list[int]],
    vocab: list[str],
    embeddings: np.ndarray,
    catalog_path,
    out_dir,
    k: int = 10,
    holdout_share: float = 0.2,
    seed: int = 7,
) -> dict:
    """Accuracy of category prediction on held-out products, for department and category levels."""
    catalog = load_catalog(catalog_path)
    out_dir = Path(out_dir)
    X = baskets_to_csr(baskets, len(vocab))
    counts = np.asarray(X.sum(axis=0)).ravel()
    cooc = cosine_cooccurrence(X)
    result = {"k": k, "holdout_share": holdout_share, "levels": {}}
    suggestions = []
    for level in ("department", "category"):
        if level not in catalog.columns:
            continue
        labels = np.asarray([catalog[level].get(v) if v in catalog.index else None for v in vocab], dtype=object)
        known = np.array([isinstance(x, str) and x.strip() not in ("", "nan") for x in labels])
        idx = np.flatnonzero(known)
        if len(idx) < 10:
            continue
        rng = np.random.default_rng(seed)
        test = np.sort(rng.choice(idx, size=max(1, int(len(idx) * holdout_share)), replace=False))
        train = np.setdiff1d(idx, test)
        truth = labels[test]
        pop_label = Counter({lab: 0.0 for lab in labels[train]})
        for j in train:
            pop_label[labels[j]] += counts[j]
        popular = pop_label.most_common(1)[0][0]
        emb_pred, _ = _knn_vote(_cosine(embeddings[test], embeddings[train]), labels[train], k)
        co_pred, _ = _knn_vote(cooc[test][:, train].toarray(), labels[train], k)
        co_pred = np.where(co_pred == None, popular, co_pred)  # noqa: E711  (no co-purchase: fall back)
        result["levels"][level] = {
            "n_train_products": int(len(train)),
            "n_test_products": int(len(test)),
            "n_classes": int(len(set(labels[idx]))),
            "accuracy": {
                "deep_embedding_knn": float(np.mean(emb_pred == truth)),
                "cooccurrence_knn": float(np.mean(co_pred == truth)),
                "popularity": float(np.mean(truth == popular)),
            },
        }
        blank = np.flatnonzero(~known)
        if len(blank):
            pred, conf = _knn_vote(_cosine(embeddings[blank], embeddings[idx]), labels[idx], k)
            for b, p, c in zip(blank, pred, conf):
                if p is not None:
                    suggestions.append(
                        {
                            "item_id": vocab[b],
                            "level": level,
                            "suggested": p,
                            "confidence": c,
                            "title": catalog["title"].get(vocab[b]) if "title" in catalog else None,
                        }
                    )
    sugg = pd.DataFrame(suggestions, columns=["item_id", "level", "suggested", "confidence", "title"])
    result["suggestions"] = _write(
        sugg.sort_values(["level", "confidence"], ascending=[True, False]), out_dir, "category_suggestions"
    )
    (out_dir / "category_accuracy.json").write_text(json.dumps(result, indent=2) + "\n")
    for level, r in result["levels"].items():
        log.info(
            "category prediction (%s, %d held-out products, %d classes): deep embeddings %.3f, "
            "co-occurrence %.3f, popularity %.3f",
            level,
            r["n_test_products"],
            r["n_classes"],
            r["accuracy"]["deep_embedding_knn"],
            r["accuracy"]["cooccurrence_knn"],
            r["accuracy"]["popularity"],
        )
    return result
