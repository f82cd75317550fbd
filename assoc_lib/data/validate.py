"""Validate a daily partition with the Great Expectations suites in ``expectations/``.

A failed critical expectation quarantines the partition (moved under
``data/quarantine/orders/``, nothing deleted) so preprocessing never sees it;
warnings are logged. Every run writes ``result.json`` and GE's HTML Data Docs
under ``<reports>/validation/ds=YYYY-MM-DD/``; a pass also records the
partition's fingerprint, which preprocessing checks.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import os
import shutil
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from assoc_lib.config import AssocConfig, load_config
from assoc_lib.data import contract

log = logging.getLogger(__name__)

# The suites live in the repository's expectations/; ASSOC_EXPECTATIONS_DIR points elsewhere (e.g. in images).
EXPECTATIONS_DIR = Path(
    os.environ.get("ASSOC_EXPECTATIONS_DIR") or Path(__file__).resolve().parents[2] / "expectations"
)
RESULT_FILE = "result.json"
QUARANTINE_MARKER = "_QUARANTINE.json"
DERIVED_COLUMNS = ("item_in_catalog",)  # added by _ge_frame, not part of the partition


class ValidationFailed(RuntimeError):
    """A partition failed critical expectations; the message is the human summary."""


@dataclass
class FailedExpectation:
    expectation: str
    column: str | None
    severity: str
    observed: Any

    def line(self) -> str:
        where = f"({self.column})" if self.column else ""
        return f"{self.severity.upper():8s} {self.expectation}{where}: observed {self.observed}"


@dataclass
class ValidationReport:
    partition: str
    ds: str
    success: bool
    rows: int | None
    failed: list[FailedExpectation] = field(default_factory=list)
    warnings: list[FailedExpectation] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    fingerprint: str | None = None
    report_dir: str | None = None
    data_docs: str | None = None
    quarantined_to: str | None = None
    seconds: float = 0.0

    def summary(self) -> str:
        head = (
            f"validation {'PASSED' if self.success else 'FAILED'} for ds={self.ds} "
            f"({self.rows if self.rows is not None else '?'} rows, {self.seconds:.1f}s)"
        )
        lines = [head] + ["  " + f.line() for f in self.failed + self.warnings]
        if self.quarantined_to:
            lines.append(f"  partition quarantined to {self.quarantined_to}")
        if self.report_dir:
            lines.append(
                f"  report: {self.report_dir}/{RESULT_FILE}"
                + (f"  data docs: {self.data_docs}" if self.data_docs else "")
            )
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self), default=str))


def load_suite(name: str, expectations_dir: str | os.PathLike | None = None) -> dict:
    path = Path(expectations_dir or EXPECTATIONS_DIR) / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise contract.ContractError(f"expectation suite {path} not found") from exc


def fingerprint(partition: str | os.PathLike) -> str:
    """sha256 over the partition's parquet files (names and bytes)."""
    h = hashlib.sha256()
    for f in sorted(Path(partition).glob("*.parquet")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _ge_frame(df: pd.DataFrame, catalog_ids: set[str] | None) -> pd.DataFrame:
    """The frame GE sees: see the suite's meta.description for why dtypes are shown this way."""
    out = df.copy()
    for col in out.columns:
        if isinstance(out[col].dtype, pd.StringDtype):
            out[col] = out[col].astype(object).where(out[col].notna(), None)
    if "ts" in out.columns:
        tz = getattr(out["ts"].dtype, "tz", None)
        if tz is not None and str(tz) == "UTC":
            out["ts"] = out["ts"].dt.tz_localize(None)
        else:
            out["ts"] = out["ts"].astype(object)
    if "item_id" in out.columns:
        known = out["item_id"].isin(catalog_ids) if catalog_ids else pd.Series(False, index=out.index)
        out["item_in_catalog"] = known.astype(bool)
    return out


def volume_bounds(orders_dir: Path, ds: dt.date, cfg: AssocConfig) -> dict[str, Any]:
    """Row-count bounds from the median of the recent days' partitions before ``ds``."""
    vc = cfg.validation
    counts = []
    for day, path in contract.list_partitions(orders_dir):
        if ds - dt.timedelta(days=vc.history_days) <= day < ds:
            try:
                counts.append(sum(pq.ParquetFile(f).metadata.num_rows for f in path.glob("*.parquet")))
            except Exception:  # an unreadable neighbour is that day's problem, not ours
                continue
    if len(counts) < vc.min_history_partitions:
        return {"min_rows": 1, "max_rows": None, "history_median": None, "history_days": len(counts)}
    median = statistics.median(counts)
    return {
        "min_rows": max(1, math.ceil(median * vc.min_row_ratio)),
        "max_rows": max(1, math.floor(median * vc.max_row_ratio)),
        "history_median": median,
        "history_days": len(counts),
    }


def quiet_great_expectations() -> None:
    """GE logs at INFO while it imports (a "Skipping registering function ..." line per public-API
    function, "Multiple declarations of metric ...") and while it validates ("Created temporary directory
    ... for ephemeral docs site"): none of it is about our data. Its warnings and errors stay.
    Call it before the first ``import great_expectations`` (the parent logger) and after it (GE sets some
    of its modules' loggers to INFO explicitly when they are imported)."""
    for name in ["great_expectations", *logging.root.manager.loggerDict]:
        if name == "great_expectations" or name.startswith("great_expectations."):
            logger = logging.getLogger(name)
            if logger.level < logging.WARNING and (logger.level != logging.NOTSET or name == "great_expectations"):
                logger.setLevel(logging.WARNING)


def _run_suite(frame: pd.DataFrame, suite_spec: dict, params: dict, docs_dir: Path | None):
    quiet_great_expectations()
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction
    from great_expectations.data_context.types.base import ProgressBarsConfig

    quiet_great_expectations()

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    actions = []
    if docs_dir is not None:
        context.add_data_docs_site(
            "assoc",
            {
                "class_name": "SiteBuilder",
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(Path(docs_dir).resolve()),
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
        actions.append(UpdateDataDocsAction(name="data_docs", site_names=["assoc"]))
    suite = context.suites.add(gx.ExpectationSuite(**suite_spec))
    batch_def = (
        context.data_sources.add_pandas(suite_spec["name"])
        .add_dataframe_asset("partition")
        .add_batch_definition_whole_dataframe("whole")
    )
    vdef = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{suite_spec['name']}_partition", data=batch_def, suite=suite)
    )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=f"{suite_spec['name']}_checkpoint",
            validation_definitions=[vdef],
            actions=actions,
            result_format="SUMMARY",
        )
    )
    result = checkpoint.run(batch_parameters={"dataframe": frame}, expectation_parameters=params)
    return next(iter(result.run_results.values()))


