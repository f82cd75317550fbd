"""The served models: config, versions (load with warm-up, switch, unload), version resolution, and the one
predict path behind gRPC (``serving.server``) and REST (``serving.rest``). TF Serving's semantics: version
policy and labels from the ModelServerConfig, polling of the base path, warm-up before AVAILABLE, errors as
TF Serving gives them (``ServingError`` carries the gRPC code)."""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from assoc_lib.records import VersionState
from assoc_lib.serving.metrics import ServingMetrics
from assoc_lib.serving.tensors import from_proto, to_proto
from assoc_lib.tfrt import tensorflow

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class ServingError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


@dataclass
class LoadedVersion:
    version: int
    path: Path
    state: VersionState = VersionState.LOADING
    loaded: object = None
    signature_defs: dict = field(default_factory=dict)  # name -> SignatureDef proto
    error: str = ""
    wire: dict = field(default_factory=dict)  # signature name -> (input names, its wire-format function)

    def wire_function(self, sig_name: str):
        """(input names, function): the signature wrapped to take and give serialized TensorProtos.

        The request's tensors are parsed, shape-checked and run, and the outputs serialized, in one
        TensorFlow call: no per-tensor conversion in Python on the gRPC path (measured in the README's
        serving table). Built once per signature; the first call traces it (the warm-up does)."""
        if sig_name not in self.wire:
            tf = tensorflow()
            fn = self.loaded.signatures[sig_name]
            specs = fn.structured_input_signature[1]
            names = sorted(specs)

            @tf.function(input_signature=[tf.TensorSpec([], tf.string)] * len(names))
            def call(*serialized):
                inputs = {
                    n: tf.ensure_shape(tf.io.parse_tensor(s, specs[n].dtype), specs[n].shape)
                    for n, s in zip(names, serialized)
                }
                return {k: tf.io.serialize_tensor(v) for k, v in fn(**inputs).items()}

            self.wire[sig_name] = (names, call.get_concrete_function())
        return self.wire[sig_name]


def _read_signature_defs(path: Path) -> dict:
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    sm.ParseFromString((path / "saved_model.pb").read_bytes())
    return dict(sm.meta_graphs[0].signature_def)


def parse_model_config(text: str):
    from google.protobuf import text_format

    tensorflow()  # TF first, quietly: the serving protos import it
    from tensorflow_serving.config import model_server_config_pb2

    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())


class ServedModel:
    """One model name: its config, loaded versions and labels."""

    def __init__(self, config, metrics: ServingMetrics | None = None):
        self.config = config  # tensorflow.serving.ModelConfig
        self.versions: dict[int, LoadedVersion] = {}
        self.lock = threading.RLock()
        self.metrics = metrics or ServingMetrics()

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def labels(self) -> dict[str, int]:
        return dict(self.config.version_labels)

    def wanted_versions(self, config=None) -> list[int]:
        config = config or self.config
        base = Path(config.base_path)
        on_disk = (
            sorted(
                int(p.name)
                for p in base.iterdir()
                if p.is_dir() and p.name.isdigit() and (p / "saved_model.pb").exists()
            )
            if base.exists()
            else []
        )
        policy = config.model_version_policy
        which = policy.WhichOneof("policy_choice")
        if which == "all":
            return on_disk
        if which == "specific":
            return [v for v in on_disk if v in set(policy.specific.versions)]
        n = policy.latest.num_versions if which == "latest" and policy.latest.num_versions else 1
        return on_disk[-n:]

    def sync(self, new_config=None) -> None:
        """Load the wanted versions (warm-up first), then switch config/labels, then unload the rest.

        Requests keep being answered by the old versions and labels until the new ones are AVAILABLE.
        """
        config = new_config or self.config
        wanted = self.wanted_versions(config)
        for v in wanted:
            if v not in self.versions or self.versions[v].state == VersionState.END:
                self._load(v)
        available = {v for v, lv in self.versions.items() if lv.state == VersionState.AVAILABLE}
        if wanted and not available & set(wanted):
            return  # nothing new could be loaded: keep serving what we have
        with self.lock:
            self.config = config
            to_unload = [
                v for v in self.versions if v not in wanted and self.versions[v].state == VersionState.AVAILABLE
            ]
            for v in to_unload:
                # Requests already running on this version hold the old record (and its loaded model):
                # they finish on it; the model is freed when the last of them drops it. New requests
                # see a fresh END record and are routed to the available versions.
                old = self.versions[v]
                self.versions[v] = LoadedVersion(version=v, path=old.path, state=VersionState.END)
        for v in to_unload:
            self.metrics.model_events.labels(model=self.name, event="unload").inc()
            log.info("unloaded %s version %d", self.name, v)

    def _load(self, version: int) -> None:
        tf = tensorflow()

        path = Path(self.config.base_path) / str(version)
        lv = LoadedVersion(version=version, path=path)
        with self.lock:
            self.versions[version] = lv
        started = time.perf_counter()
        try:
            lv.loaded = tf.saved_model.load(str(path))
            lv.signature_defs = _read_signature_defs(path)
            warm_started = time.perf_counter()
            warmed = self._warm_up(lv)
            self.metrics.warmup.labels(model=self.name).observe(time.perf_counter() - warm_started)
            self.metrics.load_latency.labels(model=self.name).observe(time.perf_counter() - started)
            self.metrics.model_events.labels(model=self.name, event="load").inc()
            lv.state = VersionState.AVAILABLE
            log.info(
                "loaded %s version %d from %s in %.1fs (%d warm-up requests replayed)",
                self.name,
                version,
                path,
                time.perf_counter() - started,
                warmed,
            )
        except Exception as exc:  # a broken version must not take the server down
            lv.state, lv.error, lv.loaded = VersionState.END, f"{type(exc).__name__}: {exc}", None
            self.metrics.model_events.labels(model=self.name, event="load_failed").inc()
            log.error("failed to load %s version %d: %s", self.name, version, lv.error)

    def _warm_up(self, lv: LoadedVersion) -> int:
        tf = tensorflow()
        from tensorflow_serving.apis import prediction_log_pb2

        warmup = lv.path / "assets.extra" / "tf_serving_warmup_requests"
        if not warmup.exists():
            return 0
        count = 0
        for record in tf.data.TFRecordDataset(str(warmup)):
            entry = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            if entry.WhichOneof("log_type") == "predict_log":
                run_signature(lv, entry.predict_log.request, wire=True)  # traces the gRPC path's function
                count += 1
        return count

    def resolve(self, model_spec) -> LoadedVersion:
        with self.lock:
            choice = model_spec.WhichOneof("version_choice")
            if choice == "version":
                v = model_spec.version.value
                lv = self.versions.get(v)
                if lv is None or lv.state != VersionState.AVAILABLE:
                    raise ServingError(
                        grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Specific({self.name}, {v})"
                    )
                return lv
            if choice == "version_label":
                label = model_spec.version_label
                if label not in self.labels:
                    raise ServingError(
                        grpc.StatusCode.INVALID_ARGUMENT, f"Unrecognized servable version label: {label}"
                    )
                lv = self.versions.get(self.labels[label])
                if lv is None or lv.state != VersionState.AVAILABLE:
                    raise ServingError(
                        grpc.StatusCode.NOT_FOUND,
                        f"Servable not found for request: Specific({self.name}, {self.labels[label]})",
                    )
                return lv
            available = [v for v, lv in self.versions.items() if lv.state == VersionState.AVAILABLE]
            if not available:
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({self.name})")
            return self.versions[max(available)]


