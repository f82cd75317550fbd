"""Hand-checked metrics and the hold-out protocol."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from assoc_lib import evaluate
from assoc_lib.models.baselines import baskets_to_csr
from tests.conftest import load_benchmark


def test_metrics_from_known_ranks():
    # ranks 1, 3, 12, 25 over a 100-item vocabulary
    m = evaluate.metrics_from_ranks(np.array([1, 3, 12, 25]), np.array([[0, 1], [1, 2], [3, 4], [0, 5]]), 100)
    assert m["recall@10"] == pytest.approx(2 / 4)
    assert m["recall@20"] == pytest.approx(3 / 4)
    assert m["hitrate@10"] == m["recall@10"]
    assert m["ndcg@10"] == pytest.approx((1 / math.log2(2) + 1 / math.log2(4)) / 4)
    assert m["ndcg@20"] == pytest.approx((1 + 1 / math.log2(4) + 1 / math.log2(13)) / 4)
    assert m["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 12 + 1 / 25) / 4)
    assert m["coverage@10"] == pytest.approx(6 / 100)
    assert m["n_eval_baskets"] == 4


def test_ranks_exclude_inputs_and_count_ties_pessimistically():
    scores = np.array([[9.0, 8.0, 5.0, 5.0] + [1.0] * 8])
    inputs = sp.csr_matrix(np.array([[1] + [0] * 11], dtype=np.float32))
    ranks, top = evaluate.ranks_of_hidden(scores, inputs, np.array([3]))
    # item 0 is an input (excluded); 1 ranks first; 2 ties with the hidden item 3 -> rank 3
    assert ranks.tolist() == [3]
    assert 0 not in top[0]


def test_float32_scores_rank_as_their_float64_values():
    """A float32 model's scores are ranked in float32 (no float64 copy): the ranks and top-10 must be those of
    the same values in float64, ties and excluded inputs included; the caller's array is left as it was."""
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 6, size=(50, 40)).astype(np.float32) / np.float32(3.0)  # many ties
    inputs = sp.csr_matrix((rng.random((50, 40)) < 0.15).astype(np.float32))
    hidden = rng.integers(0, 40, size=50)
    before = scores.copy()
    ranks32, top32 = evaluate.ranks_of_hidden(scores, inputs, hidden)
    ranks64, top64 = evaluate.ranks_of_hidden(scores.astype(np.float64), inputs, hidden)
    assert ranks32.tolist() == ranks64.tolist()
    assert top32.tolist() == top64.tolist()
    np.testing.assert_array_equal(scores, before)
    ranks_int, _ = evaluate.ranks_of_hidden((scores * 3).astype(np.int64), inputs, hidden)  # counts: float64
    assert ranks_int.tolist() == ranks64.tolist()


def test_hold_out_is_seeded_and_skips_single_item_baskets():
    baskets = [[0, 1, 2], [3], [4, 5]]
    a = evaluate.hold_out(baskets, 6, seed=1)
    b = evaluate.hold_out(baskets, 6, seed=1)
    assert a.n == 2 and a.basket_rows.tolist() == [0, 2]
    assert a.hidden.tolist() == b.hidden.tolist()
    for row, hidden in zip(range(a.n), a.hidden):
        visible = set(a.inputs[row].indices)
        assert hidden not in visible and len(visible) == len(baskets[a.basket_rows[row]]) - 1


def test_hold_out_lists_by_hand():
    """The second stage's training lists: each basket with >= 2 items hides up to ``per_basket`` distinct
    items, one list each, the rest visible; 0 hides every item in turn; histories follow their basket."""
    from assoc_lib.data.history import History

    baskets = [[0, 1, 2], [3], [4, 5], [1, 3, 5, 0]]
    counts = sp.csr_matrix(np.arange(24, dtype=np.float32).reshape(4, 6))
    history = History(counts, {})
    for per_basket, expected in ((1, [1, 1, 1]), (2, [2, 2, 2]), (0, [3, 2, 4]), (9, [3, 2, 4])):
        lists = evaluate.hold_out_lists(baskets, 6, per_basket, seed=3, history=history)
        assert np.bincount(lists.basket_rows, minlength=4).tolist() == [expected[0], 0, *expected[1:]]
        assert lists.basket_rows.tolist() == sorted(lists.basket_rows.tolist())  # basket by basket
        for row in range(lists.n):
            basket = baskets[lists.basket_rows[row]]
            visible = sorted(lists.inputs[row].indices.tolist())
            assert lists.hidden[row] in basket and visible == sorted(set(basket) - {lists.hidden[row]})
            np.testing.assert_array_equal(lists.history.counts[row].toarray(), counts[lists.basket_rows[row]].toarray())
        for r in (0, 2, 3):  # distinct hidden items per basket
            hidden = lists.hidden[lists.basket_rows == r].tolist()
            assert len(set(hidden)) == len(hidden)
        if per_basket in (0, 9):
            assert all(sorted(lists.hidden[lists.basket_rows == r].tolist()) == sorted(baskets[r]) for r in (0, 2, 3))
    again = evaluate.hold_out_lists(baskets, 6, 2, seed=3)
    assert (
        again.history is None
        and again.hidden.tolist() == evaluate.hold_out_lists(baskets, 6, 2, seed=3).hidden.tolist()
    )
    assert any(
        evaluate.hold_out_lists(baskets, 6, 2, seed=s).hidden.tolist() != again.hidden.tolist() for s in range(4, 9)
    )
    with pytest.raises(ValueError, match="per_basket must be >= 0"):
        evaluate.hold_out_lists(baskets, 6, -1)


