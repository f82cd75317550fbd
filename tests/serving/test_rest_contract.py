"""TF Serving's REST API on the same server: status, metadata, predict in row and columnar form, TF Serving's
error bodies and HTTP codes, answers equal to gRPC's, the client switching protocols, and the Prometheus
metrics. Set ``ASSOC_TEST_REST`` (``http://HOST:PORT``) and ``ASSOC_TEST_SERVER`` (gRPC ``HOST:PORT``) to run
them against a real TF Serving that serves the same two versions (1 = stable, 2 = canary)."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

import grpc
import pytest

from assoc_lib.serving import push, server
from assoc_lib.serving.client import AssocClient, RestError


@pytest.fixture(scope="module")
def served(exported, tmp_path_factory):
    if os.environ.get("ASSOC_TEST_REST") and os.environ.get("ASSOC_TEST_SERVER"):
        yield {"rest": os.environ["ASSOC_TEST_REST"], "grpc": os.environ["ASSOC_TEST_SERVER"], "ours": False}
        return
    root = tmp_path_factory.mktemp("serving-rest")
    push.push(exported["rules"], root, "assoc")
    push.push(exported["deep"], root, "assoc", label="canary")
    push.rollback(root, "assoc", 1)  # stable=1 (rules), canary=2 (deep)
    srv, registry, port = server.serve(str(root / "models.config"), port=0, poll_seconds=0.5, block=False, rest_port=0)
    yield {"rest": f"http://127.0.0.1:{registry.rest.port}", "grpc": f"127.0.0.1:{port}", "ours": True}
    registry.stop()
    srv.stop(grace=1).wait()


@pytest.fixture(scope="module")
def vocab(trained):
    from assoc_lib.data.preprocess import load_split

    return load_split(trained["prep_dir"])[1]


def http(url: str, body=None, raw: bytes | None = None) -> tuple[int, dict | str]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=30) as r:
            text = r.read().decode()
            return r.status, (json.loads(text) if r.headers.get_content_type() == "application/json" else text)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_status_by_model_version_and_label(served):
    code, body = http(f"{served['rest']}/v1/models/assoc")
    assert code == 200
    assert [(s["version"], s["state"]) for s in body["model_version_status"]] == [
        ("1", "AVAILABLE"),
        ("2", "AVAILABLE"),
    ]
    assert body["model_version_status"][0]["status"]["error_code"] == "OK"
    assert http(f"{served['rest']}/v1/models/assoc/versions/2")[1]["model_version_status"][0]["version"] == "2"
    assert http(f"{served['rest']}/v1/models/assoc/labels/stable")[1]["model_version_status"][0]["version"] == "1"
    code, body = http(f"{served['rest']}/v1/models/nope")
    assert code == 404 and "nope" in body["error"]
    code, body = http(f"{served['rest']}/v1/models/assoc/labels/gold")
    assert code == 400 and "Unrecognized servable version label: gold" in body["error"]


def test_metadata_names_the_signatures(served):
    code, body = http(f"{served['rest']}/v1/models/assoc/versions/1/metadata")
    assert code == 200 and body["model_spec"]["version"] == "1"
    sigs = body["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "complete_basket", "complete_basket_personal", "related_items"} <= set(sigs)
    assert set(sigs["complete_basket_personal"]["inputs"]) == {"items", "history", "history_counts", "history_days"}


def test_rest_answers_equal_grpc_answers(served, vocab):
    basket = [vocab[0], vocab[1], vocab[2]]
    with AssocClient(served["grpc"]) as c:
        ref = c.complete_basket([basket, []], version=2)
        related = c.related_items([vocab[4]], version=1)
        personal = c.complete_basket_personal([[vocab[5]]], [[vocab[-1]]], [[25.0]], version=1)
    # row format: one object per instance
    code, body = http(
        f"{served['rest']}/v1/models/assoc/versions/2:predict",
        {"signature_name": "complete_basket", "instances": [basket, ["", "", ""]]},
    )
    assert code == 200
    assert [p["item_ids"] for p in body["predictions"]] == ref.item_ids
    for row, p in zip(ref.scores, body["predictions"]):
        assert p["scores"] == pytest.approx(row, rel=1e-6)
    # columnar format, a one-input signature
    code, body = http(
        f"{served['rest']}/v1/models/assoc/versions/1:predict",
        {"signature_name": "related_items", "inputs": {"item": [vocab[4]]}},
    )
    assert code == 200 and body["outputs"]["item_ids"] == related.item_ids
    # instances as objects of named inputs
    code, body = http(
        f"{served['rest']}/v1/models/assoc/labels/stable:predict",
        {
            "signature_name": "complete_basket_personal",
            "instances": [
                {"items": [vocab[5]], "history": [vocab[-1]], "history_counts": [25.0], "history_days": [0.0]}
            ],
        },
    )
    assert code == 200 and body["predictions"][0]["item_ids"] == personal.item_ids[0]


def test_the_client_switches_protocols(served, vocab):
    with AssocClient(served["grpc"]) as g, AssocClient(served["rest"]) as r:
        a, b = g.complete_basket([[vocab[0]]], label="canary"), r.complete_basket([[vocab[0]]], label="canary")
        assert a.item_ids == b.item_ids and b.scores[0] == pytest.approx(a.scores[0], rel=1e-6)
        assert a.evidence == b.evidence or a.evidence is None
        assert r.model_status() == g.model_status()
        assert r.metadata(version=1) == g.metadata(version=1)
        with pytest.raises(RestError) as err:
            r.complete_basket([["a"]], version=99)
        assert err.value.status == 404


@pytest.mark.parametrize(
    "path,body,code,text",
    [
        (":predict", {"signature_name": "nope", "instances": [["a"]]}, 400, 'Serving signature key "nope" not found'),
        (
            ":predict",
            {"signature_name": "complete_basket_personal", "instances": [{"items": ["a"]}]},
            400,
            "Missing but required",
        ),
        (":predict", {"signature_name": "complete_basket"}, 400, "Missing 'instances' or 'inputs'"),
        (":predict", {"instances": [[1.5]]}, 400, "input items"),
        ("/versions/99:predict", {"instances": [["a"]]}, 404, "Servable not found for request: Specific(assoc, 99)"),
        (":predict", b"{not json", 400, "JSON Parse error"),
    ],
)
def test_errors_as_tf_serving_gives_them(served, path, body, code, text):
    raw = body if isinstance(body, bytes) else None
    got, answer = http(f"{served['rest']}/v1/models/assoc{path}", None if raw else body, raw=raw)
    assert got == code and text in answer["error"], answer
    assert http(f"{served['rest']}/v1/models/assoc")[0] == 200  # still serving


def test_prometheus_metrics_after_requests(served, vocab):
    if not served["ours"]:
        pytest.skip("TF Serving's own metric names differ (--monitoring_config_file)")
    with AssocClient(served["grpc"]) as g, AssocClient(served["rest"]) as r:
        for _ in range(3):
            g.complete_basket([[vocab[0]]], version=1)
            r.complete_basket([[vocab[0]]], version=1)
        with pytest.raises(grpc.RpcError):
            g.complete_basket([[vocab[0]]], version=99)
    code, text = http(f"{served['rest']}/monitoring/prometheus/metrics")
    assert code == 200 and isinstance(text, str)
    lines = [line for line in text.splitlines() if not line.startswith("#")]

    def value(prefix: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(prefix))

    ok = 'signature="complete_basket",status="OK",version="1"}'
    assert value('assoc_serving_request_count_total{api="grpc",model="assoc",' + ok) >= 3
    assert value('assoc_serving_request_count_total{api="rest",model="assoc",' + ok) >= 3
    assert (
        value(
            'assoc_serving_request_count_total{api="grpc",model="assoc",signature="complete_basket",status="NOT_FOUND"'
        )
        >= 1
    )
    assert value('assoc_serving_request_latency_seconds_count{api="rest",model="assoc",' + ok) >= 3
    assert value('assoc_serving_model_events_total{event="load",model="assoc"}') >= 2
    assert value('assoc_serving_model_load_latency_seconds_count{model="assoc"}') >= 2
    assert value('assoc_serving_model_warmup_seconds_count{model="assoc"}') >= 2


def test_query_cli_over_rest(served, vocab, capsys):
    from assoc_lib.cli import main

    assert main(["query", "--server", served["rest"], "--items", vocab[0], "--k", "3", "--label", "stable"]) == 0
    out = capsys.readouterr().out
    assert "(complete_basket)" in out and out.count("\n") == 4
    assert main(["query", "--server", served["rest"], "--items", vocab[0], "--version", "99"]) == 2
    assert "HTTP 404" in capsys.readouterr().err
