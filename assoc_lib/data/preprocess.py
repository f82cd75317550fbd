"""Rolling window → clean baskets → vocabulary → time-ordered train/validation/test split.

Outputs (one folder per logical date, written atomically):
``baskets.parquet`` (order_id, user_id, ts, split, items: list of vocabulary indices),
``vocab.txt`` (item ids, most frequent first; line number = index) and
``stats.json`` (rows in/out and why rows were dropped).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from assoc_lib.config import AssocConfig, load_config
from assoc_lib.data import contract
from assoc_lib.data.validate import is_validated
from assoc_lib.fsutil import atomic_directory

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
BASKETS_FILE = "baskets.parquet"
VOCAB_FILE = "vocab.txt"
STATS_FILE = "stats.json"


class PreprocessError(RuntimeError):
    """Nothing usable to train on; the message says why."""


def output_dir(cfg: AssocConfig, ds: dt.date | str) -> Path:
    return Path(cfg.paths.artifacts_dir) / "preprocessed" / f"ds={contract.as_date(ds).isoformat()}"


def window_partitions(cfg: AssocConfig, ds: dt.date) -> tuple[list[Path], dict[str, str]]:
    """Partitions inside the window that may be used, and the skipped ones with the reason."""
    first = ds - dt.timedelta(days=cfg.preprocess.window_days - 1)
    used, skipped = [], {}
    for day, path in contract.list_partitions(cfg.paths.orders_dir):
        if not first <= day <= ds:
            continue
        if cfg.preprocess.require_validated:
            ok, why = is_validated(path, cfg)
            if not ok:
                skipped[day.isoformat()] = why
                continue
        used.append(path)
    for day, _path in contract.list_partitions(cfg.paths.quarantine_dir):
        if first <= day <= ds:
            skipped.setdefault(day.isoformat(), "quarantined")
    return used, skipped


def assign_splits(
    orders: pd.DataFrame,
    val_fraction: float,
    test_fraction: float,
    method: str = "time",
    seed: int = 7,
    val_days: int = 0,
    test_days: int = 0,
) -> pd.Series:
    """Split orders by time (oldest → train, newest → test), or at random (seeded) for timeless data.

    With ``test_days``/``val_days`` the split is by calendar day: the last ``test_days``
    days (UTC) of the data are test and the ``val_days`` before them validation.
    """
    n = len(orders)
    if method == "time" and test_days > 0:
        last_day = orders["ts"].max().normalize()
        test_start = last_day - pd.Timedelta(days=test_days - 1)
        val_start = test_start - pd.Timedelta(days=val_days)
        labels = np.where(
            orders["ts"] >= test_start, "test", np.where(orders["ts"] >= val_start, "validation", "train")
        )
        return pd.Series(labels.astype(object), index=orders.index, name="split")
    n_test = int(round(n * test_fraction))
    n_val = int(round(n * val_fraction))
    if method == "time":
        order = np.lexsort((orders["order_id"].to_numpy(dtype=str), orders["ts"].to_numpy()))
    elif method == "random":
        order = np.random.default_rng(seed).permutation(n)
    else:
        raise ValueError(f"unknown split method {method!r} (time or random)")
    labels = np.empty(n, dtype=object)
    labels[order[: n - n_val - n_test]] = "train"
    labels[order[n - n_val - n_test : n - n_test]] = "validation"
    labels[order[n - n_test :]] = "test"
    return pd.Series(labels, index=orders.index, name="split")


def build_baskets(
    rows: pd.DataFrame,
    min_count: int,
    val_fraction: float,
    test_fraction: float,
    split_method: str = "time",
    seed: int = 7,
    val_days: int = 0,
    test_days: int = 0,
) -> tuple[pd.DataFrame, list[str], dict]:
    """Clean contract rows into split baskets of vocabulary indices. Pure function (no I/O)."""
    dropped: dict[str, int] = {}
    rows_in = len(rows)
    rows = rows.dropna(subset=["order_id", "item_id", "ts"])
    dropped["null_key"] = rows_in - len(rows)
    before = len(rows)
    rows = rows.drop_duplicates(subset=["order_id", "item_id"], keep="first")
    dropped["duplicate_order_item"] = before - len(rows)

    orders = rows.groupby("order_id", sort=False).agg(user_id=("user_id", "first"), ts=("ts", "min")).reset_index()
    orders["split"] = assign_splits(orders, val_fraction, test_fraction, split_method, seed, val_days, test_days)
    rows = rows.merge(orders[["order_id", "split"]], on="order_id", how="left")

    train_counts = rows.loc[rows["split"] == "train", "item_id"].value_counts()
    train_counts = train_counts[train_counts >= min_count]
    vocab_frame = pd.DataFrame({"item_id": train_counts.index.astype(str), "n": train_counts.to_numpy()})
    vocab = vocab_frame.sort_values(["n", "item_id"], ascending=[False, True], kind="stable")["item_id"].tolist()
    index = pd.Series(np.arange(len(vocab), dtype=np.int32), index=pd.Index(vocab, dtype="string"))

    in_vocab = rows["item_id"].isin(index.index)
    dropped["item_below_min_count"] = int((~in_vocab & (rows["split"] == "train")).sum())
    dropped["item_not_in_train_vocabulary"] = int((~in_vocab & (rows["split"] != "train")).sum())
    rows = rows[in_vocab].copy()
    rows["item"] = index.reindex(rows["item_id"].astype("string")).to_numpy(dtype=np.int32)
    rows = rows.sort_values(["order_id", "item"], kind="stable")
    items = rows.groupby("order_id", sort=False)["item"].agg(list)
    baskets = orders.merge(items.rename("items").reset_index(), on="order_id", how="inner")
    emptied = len(orders) - len(baskets)
    baskets = baskets.sort_values(["ts", "order_id"], kind="stable").reset_index(drop=True)
    stats = {
        "rows_in": rows_in,
        "rows_out": len(rows),
        "rows_dropped": {k: v for k, v in dropped.items()},
        "orders_in": len(orders),
        "orders_dropped_empty_after_vocabulary": emptied,
        "orders_out": {s: int((baskets["split"] == s).sum()) for s in SPLITS},
        "vocabulary_size": len(vocab),
        "min_count": min_count,
        "split_method": split_method,
        "split_bounds": {s: _bounds(baskets.loc[baskets["split"] == s, "ts"]) for s in SPLITS},
    }
    return baskets, vocab, stats


def _bounds(ts: pd.Series) -> list[str] | None:
    return None if ts.empty else [ts.min().isoformat(), ts.max().isoformat()]


def preprocess(
    cfg: AssocConfig | None = None,
    ds: dt.date | str | None = None,
    out_dir: str | os.PathLike | None = None,
    split_method: str = "time",
) -> dict:
    """Preprocess the window ending at ``ds`` (default: the newest partition). Returns stats incl. ``out_dir``."""
    cfg = cfg or load_config()
    parts = contract.list_partitions(cfg.paths.orders_dir)
    if ds is None:
        if not parts:
            raise PreprocessError(f"no partitions under {cfg.paths.orders_dir}")
        ds = parts[-1][0]
    ds = contract.as_date(ds)
    pc = cfg.preprocess
    used, skipped = window_partitions(cfg, ds)
    for day, why in sorted(skipped.items()):
        log.warning("skipping ds=%s: %s", day, why)
    if not used:
        raise PreprocessError(
            f"no usable partition in the {pc.window_days}-day window ending {ds} under {cfg.paths.orders_dir}"
            + (f" (skipped: {skipped})" if skipped else "")
        )
    rows = pd.concat([contract.read_orders(p) for p in used], ignore_index=True)
    baskets, vocab, stats = build_baskets(
        rows, pc.min_count, pc.val_fraction, pc.test_fraction, split_method, pc.seed, pc.val_days, pc.test_days
    )
    if stats["orders_out"]["train"] == 0 or not vocab:
        raise PreprocessError(f"window ending {ds} leaves no training baskets (min_count={pc.min_count})")
    stats.update(
        {
            "ds": ds.isoformat(),
            "window_days": pc.window_days,
            "partitions_used": [contract.partition_date(p).isoformat() for p in used],
            "partitions_skipped": skipped,
        }
    )
    final = write_split(baskets, vocab, stats, Path(out_dir) if out_dir else output_dir(cfg, ds))
    stats["out_dir"] = str(final)
    log.info(
        "preprocess ds=%s: %d partitions, rows %d in -> %d out (dropped %s); orders %s; vocabulary %d -> %s",
        ds,
        len(used),
        stats["rows_in"],
        stats["rows_out"],
        {k: v for k, v in stats["rows_dropped"].items() if v},
        stats["orders_out"],
        len(vocab),
        final,
    )
    return stats


def write_split(baskets: pd.DataFrame, vocab: list[str], stats: dict, final: Path) -> Path:
    """Write baskets.parquet, vocab.txt and stats.json into ``final`` atomically."""
    with atomic_directory(final) as tmp:
        table = pa.table(
            {
                "order_id": pa.array(baskets["order_id"].astype(str).tolist(), pa.string()),
                "user_id": pa.array(
                    baskets["user_id"].astype(object).where(baskets["user_id"].notna(), None).tolist(), pa.string()
                ),
                "ts": pa.array(baskets["ts"]).cast(pa.timestamp("us", tz="UTC")),
                "split": pa.array(baskets["split"].tolist(), pa.string()),
                "items": pa.array([list(map(int, x)) for x in baskets["items"]], pa.list_(pa.int32())),
            }
        )
        pq.write_table(table, tmp / BASKETS_FILE, compression="zstd")
        (tmp / VOCAB_FILE).write_text("".join(f"{v}\n" for v in vocab))
        (tmp / STATS_FILE).write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
    return Path(final)


def load_split(prep_dir: str | os.PathLike) -> tuple[pd.DataFrame, list[str]]:
    """Read a preprocessed folder back: (baskets frame, vocabulary)."""
    prep_dir = Path(prep_dir)
    baskets = pq.read_table(prep_dir / BASKETS_FILE).to_pandas()
    vocab = (prep_dir / VOCAB_FILE).read_text().splitlines()
    return baskets, vocab


def training_data(stats: dict) -> dict:
    """What a model card says about the slice of the data a model was trained and evaluated on, from a
    preprocessed folder's ``stats.json``: with the DVC data version beside it, the exact rows (the window's
    first and last partition, the partitions skipped and why, the split's method and bounds, the orders per
    split, the minimum item count and the vocabulary's size). Every raw partition of the data folder is in
    the data version; only the window's are read."""
    used = stats.get("partitions_used") or []
    return {
        "ds": stats.get("ds"),
        "window_days": stats.get("window_days"),
        "partitions": {"first": used[0] if used else None, "last": used[-1] if used else None, "count": len(used)},
        "partitions_skipped": stats.get("partitions_skipped") or {},
        "split_method": stats.get("split_method"),
        "split_bounds": stats.get("split_bounds"),
        "orders": stats.get("orders_out"),
        "min_count": stats.get("min_count"),
        "vocabulary_size": stats.get("vocabulary_size"),
    }


def split_baskets(baskets: pd.DataFrame) -> dict[str, list[list[int]]]:
    """Item-id lists of each split (train / validation / test) of a loaded split's baskets."""
    return {s: [list(map(int, x)) for x in baskets.loc[baskets["split"] == s, "items"]] for s in SPLITS}
