"""One function per DAG task (docs/design.md §4). Each takes the config and the logical date,
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
from assoc_lib.records import (
    Candidate,
    EvaluationResult,
    ExportResult,
    GateDecision,
    InfraResult,
    IngestResult,
    InsightsResult,
    PreprocessResult,
    PushResult,
    TrainResult,
    ValidationResult,
    VersionRecord,
)

log = logging.getLogger(__name__)


def run_dir(cfg: AssocConfig, ds: str) -> Path:
    return Path(cfg.paths.artifacts_dir) / "runs" / f"ds={contract.as_date(ds).isoformat()}"


def _summary(title: str, lines: dict) -> None:
    width = max((len(k) for k in lines), default=0)
    body = "\n".join(f"  {k.ljust(width)} : {v}" for k, v in lines.items())
    log.info("%s\n%s", title, body)


# --------------------------------------------------------------------------- validate
def validate_day(cfg: AssocConfig, ds: str) -> ValidationResult:
    """Validate the day's partition (and the catalogue). Raises ValidationFailed on critical failures."""
    from assoc_lib.data import validate

    part = contract.partition_dir(cfg.paths.orders_dir, ds)
    if not part.exists():
        quarantined = cfg.paths.quarantine_dir / part.name
        raise validate.ValidationFailed(
            f"no partition for ds={ds} at {part}"
            + (f" (it was quarantined: {quarantined})" if quarantined.exists() else "")
        )
    report = validate.validate_partition(part, cfg)
    catalog = validate.validate_catalog(cfg.paths.catalog_path) if cfg.paths.catalog_path.exists() else None
    _summary(
        f"validate ds={ds}: {'PASSED' if report.success else 'FAILED'}",
        {
            "rows": report.rows,
            "failed": [f.line() for f in report.failed] or "none",
            "warnings": [f.line() for f in report.warnings] or "none",
            "volume bounds": f"[{report.parameters.get('min_rows')}, {report.parameters.get('max_rows')}]",
            "catalog": "missing" if catalog is None else ("ok" if catalog.success else catalog.summary()),
            "report": report.report_dir,
        },
    )
    if not report.success:
        raise validate.ValidationFailed(report.summary())
    return ValidationResult(
        partition=str(part),
        rows=report.rows,
        report=str(report.report_dir),
        warnings=len(report.warnings),
        fingerprint=report.fingerprint,
    )


# --------------------------------------------------------------------------- preprocess
def preprocess_day(cfg: AssocConfig, ds: str) -> PreprocessResult:
    from assoc_lib.data import preprocess

    stats = preprocess.preprocess(cfg, ds)
    data_version = snapshot_data(cfg, ds)
    _summary(
        f"preprocess ds={ds}",
        {
            "data version": data_version or "DVC off",
            "partitions": f"{len(stats['partitions_used'])} used, skipped {stats['partitions_skipped'] or 'none'}",
            "rows": f"{stats['rows_in']} in -> {stats['rows_out']} out",
            "dropped": {k: v for k, v in stats["rows_dropped"].items() if v} or "none",
            "orders": stats["orders_out"],
            "vocabulary": stats["vocabulary_size"],
            "out": stats["out_dir"],
        },
    )
    return PreprocessResult(
        prep_dir=str(stats["out_dir"]),
        vocabulary_size=stats["vocabulary_size"],
        orders=stats["orders_out"],
        data_version=data_version,
    )


# --------------------------------------------------------------------------- train
def previous_search(cfg: AssocConfig, ds: str) -> dict | None:
    """The deep search trace of the most recent earlier run (up to ``deep_tune_reuse_days`` days before
    ``ds``) that has one, from its train summary; None when there is none. An unreadable summary is skipped
    with a warning (the run then searches: nothing is lost)."""
    from assoc_lib.train import SUMMARY_FILE

    day = contract.as_date(ds)
    for back in range(1, cfg.models.deep_tune_reuse_days + 1):
        path = run_dir(cfg, (day - dt.timedelta(days=back)).isoformat()) / "train" / SUMMARY_FILE
        if not path.exists():
            continue
        try:
            trace = json.loads(path.read_text()).get("hyperparameter_search")
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("ignoring the earlier train summary %s: %s", path, exc)
            continue
        if isinstance(trace, dict):
            return trace
    return None


