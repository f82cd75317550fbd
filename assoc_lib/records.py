"""Typed records the pipeline stages pass on, and the enums for model kinds, protocols and serving states.

Each stage function of ``assoc_lib.pipeline`` returns one of these small dataclasses; Airflow's XCom
serialises dataclasses natively (``[core] allowed_deserialization_classes`` must admit ``assoc_lib.*``),
so the DAG passes them between tasks and reads named fields. They carry paths and small figures, never data.
The enums are ``StrEnum``: they compare equal to, and serialise as, their plain string values, so JSON files
written before them still read the same.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class ModelKind(StrEnum):
    CLASSICAL = "classical"
    DEEP = "deep"
    PRODUCTION = "production"  # the served model, evaluated beside the candidates


class Protocol(StrEnum):
    ANONYMOUS = "anonymous"  # the basket only
    PERSONALISED = "personalised"  # the basket and the shopper's earlier purchases


class VersionState(StrEnum):
    """A served version's state, as TF Serving's ModelVersionStatus.State names them."""

    START = "START"
    LOADING = "LOADING"
    AVAILABLE = "AVAILABLE"
    UNLOADING = "UNLOADING"
    END = "END"


@dataclass
class Record:
    """Base: ``to_dict`` for JSON files and logs (enums as their values)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        """The record from a dict (XCom, a JSON file), ignoring keys it does not have."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def coerce(cls, value):
        return value if isinstance(value, cls) else cls.from_dict(value)


@dataclass
class IngestResult(Record):
    partition: str
    rows: int
    how: str = ""


@dataclass
class ValidationResult(Record):
    partition: str
    rows: int
    report: str
    warnings: int
    fingerprint: str


@dataclass
class PreprocessResult(Record):
    prep_dir: str
    vocabulary_size: int
    orders: dict[str, int]
    data_version: str | None = None


@dataclass
class Candidate(Record):
    name: str
    kind: ModelKind
    path: str
    train_seconds: float = 0.0
    personal_only: bool = False

    def __post_init__(self):
        self.kind = ModelKind(self.kind)


@dataclass
class TrainResult(Record):
    train_dir: str
    candidates: list[Candidate] = field(default_factory=list)

    def __post_init__(self):  # XCom hands nested records back as dicts
        self.candidates = [Candidate.coerce(c) for c in self.candidates]


@dataclass
class EvaluationResult(Record):
    comparison: str
    table: str
    production_version: int | None
    n_eval_baskets: int


@dataclass
class GateDecision(Record):
    blessed: bool
    winner: str | None
    winner_path: str | None
    reasons: list[str]
    deep_over_classical: float | None
    blessing: str


@dataclass
class ExportResult(Record):
    export_dir: str
    model: str


@dataclass
class InfraResult(Record):
    p50_ms: float
    p99_ms: float
    signatures: list[str]


@dataclass
class PushResult(Record):
    version: int
    path: str
    pushed: bool
    labels: dict[str, int]


@dataclass
class VersionRecord(Record):
    ds: str
    data_version: str | None
    model_version: int | None
    model_path: str | None
    pushed: bool = True  # False: an earlier run of the day had pushed this version already
    git_commit: str | None = None
    model_md5: str | None = None
    data_pointer: str | None = None
    model_pointer: str | None = None


@dataclass
class InsightsResult(Record):
    report: str
    fbt: dict[str, str]
    category_accuracy: dict[str, dict[str, float]]
