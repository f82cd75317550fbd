"""One function per DAG task (design.md §4). Each takes the config and the logical date,
reads and writes files under ``<artifacts>/runs/ds=YYYY-MM-DD/``, logs a short summary
and returns a small dict (paths, numbers) for XCom. The CLI calls the same functions.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
from pathlib import Path

from assoc_lib.config import AssocConfig
from assoc_lib.data import contract

log = logging.getLogger(__name__)


def run_dir(cfg: AssocConfig, ds: str) -> Path:
    return Path(cfg.paths.artifacts_dir) / "runs" / f"ds={contract._as_date(ds).isoformat()}"


def _summary(title: str, lines: dict) -> None:
    width = max((len(k) for k in lines), default=0)
    body = "\n".join(f"  {k.ljust(width)} : {v}" for k, v in lines.items())
    log.info("%s\n%s", title, body)


# --------------------------------------------------------------------------- validate
def validate_day(cfg: AssocConfig, ds: str) -> dict:
    """Validate the day's partition (and the catalogue). Raises ValidationFailed on critical failures."""
    from assoc_lib import validate

    part = contract.partition_dir(cfg.paths.orders_dir, ds)
    if not part.exists():
        quarantined = cfg.paths.quarantine_dir / part.name
        raise validate.ValidationFailed(
            f"no partition for ds={ds} at {part}" + (f" (it was quarantined: {quarantined})" if quarantined.exists() else ""))
    report = validate.validate_partition(part, cfg)
    catalog = validate.validate_catalog(cfg.paths.catalog_path) if cfg.paths.catalog_path.exists() else None
    _summary(f"validate ds={ds}: {'PASSED' if report.success else 'FAILED'}", {
        "rows": report.rows, "failed": [f.line() for f in report.failed] or "none",
        "warnings": [f.line() for f in report.warnings] or "none",
        "volume bounds": f"[{report.parameters.get('min_rows')}, {report.parameters.get('max_rows')}]",
        "catalog": "missing" if catalog is None else ("ok" if catalog.success else catalog.summary()),
        "report": report.report_dir})
    if not report.success:
        raise validate.ValidationFailed(report.summary())
    return {"partition": str(part), "rows": report.rows, "report": report.report_dir,
            "warnings": len(report.warnings), "fingerprint": report.fingerprint}


# --------------------------------------------------------------------------- preprocess
def preprocess_day(cfg: AssocConfig, ds: str) -> dict:
    from assoc_lib import preprocess

    stats = preprocess.preprocess(cfg, ds)
    _summary(f"preprocess ds={ds}", {
        "partitions": f"{len(stats['partitions_used'])} used, skipped {stats['partitions_skipped'] or 'none'}",
        "rows": f"{stats['rows_in']} in -> {stats['rows_out']} out",
        "dropped": {k: v for k, v in stats["rows_dropped"].items() if v} or "none",
        "orders": stats["orders_out"], "vocabulary": stats["vocabulary_size"], "out": stats["out_dir"]})
    return {"prep_dir": stats["out_dir"], "vocabulary_size": stats["vocabulary_size"],
            "orders": stats["orders_out"]}


# --------------------------------------------------------------------------- train
def train_day(cfg: AssocConfig, ds: str, prep_dir: str) -> dict:
    from assoc_lib.train import train_candidates

    out = run_dir(cfg, ds) / "train"
    if out.exists():
        shutil.rmtree(out)
    summary = train_candidates(prep_dir, cfg, out)
    epochs = summary["deep_history"]
    _summary(f"train ds={ds} ({summary['placement']})", {
        "train baskets": summary["n_train_baskets"], "items": summary["n_items"],
        **{f"epoch {e['epoch']}": f"loss {e['loss']:.4f}  val NDCG@10 {e['val_ndcg@10']:.4f}  "
                                  f"{e['examples_per_second']:.0f} ex/s" for e in epochs},
        "candidates": ", ".join(f"{c['name']} ({c['train_seconds']:.1f}s)" for c in summary["candidates"])})
    return {"train_dir": str(out), "candidates": [{k: c[k] for k in ("name", "kind", "path", "train_seconds")}
                                                   for c in summary["candidates"]]}


# --------------------------------------------------------------------------- evaluate + gate
def evaluate_day(cfg: AssocConfig, ds: str, prep_dir: str, candidates: list[dict]) -> dict:
    from assoc_lib import evaluate, push

    prod = push.production(cfg.paths.serving_root, cfg.serving.model_name)
    out = run_dir(cfg, ds) / "evaluation"
    payload = evaluate.evaluate_candidates(prep_dir, candidates, cfg, out, production=prod)
    return {"comparison": str(out / "comparison.json"), "table": str(out / "comparison.md"),
            "production_version": prod and prod["version"], "n_eval_baskets": payload["n_eval_baskets"]}


def gate_day(cfg: AssocConfig, ds: str, comparison_path: str) -> dict:
    from assoc_lib import gate

    decision = gate.run_gate(json.loads(Path(comparison_path).read_text()), cfg, run_dir(cfg, ds) / "gate")
    return {"blessed": decision["blessed"], "winner": decision["winner"], "winner_path": decision.get("winner_path"),
            "reasons": decision["reasons"], "deep_over_classical": decision["verdict"].get("deep_over_classical"),
            "blessing": str(run_dir(cfg, ds) / "gate" / gate.BLESSING_FILE)}


# --------------------------------------------------------------------------- export + push
def export_day(cfg: AssocConfig, ds: str, winner_path: str, blessing_path: str, data_version: str | None = None) -> dict:
    from assoc_lib.export import ServableModel, export_saved_model

    blessing = json.loads(Path(blessing_path).read_text())
    if not blessing.get("blessed"):
        raise ValueError(f"refusing to export: {blessing_path} is not blessed ({blessing.get('reasons')})")
    model = ServableModel.load(winner_path)
    comparison = json.loads((run_dir(cfg, ds) / "evaluation" / "comparison.json").read_text())
    metrics = next((r for r in comparison["models"] if r["name"] == model.name), {})
    card = {"ds": ds, "data_version": data_version, "metrics_test": {k: metrics.get(k) for k in
                                                                      ("ndcg@10", "recall@10", "mrr", "coverage@10")},
            "val_ndcg@10": metrics.get("val_ndcg@10"), "gate": {k: blessing.get(k) for k in
                                                               ("blessed", "reasons", "verdict", "winner")}}
    out = export_saved_model(model, run_dir(cfg, ds) / "export", card, cfg.serving.model_name, cfg.serving.k)
    _summary(f"export ds={ds}", {"model": f"{model.name} ({model.kind})", "items": model.n_items, "path": out})
    return {"export_dir": str(out), "model": model.name}


def push_day(cfg: AssocConfig, ds: str, export_dir: str, data_version: str | None = None) -> dict:
    from assoc_lib import push

    result = push.push(export_dir, cfg.paths.serving_root, cfg.serving.model_name, cfg.serving.keep_versions,
                       idempotency_key=f"ds={ds};data={data_version}")
    _summary(f"push ds={ds}", {"version": result["version"], "pushed": result["pushed"], "path": result["path"],
                               "labels": result["labels"]})
    return result