def train_day(cfg: AssocConfig, ds: str, prep_dir: str) -> TrainResult:
    from assoc_lib.train import train_candidates

    out = run_dir(cfg, ds) / "train"
    if out.exists():
        shutil.rmtree(out)
    day = contract.as_date(ds).isoformat()
    summary = train_candidates(prep_dir, cfg, out, day=day, previous_search=previous_search(cfg, ds))
    epochs = summary["deep_history"]
    _summary(
        f"train ds={ds} ({summary['placement']})",
        {
            "train baskets": summary["n_train_baskets"],
            "items": summary["n_items"],
            **{
                f"epoch {e['epoch']}": f"loss {e['loss']:.4f}  val NDCG@10 {e['val_ndcg@10']:.4f}  "
                f"{e['examples_per_second']:.0f} ex/s"
                for e in epochs
            },
            "hyperparameter search": _search_line(summary.get("hyperparameter_search")),
            "candidates": ", ".join(f"{c['name']} ({c['train_seconds']:.1f}s)" for c in summary["candidates"]),
        },
    )
    return TrainResult(str(out), [Candidate.from_dict(c) for c in summary["candidates"]])


def _search_line(trace: dict | None) -> str:
    if not trace:
        return "none (search off, or no validation baskets)"
    if trace.get("reused"):
        return f"reused, {trace['reused']}"
    return f"{len(trace.get('trials', []))} trials in {trace.get('seconds', 0):.0f}s: {trace.get('reason', '')}"


# --------------------------------------------------------------------------- evaluate + gate
def evaluate_day(cfg: AssocConfig, ds: str, prep_dir: str, candidates: list[Candidate]) -> EvaluationResult:
    from assoc_lib import evaluate
    from assoc_lib.serving import push

    prod = push.production(cfg.paths.serving_root, cfg.serving.model_name)
    out = run_dir(cfg, ds) / "evaluation"
    candidates = [Candidate.coerce(c) for c in candidates]
    payload = evaluate.evaluate_candidates(prep_dir, [c.to_dict() for c in candidates], cfg, out, production=prod)
    best = max(payload["models"], key=lambda r: r.get("val_ndcg@10") or 0.0, default=None)
    _summary(
        f"evaluate ds={ds}",
        {
            "read": f"{prep_dir} ({len(candidates)} candidates)",
            "production": f"version {prod['version']}" if prod else "none",
            "test baskets": payload["n_eval_baskets"],
            "best on validation": f"{best['name']} ({best.get('protocol')}) val NDCG@10 {best['val_ndcg@10']:.4f}, "
            f"test {best['ndcg@10']:.4f}"
            if best
            else "none",
            "wrote": out / "comparison.md",
        },
    )
    return EvaluationResult(
        comparison=str(out / "comparison.json"),
        table=str(out / "comparison.md"),
        production_version=prod["version"] if prod else None,
        n_eval_baskets=payload["n_eval_baskets"],
    )


def gate_day(cfg: AssocConfig, ds: str, comparison_path: str) -> GateDecision:
    from assoc_lib import gate

    decision = gate.run_gate(json.loads(Path(comparison_path).read_text()), cfg, run_dir(cfg, ds) / "gate")
    return GateDecision(
        blessed=decision["blessed"],
        winner=decision["winner"],
        winner_path=decision.get("winner_path"),
        reasons=decision["reasons"],
        deep_over_classical=decision["verdict"].get("deep_over_classical"),
        blessing=str(run_dir(cfg, ds) / "gate" / gate.BLESSING_FILE),
    )


# --------------------------------------------------------------------------- export + push
def export_day(
    cfg: AssocConfig, ds: str, winner_path: str, blessing_path: str, data_version: str | None = None
) -> ExportResult:
    from assoc_lib.data import preprocess
    from assoc_lib.models.servable import ServableModel
    from assoc_lib.serving.export import export_saved_model
    from assoc_lib.train import SUMMARY_FILE

    blessing = json.loads(Path(blessing_path).read_text())
    if not blessing.get("blessed"):
        raise ValueError(f"refusing to export: {blessing_path} is not blessed ({blessing.get('reasons')})")
    model = ServableModel.load(winner_path)
    comparison = json.loads((run_dir(cfg, ds) / "evaluation" / "comparison.json").read_text())
    prep_dir = json.loads((run_dir(cfg, ds) / "train" / SUMMARY_FILE).read_text())["prep_dir"]
    metrics = next((r for r in comparison["models"] if r["name"] == model.name), {})
    card = {
        "ds": ds,
        "data_version": data_version,
        # the slice of that data version the model was trained and evaluated on (the split the day's train read)
        "training_data": preprocess.training_data(json.loads((Path(prep_dir) / preprocess.STATS_FILE).read_text())),
        "metrics_test": {k: metrics.get(k) for k in ("ndcg@10", "recall@10", "mrr", "coverage@10")},
        "val_ndcg@10": metrics.get("val_ndcg@10"),
        "gate": {k: blessing.get(k) for k in ("blessed", "reasons", "verdict", "winner")},
    }
    out = export_saved_model(model, run_dir(cfg, ds) / "export", card, cfg.serving.model_name, cfg.serving.k)
    parts = card["training_data"]["partitions"]
    _summary(
        f"export ds={ds}",
        {
            "model": f"{model.name} ({model.kind})",
            "items": model.n_items,
            "trained on": f"partitions {parts['first']}..{parts['last']} ({parts['count']}) of data "
            f"{data_version or '(DVC off)'}",
            "path": out,
        },
    )
    return ExportResult(export_dir=str(out), model=model.name)


