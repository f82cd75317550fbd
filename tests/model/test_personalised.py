"""The personalised protocol: history without leakage, personal baselines, the two-input export."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from assoc_lib.data.history import build_histories
from assoc_lib.data.preprocess import load_split
from assoc_lib.models.servable import ServableModel


def _frame(rows):
    return pd.DataFrame(
        [
            {"order_id": f"o{i}", "user_id": u, "ts": pd.Timestamp(t, tz="UTC"), "split": s, "items": it}
            for i, (u, t, s, it) in enumerate(rows)
        ]
    )


def test_history_never_sees_the_future():
    b = _frame(
        [
            ("u1", "2024-01-01", "train", [0]),
            ("u1", "2024-01-03", "train", [1, 9]),  # 9: bought later in train -> not in the first basket's history
            ("u1", "2024-01-03", "train", [2]),  # same instant as the previous one: they do not see each other
            ("u1", "2024-01-10", "validation", [3]),
            ("u1", "2024-01-20", "test", [4]),
            ("u1", "2024-01-25", "test", [5]),  # a later test basket: never in another test basket's history
            ("u2", "2024-01-02", "train", [6]),
            (None, "2024-01-21", "test", [0, 1]),  # guest
        ]
    )
    counts, recency = build_histories(b, 10)
    seen = lambda r: set(counts[r].indices.tolist())
    assert seen(0) == set()
    assert seen(1) == {0} and seen(2) == {0}
    assert seen(3) == {0, 1, 9, 2}  # validation sees train
    assert seen(4) == {0, 1, 9, 2, 3} and seen(5) == {0, 1, 9, 2, 3}  # test sees train + validation only
    assert 4 not in seen(5) and 5 not in seen(4)
    assert seen(6) == set() and seen(7) == set()
    assert 6 not in seen(4)  # other users' purchases never leak
    assert recency[3, 0] == pytest.approx(9 + 1)  # days since last purchase + 1


def test_decayed_history_by_hand():
    """sum over visible earlier purchases of exp(-days ago / tau), with the counts' visibility rules."""
    from assoc_lib.data.history import build_history

    b = _frame(
        [
            ("u1", "2024-01-01", "train", [0, 1]),
            ("u1", "2024-01-11", "train", [0]),
            ("u1", "2024-01-11", "train", [4]),  # same instant as the previous basket: invisible to it
            ("u1", "2024-01-21", "validation", [2]),
            ("u1", "2024-01-31", "test", [0, 3]),
            ("u1", "2024-02-05", "test", [2]),  # a later test basket: never in the other test basket's history
            ("u2", "2024-01-05", "train", [1]),
            ("", "2024-01-06", "test", [1]),  # guest
        ]
    )
    h = build_history(b, 5, taus=(10.0,))
    D, C = h.decayed[10.0].toarray(), h.counts.toarray()
    e = lambda days: float(np.exp(-days / 10.0))
    assert D[0].tolist() == [0.0] * 5  # nothing before the first basket
    assert D[1] == pytest.approx([e(10), e(10), 0, 0, 0]) and D[2] == pytest.approx(D[1])
    assert D[3] == pytest.approx([e(20) + e(10), e(20), 0, 0, e(10)])  # validation: every train basket
    # test: train and validation, read at each test basket's own time; never the other test basket
    assert D[4] == pytest.approx([e(30) + e(20), e(30), e(10), 0, e(20)])
    assert D[5] == pytest.approx([e(35) + e(25), e(35), e(15), 0, e(25)])
    assert D[6].tolist() == [0.0] * 5 and D[7].tolist() == [0.0] * 5  # no history of u1 leaks to others
    assert ((D > 0) == (C > 0)).all()  # the same entries as the counts
    # a mask limits the decayed counts to some rows; counts stay whole
    masked = build_history(b, 5, taus=(10.0,), tau_rows=(b["split"] != "train").to_numpy())
    assert masked.decayed[10.0][:3].nnz == 0 and masked.decayed[10.0][3:].toarray() == pytest.approx(D[3:])
    assert (masked.counts != h.counts).nnz == 0


