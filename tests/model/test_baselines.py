"""Classical scorers against hand computations."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from assoc_lib.models import baselines

BASKETS = [[0, 1], [0, 1], [0, 2], [1, 2], [3]]


def test_rules_confidence_lift_and_max_aggregation():
    X = baselines.baskets_to_csr(BASKETS, 4)
    rules = baselines.AssociationRules(min_pair_count=1).fit(X)
    pairs = {
        (a, c): (conf, lift)
        for a, c, conf, lift in zip(
            rules.pairs["antecedent"], rules.pairs["consequent"], rules.pairs["confidence"], rules.pairs["lift"]
        )
    }
    # item 0 in 3 baskets, (0,1) together in 2: conf(0->1) = 2/3; support(1) = 3/5 -> lift = (2/3)/(3/5)
    assert pairs[(0, 1)][0] == pytest.approx(2 / 3)
    assert pairs[(0, 1)][1] == pytest.approx((2 / 3) / (3 / 5))
    scores = rules.score(baselines.baskets_to_csr([[0, 2]], 4))[0]
    # item 1: max(conf(0->1)=2/3, conf(2->1)=1/2) = 2/3 (+ tiny popularity tie-break)
    assert scores[1] == pytest.approx(2 / 3, abs=1e-5)
    assert scores[3] < 1e-5


def test_ease_matches_closed_form():
    rng = np.random.default_rng(0)
    X = baselines.baskets_to_csr([list(rng.choice(6, size=3, replace=False)) for _ in range(40)], 6)
    ease = baselines.EASE(l2=5.0, top_n=6).fit(X)
    G = (X.T @ X).toarray() + 5.0 * np.eye(6)
    P = np.linalg.inv(G)
    B = np.eye(6) - P / np.diag(P)
    np.testing.assert_allclose(ease.B, B, atol=1e-5)
    assert np.allclose(np.diag(ease.B), 0)
    # C-ordered: scipy's sparse @ dense copies a Fortran-ordered matrix on every call (the daily evaluate
    # task spent 42 of its 57 s copying the dense EASE matrix)
    assert ease.B.flags.c_contiguous


def test_ease_steps_aside_beyond_max_items(caplog):
    X = baselines.baskets_to_csr([[0, 1, 2, 3], [0, 1], [2, 3]], 4)
    ease = baselines.EASE(l2=1.0, max_items=2).fit(X)
    assert ease.B.shape == (2, 2) and "exceeds max_items" in caplog.text
    assert ease.score(baselines.baskets_to_csr([[0]], 4)).shape == (1, 4)


def test_item_knn_is_cosine():
    X = baselines.baskets_to_csr(BASKETS, 4)
    knn = baselines.ItemKNN(k=3).fit(X)
    s = knn.score(baselines.baskets_to_csr([[0]], 4))[0]
    assert s[1] == pytest.approx(2 / np.sqrt(3 * 3), abs=1e-5)
    assert s[2] == pytest.approx(1 / np.sqrt(3 * 2), abs=1e-5)


def test_popularity_ranks_by_count():
    X = baselines.baskets_to_csr(BASKETS, 4)
    s = baselines.Popularity().fit(X).score(baselines.baskets_to_csr([[3]], 4))[0]
    assert list(np.argsort(-s, kind="stable")[:3]) == [0, 1, 2]


def _dense_reference(X, ease):
    """An ``ease_dense`` model (the full EASE matrix, scored as X·B + tie-break) on ``X``."""
    from assoc_lib.models.servable import ServableModel
    from assoc_lib.records import ModelKind

    pop = baselines.popularity_counts(X)
    table = baselines.NeighbourTable.bias_only(baselines.TIE_BREAK * pop)
    return ServableModel(
        "ease_dense", ModelKind.CLASSICAL, [str(i) for i in range(X.shape[1])], pop, table=table, dense=ease.B
    )


def test_dense_reference_round_trips_and_scores_with_the_full_matrix(tmp_path):
    """ease_dense: the full EASE matrix, saved beside the archive and memory-mapped back; scores = X·B + tie-break."""
    from assoc_lib.models.servable import ServableModel

    rng = np.random.default_rng(0)
    X = sp.csr_matrix((rng.random((300, 40)) < 0.15).astype(np.float32))
    ease = baselines.EASE(l2=10.0, max_items=40).fit(X)
    pop = baselines.popularity_counts(X)
    loaded = ServableModel.load(_dense_reference(X, ease).save(tmp_path / "ease_dense.npz"))
    assert not loaded.servable and (tmp_path / "ease_dense.npz.dense.npy").exists()
    expected = np.asarray(X[:7] @ ease.B) + baselines.TIE_BREAK * pop
    np.testing.assert_allclose(loaded.score(X[:7]), expected, rtol=1e-6, atol=1e-7)
    # a model derived from the loaded one (ease_dense+personal_cooc) links the same matrix file, never copies it
    import os

    derived = ServableModel.load(loaded.save(tmp_path / "derived.npz"))
    first, second = (os.stat(tmp_path / f"{n}.npz.dense.npy") for n in ("ease_dense", "derived"))
    assert (first.st_ino, first.st_nlink) == (second.st_ino, 2)
    np.testing.assert_allclose(derived.score(X[:7]), expected, rtol=1e-6, atol=1e-7)
    assert loaded.dense.flags.c_contiguous and derived.dense.flags.c_contiguous
    # loaded side by side, the two share one mapping of the file (not one each)
    assert derived.dense is loaded.dense
    # a Fortran-ordered matrix (a file written before the order was fixed) is saved C-ordered, not linked
    fortran = ServableModel.load(tmp_path / "ease_dense.npz")
    fortran.dense = np.asfortranarray(ease.B)
    rewritten = ServableModel.load(fortran.save(tmp_path / "rewritten.npz"))
    assert rewritten.dense.flags.c_contiguous and os.stat(tmp_path / "rewritten.npz.dense.npy").st_nlink == 1
    np.testing.assert_allclose(rewritten.score(X[:7]), expected, rtol=1e-6, atol=1e-7)
    assert rewritten.dense is not loaded.dense  # another file, another mapping
    # a model saved again under the same name (a new file) is read anew, not from the old mapping
    again = ServableModel.load(tmp_path / "derived.npz")
    again.dense = 2.0 * ease.B
    again.save(tmp_path / "derived.npz")
    np.testing.assert_allclose(ServableModel.load(tmp_path / "derived.npz").dense, 2.0 * ease.B, rtol=1e-6)
    np.testing.assert_allclose(loaded.dense, ease.B, rtol=1e-6)
    # a served table of 5 neighbours per item drops weights: the dense scores differ from it
    ease.top_n, ease._table = 5, None
    assert not np.allclose(ease.neighbour_table().score(X[:7]), expected)


def test_top_n_by_magnitude_keeps_negative_weights():
    M = np.array([[0.0, 0.5, -0.9, 0.1], [0.3, 0.0, -0.2, 0.0], [0.0, 0.0, 0.0, 0.0], [0.2, -0.4, 0.6, 0.0]])
    idx, w = baselines.top_n_table(M, 2, by_magnitude=True)
    assert idx[0].tolist() == [2, 1] and w[0] == pytest.approx([-0.9, 0.5])
    assert idx[1].tolist() == [0, 2] and w[1] == pytest.approx([0.3, -0.2])
    assert idx[2].tolist() == [-1, -1] and w[2].tolist() == [0.0, 0.0]  # zeros are not neighbours
    assert idx[3].tolist() == [2, 1] and w[3] == pytest.approx([0.6, -0.4])
    pos_idx, _ = baselines.top_n_table(M, 2)
    assert pos_idx[0].tolist() == [1, 3]  # the positive-only form drops -0.9


def test_served_ease_table_is_the_full_matrix_when_n_covers_every_item():
    rng = np.random.default_rng(1)
    X = sp.csr_matrix((rng.random((200, 12)) < 0.3).astype(np.float32))
    ease = baselines.EASE(l2=5.0, max_items=12, top_n=12).fit(X)
    np.testing.assert_allclose(
        ease.neighbour_table().score(X[:9]), np.asarray(X[:9] @ ease.B) + ease.neighbour_table().bias, atol=1e-5
    )


def test_a_view_of_a_mapped_matrix_or_a_replaced_file_is_written_not_linked(tmp_path):
    """save() links another model's .npy only when the matrix is the whole of that file's mapping and the file
    is still the one mapped: a slice of the mapping (it carries the mapping's filename) keeps its own rows, and
    a model whose file was replaced since keeps its own numbers (linking by name saved the other file's)."""
    import os

    from assoc_lib.models.servable import ServableModel

    rng = np.random.default_rng(1)
    X = sp.csr_matrix((rng.random((200, 30)) < 0.2).astype(np.float32))
    ease = baselines.EASE(l2=10.0, max_items=30).fit(X)
    B = ease.B
    _dense_reference(X, ease).save(tmp_path / "base.npz")
    loaded = ServableModel.load(tmp_path / "base.npz")
    part = ServableModel.load(tmp_path / "base.npz")
    part.dense = loaded.dense[:10]
    part.save(tmp_path / "part.npz")
    written = np.load(tmp_path / "part.npz.dense.npy")
    assert written.shape == (10, 30) and os.stat(tmp_path / "part.npz.dense.npy").st_nlink == 1
    np.testing.assert_array_equal(written, np.asarray(B[:10], np.float32))
    # the base saved again with other numbers: the model mapped before keeps (and saves) its own
    again = ServableModel.load(tmp_path / "base.npz")
    again.dense = 2.0 * B
    again.save(tmp_path / "base.npz")
    loaded.save(tmp_path / "kept.npz")
    np.testing.assert_allclose(np.load(tmp_path / "kept.npz.dense.npy"), B, rtol=1e-6)
    np.testing.assert_allclose(ServableModel.load(tmp_path / "base.npz").dense, 2.0 * B, rtol=1e-6)
