"""Bad input: each case fails validation with the exact expectation, is quarantined, and never reaches preprocessing."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from assoc_lib.cli import main
from assoc_lib.data import adapters, contract, preprocess, validate
from tests.conftest import SYNTH_DAYS, SYNTH_START

# the day after the synthetic world's last day
BAD_DAY = (dt.date.fromisoformat(SYNTH_START) + dt.timedelta(days=SYNTH_DAYS)).isoformat()


def _good_day(cfg) -> pd.DataFrame:
    """A plausible next day: the world's last day shifted by one day, new order ids."""
    last = contract.list_partitions(cfg.paths.orders_dir)[-1][1]
    df = contract.read_partition_raw(last)
    df["ts"] = df["ts"] + pd.Timedelta(days=1)
    df["order_id"] = "N" + df["order_id"].astype(str)
    return df


def _write(cfg, df: pd.DataFrame, schema: pa.Schema | None = None) -> Path:
    part = contract.partition_dir(cfg.paths.orders_dir, BAD_DAY)
    part.mkdir(parents=True)
    table = pa.Table.from_pandas(df, preserve_index=False, schema=schema)
    pq.write_table(table, part / contract.PARTITION_FILE)
    return part


def _training_data_digest(prep_dir: Path) -> dict[str, str]:
    """What training reads (stats.json also lists the skipped day, so it is left out)."""
    return {
        name: hashlib.sha256((prep_dir / name).read_bytes()).hexdigest()
        for name in (preprocess.BASKETS_FILE, preprocess.VOCAB_FILE)
    }


def _mutations():
    def missing_column(df):
        return df.drop(columns=["quantity"])

    def wrong_dtype(df):
        return df.assign(quantity=df["quantity"].astype(str))

    def null_item(df):
        df = df.copy()
        df["item_id"] = df["item_id"].astype(object)
        df.loc[df.index[:3], "item_id"] = None
        return df

    def quantity_zero(df):
        return df.assign(quantity=df["quantity"].where(df.index > 4, 0))

    def negative_price(df):
        return df.assign(price=df["price"].where(df.index > 1, -2.5))

    def duplicated_pair(df):
        return pd.concat([df, df.iloc[:2]], ignore_index=True)

    def other_day(df):
        return df.assign(ts=df["ts"].where(df.index > 2, df["ts"] - pd.Timedelta(days=3)))

    def empty(df):
        return df.iloc[0:0]

    def twenty_times(df):
        copies = []
        for k in range(20):
            c = df.copy()
            c["order_id"] = c["order_id"].astype(str) + f"-{k}"
            copies.append(c)
        return pd.concat(copies, ignore_index=True)

    return {
        "missing_column": (missing_column, "expect_table_columns_to_match_set", None),
        "wrong_dtype": (wrong_dtype, "expect_column_values_to_be_in_type_list", "quantity"),
        "null_item_id": (null_item, "expect_column_values_to_not_be_null", "item_id"),
        "quantity_zero": (quantity_zero, "expect_column_values_to_be_between", "quantity"),
        "negative_price": (negative_price, "expect_column_values_to_be_between", "price"),
        "duplicated_order_item": (duplicated_pair, "expect_compound_columns_to_be_unique", None),
        "ts_from_other_day": (other_day, "expect_column_min_to_be_between", "ts"),
        "empty_partition": (empty, "expect_table_row_count_to_be_between", None),
        "twenty_times_rows": (twenty_times, "expect_table_row_count_to_be_between", None),
    }


