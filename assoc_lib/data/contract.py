"""The data contract (docs/design.md §3): column names, types and rules in one place.

Adapters conform their input to these schemas, validation checks partitions
against them (the GE suites in ``expectations/`` mirror them), and
preprocessing reads through :func:`read_partition`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from assoc_lib.config import DEV_PSEUDONYM_KEY
from assoc_lib.fsutil import atomic_directory

log = logging.getLogger(__name__)

ORDERS_SCHEMA = pa.schema(
    [
        pa.field("order_id", pa.string(), nullable=False),
        pa.field("user_id", pa.string()),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("quantity", pa.int64(), nullable=False),
        pa.field("price", pa.float64()),
        pa.field("store_id", pa.string()),
    ]
)
ORDER_COLUMNS = ORDERS_SCHEMA.names
REQUIRED_NON_NULL = ("order_id", "item_id", "ts")
KEY_COLUMNS = ("order_id", "item_id")

CATALOG_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("department", pa.string()),
        pa.field("category", pa.string()),
        pa.field("product_type", pa.string()),
        pa.field("brand", pa.string()),
    ]
)
CATALOG_COLUMNS = CATALOG_SCHEMA.names

PARTITION_FILE = "part-0.parquet"
PARTITION_PREFIX = "ds="


class ContractError(ValueError):
    """Input that does not satisfy the data contract; the message says what and where."""


# --------------------------------------------------------------------------- partitions
def partition_dir(orders_dir: str | os.PathLike, ds: dt.date | str) -> Path:
    return Path(orders_dir) / f"{PARTITION_PREFIX}{as_date(ds).isoformat()}"


def partition_date(path: str | os.PathLike) -> dt.date:
    name = Path(path).name
    if not name.startswith(PARTITION_PREFIX):
        raise ContractError(f"{path}: not a daily partition folder (expected ds=YYYY-MM-DD)")
    try:
        return dt.date.fromisoformat(name[len(PARTITION_PREFIX) :])
    except ValueError as exc:
        raise ContractError(f"{path}: bad partition date {name!r}") from exc


def list_partitions(orders_dir: str | os.PathLike) -> list[tuple[dt.date, Path]]:
    root = Path(orders_dir)
    if not root.exists():
        return []
    out = []
    for child in root.iterdir():
        if child.is_dir() and child.name.startswith(PARTITION_PREFIX):
            try:
                out.append((partition_date(child), child))
            except ContractError:
                log.warning("ignoring folder with a bad partition name: %s", child)
    return sorted(out)


def as_date(value: dt.date | str) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value)[:10])


def write_partition(table: pa.Table, orders_dir: str | os.PathLike, ds: dt.date | str) -> Path:
    """Write one day atomically: a reader sees the old partition or the new one, never half."""
    target = partition_dir(orders_dir, ds)
    with atomic_directory(target) as tmp:
        pq.write_table(table.cast(ORDERS_SCHEMA), tmp / PARTITION_FILE, compression="zstd")
    return target


def read_partition_raw(path: str | os.PathLike) -> pd.DataFrame:
    """Read a partition folder (or one parquet file) as it is, without casting.

    Raises :class:`ContractError` for a missing, empty-of-files, truncated or
    non-parquet input instead of a library traceback.
    """
    path = Path(path)
    if not path.exists():
        raise ContractError(f"{path}: partition does not exist")
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise ContractError(f"{path}: partition folder holds no .parquet file")
    frames = []
    for f in files:
        try:
            frames.append(pq.read_table(f).to_pandas())
        except (pa.ArrowInvalid, pa.ArrowException, OSError) as exc:
            raise ContractError(f"{f}: not a readable parquet file ({exc})") from exc
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def read_orders(path: str | os.PathLike) -> pd.DataFrame:
    """Read a partition that has passed validation, cast to the contract types."""
    df = read_partition_raw(path)
    missing = [c for c in ORDER_COLUMNS if c not in df.columns]
    if missing:
        raise ContractError(f"{path}: missing columns {missing}")
    return pa.Table.from_pandas(df[ORDER_COLUMNS], preserve_index=False).cast(ORDERS_SCHEMA).to_pandas()


# --------------------------------------------------------------------------- conforming
def conform_orders(df: pd.DataFrame) -> pa.Table:
    """Cast an adapter's frame to the orders schema (quantity defaults to 1)."""
    df = df.copy()
    for col in ("user_id", "price", "store_id"):
        if col not in df.columns:
            df[col] = None
    if "quantity" not in df.columns:
        df["quantity"] = 1
    missing = [c for c in ORDER_COLUMNS if c not in df.columns]
    if missing:
        raise ContractError(f"orders lack required columns {missing}")
    df["quantity"] = df["quantity"].fillna(1)
    df["ts"] = pd.to_datetime(df["ts"], utc=True)
    for col in ("order_id", "item_id", "user_id", "store_id"):
        df[col] = df[col].astype("string")
    return pa.Table.from_pandas(df[ORDER_COLUMNS], preserve_index=False).cast(ORDERS_SCHEMA)