def test_decayed_counts_follow_the_counts_visibility_rules():
    """Counts (running sums) and decayed counts (a visibility matrix per user) implement the same rules
    twice: with no decay they must agree on every basket, including baskets at one instant and caps."""
    from assoc_lib.data.history import build_history

    rng = np.random.default_rng(11)
    rows = [
        (
            f"u{rng.integers(4)}",
            f"2024-01-{1 + i // 3:02d}",  # three baskets per day: same-instant baskets share a timestamp
            ["train", "validation", "test"][min(i // 40, 2)],
            sorted(set(rng.integers(0, 25, size=5).tolist())),
        )
        for i in range(90)
    ]
    h = build_history(_frame(rows), 25, max_items=6, taus=(1e9,))
    assert h.counts.nnz > 0
    np.testing.assert_allclose(h.decayed[1e9].toarray(), h.counts.toarray(), rtol=1e-6)
    np.testing.assert_allclose(h.weights_at_counts(1e9), h.counts.tocsr().data, rtol=1e-6)


def test_time_decayed_prior_by_hand():
    """ServableModel's prior: + beta · log(1 + decayed count) at its decay time; plain counts at decay 0."""
    import scipy.sparse as sp

    from assoc_lib.data.history import History
    from assoc_lib.models.baselines import NeighbourTable
    from assoc_lib.records import ModelKind

    pop = np.array([0.5, 0.4, 0.3], np.float32)
    model = ServableModel(
        "p", ModelKind.CLASSICAL, ["a", "b", "c"], pop, table=NeighbourTable.bias_only(pop), history_weight=2.0
    )
    counts = sp.csr_matrix(np.array([[0, 3, 1]], np.float32))
    decayed = sp.csr_matrix(np.array([[0, 0.2, 0.9]], np.float32))
    H = History(counts, {30.0: decayed})
    X = sp.csr_matrix(np.array([[1, 0, 0]], np.float32))
    assert model.score(X, H)[0] == pytest.approx(pop + 2.0 * np.log1p([0, 3, 1]))
    model.history_decay = 30.0
    assert model.score(X, H)[0] == pytest.approx(pop + 2.0 * np.log1p([0, 0.2, 0.9]))
    # recency flips the order: "c" (bought once, lately) now beats "b" (three times, long ago)
    assert model.score(X, H)[0, 2] > model.score(X, H)[0, 1]
    model.history_decay = 7.0
    with pytest.raises(KeyError, match="no decay 7 days"):
        model.score(X, H)


def _cooc_world():
    """One shopper's baskets over 8 items (plus another shopper and a guest) and each row's visible basket {0, 1}."""
    import scipy.sparse as sp

    from assoc_lib.data.history import build_past_baskets

    b = _frame(
        [
            ("u1", "2024-01-01", "train", [0, 1, 2]),
            ("u1", "2024-01-11", "train", [0, 3]),
            ("u1", "2024-01-16", "train", [4]),  # shares nothing with the baskets below: never counts
            ("u1", "2024-01-21", "validation", [0, 1, 5]),
            ("u1", "2024-01-31", "test", [0, 1, 6]),
            ("u1", "2024-02-05", "test", [5, 6, 7]),  # a later test basket: never in the other's past
            ("u2", "2024-01-05", "train", [0, 1, 7]),  # another shopper: never in u1's past
            ("", "2024-01-25", "test", [0, 1]),  # guest: no past
        ]
    )
    X = sp.csr_matrix(np.array([[1, 1, 0, 0, 0, 0, 0, 0]] * 8, np.float32))
    return build_past_baskets(b, 8), X


def test_personal_cooccurrence_by_hand():
    """PerNIR-style score: sum over the shopper's visible past baskets b of exp(-days ago / tau) · |x ∩ b| · b,
    with the history's visibility rules (validation sees train, test sees train + validation, never another
    evaluation basket, never another shopper); the model that adds it is servable unless its base is not."""
    import scipy.sparse as sp

    from assoc_lib.data.history import History
    from assoc_lib.models.baselines import NeighbourTable
    from assoc_lib.records import ModelKind

    past, X = _cooc_world()
    C = past.cooc(X, 0.0).toarray()
    assert C[:3].sum() == 0 and C[6].sum() == 0  # train rows and u2's train basket: no past (evaluation only)
    # validation: train baskets {0,1,2} (overlap 2) and {0,3} (overlap 1); {4}: overlap 0
    assert C[3].tolist() == [3, 2, 2, 1, 0, 0, 0, 0]
    # test: also the validation basket {0,1,5} (overlap 2); never the other test basket, never u2's {0,1,7}
    assert C[4].tolist() == [5, 4, 2, 1, 0, 2, 0, 0] and C[5].tolist() == C[4].tolist()
    assert C[7].sum() == 0
    e = lambda days: float(np.exp(-days / 10.0))
    D = past.cooc(X, 10.0).toarray()
    assert D[3] == pytest.approx([2 * e(20) + e(10), 2 * e(20), 2 * e(20), e(10), 0, 0, 0, 0])
    assert D[4][5] == pytest.approx(2 * e(10)) and D[5][5] == pytest.approx(2 * e(15))  # each at its own time
    assert past[[4, 3]].cooc(X[:2], 0.0).toarray().tolist() == [C[4].tolist(), C[3].tolist()]  # slices align
    # what a client sends for the validation row: one row per purchase, a basket's rows sharing its days
    items, ago = past.purchases(3)
    sent = sorted(zip(items.tolist(), ago.tolist()))
    assert sent == [(0, 10.0), (0, 20.0), (1, 20.0), (2, 20.0), (3, 10.0), (4, 5.0)]
    assert len(past.purchases(7)[0]) == 0  # the guest sends no history

    pop = np.linspace(0.8, 0.1, 8).astype(np.float32)
    model = ServableModel(
        "ref", ModelKind.CLASSICAL, [str(i) for i in range(8)], pop, table=NeighbourTable.bias_only(pop)
    )
    H = History(sp.csr_matrix((8, 8), dtype=np.float32), {}, past)
    model.cooc_weight, model.cooc_decay = 0.5, 0.0
    assert model.servable  # the request's history rows carry the past baskets
    assert model.score(X, H)[3] == pytest.approx(pop + 0.5 * np.log1p(C[3]))
    with pytest.raises(ValueError, match="needs the past baskets"):
        model.score(X, History(H.counts))
    model.dense = np.eye(8, dtype=np.float32)  # on a dense EASE it stays an evaluation reference
    assert not model.servable


def test_served_personal_cooccurrence_by_hand(tmp_path):
    """The exported graph finds the past baskets again in the request's per-purchase history rows (same days,
    same basket) and adds γ·log(1 + co-occurrence), as the numpy scorer does with the baskets themselves;
    padding, unknown items and rows with count 0 change nothing; an empty history is the anonymous answer."""
    import scipy.sparse as sp
    import tensorflow as tf

    from assoc_lib.data.history import History
    from assoc_lib.models.baselines import NeighbourTable
    from assoc_lib.records import ModelKind
    from assoc_lib.serving.export import export_saved_model

    past, X = _cooc_world()
    vocab = [f"i{i}" for i in range(8)]
    pop = np.linspace(0.8, 0.1, 8).astype(np.float32)
    e = lambda days: float(np.exp(-days / 10.0))
    for tau, expected in ((0.0, [0, 0, 2, 1, 0, 0, 0, 0]), (10.0, [0, 0, 2 * e(20), e(10), 0, 0, 0, 0])):
        model = ServableModel("c", ModelKind.CLASSICAL, vocab, pop, table=NeighbourTable.bias_only(pop))
        model.cooc_weight, model.cooc_decay = 0.5, tau
        fn = tf.saved_model.load(str(export_saved_model(model, tmp_path / f"t{tau:g}", {}, k=8))).signatures[
            "complete_basket_personal"
        ]
        rows = [3, 4, 5, 7]
        reqs = []
        for r in rows:
            items, ago = past.purchases(r)
            reqs.append(([vocab[i] for i in items], [1.0] * len(items), ago.tolist()))
        # noise the graph must ignore: padding, an unknown item, a known item with count 0 on a basket's day
        reqs[0] = (reqs[0][0] + ["nope", "i7"], reqs[0][1] + [1.0, 0.0], reqs[0][2] + [20.0, 20.0])
        width = max(len(h[0]) for h in reqs)
        pad = lambda seq, fill, width=width: list(seq) + [fill] * (width - len(seq))
        out = fn(
            items=tf.constant([["i0", "i1"]] * len(rows)),
            history=tf.constant([pad(h[0], "") for h in reqs]),
            history_counts=tf.constant([pad(h[1], 0.0) for h in reqs], tf.float32),
            history_days=tf.constant([pad(h[2], 0.0) for h in reqs], tf.float32),
        )
        H = History(sp.csr_matrix((len(rows), 8), dtype=np.float32), {}, past[rows])
        want = model.score(X[rows], H)
        assert want[0][2:] == pytest.approx((pop + 0.5 * np.log1p(expected))[2:])  # the validation row, by hand
        got = np.full_like(want, np.nan)
        for k, (ids, scores) in enumerate(zip(out["item_ids"].numpy(), out["scores"].numpy())):
            # the basket's own items come last, at -inf (K is the whole vocabulary here)
            assert {x.decode() for x, v in zip(ids, scores) if np.isfinite(v)} == set(vocab[2:])
            for item, score in zip(ids, scores):
                got[k, vocab.index(item.decode())] = score
        np.testing.assert_allclose(got[:, 2:], want[:, 2:], rtol=1e-5, atol=1e-6, err_msg=f"tau {tau}")
        # no history: the anonymous answer
        anon = fn(
            items=tf.constant([["i0", "i1"]]),
            history=tf.constant([[""]]),
            history_counts=tf.constant([[0.0]]),
            history_days=tf.constant([[0.0]]),
        )
        np.testing.assert_allclose(anon["scores"].numpy()[0][:6], np.sort(pop[2:])[::-1], rtol=1e-6)
        # NaN or infinite counts or days: refused (they would make every score NaN), not answered
        for bad in ({"history_days": [[np.nan]]}, {"history_counts": [[np.inf]]}):
            request = {"history_counts": [[1.0]], "history_days": [[3.0]], **bad}
            with pytest.raises(tf.errors.InvalidArgumentError, match="must be finite"):
                fn(
                    items=tf.constant([["i0"]]),
                    history=tf.constant([["i2"]]),
                    history_counts=tf.constant(request["history_counts"], tf.float32),
                    history_days=tf.constant(request["history_days"], tf.float32),
                )


def test_repeat_gate_by_hand(tmp_path):
    """The repeat/explore gate multiplies the personal terms by max(a + b·(s - 1/2), 0), s the share of the
    basket's items bought before: by hand in numpy, and the exported graph gives the same scores (one row per
    purchase or one per item; unknown basket items, padding and repeats of a basket item are not counted in s)."""
    import scipy.sparse as sp
    import tensorflow as tf

    from assoc_lib.data.history import History
    from assoc_lib.models.baselines import NeighbourTable
    from assoc_lib.models.servable import repeat_share
    from assoc_lib.records import ModelKind
    from assoc_lib.serving.export import export_saved_model

    vocab = [f"i{i}" for i in range(6)]
    pop = np.linspace(0.6, 0.1, 6).astype(np.float32)
    X = sp.csr_matrix(np.array([[1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1], [1, 0, 0, 0, 0, 0]]))
    counts = np.array([[1, 0, 3, 0, 0, 0], [1, 1, 0, 1, 0, 0], [0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]], np.float32)
    H = History(sp.csr_matrix(counts))
    np.testing.assert_allclose(repeat_share(X, H), [0.5, 1.0, 0.0, 0.0])
    model = ServableModel("g", ModelKind.CLASSICAL, vocab, pop, table=NeighbourTable.bias_only(pop))
    model.history_weight, model.personal_scale, model.repeat_slope = 1.0, 1.0, 2.0
    gate = np.array([1.0, 2.0, 0.0, 0.0])  # 1 + 2·(s - 1/2), floored at 0
    want = pop[None, :] + gate[:, None] * np.log1p(counts)
    np.testing.assert_allclose(model.score(X, H), want, rtol=1e-6)
    model.repeat_slope = 0.0  # no slope: the scale alone, the same for every basket
    np.testing.assert_allclose(model.score(X, H), pop[None, :] + np.log1p(counts), rtol=1e-6)
    model.repeat_slope = 2.0
    fn = tf.saved_model.load(str(export_saved_model(model, tmp_path / "gate", {}, k=6))).signatures[
        "complete_basket_personal"
    ]
    # row 0 sends i2's three purchases as three rows, row 1 one row per item; row 0's basket also sends i1
    # twice (a basket is a set: s stays 1/2, not 1/3) and an unknown item, and the other rows padding, none of
    # which count in s
    out = fn(
        items=tf.constant([["i0", "i1", "i1", "nope"], ["i0", "i1", "", ""], ["i4", "i5", "", ""], ["i0", "", "", ""]]),
        history=tf.constant([["i0", "i2", "i2", "i2"], ["i0", "i1", "i3", ""], ["i2", "", "", ""], ["", "", "", ""]]),
        history_counts=tf.constant([[1, 1, 1, 1], [1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], tf.float32),
        history_days=tf.constant([[5, 1, 2, 3], [4, 4, 4, 0], [9, 0, 0, 0], [0, 0, 0, 0]], tf.float32),
    )
    got = np.full_like(want, -np.inf)
    for k, (ids, scores) in enumerate(zip(out["item_ids"].numpy(), out["scores"].numpy())):
        for item, score in zip(ids, scores):
            got[k, vocab.index(item.decode())] = score
    inputs = X.toarray() > 0
    np.testing.assert_allclose(got[~inputs], want[~inputs], rtol=1e-5)
    assert np.isneginf(got[inputs]).all()


def test_repeat_gate_is_chosen_on_validation(trained):
    """Every personalised candidate's gate is the best of its validation search (no gate among the tried), and
    the saved model scores on validation what the search recorded for it."""
    from assoc_lib import evaluate
    from assoc_lib.train import GATE_SCALES, GATE_SLOPES

    cfg = trained["cfg"]
    baskets, vocab = load_split(trained["prep_dir"])
    models = {
        name: ServableModel.load(cand["path"])
        for name, cand in trained["candidates"].items()
        if cand.get("repeat_gate_grid")
    }
    decays = {d for m in models.values() for d in m.decays} | {m.cooc_decay for m in models.values()}
    holdouts, _ = evaluate.make_holdouts(
        baskets, len(vocab), cfg.models.eval_seed, cfg.models.history_max_items, decays=decays, past=True
    )
    checked = 0
    for name, model in models.items():
        trace = trained["candidates"][name]["repeat_gate_grid"]
        assert len(trace) == len(GATE_SCALES) * len(GATE_SLOPES) and "scale=1 slope=0" in trace
        chosen = f"scale={model.personal_scale:g} slope={model.repeat_slope:g}"
        assert trace[chosen] == max(trace.values()) >= trace["scale=1 slope=0"]
        got = evaluate.evaluate_scores(model.score, holdouts["validation"], len(vocab))["ndcg@10"]
        assert got == pytest.approx(trace[chosen], abs=1e-5), name
        checked += 1
    assert checked >= 3


def test_repeat_counts_accumulate():
    b = _frame(
        [("u", "2024-01-01", "train", [0]), ("u", "2024-01-02", "train", [0, 1]), ("u", "2024-01-05", "test", [2, 3])]
    )
    counts, _ = build_histories(b, 4)
    assert counts[2, 0] == 2 and counts[2, 1] == 1


def test_capping_while_building_equals_capping_after():
    from assoc_lib.data.history import cap_history

    rng = np.random.default_rng(3)
    rows = [
        (
            f"u{rng.integers(3)}",
            f"2024-01-{1 + i // 4:02d}",
            ["train", "validation", "test"][min(i // 20, 2)],
            sorted(set(rng.integers(0, 30, size=6).tolist())),
        )
        for i in range(60)
    ]
    b = _frame(rows)
    full, _ = build_histories(b, 30)
    early, _ = build_histories(b, 30, with_recency=False, max_items=5)
    assert (cap_history(full, 5) != early).nnz == 0
    assert np.diff(early.indptr).max() == 5


def test_cap_history_keeps_most_bought():
    import scipy.sparse as sp

    from assoc_lib.data.history import cap_history

    H = sp.csr_matrix(np.array([[5, 1, 3, 0, 2], [0, 1, 0, 0, 0]], dtype=np.float32))
    capped = cap_history(H, 2).toarray()
    assert capped.tolist() == [[5, 0, 3, 0, 0], [0, 1, 0, 0, 0]]


def test_personal_frequency_and_tuned_prior_beat_anonymous(trained, tmp_path):
    from assoc_lib import evaluate

    payload = evaluate.evaluate_candidates(
        trained["prep_dir"], trained["summary"]["candidates"], trained["cfg"], tmp_path
    )
    rows = {(r["name"], r["protocol"]): r for r in payload["models"]}
    # synthetic users re-buy favourites: history helps every classical scorer once its weight is tuned
    assert rows[("ease", "personalised")]["ndcg@10"] > rows[("ease", "anonymous")]["ndcg@10"]
    assert rows[("personal_frequency", "personalised")]["ndcg@10"] > rows[("popularity", "anonymous")]["ndcg@10"]
    assert rows[("ease", "personalised")]["history_weight"] > 0
    # the per-basket file: one row per test basket and protocol, ranks that give back the table's NDCG@10
    per = pd.read_parquet(payload["per_basket"])
    baskets, vocab = load_split(trained["prep_dir"])
    for protocol in ("anonymous", "personalised"):
        part = per[per["protocol"] == protocol]
        assert len(part) == payload["n_eval_baskets"] and set(part["split"]) == {"test"}
        assert part["order_id"].is_unique and part["order_id"].isin(baskets["order_id"].astype(str)).all()
        assert part["hidden_item"].isin(vocab).all()
        ranks = part["rank:ease"].to_numpy()
        assert ranks.min() >= 1
        assert evaluate.ndcg10_per_basket(ranks).mean() == pytest.approx(rows[("ease", protocol)]["ndcg@10"])
        # the hidden item is not among the basket's visible items: it is the held-out one of that order
        row = part.iloc[0]
        items = baskets.loc[baskets["order_id"].astype(str) == row["order_id"], "items"].iloc[0]
        assert vocab.index(row["hidden_item"]) in list(items)
    # hidden_in_history: the hidden item is in the basket's visible history (personalised), unknown (anonymous)
    anon, pers = (per[per["protocol"] == p].reset_index(drop=True) for p in ("anonymous", "personalised"))
    assert anon["hidden_in_history"].isna().all() and pers["hidden_in_history"].notna().all()
    cfg = trained["cfg"]
    test = evaluate.make_holdouts(baskets, len(vocab), cfg.models.eval_seed, cfg.models.history_max_items)[0]["test"]
    C = test.history.counts.tocsr()
    bought = [C[r, test.hidden[r]] > 0 for r in range(test.n)]
    assert pers["hidden_in_history"].tolist() == bought and 0 < sum(bought) < len(bought)
    ci = payload["deep_minus_classical"]["personalised"]
    assert ci["low"] <= ci["mean"] <= ci["high"] and ci["n"] == payload["n_eval_baskets"]
    assert {ci["deep"], ci["classical"]} <= {r["name"] for r in payload["models"]}
    # between servable models only: the references (dense EASE, personal co-occurrence) left out
    served = payload["deep_minus_classical_servable"]["personalised"]
    servable = {r["name"] for r in payload["models"] if r["servable"]}
    assert {served["deep"], served["classical"]} <= servable and served["low"] <= served["mean"] <= served["high"]
    pick = lambda kind: max(
        (r for r in payload["models"] if r["protocol"] == "personalised" and r["kind"] == kind and r["servable"]),
        key=lambda r: r["val_ndcg@10"],
    )["name"]
    assert (served["deep"], served["classical"]) == (pick("deep"), pick("classical"))


def test_two_input_export_matches_in_memory_scores(trained, exported):
    import tensorflow as tf

    from assoc_lib import evaluate
    from assoc_lib.config import decay_list

    baskets, vocab = load_split(trained["prep_dir"])
    cfg = trained["cfg"]
    decays = decay_list(cfg.models.prior_decay_days) + (cfg.models.deep_history_decay,)
    holdouts, _ = evaluate.make_holdouts(baskets, len(vocab), cfg.models.eval_seed, decays=decays)
    test = holdouts["test"]
    X, H = test.inputs[:30], test.history[:30]
    assert H.counts.nnz > 0
    for name in ("deep", "deep+ease", "ease"):
        model = ServableModel.load(trained["candidates"][name]["path"])
        scores = model.score(X, H).astype(np.float64)
        rows, cols = X.nonzero()
        scores[rows, cols] = -np.inf
        pad = lambda seqs, fill: [s + [fill] * (max(map(len, seqs)) - len(s)) for s in seqs]
        items = pad([[vocab[i] for i in X[r].indices] for r in range(X.shape[0])], "")
        C = H.counts
        hist = pad([[vocab[i] for i in C[r].indices] for r in range(C.shape[0])], "")
        cnt = pad([C[r].data.tolist() for r in range(C.shape[0])], 0.0)
        # one row per item, with the days that make the served decayed count exact
        decay = evaluate.served_decay(evaluate.model_card(exported[name]))
        days_flat = evaluate.request_days(C.data, H.weights_at_counts(decay) if decay else None, decay)
        days = pad([days_flat[C.indptr[r] : C.indptr[r + 1]].tolist() for r in range(C.shape[0])], 0.0)
        fn = tf.saved_model.load(str(exported[name])).signatures["complete_basket_personal"]
        out = fn(
            items=tf.constant(items),
            history=tf.constant(hist),
            history_counts=tf.constant(cnt, tf.float32),
            history_days=tf.constant(days, tf.float32),
        )
        np.testing.assert_allclose(
            out["scores"].numpy(),
            -np.sort(-scores, axis=1)[:, :20],
            rtol=1e-3,
            atol=1e-3,
            err_msg=f"{name} decay {decay}",
        )
        if name == "deep":
            assert model.personal
        # empty history gives the anonymous answer
        anon = tf.saved_model.load(str(exported[name])).signatures["complete_basket"](items=tf.constant(items))
        empty = fn(
            items=tf.constant(items),
            history=tf.constant([[""]] * len(items)),
            history_counts=tf.constant([[0.0]] * len(items)),
            history_days=tf.constant([[0.0]] * len(items)),
        )
        assert (anon["item_ids"].numpy() == empty["item_ids"].numpy()).all()


def test_personal_cooccurrence_export_matches_in_memory_scores(trained, exported, tmp_path):
    """The trained co-occurrence candidates, exported: per-purchase history rows (what a shop sends) give the
    numpy scores (counts, decayed counts and the co-occurrence from the past baskets), and the production
    path (``evaluate_topk`` with ``per_purchase``) measures what the numpy evaluation measures."""
    import tensorflow as tf

    from assoc_lib import evaluate
    from assoc_lib.serving.export import export_saved_model

    baskets, vocab = load_split(trained["prep_dir"])
    cfg = trained["cfg"]
    for name in ("ease+personal_cooc", "deep+ease+personal_cooc"):
        model = ServableModel.load(trained["candidates"][name]["path"])
        assert model.servable and name in exported
        path = exported[name]
        if not model.cooc_weight:  # validation chose γ = 0 on this small world: serve a weight anyway
            model.cooc_weight, model.cooc_decay = 0.7, 60.0
            path = export_saved_model(model, tmp_path / name, {}, k=20)
        holdouts, _ = evaluate.make_holdouts(
            baskets, len(vocab), cfg.models.eval_seed, cfg.models.history_max_items, decays=model.decays, past=True
        )
        test = holdouts["test"]
        X, H = test.inputs[:30], test.history[:30]
        assert H.past.cooc(X, model.cooc_decay).nnz > 0  # the co-occurrence is really in play
        scores = model.score(X, H).astype(np.float64)
        rows, cols = X.nonzero()
        scores[rows, cols] = -np.inf
        pad = lambda seqs, fill: [list(s) + [fill] * (max(map(len, seqs)) - len(s)) for s in seqs]
        purchases = [H.past.purchases(r) for r in range(X.shape[0])]
        fn = tf.saved_model.load(str(path)).signatures["complete_basket_personal"]
        out = fn(
            items=tf.constant(pad([[vocab[i] for i in X[r].indices] for r in range(X.shape[0])], "")),
            history=tf.constant(pad([[vocab[i] for i in items] for items, _ in purchases], "")),
            history_counts=tf.constant(pad([[1.0] * len(items) for items, _ in purchases], 0.0), tf.float32),
            history_days=tf.constant(pad([ago.tolist() for _, ago in purchases], 0.0), tf.float32),
        )
        np.testing.assert_allclose(
            out["scores"].numpy(), -np.sort(-scores, axis=1)[:, :20], rtol=1e-3, atol=1e-3, err_msg=name
        )
        served = evaluate.evaluate_topk(
            evaluate.saved_model_topk(path, personal=True), test, vocab, decay=model.history_decay, per_purchase=True
        )
        in_memory = evaluate.evaluate_scores(model.score, test, len(vocab))
        assert served["ndcg@10"] == pytest.approx(in_memory["ndcg@10"], abs=0.005), name