@pytest.mark.parametrize("case", list(_mutations()))
def test_bad_partition_fails_named_expectation_and_is_quarantined(cfg, case):
    mutate, expectation, column = _mutations()[case]
    preprocess.preprocess(cfg, BAD_DAY)  # the window without the bad day
    prep_dir = preprocess.output_dir(cfg, BAD_DAY)
    before = _training_data_digest(prep_dir)

    part = _write(cfg, mutate(_good_day(cfg)))
    report = validate.validate_partition(part, cfg)

    assert not report.success
    names = [(f.expectation, f.column) for f in report.failed]
    assert (expectation, column) in names, report.summary()
    assert f"{expectation}({column})" in report.summary() if column else expectation in report.summary()
    # Quarantined with its report; nothing deleted.
    assert not part.exists()
    moved = Path(report.quarantined_to)
    assert (moved / contract.PARTITION_FILE).exists()
    assert json.loads((moved / validate.QUARANTINE_MARKER).read_text())["success"] is False
    result = json.loads((Path(report.report_dir) / validate.RESULT_FILE).read_text())
    assert result["failed"] and (Path(report.report_dir) / "ge_result.json").exists()
    # Downstream refuses it and produces what it produced without it.
    stats = preprocess.preprocess(cfg, BAD_DAY)
    assert stats["partitions_skipped"] == {BAD_DAY: "quarantined"}
    assert BAD_DAY not in stats["partitions_used"]
    assert _training_data_digest(prep_dir) == before


def test_good_next_day_passes(cfg):
    part = _write(cfg, _good_day(cfg))
    report = validate.validate_partition(part, cfg)
    assert report.success, report.summary()
    assert report.parameters["history_median"] is not None
    assert Path(report.data_docs).exists()
    assert preprocess.preprocess(cfg, BAD_DAY)["partitions_used"][-1] == BAD_DAY


@pytest.mark.parametrize("content", [b"", b"PAR1\x00\x00garbage", b"order_id,item_id\n1,2\n"])
def test_truncated_or_non_parquet_file(cfg, content):
    part = contract.partition_dir(cfg.paths.orders_dir, BAD_DAY)
    part.mkdir(parents=True)
    good = pq.read_table(contract.list_partitions(cfg.paths.orders_dir)[0][1] / contract.PARTITION_FILE)
    sink = pa.BufferOutputStream()
    pq.write_table(good, sink)
    data = content or sink.getvalue().to_pybytes()[:200]  # b"" case: a truncated real file
    (part / contract.PARTITION_FILE).write_bytes(data)
    report = validate.validate_partition(part, cfg)
    assert not report.success
    assert report.failed[0].expectation == "readable_parquet_partition"
    assert "not a readable parquet file" in str(report.failed[0].observed)
    assert report.quarantined_to and not part.exists()


def test_unknown_items_warn_but_pass(cfg):
    df = _good_day(cfg)
    df["item_id"] = df["item_id"].astype(str).where(df.index % 5 != 0, "NOT-IN-CATALOG")
    df = df.drop_duplicates(["order_id", "item_id"])
    part = _write(cfg, df)
    report = validate.validate_partition(part, cfg)
    assert report.success
    assert [w.column for w in report.warnings] == ["item_in_catalog"]
    assert "unexpected" in str(report.warnings[0].observed)


def test_cli_exit_code_and_stderr_summary(cfg, capsys):
    part = _write(cfg, _good_day(cfg).assign(price=-1.0))
    code = main(
        [
            "validate",
            "--partition",
            str(part),
            "--data-dir",
            cfg.paths.data_dir,
            "--artifacts-dir",
            cfg.paths.artifacts_dir,
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "validation FAILED" in err
    assert "expect_column_values_to_be_between(price): observed" in err
    assert "Traceback" not in err


def test_preprocess_refuses_partition_changed_after_validation(cfg):
    first = contract.list_partitions(cfg.paths.orders_dir)[0][1]
    table = pq.read_table(first / contract.PARTITION_FILE)
    pq.write_table(table.slice(0, 5), first / contract.PARTITION_FILE)
    stats = preprocess.preprocess(cfg)
    assert stats["partitions_skipped"][contract.partition_date(first).isoformat()] == "changed since validation"


def test_csv_with_stray_header_row(tmp_path):
    path = tmp_path / "baskets.csv"
    path.write_text("transaction_id,item\n1,milk\n1,bread\ntransaction_id,item\n2,eggs\n")
    with pytest.raises(contract.ContractError, match=r"header row repeated inside the file at line\(s\) \[4\]"):
        adapters.import_basket_csv(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_csv_without_required_columns_cli(tmp_path, capsys):
    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,2\n")
    code = main(["data", "import", "csv", "--path", str(path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert "needs columns transaction_id (or order_id) and item (or item_id)" in err