def test_evaluate_scores_perfect_and_worst_model():
    baskets = [[0, 1], [2, 3], [4, 5]] * 5
    holdout = evaluate.hold_out(baskets, 6, seed=0)
    pair = {0: 1, 1: 0, 2: 3, 3: 2, 4: 5, 5: 4}

    def oracle(X):
        out = np.zeros(X.shape, dtype=np.float32)
        for r in range(X.shape[0]):
            out[r, pair[int(X[r].indices[0])]] = 1.0
        return out

    assert evaluate.evaluate_scores(oracle, holdout, 6)["ndcg@10"] == pytest.approx(1.0)
    assert evaluate.evaluate_scores(lambda X: -oracle(X), holdout, 6)["mrr"] == pytest.approx(1 / 5)


def test_comparison_table_has_one_row_per_model():
    rows = [
        {"name": "ease", "kind": "classical", **{m: 0.1 for m in evaluate.METRICS}, "n_eval_baskets": 3},
        {"name": "deep", "kind": "deep", **{m: 0.2 for m in evaluate.METRICS}, "n_eval_baskets": 3},
    ]
    table = evaluate.comparison_table(rows)
    assert table.count("\n") == 3 and "| deep | deep |" in table


def test_baskets_to_csr_dedups():
    X = baskets_to_csr([[1, 1, 2], []], 4)
    assert X.toarray().tolist() == [[0, 1, 1, 0], [0, 0, 0, 0]]


def test_paired_bootstrap_interval():
    # a beats b by exactly 0.1 on every basket: the interval collapses onto 0.1
    same = evaluate.paired_bootstrap(np.full(50, 0.6), np.full(50, 0.5), n_boot=300, seed=3)
    assert (
        same["mean"] == pytest.approx(0.1) and same["low"] == pytest.approx(0.1) and same["high"] == pytest.approx(0.1)
    )
    # noisy differences centred on zero: the interval straddles 0 and is about ±1.96·sd/√n wide
    rng = np.random.default_rng(0)
    d = rng.choice([-1.0, 1.0], size=400)
    ci = evaluate.paired_bootstrap(d, np.zeros(400), n_boot=1000, seed=1)
    assert ci["low"] < d.mean() < ci["high"]
    half = 1.96 * d.std() / np.sqrt(400)
    assert ci["high"] - ci["low"] == pytest.approx(2 * half, rel=0.15)
    # seeded: the same call gives the same interval
    assert evaluate.paired_bootstrap(d, np.zeros(400), n_boot=1000, seed=1) == ci


def test_ndcg10_per_basket_matches_the_metric():
    ranks = np.array([1, 3, 12, 25, 10])
    per = evaluate.ndcg10_per_basket(ranks)
    assert per.tolist() == pytest.approx([1.0, 0.5, 0.0, 0.0, 1 / math.log2(11)])
    assert per.mean() == pytest.approx(evaluate.metrics_from_ranks(ranks, None, 100)["ndcg@10"])


def test_fast_hidden_ranks_equal_the_reference_ranks():
    rng = np.random.default_rng(5)
    scores = rng.normal(size=(40, 30)).astype(np.float32)
    scores[:, 7] = scores[:, 8]  # ties count against the model in both
    inputs = sp.csr_matrix((rng.random((40, 30)) < 0.1).astype(np.float32))
    hidden = rng.integers(0, 30, size=40)
    hidden[0] = 8
    reference, _ = evaluate.ranks_of_hidden(scores, inputs, hidden)
    assert evaluate.hidden_ranks(scores.copy(), inputs, hidden).tolist() == reference.tolist()


