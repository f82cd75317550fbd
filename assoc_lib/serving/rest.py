"""TF Serving's REST API on ``--rest_api_port``, over the same registry and the same predict path as gRPC.

- ``GET  /v1/models/{name}[/versions/{v}|/labels/{l}]``: model status (``model_version_status``).
- ``GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata``: the signature defs.
- ``POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict``: ``{"signature_name": ..., "instances": [...]}``
  (row format: answers ``{"predictions": [...]}``) or ``{"inputs": {...}}`` (columnar: ``{"outputs": {...}}``).
- ``GET  /monitoring/prometheus/metrics``: Prometheus text (``serving.metrics``).

Errors answer as TF Serving does: ``{"error": "<message>"}`` with the HTTP status of the gRPC code.
The JSON is turned into the same ``PredictRequest`` the gRPC path gets, so both answer alike.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import numpy as np

from assoc_lib.serving.registry import ModelRegistry, ServingError, predict
from assoc_lib.tfrt import tensorflow

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024 * 1024
HTTP_OF = {
    grpc.StatusCode.INVALID_ARGUMENT: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.NOT_FOUND: HTTPStatus.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.RESOURCE_EXHAUSTED: HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    grpc.StatusCode.UNIMPLEMENTED: HTTPStatus.NOT_IMPLEMENTED,
    grpc.StatusCode.UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
}
ROUTE = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<tail>/metadata|:predict)?$"
)


def model_spec(name: str, version: str | None, label: str | None):
    from tensorflow_serving.apis import model_pb2

    spec = model_pb2.ModelSpec(name=name)
    if version is not None:
        spec.version.value = int(version)
    elif label is not None:
        spec.version_label = label
    return spec


def _tensor(tf, value, dtype, key: str):
    """A JSON value as a TensorProto of the signature's dtype (strings as UTF-8 bytes)."""
    try:
        if dtype == tf.string:
            array = np.asarray(value, dtype=object)
            encode = np.vectorize(lambda s: s.encode() if isinstance(s, str) else s, otypes=[object])
            array = encode(array) if array.size else array
            if array.size and not all(isinstance(x, bytes) for x in array.ravel()):
                raise ValueError("expected strings")
            return tf.make_tensor_proto(array, dtype=tf.string)
        return tf.make_tensor_proto(np.asarray(value, dtype=dtype.as_numpy_dtype), dtype=dtype)
    except (ValueError, TypeError) as exc:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"input {key}: {exc}") from exc


def predict_request(registry: ModelRegistry, spec, body: dict):
    """TF Serving's REST predict body (row or columnar) as a PredictRequest; returns (request, row_format)."""
    from tensorflow_serving.apis import predict_pb2

    tf = tensorflow()
    if not isinstance(body, dict) or ("instances" in body) == ("inputs" in body):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Missing 'instances' or 'inputs' key (exactly one)")
    request = predict_pb2.PredictRequest(model_spec=spec)
    request.model_spec.signature_name = str(body.get("signature_name") or "serving_default")
    lv = registry.get(spec.name).resolve(spec)
    fn = lv.loaded.signatures.get(request.model_spec.signature_name) if lv.loaded is not None else None
    if fn is None:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT, f'Serving signature key "{request.model_spec.signature_name}" not found.'
        )
    expected = fn.structured_input_signature[1]
    if "instances" in body:
        rows = body["instances"]
        if not isinstance(rows, list):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "'instances' must be a list")
        if len(expected) == 1 and not (rows and isinstance(rows[0], dict)):
            columns = {next(iter(expected)): rows}
        else:
            if not all(isinstance(r, dict) for r in rows):
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "each instance must be an object of named inputs")
            names = {k for r in rows for k in r}
            columns = {k: [r.get(k) for r in rows] for k in names}
    else:
        columns = body["inputs"]
        if not isinstance(columns, dict):
            if len(expected) != 1:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "'inputs' must name the signature's inputs")
            columns = {next(iter(expected)): columns}
    for key, value in columns.items():
        dtype = expected[key].dtype if key in expected else tf.string
        request.inputs[key].CopyFrom(_tensor(tf, value, dtype, key))
    return request, "instances" in body


def _jsonable(array: np.ndarray):
    if array.dtype == object:
        return np.vectorize(lambda b: b.decode(errors="replace") if isinstance(b, bytes) else b, otypes=[object])(
            array
        ).tolist()
    return array.tolist()