def run_signature(lv: LoadedVersion, request, wire: bool = False):
    """Run one PredictRequest against a loaded version; returns {output name: ndarray}, or with ``wire``
    {output name: serialized TensorProto} for the gRPC answer.

    ``wire`` tries the one-call path (``LoadedVersion.wire_function``) first; a request it cannot take
    (wrong dtype or rank, bad values) goes the checked path below, which names the problem."""
    tf = tensorflow()

    sig_name = request.model_spec.signature_name or "serving_default"
    if sig_name not in lv.loaded.signatures:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f'Serving signature key "{sig_name}" not found.')
    names, call = lv.wire_function(sig_name) if wire else ((), None)
    if wire and set(request.inputs.keys()) == set(names):
        try:
            outputs = call(*[request.inputs[n].SerializeToString() for n in names])
        except tf.errors.OpError:
            pass  # the checked path answers with the reason
        else:
            wanted = list(request.output_filter) or list(outputs)
            if all(o in outputs for o in wanted):
                return {k: outputs[k].numpy() for k in wanted}
    outputs = _checked_run(lv, request, sig_name)
    return {k: to_proto(v).SerializeToString() for k, v in outputs.items()} if wire else outputs


def _error_text(exc: Exception) -> str:
    """The line of an error that names the problem: for a TensorFlow op error raised inside the graph (an
    assertion such as "history_days must be finite : Tensor had NaN values"), not the "Graph execution
    error:" header, the node trace or the op name."""
    lines = [line for line in str(getattr(exc, "message", None) or exc).splitlines() if line.strip()]
    noise = ("Graph execution error", "Detected at node", "<stack traces")
    useful = [line for line in lines if not line.startswith(noise) and not line[:1].isspace()]
    return (useful or lines or [type(exc).__name__])[0]


