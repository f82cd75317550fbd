"""Deep training, the planted-structure target, and the SavedModel round trip."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from assoc_lib import evaluate
from assoc_lib.data.preprocess import load_split
from assoc_lib.models.baselines import baskets_to_csr
from assoc_lib.models.servable import ServableModel
from assoc_lib.serving.export import WARMUP_FILE
from assoc_lib.train import COOC_GRID, HISTORY_GRID


def _load(export_dir):
    import tensorflow as tf

    return tf.saved_model.load(str(export_dir))


def test_training_logs_epochs_and_keeps_best(trained):
    history = trained["summary"]["deep_history"]
    assert len(history) >= 2
    assert {"loss", "val_ndcg@10", "examples_per_second"} <= set(history[0])
    assert history[-1]["loss"] < history[0]["loss"]
    deep = trained["candidates"]["deep"]
    best = max(h["val_ndcg@10"] for h in history)
    selected = history[deep["best_epoch"] - 1]["val_ndcg@10"]
    tolerance = trained["cfg"].models.deep_selection_tolerance
    assert selected >= best * (1 - tolerance)
    assert all(h["val_ndcg@10"] < best * (1 - tolerance) for h in history[deep["best_epoch"] :])
    assert (trained["root"] / "train" / "deep" / "checkpoints").exists()
    assert any((trained["root"] / "train" / "deep" / "tensorboard").iterdir())


def test_deep_related_items_recover_planted_pairs(trained, exported, synth_world):
    import tensorflow as tf

    truth = json.loads((synth_world / "data" / "ground_truth.json").read_text())
    _, vocab = load_split(trained["prep_dir"])
    pairs = [(a, b) for a, b in truth["planted_pairs"] if a in vocab and b in vocab]
    fn = _load(exported["deep"]).signatures["related_items"]
    top = fn(item=tf.constant([a for a, _ in pairs]))["item_ids"].numpy()[:, :10].astype(str)
    hit = np.mean([b in row for (_, b), row in zip(pairs, top)])
    assert len(pairs) >= 20
    assert hit >= 0.9, f"only {hit:.0%} of planted pairs in the deep model's related_items top-10"


@pytest.mark.parametrize("name", ["popularity", "rules", "item_knn", "ease", "deep", "deep+ease"])
def test_export_round_trip_matches_in_memory_top_k(trained, exported, name):
    import tensorflow as tf

    baskets, vocab = load_split(trained["prep_dir"])
    test = [list(map(int, b)) for b in baskets.loc[baskets["split"] == "test", "items"]][:40]
    model = ServableModel.load(trained["candidates"][name]["path"])
    X = baskets_to_csr(test, len(vocab))
    scores = model.score(X).astype(np.float64)
    rows, cols = X.nonzero()
    scores[rows, cols] = -np.inf
    width = max(len(b) for b in test)
    items = [[vocab[i] for i in b] + [""] * (width - len(b)) for b in test]
    out = _load(exported[name]).signatures["complete_basket"](items=tf.constant(items))
    got_ids, got_scores = out["item_ids"].numpy().astype(str), out["scores"].numpy()
    assert got_ids.shape == (len(test), 20)
    expected = -np.sort(-scores, axis=1)[:, :20]
    np.testing.assert_allclose(got_scores, expected, rtol=1e-4, atol=1e-4)
    # a basket is a set: the same baskets with their first item sent again score the same
    doubled = [[vocab[i] for i in b] + [vocab[b[0]]] + [""] * (width - len(b)) for b in test]
    again = _load(exported[name]).signatures["complete_basket"](items=tf.constant(doubled))
    np.testing.assert_allclose(again["scores"].numpy(), expected, rtol=1e-4, atol=1e-4)
    for r in range(len(test)):
        assert not set(got_ids[r]) & {vocab[i] for i in test[r]}  # inputs excluded
        top10 = {vocab[i] for i in np.argsort(-scores[r], kind="stable")[:10]}
        tie_free = expected[r, 9] > expected[r, 10] + 1e-4
        if tie_free:
            assert set(got_ids[r, :10]) == top10


def test_empty_and_unknown_baskets_get_popular_items(trained, exported):
    import tensorflow as tf

    _, vocab = load_split(trained["prep_dir"])
    model = ServableModel.load(trained["candidates"]["deep"]["path"])
    popular = [vocab[i] for i in np.argsort(-model.popularity, kind="stable")[:5]]
    out = _load(exported["deep"]).signatures["serving_default"](items=tf.constant([["", ""], ["nope", ""]]))
    ids = out["item_ids"].numpy().astype(str)
    assert list(ids[0, :5]) == popular and list(ids[1, :5]) == popular


def test_warmup_records_and_model_card(exported):
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    path = exported["deep"] / "assets.extra" / WARMUP_FILE
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(str(path))]
    assert {l.predict_log.request.model_spec.signature_name for l in logs} == {
        "complete_basket",
        "serving_default",
        "related_items",
        "complete_basket_personal",
    }
    personal = next(
        l.predict_log.request for l in logs if l.predict_log.request.model_spec.signature_name.endswith("personal")
    )
    assert set(personal.inputs) == {"items", "history", "history_counts", "history_days"}
    card = json.loads((exported["deep"] / "model_card.json").read_text())
    assert card["data_version"] == "test" and card["vocabulary_size"] > 100 and card["k"] == 20
    # the personal prior's choice and its validation search travel with the model
    assert card["network_history_decay"] == 60.0 and card["history_decay"] in (0.0, 60.0)
    trace = card["params"]["prior_search_val_ndcg@10"]
    assert len(trace) == 2 * len(HISTORY_GRID) and max(trace.values()) > 0
    assert card["params"]["prior_weight"] == card["history_weight"]


def test_comparison_and_gate_on_real_candidates(trained, tmp_path):
    from assoc_lib import gate

    payload = evaluate.evaluate_candidates(
        trained["prep_dir"], trained["summary"]["candidates"], trained["cfg"], tmp_path
    )
    names = [r["name"] for r in payload["models"] if r["protocol"] == "anonymous"]
    # the reranked candidates have an anonymous stage of their own, so they are in the anonymous comparison
    assert names == [
        "popularity",
        "rules",
        "item_knn",
        "ease",
        "ease_dense",
        "deep",
        "deep+ease",
        "ease+personal_cooc+rerank",
        "ease_dense+personal_cooc+rerank",
        "deep+ease+personal_cooc+rerank",
    ]
    personal = [r["name"] for r in payload["models"] if r["protocol"] == "personalised"]
    assert personal == [
        "popularity",
        "rules",
        "item_knn",
        "ease",
        "ease_dense",
        "personal_frequency",
        "deep",
        "deep+ease",
        "ease+personal_cooc",
        "ease_dense+personal_cooc",
        "deep+ease+personal_cooc",
        "ease+personal_cooc+rerank",
        "ease_dense+personal_cooc+rerank",
        "deep+ease+personal_cooc+rerank",
    ]
    # the dense EASE rows are evaluation references; the personal co-occurrence and the reranker are served on
    # a servable base
    assert [r["name"] for r in payload["models"] if not r["servable"]] == [
        "ease_dense",
        "ease_dense",
        "ease_dense+personal_cooc",
        "ease_dense+personal_cooc+rerank",
        "ease_dense+personal_cooc+rerank",
    ]
    by_name = {r["name"]: r for r in payload["models"] if r["protocol"] == "personalised"}
    for base in ("ease", "ease_dense", "deep+ease"):
        # the co-occurrence weight was chosen on validation, with weight 0 (the base model itself) in the grid
        assert by_name[f"{base}+personal_cooc"]["val_ndcg@10"] >= by_name[base]["val_ndcg@10"] - 1e-9
        ref = ServableModel.load(by_name[f"{base}+personal_cooc"]["path"])
        assert ref.params["cooc_weight"] == ref.cooc_weight and len(ref.params["cooc_search_val_ndcg@10"]) == 3 * len(
            COOC_GRID
        )
    # the deep+EASE mix can choose EASE alone (EASE weight 1): without history (no prior) that ranks as EASE
    # does, so the mix's search saw EASE's own validation figure and its choice is never below it
    by = {r["name"]: r for r in payload["models"] if r["protocol"] == "anonymous"}
    mix = ServableModel.load(by_name["deep+ease"]["path"]).params
    assert mix["anonymous_mix_search_val_ndcg@10"]["w=1"] == pytest.approx(by["ease"]["val_ndcg@10"], abs=1e-5)
    assert by["deep+ease"]["val_ndcg@10"] >= by["ease"]["val_ndcg@10"] - 1e-9
    assert any(key.startswith("w=1 ") for key in mix["mix_and_prior_search_val_ndcg@10"])  # with history too
    assert (tmp_path / "comparison.md").read_text().count("\n") == len(payload["models"]) + 2
    assert by["ease"]["ndcg@10"] > by["popularity"]["ndcg@10"]  # planted structure beats popularity
    decision = gate.decide(payload, trained["cfg"])
    assert decision["protocol"] == "personalised"
    rows = [r for r in payload["models"] if r["protocol"] == "personalised"]
    assert decision["winner"] == max((r for r in rows if r["servable"]), key=lambda r: r["val_ndcg@10"])["name"]
    assert set(decision["verdicts"]) == {"anonymous", "personalised"}
    assert decision["verdict"]["deep_over_classical"] is not None


def test_explanations_match_reference_and_evidence(trained, exported):
    import tensorflow as tf

    from assoc_lib.models.explain import explain

    baskets, vocab = load_split(trained["prep_dir"])
    index = {v: i for i, v in enumerate(vocab)}
    model = ServableModel.load(trained["candidates"]["rules"]["path"])
    basket = [list(map(int, b)) for b in baskets.loc[baskets["split"] == "test", "items"] if len(b) >= 3][0]
    out = _load(exported["rules"]).signatures["complete_basket"](items=tf.constant([[vocab[i] for i in basket]]))
    recs = [index[x] for x in out["item_ids"].numpy()[0].astype(str)]
    expected = explain(model.evidence, basket, recs)
    got_items = out["evidence_item"].numpy()[0].astype(str)
    for r, e in enumerate(expected):
        assert got_items[r] == (vocab[e["evidence_item"]] if e["evidence_item"] >= 0 else "")
        assert out["confidence"].numpy()[0, r] == pytest.approx(e["confidence"], abs=1e-6)
        assert out["lift"].numpy()[0, r] == pytest.approx(e["lift"], rel=1e-5, abs=1e-6)
        assert out["evidence_count"].numpy()[0, r] == pytest.approx(e["count"])
    assert any(e["evidence_item"] >= 0 for e in expected)
    # evidence really is the training co-occurrence: P(j | i) from the train baskets
    train = [set(b) for b in baskets.loc[baskets["split"] == "train", "items"]]
    e = next(e for e, j in zip(expected, recs) if e["evidence_item"] >= 0)
    j = recs[expected.index(e)]
    with_i = [b for b in train if e["evidence_item"] in b]
    assert e["count"] == sum(j in b for b in with_i)
    assert e["confidence"] == pytest.approx(e["count"] / len(with_i), rel=1e-6)


def test_sampled_softmax_option_trains(trained):
    from assoc_lib.data.preprocess import split_baskets
    from assoc_lib.evaluate import hold_out
    from assoc_lib.models.network import DeepParams
    from assoc_lib.train import train_deep

    baskets, vocab = load_split(trained["prep_dir"])
    splits = split_baskets(baskets)
    X = baskets_to_csr(splits["train"], len(vocab))
    val = hold_out(splits["validation"], len(vocab), 0)
    result = train_deep(
        X,
        val,
        DeepParams(embedding_dim=16, epochs=4, batch_size=128, learning_rate=0.01, sampled_softmax=20, patience=10),
    )
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert result.best_val_ndcg10 > 0


def test_weight_average_by_hand():
    """update_average against the recurrence a ← m·a + (1 - m)·w, m = min(momentum, t / (t + 9)), by hand."""
    import tensorflow as tf

    from assoc_lib.train import average_momentum, update_average

    assert average_momentum(1.0, 254) == pytest.approx(1 - 1 / 254)
    assert average_momentum(2.0, 10) == pytest.approx(0.95)
    assert average_momentum(1.0, 0) == 0.0  # no steps: the average is the last weights
    w = tf.Variable([1.0, -2.0])
    avg = [tf.Variable(w)]
    expected = np.array([1.0, -2.0])
    for step, value in enumerate(([3.0, 0.0], [5.0, 2.0], [-1.0, 4.0]), start=1):
        w.assign(value)
        update_average(avg, [w], tf.constant(step, tf.int64), 0.15)
        m = min(0.15, step / (step + 9))  # 0.1, then the momentum's 0.15 twice
        expected = m * expected + (1 - m) * np.asarray(value)
        np.testing.assert_allclose(avg[0].numpy(), expected, rtol=1e-6)
    assert not np.allclose(expected, w.numpy())  # the average is not the last weights


def test_weight_average_is_validated_beside_raw(trained):
    """Each epoch scores the raw and the averaged weights on validation and offers the better; the network
    returned is the selected epoch's chosen weights (its validation NDCG@10 recomputed from the spec)."""
    from assoc_lib.data.preprocess import split_baskets
    from assoc_lib.evaluate import evaluate_scores, hold_out
    from assoc_lib.models.network import DeepParams, numpy_logits
    from assoc_lib.train import train_deep

    baskets, vocab = load_split(trained["prep_dir"])
    splits = split_baskets(baskets)
    X = baskets_to_csr(splits["train"], len(vocab))
    val = hold_out(splits["validation"], len(vocab), 0)
    # a large learning rate in small batches: noisy raw weights, which the average smooths (it won by 9-16% at
    # epoch 3 in probes), so the selected epoch usually exercises the averaged path. CPU training is not
    # repeatable without op determinism (which would stay on for the whole test process), and in one run of
    # the suite the raw weights won epoch 3 (0.2293 against 0.2261): so up to three seeds are tried, every run
    # is checked, and the averaged path must be the selected one in at least one of them.
    params = DeepParams(embedding_dim=16, epochs=3, batch_size=32, learning_rate=0.1, patience=10)
    chosen_weights = []
    for seed in (1234, 1235, 1236):
        result = train_deep(X, val, replace(params, weight_average_epochs=1.0, seed=seed))
        for row in result.history:
            assert row["val_ndcg@10"] == max(row["val_ndcg@10_raw"], row["val_ndcg@10_average"])
            assert row["weights"] == ("average" if row["val_ndcg@10_average"] > row["val_ndcg@10_raw"] else "raw")
        assert any(row["val_ndcg@10_raw"] != row["val_ndcg@10_average"] for row in result.history)
        chosen = result.history[result.best_epoch - 1]
        again = evaluate_scores(lambda Xb, spec=result.spec: numpy_logits(spec, Xb), val, len(vocab))["ndcg@10"]
        assert again == pytest.approx(chosen["val_ndcg@10"], abs=1e-9)  # the returned network is the chosen one
        chosen_weights.append(chosen["weights"])
        if chosen["weights"] == "average":
            break
    assert chosen_weights[-1] == "average", chosen_weights
    plain = train_deep(X, val, replace(params, weight_average_epochs=0.0))
    assert all("val_ndcg@10_average" not in row for row in plain.history)
