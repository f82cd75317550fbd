"""The DAG's ingest step: a day landed as CSV becomes a contract partition with pseudonymised users."""

from __future__ import annotations

import pandas as pd
import pytest

from assoc_lib import pipeline
from assoc_lib.data import contract, validate


def test_landing_csv_becomes_a_valid_pseudonymised_partition(cfg, tmp_path):
    day = "2024-06-01"
    landing = tmp_path / "landing" / f"ds={day}"
    landing.mkdir(parents=True)
    pd.DataFrame(
        {
            "order_id": ["o1", "o1", "o2"],
            "user_id": ["alice@example.com", "alice@example.com", None],
            "item_id": ["P00001", "P00002", "P00001"],
            "ts": ["2024-06-01T09:00:00Z", "2024-06-01T09:00:00Z", "2024-06-01T17:30:00Z"],
            "quantity": [1, 2, 1],
            "price": [1.5, 2.0, 1.5],
            "store_id": ["S1", "S1", "S2"],
        }
    ).to_csv(landing / "orders.csv", index=False)
    cfg.paths.landing_dir = str(tmp_path / "landing")
    out = pipeline.ingest_day(cfg, day)
    assert out.rows == 3
    df = contract.read_orders(out.partition)
    assert "alice@example.com" not in set(df["user_id"].dropna())
    assert df["user_id"].dropna().str.startswith("u_").all() and df["user_id"].isna().sum() == 1
    assert validate.validate_partition(out.partition, cfg).success


def test_no_data_for_the_day_is_a_clear_error(cfg):
    with pytest.raises(contract.ContractError, match="no data for ds=2030-01-01"):
        pipeline.ingest_day(cfg, "2030-01-01")