def predict_response(outputs: dict, row_format: bool) -> dict:
    """Rows: one prediction per instance (an object when there are several outputs); columns: by output."""
    if not row_format:
        return {"outputs": {k: _jsonable(v) for k, v in outputs.items()}}
    columns = {k: _jsonable(v) for k, v in outputs.items()}
    n = len(next(iter(columns.values()))) if columns else 0
    if len(columns) == 1:
        return {"predictions": next(iter(columns.values()))}
    return {"predictions": [{k: v[i] for k, v in columns.items()} for i in range(n)]}


def status_body(registry: ModelRegistry, name: str, version: str | None, label: str | None) -> dict:
    model = registry.get(name)
    with model.lock:
        items = sorted(model.versions.items())
    if label is not None:
        if label not in model.labels:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"Unrecognized servable version label: {label}")
        version = str(model.labels[label])
    if version is not None:
        items = [(v, lv) for v, lv in items if v == int(version)]
        if not items:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Could not find version {version} of model {name}")
    return {
        "model_version_status": [
            {
                "version": str(v),
                "state": str(lv.state),
                "status": {"error_code": "INTERNAL" if lv.error else "OK", "error_message": lv.error},
            }
            for v, lv in items
        ]
    }


def metadata_body(registry: ModelRegistry, spec) -> dict:
    from google.protobuf.json_format import MessageToDict
    from tensorflow_serving.apis import get_model_metadata_pb2

    lv = registry.get(spec.name).resolve(spec)
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    for name, sig in lv.signature_defs.items():
        sig_map.signature_def[name].CopyFrom(sig)
    return {
        "model_spec": {"name": spec.name, "signature_name": "", "version": str(lv.version)},
        "metadata": {"signature_def": MessageToDict(sig_map, preserving_proto_field_name=True)},
    }


def make_handler(registry: ModelRegistry):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "assoc-serve-rest"

        def log_message(self, fmt, *args):  # access log at DEBUG, not on stderr per request
            log.debug("%s %s", self.address_string(), fmt % args)

        def _send(self, status: int, body, content_type: str = "application/json") -> None:
            data = body if isinstance(body, bytes) else (json.dumps(body) + "\n").encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, exc: ServingError) -> None:
            self._send(HTTP_OF.get(exc.code, HTTPStatus.INTERNAL_SERVER_ERROR), {"error": exc.message})

        def do_GET(self):  # noqa: N802 - http.server's name
            if self.path.split("?")[0] == "/monitoring/prometheus/metrics":
                return self._send(200, registry.metrics.text(), "text/plain; version=0.0.4; charset=utf-8")
            match = ROUTE.match(self.path.split("?")[0])
            if not match or match["tail"] == ":predict":
                return self._error(ServingError(grpc.StatusCode.NOT_FOUND, f"Malformed request: GET {self.path}"))
            try:
                if match["tail"] == "/metadata":
                    spec = model_spec(match["name"], match["version"], match["label"])
                    return self._send(200, metadata_body(registry, spec))
                return self._send(200, status_body(registry, match["name"], match["version"], match["label"]))
            except ServingError as exc:
                return self._error(exc)

        def do_POST(self):  # noqa: N802 - http.server's name
            match = ROUTE.match(self.path.split("?")[0])
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self.close_connection = True
                return self._error(
                    ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"request body of {length} bytes is too large")
                )
            raw = self.rfile.read(length)
            if not match or match["tail"] != ":predict":
                return self._error(ServingError(grpc.StatusCode.NOT_FOUND, f"Malformed request: POST {self.path}"))
            try:
                try:
                    body = json.loads(raw or b"null")
                except ValueError as exc:
                    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"JSON Parse error: {exc}") from exc
                spec = model_spec(match["name"], match["version"], match["label"])
                request, rows = predict_request(registry, spec, body)
                _, _, outputs = predict(registry, request, "rest")
                return self._send(200, predict_response(outputs, rows))
            except ServingError as exc:
                return self._error(exc)

    return Handler


class _ReusePortServer(ThreadingHTTPServer):
    allow_reuse_port = True  # several `assoc serve` processes share the REST port as they share the gRPC one
    request_queue_size = 128  # listen backlog (socketserver's default of 5 refuses connections under load)


class RestServer:
    """The REST server in a background thread; ``port`` is the bound port (0 picks a free one)."""

    def __init__(self, registry: ModelRegistry, host: str = "127.0.0.1", port: int = 8501):
        self.httpd = _ReusePortServer((host, port), make_handler(registry))
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="assoc-rest", daemon=True)

    def start(self) -> "RestServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
