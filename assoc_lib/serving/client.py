"""A small client for the served model: TF Serving's official gRPC stubs (``HOST:PORT``), or its REST API
(``http://HOST:PORT``) with the same methods and answers. Works against `assoc serve` and TF Serving alike."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from assoc_lib.serving.tensors import from_proto, to_proto
from assoc_lib.tfrt import tensorflow


def _array(value) -> np.ndarray:
    """An output as numpy: already one (REST), or a TensorProto (gRPC)."""
    return value if isinstance(value, np.ndarray) else from_proto(value)


@dataclass
class Answer:
    version: int | None  # None over REST unless a version was asked for (TF Serving's REST answer omits it)
    item_ids: list[list[str]]
    scores: list[list[float]]
    outputs: dict = field(default_factory=dict, repr=False)  # the raw output arrays

    @property
    def evidence(self) -> list[list[dict]] | None:
        """Per recommended item: evidence_item, evidence_count, confidence, lift (built when asked for)."""
        if "evidence_item" not in self.outputs:
            return None
        ev = {k: _array(self.outputs[k]) for k in ("evidence_item", "evidence_count", "confidence", "lift")}
        return [
            [
                {
                    "evidence_item": ev["evidence_item"][b, i].decode(),
                    "evidence_count": float(ev["evidence_count"][b, i]),
                    "confidence": float(ev["confidence"][b, i]),
                    "lift": float(ev["lift"][b, i]),
                }
                for i in range(len(row))
            ]
            for b, row in enumerate(self.item_ids)
        ]


class RestError(Exception):
    """A REST answer other than 200: the HTTP status and TF Serving's ``error`` message."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message = status, message