def push_day(cfg: AssocConfig, ds: str, export_dir: str, data_version: str | None = None) -> PushResult:
    from assoc_lib.serving import push

    result = push.push(
        export_dir,
        cfg.paths.serving_root,
        cfg.serving.model_name,
        cfg.serving.keep_versions,
        idempotency_key=f"ds={ds};data={data_version}",
    )
    _summary(
        f"push ds={ds}",
        {"version": result["version"], "pushed": result["pushed"], "path": result["path"], "labels": result["labels"]},
    )
    return PushResult(version=result["version"], path=result["path"], pushed=result["pushed"], labels=result["labels"])


# --------------------------------------------------------------------------- ingest
def ingest_day(cfg: AssocConfig, ds: str) -> IngestResult:
    """Land the day: from the landing folder when one is configured, else check it is already in raw/."""
    import pandas as pd

    target = contract.partition_dir(cfg.paths.orders_dir, ds)
    source = Path(cfg.paths.landing_dir) / target.name if cfg.paths.landing_dir else None
    if source is not None and source.exists():
        frames = [contract.read_partition_raw(f) for f in sorted(source.glob("*.parquet"))]
        frames += [
            pd.read_csv(f, dtype={"order_id": "string", "user_id": "string", "item_id": "string", "store_id": "string"})
            for f in sorted(source.glob("*.csv"))
        ]
        if not frames:
            raise contract.ContractError(f"landing folder {source} holds no .parquet or .csv file")
        df = pd.concat(frames, ignore_index=True)
        if "user_id" in df.columns:
            df["user_id"] = contract.pseudonymise(df["user_id"], contract.pseudonym_key(cfg.privacy.pseudonym_key))
        contract.write_partition(contract.conform_orders(df), cfg.paths.orders_dir, ds)
        how = f"landed from {source} (user ids pseudonymised)"
    elif target.exists():
        how = "already in raw/"
    else:
        raise contract.ContractError(f"no data for ds={ds}: neither {target} nor a landing folder")
    import pyarrow.parquet as pq

    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in target.glob("*.parquet"))
    _summary(f"ingest ds={ds}", {"partition": target, "how": how, "rows": rows})
    return IngestResult(partition=str(target), rows=rows, how=how)


# --------------------------------------------------------------------------- data version
def snapshot_data(cfg: AssocConfig, ds: str) -> str | None:
    """Store the data folder in DVC (cache + remote); its md5 names the data every model of the day is
    trained on. The pointer goes to the run's folder (``dvc/data.dvc``), not into the checkout."""
    from assoc_lib.data import versioning

    if not cfg.paths.dvc_repo:
        return None
    repo = Path(cfg.paths.dvc_repo).resolve()
    target = Path(cfg.paths.data_dir).resolve().relative_to(repo)
    versioning.ensure_repo(repo)
    return versioning.record(repo, str(target), run_dir(cfg, ds) / "dvc" / "data.dvc")["md5"]


# --------------------------------------------------------------------------- infra validation
def infra_validate_day(cfg: AssocConfig, ds: str, export_dir: str) -> InfraResult:
    """Serve the export from a separate ``assoc serve`` process and check real gRPC answers (serving.infra)."""
    from assoc_lib.serving import infra

    result = infra.validate_export(
        export_dir, cfg.serving.model_name, max_p99_ms=cfg.serving.infra_max_p99_ms, requests=cfg.serving.infra_requests
    )
    _summary(
        f"infra_validate ds={ds}: OK",
        {
            "read": export_dir,
            "signatures": result.signatures,
            "latency ms": f"p50 {result.p50_ms:.1f}, p99 {result.p99_ms:.1f}",
            "requests": cfg.serving.infra_requests,
        },
    )
    return result


