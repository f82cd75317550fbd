"""The serving contract over real gRPC: assoc serve answers as TF Serving does."""

from __future__ import annotations

import shutil
import time

import grpc
import numpy as np
import pytest

from assoc_lib.serving import push, server
from assoc_lib.serving.client import AssocClient


@pytest.fixture(scope="module")
def serving_root(exported, tmp_path_factory):
    """A model base path with version 1 = rules (stable) and 2 = deep (canary), built once."""
    root = tmp_path_factory.mktemp("serving")
    push.push(exported["rules"], root, "assoc")
    push.push(exported["deep"], root, "assoc", label="canary")
    push.rollback(root, "assoc", 1)  # stable=1 (rules), canary=2 (deep)
    return root


@pytest.fixture
def served(serving_root, exported, tmp_path):
    """A fresh server on a private copy of the base path: tests that push or reload change only their own."""
    root = tmp_path / "serving"
    shutil.copytree(serving_root, root)
    (root / "models.config").write_text(
        (serving_root / "models.config").read_text().replace(str(serving_root), str(root))
    )
    srv, registry, port = server.serve(str(root / "models.config"), port=0, poll_seconds=0.5, block=False)
    yield {"root": root, "port": port, "registry": registry, "exported": exported}
    registry.stop()
    srv.stop(grace=1).wait()


def client(served):
    return AssocClient(f"127.0.0.1:{served['port']}", "assoc")


def test_explanations_over_grpc(served, trained):
    from assoc_lib.data.preprocess import load_split

    _, vocab = load_split(trained["prep_dir"])
    with client(served) as c:
        ans = c.complete_basket([[vocab[0], vocab[1], vocab[2]]], label="stable")
    evidence = ans.evidence[0]
    assert len(evidence) == len(ans.item_ids[0])
    explained = [e for e in evidence if e["evidence_item"]]
    assert explained and all(e["evidence_item"] in vocab[:3] for e in explained)
    assert all(0 < e["confidence"] <= 1 and e["lift"] > 1 and e["evidence_count"] >= 2 for e in explained)
    assert all(e["confidence"] == 0 for e in evidence if not e["evidence_item"])


def test_complete_basket_and_related_items(served, trained):
    from assoc_lib.data.preprocess import load_split

    _, vocab = load_split(trained["prep_dir"])
    with client(served) as c:
        ans = c.complete_basket([[vocab[0], vocab[1]], ["unknown-id"]])
        assert len(ans.item_ids) == 2 and len(ans.item_ids[0]) == 20
        # an unknown id is ignored: that row answers as an empty basket does (the most popular items)
        empty = c.complete_basket([[]])
        assert ans.item_ids[1] == empty.item_ids[0] and ans.scores[1] == pytest.approx(empty.scores[0])
        assert ans.item_ids[1] != ans.item_ids[0]
        assert vocab[0] not in ans.item_ids[0] and vocab[1] not in ans.item_ids[0]
        assert ans.scores[0] == sorted(ans.scores[0], reverse=True)
        rel = c.related_items([vocab[0]])
        assert vocab[0] not in rel.item_ids[0]


def test_version_and_label_routing(served):
    with client(served) as c:
        assert c.complete_basket([[]]).version == 2  # latest available
        assert c.complete_basket([[]], label="stable").version == 1
        assert c.complete_basket([[]], label="canary").version == 2
        assert c.complete_basket([[]], version=1).version == 1


