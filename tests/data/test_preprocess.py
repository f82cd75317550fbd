"""Preprocessing: window, deduplication, vocabulary, time split, determinism."""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import pytest

from assoc_lib.data import preprocess


def test_time_split_vocab_and_stats(cfg):
    stats = preprocess.preprocess(cfg)
    out = preprocess.output_dir(cfg, stats["ds"])
    baskets, vocab = preprocess.load_split(out)
    by = {s: baskets[baskets["split"] == s] for s in preprocess.SPLITS}
    assert by["train"]["ts"].max() <= by["validation"]["ts"].min()
    assert by["validation"]["ts"].max() <= by["test"]["ts"].min()
    n = len(baskets)
    assert abs(len(by["test"]) - 0.1 * n) <= 1 and abs(len(by["validation"]) - 0.1 * n) <= 1
    # Vocabulary: train items seen >= min_count times, most frequent first.
    counts = by["train"]["items"].explode().astype(int).value_counts()
    freq = [counts.get(i, 0) for i in range(len(vocab))]
    assert freq == sorted(freq, reverse=True) and min(freq) >= cfg.preprocess.min_count
    assert stats["rows_in"] == stats["rows_out"] + sum(stats["rows_dropped"].values())
    assert json.loads((out / "stats.json").read_text())["vocabulary_size"] == len(vocab)
    assert baskets["items"].map(len).min() >= 1


def test_deterministic_bytes(cfg, tmp_path):
    preprocess.preprocess(cfg, out_dir=tmp_path / "a")
    preprocess.preprocess(cfg, out_dir=tmp_path / "b")
    for name in ("baskets.parquet", "vocab.txt", "stats.json"):
        assert (
            hashlib.sha256((tmp_path / "a" / name).read_bytes()).digest()
            == hashlib.sha256((tmp_path / "b" / name).read_bytes()).digest()
        ), name


def test_window_limits_days(cfg):
    cfg.preprocess.window_days = 5
    stats = preprocess.preprocess(cfg)
    assert len(stats["partitions_used"]) == 5 and stats["partitions_used"][-1] == stats["ds"]


def test_build_baskets_counts_each_drop_reason():
    ts = pd.Timestamp("2024-01-01", tz="UTC")
    rows = pd.DataFrame(
        {
            "order_id": ["o1", "o1", "o1", "o2", "o2", "o3", "o4", "o5"],
            "user_id": [None] * 8,
            "item_id": ["a", "a", "b", "a", "b", "rare", "a", "b"],
            "ts": [ts + pd.Timedelta(minutes=m) for m in (1, 1, 1, 2, 2, 3, 4, 5)],
        }
    )
    baskets, vocab, stats = preprocess.build_baskets(rows, min_count=2, val_fraction=0.2, test_fraction=0.2)
    assert vocab == ["a", "b"]
    assert stats["rows_dropped"]["duplicate_order_item"] == 1
    assert stats["rows_dropped"]["item_below_min_count"] == 1  # "rare" in train
    assert stats["orders_dropped_empty_after_vocabulary"] == 1  # o3 held only "rare"
    assert list(baskets["split"]) == ["train", "train", "validation", "test"]


def test_random_split_is_seeded():
    rows = pd.DataFrame(
        {
            "order_id": [f"o{i}" for i in range(50)],
            "user_id": None,
            "item_id": ["a", "b"] * 25,
            "ts": pd.Timestamp("2024-01-01", tz="UTC"),
        }
    )
    a, _, _ = preprocess.build_baskets(rows, 1, 0.1, 0.1, split_method="random", seed=3)
    b, _, _ = preprocess.build_baskets(rows, 1, 0.1, 0.1, split_method="random", seed=3)
    assert a["split"].tolist() == b["split"].tolist()
    assert set(a["split"]) == {"train", "validation", "test"}


def test_no_validated_partition_is_a_clear_error(cfg):
    import shutil

    shutil.rmtree(cfg.paths.reports_dir)
    with pytest.raises(preprocess.PreprocessError, match="no usable partition"):
        preprocess.preprocess(cfg)
