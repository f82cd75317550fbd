"""Versioned, atomic pushes into a TensorFlow Serving model base path, and rollback.

Layout: ``<serving_root>/<model_name>/<version>/`` (increasing integers) plus
``<serving_root>/models.config`` (ModelServerConfig text proto) naming the
served versions and the labels ``stable`` (and optionally ``canary``).
A version folder appears by one ``rename`` of a fully written temporary folder,
so a reader (TF Serving, ``assoc serve``) never sees half a model.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from assoc_lib.fsutil import write_text_atomic

log = logging.getLogger(__name__)

MODELS_CONFIG = "models.config"
STATE_FILE = "serving_state.json"  # our record of labels (models.config is derived from it)


class PushError(RuntimeError):
    pass


def model_base(serving_root: str | os.PathLike, model_name: str) -> Path:
    return Path(serving_root) / model_name


def versions(serving_root: str | os.PathLike, model_name: str) -> list[int]:
    base = model_base(serving_root, model_name)
    if not base.exists():
        return []
    return sorted(int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit())


def _state_path(serving_root, model_name) -> Path:
    return model_base(serving_root, model_name) / STATE_FILE


def read_state(serving_root: str | os.PathLike, model_name: str) -> dict:
    path = _state_path(serving_root, model_name)
    return json.loads(path.read_text()) if path.exists() else {"labels": {}}


def render_model_config(
    serving_root: str | os.PathLike,
    model_name: str,
    served: list[int],
    labels: dict[str, int],
    base_path: str | None = None,
) -> str:
    """ModelServerConfig text proto for TF Serving's --model_config_file."""
    base_path = base_path or str(model_base(serving_root, model_name).resolve())
    lines = [
        "model_config_list {",
        "  config {",
        f'    name: "{model_name}"',
        f'    base_path: "{base_path}"',
        '    model_platform: "tensorflow"',
        "    model_version_policy {",
        "      specific {",
    ]
    lines += [f"        versions: {v}" for v in served]
    lines += ["      }", "    }"]
    for label, version in sorted(labels.items()):
        lines += ["    version_labels {", f'      key: "{label}"', f"      value: {version}", "    }"]
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def write_state(
    serving_root: str | os.PathLike, model_name: str, labels: dict[str, int], base_path: str | None = None
) -> None:
    """Persist labels and rewrite models.config: serve the labelled versions (stable first)."""
    base = model_base(serving_root, model_name)
    base.mkdir(parents=True, exist_ok=True)
    have = set(versions(serving_root, model_name))
    for label, version in labels.items():
        if version not in have:
            raise PushError(f"label {label} -> version {version}, which is not under {base}")
    served = sorted(set(labels.values()))
    write_text_atomic(_state_path(serving_root, model_name), json.dumps({"labels": labels}, indent=2))
    write_text_atomic(
        Path(serving_root) / MODELS_CONFIG, render_model_config(serving_root, model_name, served, labels, base_path)
    )


def production(serving_root: str | os.PathLike, model_name: str) -> dict | None:
    """The version now labelled ``stable`` (or the newest one), with its path; None when nothing is served."""
    labels = read_state(serving_root, model_name).get("labels", {})
    have = versions(serving_root, model_name)
    if not have:
        return None
    version = labels.get("stable", have[-1])
    path = model_base(serving_root, model_name) / str(version)
    card = path / "model_card.json"
    return {"version": version, "path": str(path), "model_card": json.loads(card.read_text()) if card.exists() else {}}


def push(
    export_dir: str | os.PathLike,
    serving_root: str | os.PathLike,
    model_name: str = "assoc",
    keep: int = 5,
    label: str = "stable",
    idempotency_key: str | None = None,
) -> dict:
    """Copy ``export_dir`` to the next version atomically, label it, prune old versions.

    ``idempotency_key`` (e.g. the run's date and data hash): a version whose model card
    carries the same key is reused instead of pushed again (and gets ``label`` back if it moved since),
    so re-running a day ends in the same state as its first run.
    """
    export_dir = Path(export_dir)
    if not (export_dir / "saved_model.pb").exists():
        raise PushError(f"{export_dir} is not a SavedModel (no saved_model.pb)")
    base = model_base(serving_root, model_name)
    base.mkdir(parents=True, exist_ok=True)
    state = read_state(serving_root, model_name)
    if idempotency_key:
        for v in reversed(versions(serving_root, model_name)):
            card = base / str(v) / "model_card.json"
            if card.exists() and json.loads(card.read_text()).get("idempotency_key") == idempotency_key:
                # a re-run of the day ends where its first run ended: that version, labelled
                labels = dict(state.get("labels", {}))
                moved = labels.get(label) != v
                if moved:
                    labels[label] = v
                    write_state(serving_root, model_name, labels)
                log.info(
                    "push: version %d already holds %s; nothing pushed%s",
                    v,
                    idempotency_key,
                    f"; label {label} moved back to it" if moved else "",
                )
                return {"version": v, "path": str(base / str(v)), "pushed": False, "labels": labels}
    existing = versions(serving_root, model_name)
    version = (existing[-1] + 1) if existing else 1
    tmp = Path(tempfile.mkdtemp(prefix=f".push-{version}-", dir=base))
    try:
        shutil.copytree(export_dir, tmp / "v", dirs_exist_ok=False)
        if idempotency_key:
            card_path = tmp / "v" / "model_card.json"
            card = json.loads(card_path.read_text()) if card_path.exists() else {}
            card["idempotency_key"] = idempotency_key
            card["version"] = version
            card_path.write_text(json.dumps(card, indent=2, default=str) + "\n")
        os.rename(tmp / "v", base / str(version))  # atomic on one filesystem; fails if it exists
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    labels = dict(state.get("labels", {}))
    labels[label] = version
    write_state(serving_root, model_name, labels)
    pruned = prune(serving_root, model_name, keep)
    log.info(
        "pushed %s as %s version %d (%s); labels %s; pruned %s",
        export_dir,
        model_name,
        version,
        base / str(version),
        labels,
        pruned or "none",
    )
    return {"version": version, "path": str(base / str(version)), "pushed": True, "labels": labels, "pruned": pruned}


def prune(serving_root: str | os.PathLike, model_name: str, keep: int) -> list[int]:
    """Delete all but the newest ``keep`` versions, never a labelled one."""
    labels = read_state(serving_root, model_name).get("labels", {})
    have = versions(serving_root, model_name)
    protected = set(labels.values()) | set(have[-keep:])
    removed = [v for v in have if v not in protected]
    for v in removed:
        shutil.rmtree(model_base(serving_root, model_name) / str(v))
    return removed


def rollback(serving_root: str | os.PathLike, model_name: str, to_version: int) -> dict:
    """Move ``stable`` to ``to_version`` (which must still exist); the server follows models.config."""
    if to_version not in versions(serving_root, model_name):
        raise PushError(
            f"version {to_version} of {model_name} is not under {model_base(serving_root, model_name)}; "
            f"available: {versions(serving_root, model_name)}"
        )
    labels = dict(read_state(serving_root, model_name).get("labels", {}))
    previous = labels.get("stable")
    labels["stable"] = to_version
    write_state(serving_root, model_name, labels)
    log.info("rollback: %s stable %s -> %d", model_name, previous, to_version)
    return {"model": model_name, "stable": to_version, "previous": previous, "labels": labels}