def _observed(res, original: pd.DataFrame) -> Any:
    cfg, r = res.expectation_config, res.result or {}
    col = cfg.kwargs.get("column")
    if col and col not in original.columns and col not in DERIVED_COLUMNS:
        return "column missing"
    if cfg.type == "expect_table_columns_to_match_set":
        missing = ((r.get("details") or {}).get("mismatched") or {}).get("missing")
        if missing:
            return f"missing columns {missing}"
    if res.exception_info and res.exception_info.get("raised_exception"):
        return f"error: {res.exception_info.get('exception_message')}"
    if cfg.type == "expect_column_values_to_be_in_type_list" and col in original.columns:
        return f"dtype {original[col].dtype}"
    if "observed_value" in r:
        return r["observed_value"]
    if "unexpected_count" in r:
        sample = r.get("partial_unexpected_list") or []
        return f"{r['unexpected_count']} unexpected ({r.get('unexpected_percent', 0):.2f}%)" + (
            f", e.g. {sample[:3]}" if sample else ""
        )
    return r or "n/a"


def _report_dir(cfg: AssocConfig, ds: str) -> Path:
    return cfg.paths.reports_dir / "validation" / f"ds={ds}"


def quarantine(partition: Path, cfg: AssocConfig, report: ValidationReport) -> Path:
    """Move a failed partition out of the orders tree; keep every byte and say why beside it."""
    target = cfg.paths.quarantine_dir / partition.name
    if target.exists():
        target = target.with_name(f"{partition.name}.{int(time.time())}")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(partition), str(target))
    report.quarantined_to = str(target)
    (target / QUARANTINE_MARKER).write_text(json.dumps(report.to_dict(), indent=2))
    return target


