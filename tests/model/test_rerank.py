"""The second stage (models/rerank.py): its pieces by hand, its training, its cross-fitted validation, and the
exported graph against the numpy scorer."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp

from assoc_lib import evaluate
from assoc_lib.data.preprocess import load_split
from assoc_lib.models import rerank
from assoc_lib.models.servable import ServableModel

RERANKED = ("deep+ease+personal_cooc+rerank", "ease+personal_cooc+rerank")


def test_rerank_pieces_by_hand():
    # top items: the basket's own left out, best first, ties to the lower index
    score = np.array([[0.5, 0.9, 0.9, 0.1, 0.7], [3.0, 1.0, 2.0, 2.0, 0.0]], np.float32)
    X = sp.csr_matrix(np.array([[0, 1, 0, 0, 0], [1, 0, 0, 0, 0]], np.float32))
    top = rerank.top_items(score, X, 3)
    np.testing.assert_array_equal(top, [[2, 4, 0], [2, 3, 1]])
    # the features at those items
    counts = np.array([[0.0, 2.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    decayed = counts * 0.5
    cooc = np.array([[0.0, 0.0, 3.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    pop = rerank.log_popularity(np.array([4.0, 2.0, 1.0, 1.0, 0.0]))
    np.testing.assert_allclose(pop, np.log1p(1e4 * np.array([1.0, 0.5, 0.25, 0.25, 0.0])), rtol=1e-6)
    f = rerank.features(top, score, None, -score, decayed, counts, cooc, np.array([1.0, 0.0]), X, pop)
    assert f.shape == (2, 3, len(rerank.FEATURES))
    col = {name: f[..., i] for i, name in enumerate(rerank.FEATURES)}
    np.testing.assert_allclose(col["score"], [[0.9, 0.7, 0.5], [2.0, 2.0, 1.0]], rtol=1e-6)
    np.testing.assert_allclose(col["network_z"], 0.0)
    np.testing.assert_allclose(col["table_z"], -col["score"])
    np.testing.assert_allclose(col["decayed"], [[np.log1p(0.5), 0, 0], [0, 0, 0]], rtol=1e-6)
    np.testing.assert_allclose(col["counts"], [[np.log1p(1.0), 0, 0], [0, 0, 0]], rtol=1e-6)
    np.testing.assert_allclose(col["cooc"], [[np.log1p(3.0), 0, 0], [0, 0, 0]], rtol=1e-6)
    np.testing.assert_allclose(col["share"], [[1, 1, 1], [0, 0, 0]])
    np.testing.assert_allclose(col["history"], [[np.log1p(2.0)] * 3, [0, 0, 0]], rtol=1e-6)  # distinct items
    np.testing.assert_allclose(col["basket"], 1.0)
    np.testing.assert_allclose(col["bought"], [[1, 0, 0], [0, 0, 0]])
    np.testing.assert_allclose(col["popularity"], pop[top])
    np.testing.assert_allclose(col["position"], [[0, 1, 2], [0, 1, 2]])
    # the network by hand: standardise, ReLU layer, linear score
    r = rerank.Reranker(
        np.zeros(12, np.float32),
        np.full(12, 2.0, np.float32),
        [np.eye(12, 2, dtype=np.float32), np.array([[1.0], [-1.0]], np.float32)],
        [np.array([0.0, 0.1], np.float32), np.array([0.5], np.float32)],
        k=3,
    )
    h = np.maximum(f / 2.0 @ np.eye(12, 2) + [0.0, 0.1], 0.0)
    np.testing.assert_allclose(r.forward(f), h @ [1.0, -1.0] + 0.5, rtol=1e-5)
    # reorder: the listed items of the rows asked for go above the rest, in the new order; others unchanged
    new = np.array([[0.0, 2.0, 1.0], [5.0, 6.0, 7.0]], np.float32)
    out = rerank.reorder(score, top, new, np.array([True, False]))
    np.testing.assert_allclose(out[0], [0.9 + 1 + 1, 0.9, 0.9 + 1 + 0, 0.1, 0.9 + 1 + 2], rtol=1e-6)
    np.testing.assert_array_equal(out[1], score[1])
    # folds: a hash of the order id, the same every time, both halves used
    fold = rerank.fold_of([f"o{i}" for i in range(400)], 7)
    np.testing.assert_array_equal(fold, rerank.fold_of([f"o{i}" for i in range(400)], 7))
    assert 150 < fold.sum() < 250 and (fold != rerank.fold_of([f"o{i}" for i in range(400)], 8)).any()


def test_reranker_learns_a_planted_rule():
    """list_ndcg by hand (pessimistic ties, 0 when the hidden item is not listed); the fitted reranker finds
    the hidden item by its second feature whatever the first says, and its numpy forward is the network."""
    from assoc_lib.train import fit_reranker, list_ndcg

    pred = np.array([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0], [1.0, 1.0, 0.0]])
    labels = np.array([[0, 1, 0], [0, 0, 0], [1, 0, 0]], np.float32)
    np.testing.assert_allclose(list_ndcg(pred, labels), [1 / np.log2(3), 0.0, 1 / np.log2(3)])
    rng = np.random.default_rng(0)
    n, k = 600, 12
    hidden = rng.integers(0, k, n)
    labels = np.zeros((n, k), np.float32)
    labels[np.arange(n), hidden] = 1.0
    feats = np.stack([rng.normal(size=(n, k)), labels * 2.0 + rng.normal(scale=0.3, size=(n, k))], -1)
    r = fit_reranker(feats[:400].astype(np.float32), labels[:400], seed=1, epochs=15, k=k)
    assert list_ndcg(r.forward(feats[400:]), labels[400:]).mean() > 0.9
    assert list_ndcg(feats[400:, :, 0], labels[400:]).mean() < 0.6


def test_cross_fit_scores_each_half_with_the_other_halfs_lists():
    """The halves' rerankers are fitted on the training lists of the other half only: half 0's lists plant
    one rule (the hidden item has feature 1 high), half 1's the opposite (feature 1 low), so the reranker
    that scores half 0 follows half 1's rule, and the one fitted on every list learns both. The
    evaluation lists' first-stage figure is their order's."""
    from assoc_lib.train import cross_fit, list_ndcg

    rng = np.random.default_rng(0)
    n, k = 800, 20  # last in a list of 20: outside the top 10, NDCG@10 0

    def lists(sign):
        labels = np.zeros((n, k), np.float32)
        labels[np.arange(n), rng.integers(0, k, n)] = 1.0
        feats = np.stack([rng.normal(size=(n, k)), sign * 3.0 * labels + rng.normal(scale=0.3, size=(n, k))], -1)
        return feats.astype(np.float32), labels

    (f0, l0), (f1, l1) = lists(1.0), lists(-1.0)
    fit_fold = np.repeat([0, 1], n)
    fit = (np.concatenate([f0, f1]), np.concatenate([l0, l1]))
    # evaluation lists: 200 of each half, each half's rule, listed first-stage order = position
    feats, labels = np.concatenate([f0[:200], f1[:200]]), np.concatenate([l0[:200], l1[:200]])
    fold, rows = np.repeat([0, 1], 200), np.ones(400, bool)
    full, folds, base, crossed = cross_fit(fit, fit_fold, feats, labels, rows, fold, seed=1, epochs=10, k=k)
    np.testing.assert_allclose(base, list_ndcg(-np.arange(k, dtype=np.float64)[None, :].repeat(400, 0), labels))
    # folds[0] scores half 0 and was fitted on half 1: it ranks half 0's hidden items last, half 1's first
    assert list_ndcg(folds[0].forward(f1[200:]), l1[200:]).mean() > 0.9
    assert list_ndcg(folds[0].forward(f0[200:]), l0[200:]).mean() < 0.1
    assert list_ndcg(folds[1].forward(f0[200:]), l0[200:]).mean() > 0.9
    assert crossed.mean() < 0.1 < base.mean()  # each half scored by the other half's rule
    both = list_ndcg(full.forward(np.concatenate([f0[200:], f1[200:]])), np.concatenate([l0[200:], l1[200:]]))
    assert both.mean() > 0.9  # fitted on both halves' lists, it learns both rules (the hidden item stands out)


def _holdouts(trained, model, past=True, with_history=False):
    baskets, vocab = load_split(trained["prep_dir"])
    cfg = trained["cfg"]
    holdouts, history = evaluate.make_holdouts(
        baskets, len(vocab), cfg.models.eval_seed, cfg.models.history_max_items, decays=model.decays, past=past
    )
    return (baskets, vocab, holdouts, history) if with_history else (baskets, vocab, holdouts)


@pytest.mark.parametrize("name", RERANKED)
def test_reranked_candidates_are_cross_fitted(trained, name, tmp_path):
    """Both the deep and the classical candidate come reranked, with their base's kind and first stage, one
    stage for shoppers with a history and one for baskets without; the comparison's validation figure
    scores each basket with the halves' rerankers that did not see it, on both protocols."""
    base_name = name.removesuffix("+rerank")
    cand, base_cand = trained["candidates"][name], trained["candidates"][base_name]
    # its anonymous answer is its own (the anonymous stage), so the anonymous comparison keeps it
    assert cand["kind"] == base_cand["kind"] and base_cand["personal_only"] and not cand["personal_only"]
    model, base = ServableModel.load(cand["path"]), ServableModel.load(base_cand["path"])
    assert model.reranker is not None and len(model.reranker_folds) == 2
    assert model.reranker_anonymous is not None and len(model.reranker_anonymous_folds) == 2
    assert (model.history_weight, model.cooc_weight, model.personal_scale, model.repeat_slope) == (
        base.history_weight,
        base.cooc_weight,
        base.personal_scale,
        base.repeat_slope,
    )
    least = trained["cfg"].models.rerank_min_lists
    assert min(model.params["reranker"][s]["lists"] for s in ("personal", "anonymous")) >= least
    baskets, vocab, holdouts, full_history = _holdouts(trained, model, with_history=True)
    val = holdouts["validation"]
    # fitted on up to rerank_lists_per_basket lists a validation basket (evaluate.hold_out_lists): the
    # listed ones, more lists than listed baskets; rerank_lists(listed_only) is the filter, with positions
    from assoc_lib.train import rerank_lists

    cfg = trained["cfg"]
    assert cfg.models.rerank_lists_per_basket > 1 and model.params["reranker"]["lists_per_basket"] == 3
    val_rows = np.flatnonzero((baskets["split"] == "validation").to_numpy())
    fit = evaluate.hold_out_lists(
        [baskets["items"].iloc[r] for r in val_rows],
        len(vocab),
        cfg.models.rerank_lists_per_basket,
        cfg.models.eval_seed + 2,
        full_history[val_rows],
    )
    every = rerank_lists(model, fit, model.reranker.k)
    listed = rerank_lists(model, fit, model.reranker.k, listed_only=True)
    keep = every[2] & every[1].any(1)
    np.testing.assert_array_equal(listed[3], np.flatnonzero(keep))
    np.testing.assert_array_equal(listed[0], every[0][keep])
    record = model.params["reranker"]["personal"]
    assert record["lists"] == int(keep.sum()) > record["baskets_listed"]
    X, H = val.inputs, val.history
    # the first stage is the base; rows with a history get the shoppers' reranker, rows without it the
    # anonymous one: an empty history is answered as no history at all
    reranked, first = model.score(X, H), base.score(X, H)
    no_history = np.diff(H.counts.tocsr().indptr) == 0
    assert no_history.any() and (~no_history).any()
    np.testing.assert_allclose(reranked[no_history], model.score(X[no_history]), rtol=1e-5, atol=1e-5)
    personal_only = dataclasses.replace(model, reranker_anonymous=None)
    anonymous_only = dataclasses.replace(model, reranker=None)
    np.testing.assert_allclose(personal_only.score(X, H)[no_history], first[no_history], rtol=1e-6)
    np.testing.assert_allclose(anonymous_only.score(X, H)[~no_history], first[~no_history], rtol=1e-6)
    np.testing.assert_allclose(reranked[~no_history], personal_only.score(X, H)[~no_history], rtol=1e-6)
    np.testing.assert_allclose(reranked[no_history], anonymous_only.score(X, H)[no_history], rtol=1e-6)
    assert not np.allclose(reranked[~no_history], first[~no_history])
    assert not np.allclose(reranked[no_history], first[no_history])
    # the two stages are different networks
    assert not np.allclose(model.reranker.kernels[0], model.reranker_anonymous.kernels[0])
    # saved and loaded: the same scores
    again = ServableModel.load(model.save(tmp_path / "m.npz"))
    np.testing.assert_allclose(again.score(X, H), reranked, rtol=1e-6)
    # cross-fitted validation, by hand: each half scored by the other half's rerankers, on both protocols
    order_ids = baskets["order_id"].to_numpy()[val.frame_rows]
    fold = rerank.fold_of(order_ids, model.fold_seed)
    ranks, _ = evaluate.cross_fitted_ranks(model, val, order_ids)
    anonymous_ranks, _ = evaluate.cross_fitted_ranks(model, val.anonymous(), order_ids)
    for h in (0, 1):
        rows = np.flatnonzero(fold == h)
        half = dataclasses.replace(
            model, reranker=model.reranker_folds[h], reranker_anonymous=model.reranker_anonymous_folds[h]
        )
        by_hand = evaluate.hidden_ranks(half.score(X[rows], H[rows]), X[rows], val.hidden[rows])
        np.testing.assert_array_equal(ranks[rows], by_hand)
        by_hand = evaluate.hidden_ranks(half.score(X[rows]), X[rows], val.hidden[rows])
        np.testing.assert_array_equal(anonymous_ranks[rows], by_hand)
    # the lists are the configured top k: a shorter k lists the same items first, with the same features
    from assoc_lib.train import rerank_lists

    short, long = (
        rerank_lists(model, val.subset(np.arange(40)), 30),
        rerank_lists(model, val.subset(np.arange(40)), 100),
    )
    assert short[0].shape[1] == 30
    np.testing.assert_allclose(short[0], long[0][:, :30])
    full, _ = evaluate.score_ranks(model.score, val)
    assert (ranks != full).any()  # the fold rerankers are not the one fitted on all of validation
    payload = evaluate.evaluate_candidates(trained["prep_dir"], [cand], trained["cfg"], tmp_path / "eval")
    row = {r["protocol"]: r for r in payload["models"]}
    assert row["personalised"]["val_ndcg@10"] == pytest.approx(evaluate.ndcg10_per_basket(ranks).mean())
    assert row["anonymous"]["val_ndcg@10"] == pytest.approx(evaluate.ndcg10_per_basket(anonymous_ranks).mean())
    test = holdouts["test"]
    assert row["anonymous"]["ndcg@10"] == pytest.approx(
        evaluate.evaluate_scores(model.score, test.anonymous(), len(vocab))["ndcg@10"]
    )