def _checked_run(lv: LoadedVersion, request, sig_name: str) -> dict:
    """Every input checked against the signature in Python, with TF Serving's error messages."""
    tf = tensorflow()

    fn = lv.loaded.signatures[sig_name]
    expected = fn.structured_input_signature[1]
    given = set(request.inputs.keys())
    if given != set(expected):
        missing, extra = sorted(set(expected) - given), sorted(given - set(expected))
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input size does not match signature: {len(given)}!={len(expected)} len({{"
            f"{', '.join(sorted(given))}}}) != len({{{', '.join(sorted(expected))}}}). "
            f"Sent extra: {{{', '.join(extra)}}}. Missing but required: {{{', '.join(missing)}}}.",
        )
    kwargs = {}
    for key, spec in expected.items():
        try:
            value = from_proto(request.inputs[key])
        except Exception as exc:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"input {key}: bad tensor ({exc})") from exc
        tensor = tf.convert_to_tensor(value)
        if tensor.dtype != spec.dtype:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Expects arg[{key}] to be {spec.dtype.name} but {tensor.dtype.name} is provided",
            )
        if not spec.shape.is_compatible_with(tensor.shape):
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input {key}: shape {tensor.shape} is not compatible with {spec.shape}",
            )
        kwargs[key] = tensor
    try:
        outputs = fn(**kwargs)
    except (tf.errors.InvalidArgumentError, ValueError, TypeError) as exc:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, _error_text(exc)) from exc
    wanted = list(request.output_filter) or list(outputs)
    unknown = [o for o in wanted if o not in outputs]
    if unknown:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT, f"output tensor alias not found in signature: {unknown[0]}"
        )
    return {k: outputs[k].numpy() for k in wanted}


def predict(registry: "ModelRegistry", request, api: str, wire: bool = False):
    """Resolve the version and run the request's signature: the one path behind gRPC and REST.
    Returns (model, loaded version, outputs); raises ServingError; records the request's metrics."""
    labels = {"model": request.model_spec.name, "signature": request.model_spec.signature_name or "serving_default"}
    with registry.metrics.request(api, labels):
        try:
            model = registry.get(request.model_spec.name)
            lv = model.resolve(request.model_spec)
            labels["version"] = lv.version
            outputs = run_signature(lv, request, wire)
        except ServingError as exc:
            labels["status"] = exc.code.name
            raise
        except Exception:
            labels["status"] = "INTERNAL"
            raise
    return model, lv, outputs


class ModelRegistry:
    """All served models; reloads config and polls base paths."""

    def __init__(self, server_config, poll_seconds: float = 2.0):
        self.models: dict[str, ServedModel] = {}
        self.metrics = ServingMetrics()
        self.rest = None  # the REST server, when one was started (serving.rest)
        self.poll_seconds = poll_seconds
        self.lock = threading.RLock()
        self.sync_lock = threading.RLock()  # one config change or poll at a time
        self._stop = threading.Event()
        self.apply_config(server_config)

    def apply_config(self, server_config) -> None:
        with self.sync_lock:
            self._apply_config(server_config)

    def _apply_config(self, server_config) -> None:
        configs = {c.name: c for c in server_config.model_config_list.config}
        for c in configs.values():
            if not c.base_path:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"model {c.name} has no base_path")
        with self.lock:
            new = {name: ServedModel(c, self.metrics) for name, c in configs.items() if name not in self.models}
        for m in new.values():
            m.sync()
        for name, c in configs.items():
            if name not in new:
                self.models[name].sync(c)
        with self.lock:
            self.models.update(new)
            for name in list(self.models):
                if name not in configs:
                    del self.models[name]
        for m in list(self.models.values()):
            for label, v in m.labels.items():
                if v not in m.versions or m.versions[v].state != VersionState.AVAILABLE:
                    log.warning("label %s of %s points at version %d, which is not available", label, m.name, v)

    def get(self, name: str) -> ServedModel:
        with self.lock:
            model = self.models.get(name)
        if model is None:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({name})")
        return model

    def poll_forever(self, config_file: Path | None = None) -> None:
        # Loading a new version (and replaying its warm-up) competes with live requests for 2 cores: on Linux
        # a thread has its own nice value, so the poller yields the CPU to the request threads.
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        except (AttributeError, OSError):
            pass
        last_text = config_file.read_text() if config_file and config_file.exists() else None
        while not self._stop.wait(self.poll_seconds):
            try:
                if config_file and config_file.exists():
                    text = config_file.read_text()
                    if text != last_text:
                        log.info("model config %s changed: reloading", config_file)
                        self.apply_config(parse_model_config(text))
                        last_text = text
                        continue
                with self.sync_lock:
                    for m in list(self.models.values()):
                        m.sync()
            except Exception as exc:
                log.error("poll failed (still serving what is loaded): %s", exc)

    def stop(self) -> None:
        self._stop.set()
        if self.rest is not None:
            self.rest.stop()


def build_server_config(model_config_file: str | None, model_name: str | None, model_base_path: str | None):
    tensorflow()  # TF first, quietly: the serving protos import it
    from tensorflow_serving.config import model_server_config_pb2

    if model_config_file:
        return parse_model_config(Path(model_config_file).read_text())
    if not (model_name and model_base_path):
        raise ValueError("give --model-config-file, or --model-name and --model-base-path")
    cfg = model_server_config_pb2.ModelServerConfig()
    c = cfg.model_config_list.config.add()
    c.name, c.base_path, c.model_platform = model_name, str(Path(model_base_path).resolve()), "tensorflow"
    return cfg
