"""The server under load, swaps and bad input: requests from several threads while versions are pushed and
unloaded, an oversized request, and a seeded fuzz of Predict requests. Point ``ASSOC_TEST_SERVER``
(``HOST:PORT`` of a TF Serving whose base path holds the test exports) at a real TF Serving to run the
oversized and fuzz checks against it; the hot swap needs this process to push versions."""

from __future__ import annotations

import os
import threading
import time

import grpc
import numpy as np
import pytest

from assoc_lib.serving import push, server
from assoc_lib.serving.client import AssocClient

ANSWERED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.FAILED_PRECONDITION,
}


@pytest.fixture
def served(exported, tmp_path):
    root = tmp_path / "serving"
    push.push(exported["rules"], root, "assoc", keep=2)
    external = os.environ.get("ASSOC_TEST_SERVER")
    if external:
        yield {"root": root, "target": external, "exported": exported}
        return
    srv, registry, port = server.serve(str(root / "models.config"), port=0, poll_seconds=0.2, block=False)
    yield {"root": root, "target": f"127.0.0.1:{port}", "registry": registry, "exported": exported}
    registry.stop()
    srv.stop(grace=1).wait()


def test_requests_from_four_threads_while_versions_are_pushed_and_unloaded(served, trained):
    if "registry" not in served:
        pytest.skip("the hot swap pushes into the base path of the server this test started")
    from assoc_lib.data.preprocess import load_split

    _, vocab = load_split(trained["prep_dir"])
    stop = threading.Event()
    seen: list[list[int]] = [[] for _ in range(4)]
    errors: list[str] = []

    def hammer(i: int) -> None:
        with AssocClient(served["target"]) as client:
            while not stop.is_set():
                try:
                    seen[i].append(client.complete_basket([[vocab[i], vocab[i + 1]]]).version)
                except grpc.RpcError as exc:  # noqa: PERF203 - every failure is recorded
                    errors.append(f"{exc.code()}: {exc.details()}")

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    pushed = []
    try:
        for name in ("ease", "deep", "rules"):  # three pushes; keep=2 prunes and unloads old ones
            version = push.push(served["exported"][name], served["root"], "assoc", keep=2)["version"]
            pushed.append(version)
            deadline = time.time() + 60
            while time.time() < deadline and not all(s and s[-1] == version for s in seen):
                time.sleep(0.05)
            assert all(s and s[-1] == version for s in seen), f"answers did not switch to version {version}"
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert errors == []
    assert sum(map(len, seen)) > 40 and pushed == [2, 3, 4]
    with AssocClient(served["target"]) as client:
        states = {s["version"]: s["state"] for s in client.model_status()}
    assert states[4] == "AVAILABLE" and states.get(1, "END") == "END" and states.get(2, "END") == "END"


def test_oversized_request_is_refused_cleanly_and_the_server_stays_up(served):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    with AssocClient(served["target"]) as client:
        req = predict_pb2.PredictRequest()
        req.model_spec.name = "assoc"
        req.model_spec.signature_name = "complete_basket"
        big = np.full((1, 300_000), b"x" * 256, dtype=object)  # ~77 MB, over the 64 MB limit
        req.inputs["items"].CopyFrom(tf.make_tensor_proto(big))
        with pytest.raises(grpc.RpcError) as err:
            client.predict_stub.Predict(req, timeout=60)
        assert err.value.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT)
        assert client.complete_basket([[]]).version == 1


def _random_tensor(rng: np.random.Generator):
    """A tensor proto of random rank (0-3), dtype, batch (0, small, 2,000) and string content."""
    import tensorflow as tf

    rank = int(rng.integers(0, 4))
    batch = int(rng.choice([0, 1, 3, 2000]))
    shape = [batch] + [int(rng.integers(0, 4)) for _ in range(rank - 1)] if rank else []
    kind = rng.choice(["string", "float32", "float64", "int32", "int64", "bool", "uint8", "half"])
    size = int(np.prod(shape)) if shape else 1
    if kind == "string":
        pool = [b"", b"x" * 100_000, "日本語 ✓".encode(), b"a\x00b", b"\xff\xfe", b"__unknown__", b"1"]
        values = np.array([pool[int(i)] for i in rng.integers(0, len(pool), size)], dtype=object).reshape(shape)
        return tf.make_tensor_proto(values, dtype=tf.string)
    values = rng.normal(0, 1e6, size) if kind in ("float32", "float64", "half") else rng.integers(0, 255, size)
    with np.errstate(over="ignore"):  # beyond half's range they become ±inf: wanted, the server must answer those too
        return tf.make_tensor_proto(np.asarray(values).astype(kind).reshape(shape))


def test_seeded_fuzz_of_predict_requests(served):
    from tensorflow_serving.apis import predict_pb2

    rng = np.random.default_rng(20241129)
    signatures = ["complete_basket", "complete_basket_personal", "related_items", "serving_default", "nope", ""]
    names = ["items", "history", "history_counts", "history_days", "item", "basket", ""]
    codes = []
    with AssocClient(served["target"]) as client:
        for _ in range(120):  # bounded: 120 requests, each with a deadline
            req = predict_pb2.PredictRequest()
            req.model_spec.name = "assoc"
            req.model_spec.signature_name = str(rng.choice(signatures))
            for name in rng.choice(names, size=int(rng.integers(0, 4)), replace=False):
                req.inputs[str(name)].CopyFrom(_random_tensor(rng))
            try:
                client.predict_stub.Predict(req, timeout=60)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                assert exc.code() in ANSWERED, (exc.code(), exc.details(), req.model_spec, list(req.inputs))
                codes.append(exc.code())
        assert client.complete_basket([[]]).version == 1  # still serving
    assert codes.count(grpc.StatusCode.INVALID_ARGUMENT) > 20  # the fuzz did reach the validation paths
