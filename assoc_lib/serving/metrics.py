"""Prometheus metrics of `assoc serve`, served as text at ``/monitoring/prometheus/metrics`` on the REST port
(the path TF Serving uses with ``--monitoring_config_file``). Each server has its own registry, so several
servers in one process (tests) keep separate counts."""

from __future__ import annotations

import time
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class ServingMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "assoc_serving_request_count",
            "Predict requests by model, version, signature, API (grpc|rest) and status code",
            ["model", "version", "signature", "api", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "assoc_serving_request_latency_seconds",
            "Predict latency inside the server (resolve, run the signature, encode)",
            ["model", "version", "signature", "api", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.model_events = Counter(
            "assoc_serving_model_events",
            "Model version events (load, load_failed, unload)",
            ["model", "event"],
            registry=self.registry,
        )
        self.load_latency = Histogram(
            "assoc_serving_model_load_latency_seconds",
            "Time to load a version (warm-up included)",
            ["model"],
            buckets=LOAD_BUCKETS,
            registry=self.registry,
        )
        self.warmup = Histogram(
            "assoc_serving_model_warmup_seconds",
            "Time to replay a version's warm-up requests",
            ["model"],
            buckets=LOAD_BUCKETS,
            registry=self.registry,
        )
        self._children: dict[tuple, tuple] = {}  # label values -> (counter, histogram) children: one lookup

    @contextmanager
    def request(self, api: str, labels: dict):
        """Time one request; ``labels`` (model, version, signature, status) may be filled in by the block."""
        started = time.perf_counter()
        labels.setdefault("status", "OK")
        try:
            yield labels
        finally:
            key = (api, *(str(labels.get(k, "")) for k in ("model", "version", "signature", "status")))
            children = self._children.get(key)
            if children is None:
                values = dict(zip(("api", "model", "version", "signature", "status"), key))
                children = self._children[key] = (self.requests.labels(**values), self.latency.labels(**values))
            children[0].inc()
            children[1].observe(time.perf_counter() - started)

    def text(self) -> bytes:
        return generate_latest(self.registry)