@pytest.mark.parametrize("name", RERANKED)
def test_reranked_export_matches_numpy(trained, exported, name):
    """The exported second stage (features, networks, reorder) gives the numpy scores from per-purchase
    history rows and from a basket alone (the anonymous stage); an empty history gives the anonymous answer;
    the served path measures what numpy does."""
    import tensorflow as tf

    model = ServableModel.load(trained["candidates"][name]["path"])
    _, vocab, holdouts = _holdouts(trained, model)
    test = holdouts["test"]
    X, H = test.inputs[:40], test.history[:40]
    scores = model.score(X, H).astype(np.float64)
    rows, cols = X.nonzero()
    scores[rows, cols] = -np.inf
    pad = lambda seqs, fill: [list(s) + [fill] * (max(map(len, seqs)) - len(s)) for s in seqs]
    purchases = [H.past.purchases(r) for r in range(X.shape[0])]
    items = pad([[vocab[i] for i in X[r].indices] for r in range(X.shape[0])], "")
    sigs = tf.saved_model.load(str(exported[name])).signatures
    out = sigs["complete_basket_personal"](
        items=tf.constant(items),
        history=tf.constant(pad([[vocab[i] for i in its] or [""] for its, _ in purchases], "")),
        history_counts=tf.constant(pad([[1.0] * len(its) or [0.0] for its, _ in purchases], 0.0), tf.float32),
        history_days=tf.constant(pad([ago.tolist() or [0.0] for _, ago in purchases], 0.0), tf.float32),
    )
    np.testing.assert_allclose(out["scores"].numpy(), -np.sort(-scores, axis=1)[:, :20], rtol=1e-4, atol=1e-4)
    expected = np.asarray(vocab)[np.argsort(-scores, axis=1, kind="stable")[:, :10]]
    assert (out["item_ids"].numpy()[:, :10].astype(str) == expected).mean() > 0.99
    empty = sigs["complete_basket_personal"](
        items=tf.constant(items),
        history=tf.constant([[""]] * len(items)),
        history_counts=tf.constant([[0.0]] * len(items)),
        history_days=tf.constant([[0.0]] * len(items)),
    )
    anon = sigs["complete_basket"](items=tf.constant(items))
    assert (anon["item_ids"].numpy() == empty["item_ids"].numpy()).all()
    anon_scores = model.score(X).astype(np.float64)
    anon_scores[rows, cols] = -np.inf
    np.testing.assert_allclose(anon["scores"].numpy(), -np.sort(-anon_scores, axis=1)[:, :20], rtol=1e-4, atol=1e-4)
    first_stage = dataclasses.replace(model, reranker=None, reranker_anonymous=None)
    assert (anon["scores"].numpy()[:, 0] > first_stage.score(X).max(axis=1)).all()  # the anonymous stage ran
    # related items: the anonymous answer for a basket of one
    one = [vocab[i] for i in X.indices[:5]]
    related = sigs["related_items"](item=tf.constant(one))
    alone = sigs["complete_basket"](items=tf.constant([[i] for i in one]))
    np.testing.assert_array_equal(related["item_ids"].numpy(), alone["item_ids"].numpy())
    card = evaluate.model_card(exported[name])
    assert card["reranker"]["top_k"] == model.reranker.k and card["reranker"]["features"] == list(rerank.FEATURES)
    assert card["reranker"]["personal"]["lists"] == model.params["reranker"]["personal"]["lists"]
    assert card["reranker"]["anonymous"]["lists"] == model.params["reranker"]["anonymous"]["lists"]
    served = evaluate.evaluate_topk(
        evaluate.saved_model_topk(exported[name], personal=True),
        test,
        vocab,
        decay=model.history_decay,
        per_purchase=True,
    )
    assert served["ndcg@10"] == pytest.approx(
        evaluate.evaluate_scores(model.score, test, len(vocab))["ndcg@10"], abs=0.005
    )