class AssocClient:
    def __init__(self, target: str = "127.0.0.1:8500", model_name: str = "assoc", timeout: float = 10.0):
        tensorflow()  # TF first, quietly: the serving protos import it
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        self.target = target
        self.model_name, self.timeout = model_name, timeout
        self.rest = target.startswith(("http://", "https://"))
        self.channel = None
        if not self.rest:
            self.channel = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20)])
            self.predict_stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
            from tensorflow_serving.apis.predict_pb2 import PredictRequest

            self._request_type = PredictRequest
            self.model_stub = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()

    # ------------------------------------------------------------------ REST transport
    def _url(self, version: int | None = None, label: str | None = None, tail: str = "") -> str:
        where = f"/versions/{version}" if version is not None else (f"/labels/{label}" if label else "")
        return f"{self.target.rstrip('/')}/v1/models/{self.model_name}{where}{tail}"

    def _http(self, url: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            try:
                detail = json.loads(detail).get("error", detail)
            except ValueError:
                pass
            raise RestError(exc.code, detail) from None

    def _predict_rest(self, signature, inputs, version, label) -> tuple[int | None, dict]:
        body = self._http(self._url(version, label, ":predict"), {"signature_name": signature, "inputs": inputs})
        outputs = body["outputs"] if isinstance(body["outputs"], dict) else {"output": body["outputs"]}
        arrays = {
            k: np.asarray(v, dtype=object if k in ("item_ids", "evidence_item") else np.float32)
            for k, v in outputs.items()
        }
        for k in ("item_ids", "evidence_item"):
            if k in arrays:
                arrays[k] = np.vectorize(lambda x: str(x).encode(), otypes=[object])(arrays[k])
        return version, arrays

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _spec(self, spec, signature: str, version: int | None, label: str | None):
        spec.name = self.model_name
        spec.signature_name = signature
        if version is not None:
            spec.version.value = version
        elif label:
            spec.version_label = label

    def predict(self, signature: str, inputs: dict, version: int | None = None, label: str | None = None) -> Answer:
        if self.rest:
            answered_version, outputs = self._predict_rest(signature, inputs, version, label)
        else:
            answered_version, outputs = self._predict_grpc(signature, inputs, version, label)
        ids, scores = _array(outputs["item_ids"]), _array(outputs["scores"])
        return Answer(answered_version, [[x.decode() for x in row] for row in ids], scores.tolist(), outputs)

    def _predict_grpc(self, signature, inputs, version, label) -> tuple[int, dict]:
        request = self._request_type()
        self._spec(request.model_spec, signature, version, label)
        for key, value in inputs.items():  # strings are UTF-8 encoded by to_proto
            dtype = np.float32 if key in ("history_counts", "history_days") else object
            request.inputs[key].CopyFrom(to_proto(np.asarray(value, dtype=dtype)))
        response = self.predict_stub.Predict(request, timeout=self.timeout)
        # item ids and scores now; the explanation outputs are decoded when Answer.evidence is read
        return response.model_spec.version.value, dict(response.outputs)

    def complete_basket(self, baskets: list[list[str]], **kw) -> Answer:
        width = max(1, max((len(b) for b in baskets), default=1))
        return self.predict("complete_basket", {"items": [b + [""] * (width - len(b)) for b in baskets]}, **kw)

    def complete_basket_personal(
        self,
        baskets: list[list[str]],
        histories: list[list[str]],
        counts: list[list[float]],
        days: list[list[float]] | None = None,
        **kw,
    ) -> Answer:
        """The shopper's earlier purchases ride along; the model stores none. One row per purchase (count 1,
        days since it) or per item (its purchase count, days since its last purchase); ``days`` None
        sends 0 (bought today). Rows with the same days are one past basket: send one row per purchase
        for a model that reads the past baskets (its model card's ``cooc_weight`` or ``reranker``)."""

        def pad(rows, fill):
            width = max(1, max((len(r) for r in rows), default=1))
            return [list(r) + [fill] * (width - len(r)) for r in rows]

        if days is None:
            days = [[0.0] * len(h) for h in histories]
        lengths = [len(h) for h in histories]
        if [len(c) for c in counts] != lengths or [len(d) for d in days] != lengths:
            raise ValueError("history, counts and days need one value per history item")
        return self.predict(
            "complete_basket_personal",
            {
                "items": pad(baskets, ""),
                "history": pad(histories, ""),
                "history_counts": pad(counts, 0.0),
                "history_days": pad(days, 0.0),
            },
            **kw,
        )

    def related_items(self, items: list[str], **kw) -> Answer:
        return self.predict("related_items", {"item": list(items)}, **kw)

    def model_status(self) -> list[dict]:
        if self.rest:
            body = self._http(self._url())
            return [
                {
                    "version": int(s["version"]),
                    "state": s["state"],
                    "error": s.get("status", {}).get("error_message", ""),
                }
                for s in body["model_version_status"]
            ]
        tensorflow()  # TF first, quietly: the serving protos import it
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = self.model_name
        response = self.model_stub.GetModelStatus(request, timeout=self.timeout)
        return [
            {
                "version": s.version,
                "state": get_model_status_pb2.ModelVersionStatus.State.Name(s.state),
                "error": s.status.error_message,
            }
            for s in response.model_version_status
        ]

    def metadata(self, version: int | None = None) -> dict:
        if self.rest:
            body = self._http(self._url(version, tail="/metadata"))
            sigs = body["metadata"]["signature_def"]["signature_def"]
            return {
                "version": int(body["model_spec"]["version"]),
                "signatures": {
                    name: {"inputs": sorted(s.get("inputs", {})), "outputs": sorted(s.get("outputs", {}))}
                    for name, s in sigs.items()
                },
            }
        tensorflow()  # TF first, quietly: the serving protos import it
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest()
        request.model_spec.name = self.model_name
        if version is not None:
            request.model_spec.version.value = version
        request.metadata_field.append("signature_def")
        response = self.predict_stub.GetModelMetadata(request, timeout=self.timeout)
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(sig_map)
        return {
            "version": response.model_spec.version.value,
            "signatures": {
                name: {"inputs": sorted(s.inputs), "outputs": sorted(s.outputs)}
                for name, s in sig_map.signature_def.items()
            },
        }


def describe(
    item_ids: list[str], scores: list[float], catalog_path: str | Path | None, evidence: list[dict] | None = None
) -> list[dict]:
    """Items with titles and categories from the catalogue when there is one (and their evidence)."""
    rows = [{"item_id": i, "score": round(float(s), 4)} for i, s in zip(item_ids, scores)]
    for r, e in zip(rows, evidence or []):
        r.update(e)
    if catalog_path and Path(catalog_path).exists():
        import pyarrow.parquet as pq

        catalog = pq.read_table(catalog_path).to_pandas().set_index("item_id")

        def title(item):
            if item not in catalog.index:
                return None, None
            c = catalog.loc[item]
            category = " / ".join(
                str(x)
                for x in (c.get("department"), c.get("category"))
                if x is not None and str(x) not in ("", "nan", "<NA>")
            )
            return c.get("title"), category

        for r in rows:
            r["title"], r["category"] = title(r["item_id"])
            if r.get("evidence_item"):
                r["evidence_title"] = title(r["evidence_item"])[0]
    return rows
