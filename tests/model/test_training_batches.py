"""The deep model's training batches (``train._dataset``): what the denoising objective promises, checked on
every row of an epoch: each basket once, its input a non-empty part of it, the dropped share near
``input_dropout``, hide-and-predict targets exactly the hidden items, and a history either whole or absent."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from assoc_lib.data.history import History
from assoc_lib.models.network import DeepParams
from tests.conftest import load_benchmark

N_BASKETS, N_ITEMS = 1500, 4000


def _data():
    """Basket i holds item i (its marker) and 0-11 other items; its history is items 2000+i.. with counts."""
    rng = np.random.default_rng(3)
    rows, cols, hrows, hcols, hvals = [], [], [], [], []
    for i in range(N_BASKETS):
        others = rng.choice(np.arange(N_BASKETS, 2000), rng.integers(0, 12), replace=False)
        for j in (i, *others):
            rows.append(i), cols.append(j)
        for k in range(i % 7):  # some baskets have no history at all
            hrows.append(i), hcols.append(2000 + (i + k) % 2000), hvals.append(1.0 + k)
    X = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(N_BASKETS, N_ITEMS))
    counts = sp.csr_matrix((np.array(hvals, np.float32), (hrows, hcols)), shape=(N_BASKETS, N_ITEMS))
    decayed = counts.copy()
    decayed.data = decayed.data * 0.5
    return X, History(counts, {60.0: decayed})


def _epoch(X, history, params):
    from assoc_lib.train import _dataset

    out = []
    for batch in _dataset(X, params, 128, history):
        arrays = [b.numpy() for b in batch]
        out += list(zip(*arrays))
    return out


def _ids(row):
    return set(int(i) for i in row if i >= 0)


@pytest.mark.parametrize("masked", [False, True])
def test_an_epoch_corrupts_each_basket_as_documented(masked):
    X, history = _data()
    params = DeepParams(input_dropout=0.5, history_dropout=0.3, masked_targets=masked, personal=True, seed=11)
    rows = _epoch(X, history, params)
    assert len(rows) == N_BASKETS
    seen, kept, expected_kept, total, hidden_histories = set(), 0, 0.0, 0, 0
    for items_in, targets, hist_ids, hist_w, hist_dw in rows:
        given, wanted = _ids(items_in), _ids(targets)
        basket = given | wanted if masked else wanted
        marker = min(basket)
        assert marker < N_BASKETS and marker not in seen
        seen.add(marker)
        assert basket == set(X[marker].indices)
        assert given, "every basket keeps at least one item"
        if masked:
            assert not given & wanted, "only the hidden items are targets"
            assert bool(wanted) == (len(basket) >= 2), "a basket of two or more hides at least one item"
        else:
            assert given <= wanted
        kept, total = kept + len(given), total + len(basket)
        expected_kept += len(basket) * 0.5 + 0.5 ** len(basket)  # each kept with 1 - p, plus the last one
        h = _ids(hist_ids)
        expected = set(history.counts[marker].indices)
        assert h in (expected, set()), "a history is shown whole or not at all"
        hidden_histories += bool(expected) and not h
        valid = np.asarray(hist_ids) >= 0
        order = np.asarray(hist_ids)[valid]
        np.testing.assert_allclose(hist_w[valid], np.log1p(history.counts[marker, order].toarray().ravel()), rtol=1e-6)
        np.testing.assert_allclose(
            hist_dw[valid], np.log1p(history.decayed[60.0][marker, order].toarray().ravel()), rtol=1e-6
        )
        assert not np.any(hist_w[~valid]) and not np.any(hist_dw[~valid]), "padding weighs nothing"
    with_history = sum(1 for i in range(N_BASKETS) if i % 7)
    assert 0.2 < hidden_histories / with_history < 0.4  # history_dropout 0.3
    assert abs(kept - expected_kept) / total < 0.03  # half of the items dropped, but never a basket's last one


def test_epochs_reshuffle_and_redraw():
    X, history = _data()
    params = DeepParams(input_dropout=0.5, personal=True, seed=11)
    from assoc_lib.train import _dataset

    ds = _dataset(X, params, 128, history)
    first = [b[0].numpy() for b in ds.take(1)][0]
    second = [b[0].numpy() for b in ds.take(1)][0]
    assert first.shape != second.shape or np.any(first != second)


def test_train_step_benchmark_times_every_variant(trained, tmp_path, capsys):
    """benchmarks/train_step.py on the session's split: each variant timed, the two forms of the repeat prior
    equal on a real batch (what makes the timing a comparison of the same computation)."""
    import json

    module = load_benchmark("train_step")
    out = tmp_path / "step.json"
    assert module.main(["--prep", str(trained["prep_dir"]), "--steps", "2", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert set(record["seconds_per_step"]) == {"shipped", "dense_prior", "keras_apply", "former"}
    assert all(s > 0 for s in record["seconds_per_step"].values())
    assert record["prior_forms_max_abs_difference"] < 1e-4
    assert "examples/s" in capsys.readouterr().out