def test_request_days_reproduce_the_decayed_counts():
    """Production is evaluated with one history row per item: count · exp(-days / decay) must give back the
    decayed count exactly (a decayed count of 0 — every purchase long ago — included)."""
    counts = np.array([2.0, 3.0, 1.0, 4.0])
    decayed = np.array([2.0 * np.exp(-1.0), 0.5, 0.0, 4.0])
    days = evaluate.request_days(counts, decayed, 10.0)
    np.testing.assert_allclose(counts * np.exp(-days / 10.0), decayed, atol=1e-12)
    assert days[3] == 0.0 and days[2] == 1e6
    assert evaluate.request_days(counts, None, 0.0).tolist() == [0.0] * 4  # plain counts: bought "today"


def test_intervals_benchmark_from_the_per_basket_file(tmp_path, capsys):
    """benchmarks/intervals.py: hand-made ranks give the exact means, ratio and a degenerate interval; a model
    the file does not hold is a clear error (exit 2), not a traceback."""
    import json

    import pandas as pd

    bench = load_benchmark("intervals")
    frame = pd.DataFrame(
        {
            "split": ["test"] * 4 + ["test"] * 2,
            "protocol": ["personalised"] * 4 + ["anonymous"] * 2,
            "rank:a": [1.0, 1.0, 1.0, 1.0, 50.0, 50.0],
            "rank:b": [3.0, 3.0, 3.0, 3.0, 1.0, 1.0],  # NDCG@10 of rank 3: 1 / log2(4) = 0.5
        }
    )
    file = tmp_path / "per_basket.parquet"
    frame.to_parquet(file)
    out = tmp_path / "i.json"
    assert bench.main(["--per-basket", str(file), "--pair", "a", "b", "--out", str(out)]) == 0
    (r,) = json.loads(out.read_text())
    assert (r["ndcg@10_a"], r["ndcg@10_b"], r["ratio"], r["n"]) == (1.0, 0.5, 2.0, 4)  # anonymous rows left out
    assert r["mean"] == r["low"] == r["high"] == pytest.approx(0.5)
    assert bench.main(["--per-basket", str(file), "--pair", "a", "c"]) == 2
    assert "no ranks for ['c']" in capsys.readouterr().err
    # --by: the same inside each value of a column (rank 1 vs 3 on repeats, rank 11 vs 1 on new items)
    frame["hidden_in_history"] = pd.array([True, True, False, False, None, None], dtype="boolean")
    frame.loc[2:3, "rank:a"], frame.loc[2:3, "rank:b"] = 11.0, 1.0
    frame.to_parquet(file)
    assert (
        bench.main(["--per-basket", str(file), "--pair", "a", "b", "--by", "hidden_in_history", "--out", str(out)]) == 0
    )
    new, repeat = json.loads(out.read_text())
    assert (new["value"], new["ndcg@10_a"], new["ndcg@10_b"], new["n"]) == (False, 0.0, 1.0, 2)
    assert (repeat["value"], repeat["ndcg@10_a"], repeat["ndcg@10_b"], repeat["n"]) == (True, 1.0, 0.5, 2)
    assert bench.main(["--per-basket", str(file), "--pair", "a", "b", "--by", "nope"]) == 2
    # --against: model a of this run against model a of another run of the same baskets, matched by key
    # (the other file's rows shuffled: matching is by basket, not by row order)
    frame["order_id"], frame["hidden_item"] = [f"o{i}" for i in range(6)], "x"
    frame.to_parquet(file)
    other = frame.assign(**{"rank:a": [3.0, 3.0, 1.0, 1.0, 1.0, 1.0]}).iloc[::-1]
    before = tmp_path / "before.parquet"
    other.to_parquet(before)
    argv = ["--per-basket", str(file), "--against", str(before), "--pair", "a", "a", "--out", str(out)]
    assert bench.main(argv) == 0
    (r,) = json.loads(out.read_text())
    # this run: ranks 1, 1, 11, 11 (NDCG 1, 1, 0, 0); the other: 3, 3, 1, 1 (0.5, 0.5, 1, 1)
    assert (r["b"], r["ndcg@10_a"], r["ndcg@10_b"], r["n"]) == ("a (against)", 0.5, 0.75, 4)
    assert r["mean"] == pytest.approx(-0.25)
    other.iloc[1:].to_parquet(before)  # a basket missing: not the same split
    assert bench.main(argv) == 2 and "different baskets" in capsys.readouterr().err