@pytest.mark.parametrize(
    "call,code,text",
    [
        (
            lambda c: AssocClient(c.target, "nope").complete_basket([["a"]]),
            grpc.StatusCode.NOT_FOUND,
            "Servable not found for request: Latest(nope)",
        ),
        (lambda c: c.complete_basket([["a"]], version=99), grpc.StatusCode.NOT_FOUND, "Specific(assoc, 99)"),
        (
            lambda c: c.complete_basket([["a"]], label="gold"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Unrecognized servable version label: gold",
        ),
        (
            lambda c: c.predict("nope", {"items": [["a"]]}),
            grpc.StatusCode.INVALID_ARGUMENT,
            'Serving signature key "nope" not found',
        ),
        (
            lambda c: c.predict("complete_basket", {"basket": [["a"]]}),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Missing but required: {items}",
        ),
        (
            lambda c: c.predict("related_items", {"item": [["a", "b"]]}),
            grpc.StatusCode.INVALID_ARGUMENT,
            "not compatible",
        ),
    ],
)
def test_errors_as_tf_serving_gives_them(served, call, code, text):
    with client(served) as c:
        c.target = f"127.0.0.1:{served['port']}"
        with pytest.raises(grpc.RpcError) as err:
            call(c)
        assert err.value.code() == code and text in err.value.details()
        assert c.complete_basket([[]]).version == 2  # still serving


def test_wrong_dtype_is_invalid_argument(served):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    with client(served) as c:
        req = predict_pb2.PredictRequest()
        req.model_spec.name = "assoc"
        req.model_spec.signature_name = "complete_basket"
        req.inputs["items"].CopyFrom(tf.make_tensor_proto(np.array([[1, 2]], dtype=np.int64)))
        with pytest.raises(grpc.RpcError) as err:
            c.predict_stub.Predict(req)
        assert (
            err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            and "Expects arg[items] to be string" in err.value.details()
        )


def test_wire_path_answers_as_the_checked_path(served, trained):
    """gRPC runs each request as one TensorFlow call on serialized tensors (registry.run_signature with
    ``wire``); it must give the checked path's exact answers, on every signature, and be traced by the
    warm-up (not by the first live request)."""
    from tensorflow.core.framework.tensor_pb2 import TensorProto
    from tensorflow_serving.apis import predict_pb2

    from assoc_lib.data.preprocess import load_split
    from assoc_lib.serving.registry import ServingError, run_signature
    from assoc_lib.serving.tensors import from_proto, to_proto

    _, vocab = load_split(trained["prep_dir"])
    lv = served["registry"].get("assoc").versions[2]  # the deep canary: every signature, personal included
    assert {"complete_basket", "complete_basket_personal", "related_items"} <= set(lv.wire)

    def request(signature, **inputs):
        req = predict_pb2.PredictRequest()
        req.model_spec.name, req.model_spec.signature_name = "assoc", signature
        for key, value in inputs.items():
            req.inputs[key].CopyFrom(to_proto(value))
        return req

    strings = lambda rows: np.asarray(rows, dtype=object)  # noqa: E731
    requests = [
        request("complete_basket", items=strings([[vocab[0], vocab[1]], ["unknown-id", ""]])),
        request("related_items", item=strings([vocab[2], vocab[3]])),
        request(
            "complete_basket_personal",
            items=strings([[vocab[0]], [""]]),
            history=strings([[vocab[4], vocab[5]], [vocab[6], ""]]),
            history_counts=np.asarray([[3.0, 1.0], [2.0, 0.0]], np.float32),
            history_days=np.asarray([[4.0, 30.0], [1.0, 0.0]], np.float32),
        ),
    ]
    for req in requests:
        checked = run_signature(lv, req)
        wire = run_signature(lv, req, wire=True)
        assert set(wire) == set(checked)
        for key, value in wire.items():
            parsed = from_proto(TensorProto.FromString(value))
            if parsed.dtype == object:
                assert parsed.tolist() == checked[key].tolist(), key
            else:
                np.testing.assert_array_equal(parsed, checked[key])
    # a request the one-call path cannot take goes the checked path and gets its message
    bad = request("complete_basket", items=np.asarray([[1.0, 2.0]], np.float32))
    with pytest.raises(ServingError, match="Expects arg\\[items\\] to be string"):
        run_signature(lv, bad, wire=True)


def test_metadata_status_and_unimplemented(served):
    from tensorflow_serving.apis import classification_pb2

    with client(served) as c:
        meta = c.metadata(version=1)
        assert meta["version"] == 1
        assert set(meta["signatures"]) >= {"serving_default", "complete_basket", "related_items"}
        assert meta["signatures"]["complete_basket"]["outputs"] == [
            "confidence",
            "evidence_count",
            "evidence_item",
            "item_ids",
            "lift",
            "scores",
        ]
        assert meta["signatures"]["complete_basket_personal"]["inputs"] == [
            "history",
            "history_counts",
            "history_days",
            "items",
        ]
        assert [s["state"] for s in c.model_status()] == ["AVAILABLE", "AVAILABLE"]
        req = classification_pb2.ClassificationRequest()
        req.model_spec.name = "assoc"
        with pytest.raises(grpc.RpcError) as err:
            c.predict_stub.Classify(req)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_new_version_is_polled_and_rollback_followed(served):
    root = served["root"]
    v3 = push.push(served["exported"]["ease"], root, "assoc")["version"]
    with client(served) as c:
        deadline = time.time() + 60
        while time.time() < deadline and c.complete_basket([[]], label="stable").version != v3:
            time.sleep(0.3)
        assert c.complete_basket([[]], label="stable").version == v3
        push.rollback(root, "assoc", 1)
        deadline = time.time() + 60
        while time.time() < deadline and c.complete_basket([[]], label="stable").version != 1:
            time.sleep(0.3)
        assert c.complete_basket([[]], label="stable").version == 1


def test_reload_config_request(served):
    from tensorflow_serving.apis import model_management_pb2

    config = server.parse_model_config((served["root"] / "models.config").read_text())
    with client(served) as c:
        req = model_management_pb2.ReloadConfigRequest()
        req.config.CopyFrom(config)
        resp = c.model_stub.HandleReloadConfigRequest(req)
        assert resp.status.error_code == 0
        bad = model_management_pb2.ReloadConfigRequest()
        bad.config.model_config_list.config.add().name = "nobase"
        assert c.model_stub.HandleReloadConfigRequest(bad).status.error_message == "model nobase has no base_path"


def test_personalised_signature_over_grpc(served, trained):
    import json

    from assoc_lib.data.preprocess import load_split

    _, vocab = load_split(trained["prep_dir"])
    card = json.loads((served["root"] / "assoc" / "1" / "model_card.json").read_text())  # rules, stable
    with client(served) as c:
        for version in (1, 2):
            anon = c.complete_basket([[vocab[5]]], version=version)
            empty = c.complete_basket_personal([[vocab[5]]], [[]], [[]], version=version)
            assert empty.item_ids == anon.item_ids  # empty history: the anonymous answer
        favourite = vocab[-1]
        personal = c.complete_basket_personal([[vocab[5]]], [[favourite]], [[25.0]], [[14.0]], version=1)
        # one item in two rows (purchases 10 and 40 days ago) adds up: count 2, decayed e^(-10/τ) + e^(-40/τ)
        with pytest.raises(ValueError, match="one value per history item"):  # refused before anything is sent
            c.complete_basket_personal([[vocab[5]]], [[favourite]], [[1.0]], [[1.0, 2.0]])
        split = c.complete_basket_personal(
            [[vocab[5]]], [[favourite, favourite]], [[1.0, 1.0]], [[10.0, 40.0]], version=1
        )
    # the served answer is the in-memory model's personalised ranking: score + β·log(1 + decayed count)
    import numpy as np
    import scipy.sparse as sp

    from assoc_lib.models.baselines import baskets_to_csr
    from assoc_lib.models.servable import ServableModel

    model = ServableModel.load(trained["candidates"]["rules"]["path"])
    assert model.history_weight == pytest.approx(card["history_weight"])
    from assoc_lib.data.history import History

    assert model.history_decay == card["history_decay"]
    tau = model.history_decay or 1.0
    one = lambda v: sp.csr_matrix(([v], ([0], [len(vocab) - 1])), shape=(1, len(vocab)), dtype=np.float32)
    for answer, count, decayed in (
        (personal, 25.0, 25.0 * np.exp(-14.0 / tau)),
        (split, 2.0, np.exp(-10.0 / tau) + np.exp(-40.0 / tau)),
    ):
        H = History(one(count), {tau: one(decayed)})
        expected = model.score(baskets_to_csr([[5]], len(vocab)), H)[0].astype(np.float64)
        expected[5] = -np.inf
        np.testing.assert_allclose(answer.scores[0], -np.sort(-expected)[:20], rtol=1e-5, atol=1e-6)
    with client(served) as c:
        with pytest.raises(grpc.RpcError) as err:
            c.predict("complete_basket_personal", {"items": [[vocab[5]]], "history": [[favourite]]}, version=2)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "Missing but required:" in err.value.details() and "history_counts" in err.value.details()


def test_query_cli_prints_titles_and_version(served, trained, capsys):
    from assoc_lib.cli import main
    from assoc_lib.data.preprocess import load_split

    _, vocab = load_split(trained["prep_dir"])
    code = main(
        [
            "query",
            "--server",
            f"127.0.0.1:{served['port']}",
            "--items",
            vocab[0],
            "--k",
            "3",
            "--catalog",
            str(trained["cfg"].paths.catalog_path),
            "--history",
            vocab[3],
            "--history-counts",
            "4",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "version 2 (complete_basket_personal)" in out and "Product" in out and out.count("\n") == 4
    # --history-days: one value per history item, checked before anything is sent
    base = ["query", "--server", f"127.0.0.1:{served['port']}", "--items", vocab[0], "--history", vocab[3], vocab[4]]
    assert main(base + ["--history-days", "3", "40", "--k", "3"]) == 0
    assert "complete_basket_personal" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--history-days needs one value per --history item"):
        main(base + ["--history-days", "3"])
    code = main(
        [
            "query",
            "--server",
            f"127.0.0.1:{served['port']}",
            "--items",
            vocab[0],
            vocab[1],
            "--k",
            "5",
            "--catalog",
            str(trained["cfg"].paths.catalog_path),
            "--explain",
            "--label",
            "stable",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and out.count("\n") == 11
    assert "because the basket holds" in out and "confidence" in out and "lift" in out


def test_personal_cooccurrence_over_grpc(trained, tmp_path):
    """A served co-occurrence candidate over real gRPC: history rows sharing their days are one past basket,
    and the answer is the numpy scorer's on those baskets; the same rows on distinct days lose the
    co-occurrence (nothing else changes). Served with a repeat/explore gate: a basket item bought before
    (s = 1) and one never bought (s = 0) weigh the personal terms 1.5× and 0.5×, as numpy does."""
    import scipy.sparse as sp

    from assoc_lib.data.history import History, PastBaskets
    from assoc_lib.data.preprocess import load_split
    from assoc_lib.models.servable import ServableModel
    from assoc_lib.serving.export import export_saved_model

    _, vocab = load_split(trained["prep_dir"])
    V = len(vocab)
    model = ServableModel.load(trained["candidates"]["ease+personal_cooc"]["path"])
    if not model.cooc_weight:  # validation chose γ = 0 on this small world: serve a weight anyway
        model.cooc_weight, model.cooc_decay = 0.7, 60.0
    model.personal_scale, model.repeat_slope = 1.0, 1.0  # the gate: 1 + (s - 1/2)
    path = export_saved_model(model, tmp_path / "export", {}, k=20)
    root = tmp_path / "serving"
    push.push(path, root, "assoc")
    srv, registry, port = server.serve(str(root / "models.config"), port=0, poll_seconds=0.5, block=False)
    try:
        # two past baskets: {5, 7, 8} three days ago (shares item 5 with the basket), {9, 10} thirty days ago
        rows = [(5, 3.0), (7, 3.0), (8, 3.0), (9, 30.0), (10, 30.0)]
        with AssocClient(f"127.0.0.1:{port}", "assoc") as c:
            together = c.complete_basket_personal(
                [[vocab[5]]], [[vocab[i] for i, _ in rows]], [[1.0] * 5], [[d for _, d in rows]]
            )
            apart = c.complete_basket_personal(  # the same purchases, each on its own day
                [[vocab[5]]], [[vocab[i] for i, _ in rows]], [[1.0] * 5], [[3.0, 3.001, 3.002, 30.0, 30.001]]
            )
            fresh = c.complete_basket_personal(  # a basket item never bought before: s = 0
                [[vocab[6]]], [[vocab[i] for i, _ in rows]], [[1.0] * 5], [[d for _, d in rows]]
            )
            with pytest.raises(grpc.RpcError) as err:  # a NaN day is refused, not answered with NaN scores
                c.complete_basket_personal([[vocab[5]]], [[vocab[7]]], [[1.0]], [[float("nan")]])
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "history_days must be finite" in err.value.details()
    finally:
        registry.stop()
        srv.stop(grace=1).wait()

    def expected(groups, item=5):
        """numpy: the past baskets themselves, with counts and decayed counts from the same purchases."""
        items = [[i for i, _ in g] for g in groups]
        flat = [(i, d) for g in groups for i, d in g]
        B = sp.csr_matrix(
            ([1.0] * len(flat), ([k for k, g in enumerate(items) for _ in g], [i for g in items for i in g])),
            shape=(len(groups), V),
            dtype=np.float32,
        )
        days = np.array([-g[0][1] for g in groups])  # bought "days ago" before now = 0
        past = PastBaskets(B, days, np.array([0]), np.array([len(groups)]), np.array([0.0]))
        one = lambda vals: sp.csr_matrix(
            (vals, ([0] * len(flat), [i for i, _ in flat])), shape=(1, V), dtype=np.float32
        )
        decayed = {t: one([np.exp(-d / t) for _, d in flat]) for t in model.decays if t}
        X = sp.csr_matrix(([1.0], ([0], [item])), shape=(1, V), dtype=np.float32)
        H = History(one([1.0] * len(flat)), decayed, past)
        assert model.personal_gate(X, H)[0, 0] == (1.5 if item == 5 else 0.5)
        s = model.score(X, H)[0].astype(np.float64)
        s[item] = -np.inf
        return -np.sort(-s)[:20]

    np.testing.assert_allclose(together.scores[0], expected([rows[:3], rows[3:]]), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fresh.scores[0], expected([rows[:3], rows[3:]], item=6), rtol=1e-4, atol=1e-5)
    days = [3.0, 3.001, 3.002, 30.0, 30.001]
    np.testing.assert_allclose(
        apart.scores[0], expected([[(i, d)] for (i, _), d in zip(rows, days)]), rtol=1e-4, atol=1e-5
    )
    gained = {i: s for i, s in zip(together.item_ids[0], together.scores[0])}
    lost = {i: s for i, s in zip(apart.item_ids[0], apart.scores[0])}
    for item in (vocab[7], vocab[8]):  # bought with item 5: the co-occurrence lifts them
        assert gained[item] > lost.get(item, -np.inf) + 0.1


def test_reranked_model_over_grpc(trained, exported, tmp_path):
    """The reranked deep candidate served over real gRPC: test baskets with their per-purchase history rows
    get the numpy scorer's top 20 (first stage, features, reranker, reorder); the same baskets alone get the
    anonymous stage's top 20, and an empty history gets that anonymous answer."""
    from assoc_lib import evaluate
    from assoc_lib.data.preprocess import load_split
    from assoc_lib.models.servable import ServableModel

    name = "deep+ease+personal_cooc+rerank"
    baskets, vocab = load_split(trained["prep_dir"])
    model = ServableModel.load(trained["candidates"][name]["path"])
    cfg = trained["cfg"]
    holdouts, _ = evaluate.make_holdouts(
        baskets, len(vocab), cfg.models.eval_seed, cfg.models.history_max_items, decays=model.decays, past=True
    )
    test = holdouts["test"]
    rows = np.flatnonzero(np.diff(test.history.counts.tocsr().indptr) > 0)[:12]  # shoppers with a history
    X, H = test.inputs[rows], test.history[rows]
    scores = model.score(X, H).astype(np.float64)
    r, c = X.nonzero()
    scores[r, c] = -np.inf
    baskets_in = [[vocab[i] for i in X[k].indices] for k in range(len(rows))]
    purchases = [H.past.purchases(k) for k in range(len(rows))]
    root = tmp_path / "serving"
    push.push(exported[name], root, "assoc")
    srv, registry, port = server.serve(str(root / "models.config"), port=0, poll_seconds=0.5, block=False)
    try:
        with AssocClient(f"127.0.0.1:{port}", "assoc") as c:
            answer = c.complete_basket_personal(
                baskets_in,
                [[vocab[i] for i in items] for items, _ in purchases],
                [[1.0] * len(items) for items, _ in purchases],
                [ago.tolist() for _, ago in purchases],
            )
            empty = c.complete_basket_personal(baskets_in, [[] for _ in rows], [[] for _ in rows], [[] for _ in rows])
            anonymous = c.complete_basket(baskets_in)
    finally:
        registry.stop()
        srv.stop(grace=1).wait()
    np.testing.assert_allclose(answer.scores, -np.sort(-scores, axis=1)[:, :20], rtol=1e-4, atol=1e-4)
    expected = np.asarray(vocab)[np.argsort(-scores, axis=1, kind="stable")[:, :10]]
    assert (np.asarray(answer.item_ids)[:, :10] == expected).mean() > 0.99
    # the reranked top sits above the first stage's row maximum: the scores say the reranker ran
    base = ServableModel.load(trained["candidates"]["deep+ease+personal_cooc"]["path"])
    assert (np.asarray(answer.scores)[:, 0] > base.score(X, H).max(axis=1)).all()
    assert np.asarray(empty.item_ids).tolist() == np.asarray(anonymous.item_ids).tolist()
    alone = model.score(X).astype(np.float64)
    alone[X.nonzero()] = -np.inf
    np.testing.assert_allclose(anonymous.scores, -np.sort(-alone, axis=1)[:, :20], rtol=1e-4, atol=1e-4)
    assert (np.asarray(anonymous.scores)[:, 0] > base.score(X).max(axis=1)).all()  # the anonymous stage ran too