# --------------------------------------------------------------------------- version
def version_day(cfg: AssocConfig, ds: str, pushed: PushResult, data_version: str | None) -> VersionRecord:
    """Record the pushed model with DVC next to the data version it was trained on."""
    from assoc_lib.data import versioning

    pushed = PushResult.coerce(pushed)
    record = VersionRecord(
        ds=ds, data_version=data_version, model_version=pushed.version, model_path=pushed.path, pushed=pushed.pushed
    )
    if cfg.paths.dvc_repo and pushed.path:
        repo = Path(cfg.paths.dvc_repo).resolve()
        record.git_commit = versioning.git_commit_hash(repo)
        model_path = Path(pushed.path).resolve()
        if repo in model_path.parents:
            pointer = run_dir(cfg, ds) / "dvc" / "model.dvc"
            record.model_md5 = versioning.record(repo, str(model_path.relative_to(repo)), pointer)["md5"]
            record.model_pointer = str(pointer)
        data_pointer = run_dir(cfg, ds) / "dvc" / "data.dvc"
        record.data_pointer = str(data_pointer) if data_pointer.exists() else None
    out = run_dir(cfg, ds) / "versions.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record.to_dict(), indent=2) + "\n")
    _summary(f"version ds={ds}", record.to_dict())
    return record


# --------------------------------------------------------------------------- insights
def insights_day(cfg: AssocConfig, ds: str, prep_dir: str, candidates: list[Candidate]) -> InsightsResult:
    """Frequently-bought-together tables, category prediction and the HTML report for the day."""
    import pandas as pd
    import pyarrow.parquet as pq

    from assoc_lib.data.preprocess import load_split, split_baskets
    from assoc_lib.data.validate import RESULT_FILE
    from assoc_lib.insights import report, tables
    from assoc_lib.models.network import item_embeddings
    from assoc_lib.models.servable import ServableModel

    baskets, vocab = load_split(prep_dir)
    train = split_baskets(baskets)["train"]
    out = run_dir(cfg, ds) / "insights"
    candidates = [Candidate.coerce(c) for c in candidates]
    deep_entry = next((c for c in candidates if c.name == "deep"), None)
    deep = ServableModel.load(deep_entry.path) if deep_entry else None
    ic = cfg.insights
    fbt = tables.frequently_bought_together(
        train, vocab, deep, cfg.paths.catalog_path, out, ic.pair_min_support, ic.multi_min_support, ic.min_confidence
    )
    categories = (
        tables.category_prediction(
            train, vocab, item_embeddings(deep.deep), cfg.paths.catalog_path, out, k=ic.category_k
        )
        if deep is not None
        else None
    )
    daily = []
    for day, part in contract.list_partitions(cfg.paths.orders_dir):
        if str(day) > ds or (contract.as_date(ds) - day).days >= cfg.preprocess.window_days:
            continue
        record = cfg.paths.reports_dir / "validation" / f"ds={day}" / RESULT_FILE
        params = json.loads(record.read_text()).get("parameters", {}) if record.exists() else {}
        rows = sum(pq.ParquetFile(f).metadata.num_rows for f in part.glob("*.parquet"))
        daily.append(
            {"ds": str(day), "rows": rows, "min_rows": params.get("min_rows"), "max_rows": params.get("max_rows")}
        )
    comparison_path = run_dir(cfg, ds) / "evaluation" / "comparison.json"
    comparison = json.loads(comparison_path.read_text()) if comparison_path.exists() else None
    daily_frame = pd.DataFrame(daily, columns=["ds", "rows", "min_rows", "max_rows"])
    rep = report.build_report(
        out / "report.html",
        ds,
        baskets,
        vocab,
        daily_frame,
        tables.load_catalog(cfg.paths.catalog_path),
        comparison,
        report.past_runs(Path(cfg.paths.artifacts_dir) / "runs"),
        categories,
    )
    _summary(
        f"insights ds={ds}",
        {
            "pair rules": fbt["pairs"]["rows"],
            "multi-item rules": fbt["multi_item"]["rows"],
            "related-item rows": fbt["deep_related"]["rows"],
            **{
                f"category accuracy ({lvl})": ", ".join(f"{k} {v:.3f}" for k, v in r["accuracy"].items())
                for lvl, r in (categories or {}).get("levels", {}).items()
            },
            "report": f"file://{Path(rep['path']).resolve()}",
        },
    )
    return InsightsResult(
        report=str(rep["path"]),
        fbt={k: str(v["csv"]) for k, v in fbt.items()},
        category_accuracy={lvl: r["accuracy"] for lvl, r in (categories or {}).get("levels", {}).items()},
    )