def validate_partition(
    partition: str | os.PathLike,
    cfg: AssocConfig | None = None,
    catalog_path: str | os.PathLike | None = None,
    move_on_failure: bool = True,
    expectations_dir: str | os.PathLike | None = None,
) -> ValidationReport:
    """Validate one ``ds=YYYY-MM-DD`` partition against the orders suite."""
    cfg = cfg or load_config()
    started = time.perf_counter()
    partition = Path(partition)
    ds = contract.partition_date(partition)
    report = ValidationReport(partition=str(partition), ds=ds.isoformat(), success=False, rows=None)
    report_dir = _report_dir(cfg, report.ds)
    shutil.rmtree(report_dir, ignore_errors=True)
    report_dir.mkdir(parents=True, exist_ok=True)
    report.report_dir = str(report_dir)
    try:
        df = contract.read_partition_raw(partition)
    except contract.ContractError as exc:
        report.failed.append(FailedExpectation("readable_parquet_partition", None, "critical", str(exc)))
        df = None
    if df is not None:
        report.rows = len(df)
        catalog_path = Path(catalog_path) if catalog_path else partition.parent.parent / "catalog.parquet"
        catalog_ids: set[str] | None = None
        if catalog_path.exists():
            catalog_ids = set(pq.read_table(catalog_path, columns=["item_id"]).column(0).to_pylist())
        else:
            log.warning("no catalogue at %s: every item counts as unknown", catalog_path)
        day_start = pd.Timestamp(ds)
        params = {
            **volume_bounds(partition.parent, ds, cfg),
            "day_start": day_start,
            "day_last_us": day_start + pd.Timedelta(days=1) - pd.Timedelta(microseconds=1),
        }
        report.parameters = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in params.items()}
        suite = load_suite("orders", expectations_dir)
        run = _run_suite(_ge_frame(df, catalog_ids), suite, params, report_dir / "data_docs")
        for res in run.results:
            if res.success:
                continue
            cfg_ = res.expectation_config
            failed = FailedExpectation(
                cfg_.type, cfg_.kwargs.get("column"), str(cfg_.severity.value), _observed(res, df)
            )
            (report.warnings if cfg_.severity.value != "critical" else report.failed).append(failed)
        (report_dir / "ge_result.json").write_text(json.dumps(run.to_json_dict(), indent=2, default=str))
        index = report_dir / "data_docs" / "index.html"
        report.data_docs = str(index) if index.exists() else None
    report.success = not report.failed
    report.seconds = time.perf_counter() - started
    if report.success:
        report.fingerprint = fingerprint(partition)
    elif move_on_failure and partition.exists():
        quarantine(partition, cfg, report)
    (report_dir / RESULT_FILE).write_text(json.dumps(report.to_dict(), indent=2))
    (log.info if report.success else log.error)("%s", report.summary())
    return report


def validate_catalog(
    catalog_path: str | os.PathLike, expectations_dir: str | os.PathLike | None = None
) -> ValidationReport:
    catalog_path = Path(catalog_path)
    started = time.perf_counter()
    report = ValidationReport(partition=str(catalog_path), ds="catalog", success=False, rows=None)
    try:
        df = contract.read_partition_raw(catalog_path)
    except contract.ContractError as exc:
        report.failed.append(FailedExpectation("readable_parquet_catalog", None, "critical", str(exc)))
    else:
        report.rows = len(df)
        run = _run_suite(
            _ge_frame(df, None).drop(columns=["item_in_catalog"]), load_suite("catalog", expectations_dir), {}, None
        )
        for res in run.results:
            if not res.success:
                c = res.expectation_config
                f = FailedExpectation(c.type, c.kwargs.get("column"), str(c.severity.value), _observed(res, df))
                (report.warnings if c.severity.value != "critical" else report.failed).append(f)
    report.success = not report.failed
    report.seconds = time.perf_counter() - started
    return report


def is_validated(partition: str | os.PathLike, cfg: AssocConfig) -> tuple[bool, str]:
    """Whether ``partition`` passed validation as it is now (fingerprint unchanged)."""
    partition = Path(partition)
    ds = contract.partition_date(partition).isoformat()
    record = _report_dir(cfg, ds) / RESULT_FILE
    if (partition / QUARANTINE_MARKER).exists() or cfg.paths.quarantine_dir in partition.parents:
        return False, "quarantined"
    if not record.exists():
        return False, "not validated"
    data = json.loads(record.read_text())
    if not data.get("success"):
        return False, "failed validation"
    if data.get("fingerprint") != fingerprint(partition):
        return False, "changed since validation"
    return True, "validated"