def test_history_cap_is_served_as_evaluated(trained, tmp_path):
    """The evaluation's histories hold each shopper's ``history_max_items`` most-bought items; a shop sends
    every purchase. The model carries the cap, and the numpy scorer and the exported graph apply it to
    whatever history arrives, so what is served is what was measured (a cap of 3 here, so it bites)."""
    import tensorflow as tf

    from assoc_lib.serving.export import export_saved_model

    model = ServableModel.load(trained["candidates"]["deep+ease+personal_cooc+rerank"]["path"])
    assert model.history_max_items == trained["cfg"].models.history_max_items
    model.history_max_items = 3
    baskets, vocab = load_split(trained["prep_dir"])
    holdouts, _ = evaluate.make_holdouts(
        baskets, len(vocab), trained["cfg"].models.eval_seed, 0, decays=model.decays, past=True
    )  # uncapped
    test = holdouts["test"]
    rows = np.flatnonzero(np.diff(test.history.counts.tocsr().indptr) > 3)[:30]
    assert len(rows) >= 10
    X, H = test.inputs[rows], test.history[rows]
    capped = H.capped(3)
    assert (np.diff(capped.counts.tocsr().indptr) == 3).all() and capped.past is H.past
    np.testing.assert_allclose(model.score(X, H), model.score(X, capped), rtol=1e-6)
    uncapped = dataclasses.replace(model, history_max_items=0)
    assert not np.allclose(uncapped.score(X, H), model.score(X, H))  # the cap changes the answer
    path = export_saved_model(model, tmp_path / "export", {}, k=20)
    scores = model.score(X, H).astype(np.float64)
    r, c = X.nonzero()
    scores[r, c] = -np.inf
    pad = lambda seqs, fill: [list(s) + [fill] * (max(map(len, seqs)) - len(s)) for s in seqs]
    purchases = [H.past.purchases(k) for k in range(len(rows))]
    out = tf.saved_model.load(str(path)).signatures["complete_basket_personal"](
        items=tf.constant(pad([[vocab[i] for i in X[k].indices] for k in range(len(rows))], "")),
        history=tf.constant(pad([[vocab[i] for i in its] for its, _ in purchases], "")),
        history_counts=tf.constant(pad([[1.0] * len(its) for its, _ in purchases], 0.0), tf.float32),
        history_days=tf.constant(pad([ago.tolist() for _, ago in purchases], 0.0), tf.float32),
    )
    np.testing.assert_allclose(out["scores"].numpy(), -np.sort(-scores, axis=1)[:, :20], rtol=1e-4, atol=1e-4)
    assert evaluate.model_card(path)["history_max_items"] == 3


