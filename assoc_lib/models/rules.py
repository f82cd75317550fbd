"""Multi-item association rules for analysts (mlxtend's FP-growth).

``assoc rules`` reads contract orders (a partition folder, a parquet file, or a
CSV with order_id/transaction_id and item_id/item columns) and writes a CSV
with antecedents, consequents, support, confidence and lift.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd

from assoc_lib.data import contract

log = logging.getLogger(__name__)


def read_baskets(path: str | Path) -> pd.DataFrame:
    """(order_id, item_id) pairs from any accepted orders input."""
    path = Path(path)
    if path.is_dir() and (path / "raw" / "orders").is_dir():
        path = path / "raw" / "orders"
    if path.is_dir() and path.name == "orders":
        frames = [contract.read_partition_raw(p)[["order_id", "item_id"]] for _, p in contract.list_partitions(path)]
        if not frames:
            raise contract.ContractError(f"{path}: no partitions")
        return pd.concat(frames, ignore_index=True)
    if path.suffix.lower() == ".csv":
        from assoc_lib.data.adapters import read_basket_csv

        return read_basket_csv(path)[["order_id", "item_id"]]
    df = contract.read_partition_raw(path)
    missing = {"order_id", "item_id"} - set(df.columns)
    if missing:
        raise contract.ContractError(f"{path}: missing columns {sorted(missing)}")
    return df[["order_id", "item_id"]]


def mine_rules(
    pairs: pd.DataFrame, min_support: float, min_confidence: float, max_len: int | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Frequent itemsets (FP-growth) and rules with confidence >= min_confidence."""
    from mlxtend.frequent_patterns import association_rules, fpgrowth

    pairs = pairs.dropna().drop_duplicates()
    onehot = pd.crosstab(pairs["order_id"], pairs["item_id"]).astype(bool)
    itemsets = fpgrowth(onehot, min_support=min_support, use_colnames=True, max_len=max_len)
    if itemsets.empty:
        return itemsets, pd.DataFrame(columns=["antecedents", "consequents", "support", "confidence", "lift"])
    rules = association_rules(itemsets, num_itemsets=len(onehot), metric="confidence", min_threshold=min_confidence)
    return itemsets, rules


def rules_to_csv(rules: pd.DataFrame, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(
        {
            "antecedents": [" & ".join(sorted(a)) for a in rules["antecedents"]],
            "consequents": [" & ".join(sorted(c)) for c in rules["consequents"]],
            "n_consequents": [len(c) for c in rules["consequents"]],
            "support": rules["support"],
            "confidence": rules["confidence"],
            "lift": rules["lift"],
        }
    ).sort_values(["lift", "confidence", "antecedents", "consequents"], ascending=[False, False, True, True])
    table.to_csv(out, index=False, float_format="%.6g")
    return out


def run(
    orders: str | Path, min_support: float, min_confidence: float, out: str | Path, max_len: int | None = None
) -> dict:
    started = time.perf_counter()
    pairs = read_baskets(orders)
    itemsets, rules = mine_rules(pairs, min_support, min_confidence, max_len)
    rules_to_csv(rules, out)
    single = int((rules["consequents"].map(len) == 1).sum()) if len(rules) else 0
    summary = {
        "orders": int(pairs["order_id"].nunique()),
        "items": int(pairs["item_id"].nunique()),
        "frequent_itemsets": len(itemsets),
        "rules": len(rules),
        "rules_single_consequent": single,
        "min_support": min_support,
        "min_confidence": min_confidence,
        "out": str(out),
        "seconds": round(time.perf_counter() - started, 2),
    }
    log.info(
        "rules: %d orders, %d frequent itemsets, %d rules (%d with one consequent) -> %s",
        summary["orders"],
        len(itemsets),
        len(rules),
        single,
        out,
    )
    return summary