def conform_catalog(df: pd.DataFrame) -> pa.Table:
    df = df.copy()
    for col in CATALOG_COLUMNS:
        if col not in df.columns:
            df[col] = None
        df[col] = df[col].astype("string")
    df = df.drop_duplicates("item_id").sort_values("item_id", kind="stable")
    return pa.Table.from_pandas(df[CATALOG_COLUMNS], preserve_index=False).cast(CATALOG_SCHEMA)


def write_catalog(table: pa.Table, catalog_path: str | os.PathLike) -> Path:
    catalog_path = Path(catalog_path)
    catalog_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = catalog_path.with_name(f".{catalog_path.name}.tmp")
    pq.write_table(table.cast(CATALOG_SCHEMA), tmp, compression="zstd")
    tmp.replace(catalog_path)
    return catalog_path


def write_days(table: pa.Table, orders_dir: str | os.PathLike) -> dict[str, int]:
    """Split an orders table by UTC day of ``ts`` and write one partition per day."""
    table = table.cast(ORDERS_SCHEMA)
    days = pa.compute.floor_temporal(table["ts"], unit="day")
    day_values = np.asarray(days.cast(pa.int64()).to_numpy(zero_copy_only=False))
    order = np.argsort(day_values, kind="stable")
    table, day_values = table.take(pa.array(order)), day_values[order]
    bounds = np.flatnonzero(np.diff(day_values)) + 1
    starts = np.concatenate([[0], bounds]) if len(day_values) else np.array([], dtype=int)
    ends = np.concatenate([bounds, [len(day_values)]]) if len(day_values) else np.array([], dtype=int)
    written: dict[str, int] = {}
    for s, e in zip(starts, ends):
        day = dt.datetime.fromtimestamp(day_values[s] / 1e6, tz=dt.timezone.utc).date()
        part = table.slice(int(s), int(e - s))
        # Within a day, rows sorted by (ts, order_id, item_id): stable bytes for the same input.
        part = part.sort_by([("ts", "ascending"), ("order_id", "ascending"), ("item_id", "ascending")])
        write_partition(part, orders_dir, day)
        written[day.isoformat()] = part.num_rows
    return written


# --------------------------------------------------------------------------- privacy
def pseudonym_key(configured: str = "") -> bytes:
    """The HMAC key: ``ASSOC_PSEUDONYM_KEY`` env, then config, then a logged dev default."""
    key = os.environ.get("ASSOC_PSEUDONYM_KEY") or configured
    if not key:
        log.warning("pseudonymising user ids with the DEVELOPMENT key; set ASSOC_PSEUDONYM_KEY in production")
        key = DEV_PSEUDONYM_KEY
    return key.encode()


def pseudonymise(values: pd.Series, key: bytes) -> pd.Series:
    """Keyed hash (HMAC-SHA256, 16 hex chars) of each id; nulls stay null (guests).

    Hashes each distinct value once, so a year of transactions costs a few
    thousand HMACs, not a million.
    """
    values = values.astype("string")
    uniques = values.dropna().unique()
    mapping = {raw: "u_" + hmac.new(key, str(raw).encode(), hashlib.sha256).hexdigest()[:16] for raw in uniques}
    return values.map(mapping).astype("string")