def test_anonymous_stage_on_data_without_users(trained, tmp_path):
    """Data without user ids (the Groceries shape): no personal co-occurrence, so the second stage is fitted
    on ease, ease_dense and deep+ease themselves, the anonymous stage only; the comparison (anonymous protocol
    only) has them, their validation cross-fitted."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from assoc_lib.config import apply_overrides
    from assoc_lib.data.preprocess import BASKETS_FILE
    from assoc_lib.train import train_candidates

    prep = tmp_path / "prep"
    shutil.copytree(trained["prep_dir"], prep)
    baskets, vocab = load_split(prep)
    baskets["user_id"] = None
    pq.write_table(pa.Table.from_pandas(baskets, preserve_index=False), prep / BASKETS_FILE)
    cfg = apply_overrides(trained["cfg"], {"models.deep_epochs": 4, "models.deep_tune_trials": 0})
    summary = train_candidates(prep, cfg, tmp_path / "train")
    assert summary["protocol"] == "anonymous"
    cands = {c["name"]: c for c in summary["candidates"]}
    reranked = [n for n in cands if n.endswith("+rerank")]
    assert reranked == ["ease+rerank", "ease_dense+rerank", "deep+ease+rerank"]
    holdouts, history = evaluate.make_holdouts(baskets, len(vocab), cfg.models.eval_seed)
    assert history is None
    val, test = holdouts["validation"], holdouts["test"]
    order_ids = baskets["order_id"].to_numpy()[val.frame_rows]
    payload = evaluate.evaluate_candidates(prep, [cands[n] for n in reranked], cfg, tmp_path / "eval")
    assert {r["protocol"] for r in payload["models"]} == {"anonymous"}
    for row in payload["models"]:
        model = ServableModel.load(cands[row["name"]]["path"])
        assert model.reranker is None and len(model.reranker_anonymous_folds) == 2
        assert not cands[row["name"]]["personal_only"] and model.params["reranker"]["personal"] is None
        ranks, _ = evaluate.cross_fitted_ranks(model, val, order_ids)
        assert row["val_ndcg@10"] == pytest.approx(evaluate.ndcg10_per_basket(ranks).mean())
        assert row["ndcg@10"] == pytest.approx(evaluate.evaluate_scores(model.score, test, len(vocab))["ndcg@10"])
