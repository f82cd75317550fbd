"""``assoc serve``: a gRPC server speaking TensorFlow Serving's API on a TF Serving model base path.

The embedded default for local runs and tests, where no TF Serving binary or
Docker engine exists; production runs the real ``tensorflow/serving`` on the
same folders (docker/). Uses the official protos from tensorflow-serving-api:

- ``PredictionService``: Predict, GetModelMetadata (Classify/Regress/MultiInference: UNIMPLEMENTED)
- ``ModelService``: GetModelStatus, HandleReloadConfigRequest

Versions follow the model's version policy (latest N, specific, all) and labels
from ``--model-config-file``; the base path is polled and new versions are
loaded (warm-up replayed) before old ones are unloaded. Errors use TF Serving's
codes (NOT_FOUND, INVALID_ARGUMENT, FAILED_PRECONDITION) and never stop the server.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc

from assoc_lib.fsutil import write_text_atomic
from assoc_lib.records import VersionState
from assoc_lib.serving.registry import (  # noqa: F401  (re-exported: the server's public names)
    MAX_MESSAGE_BYTES,
    ModelRegistry,
    ServingError,
    build_server_config,
    parse_model_config,
    predict,
)
from assoc_lib.tfrt import tensorflow

log = logging.getLogger(__name__)


def _abort(context, exc: ServingError):
    context.abort(exc.code, exc.message)


def make_servicers(registry: ModelRegistry):
    tensorflow()
    from google.protobuf import any_pb2
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        get_model_status_pb2,
        model_management_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
        status_pb2,  # noqa: F401  (ModelVersionStatus.status)
    )

    class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):
            try:
                model, lv, outputs = predict(registry, request, "grpc", wire=True)
            except ServingError as exc:
                return _abort(context, exc)
            response = predict_pb2.PredictResponse()
            response.model_spec.name = model.name
            response.model_spec.version.value = lv.version
            response.model_spec.signature_name = request.model_spec.signature_name or "serving_default"
            for key, value in outputs.items():  # serialized TensorProtos (registry.run_signature)
                response.outputs[key].ParseFromString(value)
            return response

        def GetModelMetadata(self, request, context):
            try:
                if list(request.metadata_field) != ["signature_def"]:
                    raise ServingError(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"Metadata field signature_def is the only one supported; got {list(request.metadata_field)}",
                    )
                model = registry.get(request.model_spec.name)
                lv = model.resolve(request.model_spec)
            except ServingError as exc:
                return _abort(context, exc)
            sig_map = get_model_metadata_pb2.SignatureDefMap()
            for name, sig in lv.signature_defs.items():
                sig_map.signature_def[name].CopyFrom(sig)
            packed = any_pb2.Any()
            packed.Pack(sig_map)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = model.name
            response.model_spec.version.value = lv.version
            response.metadata["signature_def"].CopyFrom(packed)
            return response

        def _unimplemented(self, request, context):
            context.abort(
                grpc.StatusCode.UNIMPLEMENTED,
                "assoc serve implements Predict and GetModelMetadata; use signatures via Predict",
            )

        Classify = Regress = MultiInference = _unimplemented

    class ModelService(model_service_pb2_grpc.ModelServiceServicer):
        def GetModelStatus(self, request, context):
            try:
                model = registry.get(request.model_spec.name)
            except ServingError as exc:
                return _abort(context, exc)
            response = get_model_status_pb2.GetModelStatusResponse()
            with model.lock:
                items = sorted(model.versions.items())
                if request.model_spec.WhichOneof("version_choice") == "version":
                    items = [(v, lv) for v, lv in items if v == request.model_spec.version.value]
                    if not items:
                        return _abort(
                            context,
                            ServingError(
                                grpc.StatusCode.NOT_FOUND,
                                f"Could not find version {request.model_spec.version.value} of model {model.name}",
                            ),
                        )
                for v, lv in items:
                    status = response.model_version_status.add()
                    status.version = v
                    status.state = get_model_status_pb2.ModelVersionStatus.State.Value(lv.state)
                    if lv.error:
                        status.status.error_code = 13  # INTERNAL
                        status.status.error_message = lv.error
            return response

        def HandleReloadConfigRequest(self, request, context):
            response = model_management_pb2.ReloadConfigResponse()
            try:
                registry.apply_config(request.config)
            except ServingError as exc:
                response.status.error_code = exc.code.value[0]
                response.status.error_message = exc.message
            return response

    return PredictionService(), ModelService()


def serve(
    model_config_file: str | None = None,
    model_name: str | None = None,
    model_base_path: str | None = None,
    port: int = 8500,
    host: str = "127.0.0.1",
    max_workers: int = 8,
    poll_seconds: float = 2.0,
    ready_file: str | None = None,
    block: bool = True,
    rest_port: int | None = None,
    tf_threads: int | None = None,
    on_bound=None,
):
    """Start the server; with ``block`` wait until SIGTERM/SIGINT, then stop gracefully.

    ``rest_port``: also serve TF Serving's REST API and the Prometheus metrics there (0: a free port;
    None: no REST); the bound port is ``registry.rest.port``. ``tf_threads``: TensorFlow's intra- and inter-op
    thread pools (TF Serving's ``--tensorflow_intra_op_parallelism``); 1 suits small graphs served to many
    concurrent requests on few cores (measured: p50 0.46 -> 0.38 ms, p99 3.6 -> 0.5 ms in-process).
    ``port`` 0: a port the kernel chooses as it binds. ``on_bound(port, rest_port)``: called with the bound
    ports once both serve, before ``ready_file`` (``host:port``, written whole) appears: `assoc serve
    --processes` starts its siblings there, on the ports this process already holds."""
    tensorflow()  # TF first, quietly: the serving protos import it
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

    if tf_threads:
        tf = tensorflow()
        try:
            tf.config.threading.set_intra_op_parallelism_threads(tf_threads)
            tf.config.threading.set_inter_op_parallelism_threads(tf_threads)
        except RuntimeError:  # TensorFlow already ran ops in this process (tests): keep its pools
            log.warning("TensorFlow is initialised already: its thread pools stay as they are")
    registry = ModelRegistry(build_server_config(model_config_file, model_name, model_base_path), poll_seconds)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers),
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    prediction, model_service = make_servicers(registry)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(prediction, server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(model_service, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"could not bind {host}:{port}")
    server.start()
    poller = threading.Thread(
        target=registry.poll_forever, args=(Path(model_config_file) if model_config_file else None,), daemon=True
    )
    poller.start()
    for m in registry.models.values():
        avail = [v for v, lv in m.versions.items() if lv.state == VersionState.AVAILABLE]
        log.info(
            "serving %s on %s:%d: versions %s, labels %s, base path %s",
            m.name,
            host,
            bound,
            avail or "none",
            m.labels or "none",
            m.config.base_path,
        )
    if rest_port is not None:
        from assoc_lib.serving.rest import RestServer

        registry.rest = RestServer(registry, host, rest_port).start()
        log.info(
            "REST API and metrics on http://%s:%d (/v1/models/..., /monitoring/prometheus/metrics)",
            host,
            registry.rest.port,
        )
    if on_bound is not None:
        try:
            on_bound(bound, registry.rest.port if rest_port is not None else None)
        except BaseException:  # nothing of this server stays up when what it started with it failed
            registry.stop()
            server.stop(grace=0).wait()
            raise
    if ready_file:  # whole or not at all: a reader polls for it
        write_text_atomic(ready_file, f"{host}:{bound}\n")
    if not block:
        return server, registry, bound
    stopped = threading.Event()

    def _graceful(signum, frame):
        log.info("signal %d: stopping (in-flight requests get 5s)", signum)
        registry.stop()
        server.stop(grace=5).wait()
        stopped.set()

    signal.signal(signal.SIGTERM, _graceful)
    signal.signal(signal.SIGINT, _graceful)
    stopped.wait()
    return None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _start_tracked(cmd: list[str], ready: Path, procs: list) -> None:
    """``Popen(cmd)`` appended to ``procs`` with Ctrl-C held until it is there. A SIGINT that lands inside
    ``Popen`` after the fork (the child exists, ``Popen`` has not returned it) raises KeyboardInterrupt there,
    and the child would be nobody's to stop: a sibling serving on the shared port after its first process
    ended. Held by a Python-level handler, not a signal mask (a mask is inherited across exec, the sibling
    would then ignore SIGTERM), and delivered again once the child is recorded. Only the main thread
    receives signals in Python; elsewhere there is nothing to hold."""
    if threading.current_thread() is not threading.main_thread():
        procs.append((subprocess.Popen(cmd), ready))
        return
    held = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        procs.append((subprocess.Popen(cmd), ready))
    finally:
        signal.signal(signal.SIGINT, previous)
    if held:
        signal.raise_signal(signal.SIGINT)  # now the previous handler's (KeyboardInterrupt by default)


def start_siblings(
    n: int,
    model_args: list[str],
    host: str,
    port: int,
    rest_port: int | None,
    tf_threads: int | None,
    max_workers: int,
    poll_seconds: float,
    timeout: float = 300.0,
) -> list[subprocess.Popen]:
    """``n`` more `assoc serve` processes on the same ports; returns once each answers (or raises)."""
    tmp = Path(tempfile.mkdtemp(prefix="assoc-serve-"))  # ready files only: removed however the start ends
    procs = []
    try:
        for i in range(n):
            ready = tmp / f"ready-{i}"
            cmd = [
                sys.executable,
                "-m",
                "assoc_lib.cli",
                "serve",
                *model_args,
                "--host",
                host,
                "--port",
                str(port),
                "--rest_api_port",
                str(rest_port or 0),
                "--processes",
                "1",
                "--max-workers",
                str(max_workers),
                "--poll-seconds",
                str(poll_seconds),
                "--ready-file",
                str(ready),
                "--parent-pid",
                str(os.getpid()),
                "--shared-ports",
            ]
            if tf_threads is not None:
                cmd += ["--tensorflow_intra_op_parallelism", str(tf_threads)]
            _start_tracked(cmd, ready, procs)
        deadline = time.time() + timeout
        for proc, ready in procs:
            while not ready.exists():
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"a sibling server process did not start (exit code {proc.poll()})")
                time.sleep(0.2)
        log.info("%d sibling server process(es) on port %d: pids %s", n, port, [p.pid for p, _ in procs])
        return [p for p, _ in procs]
    except BaseException:  # a failed start, a Popen that raised, Ctrl-C while waiting: no sibling outlives it
        stop_siblings([p for p, _ in procs])
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def stop_with_parent(parent_pid: int, every: float = 1.0) -> threading.Thread:
    """A sibling's watch on the process that started it: once that process is gone, however it ended
    (SIGKILL, the OOM killer, a crash: no SIGTERM reaches the sibling then), the sibling sends itself SIGTERM
    and stops gracefully, instead of serving on the shared port alone and unseen."""

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(every)
        log.warning("the process that started this one (pid %d) is gone: stopping", parent_pid)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, name="stop-with-parent", daemon=True)
    thread.start()
    return thread


def stop_siblings(procs: list[subprocess.Popen], grace: float = 10.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def spawn(
    args: list[str], workdir: str | os.PathLike, host: str = "127.0.0.1", timeout: float = 180.0
) -> tuple[subprocess.Popen, str]:
    """Start ``assoc serve ARGS`` as a separate process on a gRPC port the kernel chooses as the server binds
    it (not one picked here beforehand, which another process could take in between); return it and the
    ``host:port`` from its ready file once it serves. Its ready file and log go to ``workdir`` (created; the
    caller removes it after stopping the process: a pipe nobody reads would fill up and stall it, and a
    directory of its own would be left behind on every daily run)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ready, log_path = workdir / "ready", workdir / "serve.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "assoc_lib.cli",
                "serve",
                *args,
                "--host",
                host,
                "--port",
                "0",
                "--ready-file",
                str(ready),
                "--parent-pid",  # it stops itself if this process dies without stopping it
                str(os.getpid()),
            ],
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    deadline = time.time() + timeout
    while not ready.exists():
        if proc.poll() is not None or time.time() > deadline:
            if proc.poll() is None:
                proc.kill()
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"assoc serve did not come up (exit code {proc.poll()}): {tail}")
        time.sleep(0.2)
    return proc, ready.read_text().strip()
