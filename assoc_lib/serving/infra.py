"""Infra validation of an export, as TFX's InfraValidator does: load it in a separate serving process and
send real gRPC requests before anything is pushed (docs/design.md §4, step 8)."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from assoc_lib.records import InfraResult, VersionState
from assoc_lib.serving import server
from assoc_lib.serving.client import AssocClient


def validate_export(export_dir: str, model_name: str, max_p99_ms: float = 2000.0, requests: int = 20) -> InfraResult:
    """Serve ``export_dir`` as version 1 from a separate ``assoc serve`` process, then check over gRPC:
    an AVAILABLE version, the contract's signatures, answer shapes and dtypes, and the p99 latency."""
    card = json.loads((Path(export_dir) / "model_card.json").read_text())
    with tempfile.TemporaryDirectory(prefix="assoc-infra-") as tmp:
        base = Path(tmp) / model_name
        shutil.copytree(export_dir, base / "1")
        try:
            proc, target = server.spawn(
                ["--model-name", model_name, "--model-base-path", str(base), "--rest_api_port", "0"],
                workdir=Path(tmp) / "serve",
            )
        except RuntimeError as exc:
            raise RuntimeError(f"infra validation: the serving process did not come up: {exc}") from exc
        try:
            latencies = []
            with AssocClient(target, model_name) as client:
                status = client.model_status()
                if not any(s["state"] == VersionState.AVAILABLE for s in status):
                    raise RuntimeError(f"infra validation: no AVAILABLE version: {status}")
                meta = client.metadata()
                missing = {"serving_default", "complete_basket", "related_items"} - set(meta["signatures"])
                if missing:
                    raise RuntimeError(f"infra validation: signatures missing: {sorted(missing)}")
                for _ in range(requests):
                    t0 = time.perf_counter()
                    ans = client.complete_basket([["__probe__"], []])
                    latencies.append((time.perf_counter() - t0) * 1000)
                    if (
                        len(ans.item_ids) != 2
                        or len(ans.item_ids[0]) != card["k"]
                        or len(ans.scores[0]) != card["k"]
                        or not isinstance(ans.scores[0][0], float)
                    ):
                        raise RuntimeError(
                            f"infra validation: bad answer shape {len(ans.item_ids)}x{len(ans.item_ids[0])}"
                        )
                related = client.related_items([ans.item_ids[0][0]])
                if len(related.item_ids[0]) != card["k"]:
                    raise RuntimeError("infra validation: related_items returned the wrong K")
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    p50, p99 = float(np.percentile(latencies, 50)), float(np.percentile(latencies, 99))
    if p99 > max_p99_ms:
        raise RuntimeError(f"infra validation: p99 latency {p99:.1f} ms > {max_p99_ms} ms")
    return InfraResult(p50_ms=p50, p99_ms=p99, signatures=sorted(meta["signatures"]))
