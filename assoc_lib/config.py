"""The one configuration object of the project.

Every stage reads its knobs from :class:`AssocConfig`. Values come from the
dataclass defaults, then an optional TOML file (``ASSOC_CONFIG`` or
``assoc.toml`` in the working directory), then ``ASSOC_<SECTION>__<KEY>``
environment variables, then explicit overrides (CLI flags, DAG params).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEV_PSEUDONYM_KEY = "assoc-development-key-not-for-production"


@dataclass
class PathsConfig:
    data_dir: str = "data"  # raw partitions + catalog (tracked by data.dvc)
    artifacts_dir: str = "artifacts"  # reports, preprocessed splits, models (git-ignored)
    serving_root: str = "serving"  # TF Serving model base paths live below this
    landing_dir: str = ""  # optional: new days arrive as <landing>/ds=YYYY-MM-DD/*.parquet|*.csv
    dvc_repo: str = "."  # git+DVC checkout that holds data_dir; "" disables DVC versioning

    @property
    def orders_dir(self) -> Path:
        return Path(self.data_dir) / "raw" / "orders"

    @property
    def catalog_path(self) -> Path:
        return Path(self.data_dir) / "raw" / "catalog.parquet"

    @property
    def quarantine_dir(self) -> Path:
        return Path(self.data_dir) / "quarantine" / "orders"

    @property
    def reports_dir(self) -> Path:
        return Path(self.artifacts_dir) / "reports"


@dataclass
class PrivacyConfig:
    # HMAC key for user-id pseudonymisation; ASSOC_PSEUDONYM_KEY wins over this.
    pseudonym_key: str = ""


@dataclass
class ValidationConfig:
    history_days: int = 14  # days before ds whose median row count sets the volume bounds
    min_row_ratio: float = 0.1  # a day may shrink to 10% of the recent median (holidays)...
    max_row_ratio: float = 5.0  # ...and grow to 5x; 20x is an incident, not a sale
    min_history_partitions: int = 3  # fewer validated days than this: only "non-empty" applies


@dataclass
class PreprocessConfig:
    window_days: int = 90
    min_count: int = 2  # items seen fewer times are out of the vocabulary
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    # When > 0, split by calendar days instead of fractions: the last test_days days of the
    # window are test, the val_days before them validation (the Complete Journey benchmark uses 28/28).
    test_days: int = 0
    val_days: int = 0
    require_validated: bool = True
    seed: int = 7  # only for data without timestamps


@dataclass
class ModelsConfig:
    rules_min_pair_count: int = 2
    rules_min_confidence: float = 0.0
    knn_k: int = 200
    ease_l2: float = 100.0
    ease_max_items: int = 30000  # dense Gram matrix: 26k items ~ 2.7 GB (float32), inverted in place
    export_top_n: int = 200  # neighbours per item kept in exported tables
    # Reference: full-rank EASE on every item (up to this many), scored with its dense matrix, never sparsified:
    # the strongest classical model in every comparison and verdict; evaluated, not served (0 turns it off).
    ease_dense_max_items: int = 30000
    evidence_top_n: int = 50  # partners per item kept as explanation evidence in every export
    deep_embedding_dim: int = 200
    deep_hidden: str = ""  # comma-separated widths of extra hidden layers, e.g. "600,600"
    deep_layer_norm: bool = False
    deep_input_dropout: float = 0.5
    deep_dropout: float = 0.0
    deep_epochs: int = 10
    deep_batch_size: int = 512
    deep_learning_rate: float = 0.002
    deep_patience: int = 2
    deep_selection_tolerance: float = 0.01
    # >0: each step's softmax runs over the batch's own items plus this many uniform draws (log-Q corrected),
    # when the vocabulary has more than twice as many items; 0: the full softmax
    deep_sampled_softmax: int = 8192
    deep_l2: float = 0.0  # L2 penalty on the item embeddings
    deep_history_dropout: float = 0.2  # share of training baskets whose history is hidden (learn the anonymous case)
    deep_mix_with_ease: bool = True  # also offer the score-level deep+EASE mix as a deep candidate
    history_max_items: int = 200  # personalised protocol: the shopper's most-bought items kept as history
    # Time-decayed personal prior (TIFU-style): + beta * log(1 + sum over purchases of exp(-days ago / tau)).
    # tau (days) and beta are chosen on validation per model; 0 in the grid is the plain log(1 + count).
    prior_decay_days: str = "0,14,30,60,120,240"
    # Candidates ease, ease_dense and deep+ease plus gamma * log(1 + personal co-occurrence), PerNIR-style:
    # the shopper's earlier baskets weighted by their overlap with the basket and by exp(-days ago / tau);
    # tau over this list and gamma chosen on validation. Served from the request's history rows (the dense
    # EASE one stays an evaluation reference). Empty: no such candidates.
    personal_cooc_decay_days: str = "0,60,240"
    # The second stage (models/rerank.py): each +personal_cooc candidate (without users: ease, ease_dense,
    # deep+ease) also comes reranked (+rerank), small networks reordering its top this-many items, one for a
    # shopper with a history and one for a basket without, fitted on validation (the validation figures
    # cross-fitted on two halves). 0: no reranked candidates.
    rerank_top_k: int = 100
    rerank_epochs: int = 15
    # each validation basket gives the stages up to this many training lists, one per hidden item (0: one per
    # item); the gate's validation figure stays the one-hidden-item hold-out's, cross-fitted. On Complete
    # Journey (the README's split) 1 list a basket fitted the personalised stage on about 3,800 lists, 3 on
    # about 10,900: test NDCG@10 of the reranked candidates +0.0024 (deep) and +0.0010 (classical), three fits each;
    # every item (about 40,800) +0.0011 for both, inside its interval, at 2.7x the stage's time (README)
    rerank_lists_per_basket: int = 3
    rerank_min_lists: int = 20  # per half of validation and stage (lists whose hidden item is listed); fewer: none
    # train on the evaluation's task: predict the hidden items of a basket from the rest (masked-item
    # training); False reconstructs the whole basket (denoising auto-encoder)
    deep_masked_targets: bool = False
    deep_history_decay: float = 60.0  # decay time (days) of the network's recency feature and of its prior
    # > 0: the final network is also offered as an exponential moving average of its weights over about this
    # many epochs (momentum 1 - 1 / (this · steps per epoch), warmed up); each epoch validates the raw and the
    # averaged weights and keeps the better. On Complete Journey (the README's quality run, `deep_history` in its
    # train summary): the network's best validation NDCG@10 0.1061 raw, 0.1092 averaged. 0: raw weights only
    deep_weight_average_epochs: float = 1.0
    # Hyperparameter search before the final training (assoc_lib/tuning.py): width, learning rate and
    # dropouts chosen on validation; the values above are trial 0. 0 seconds or 0 trials: no search.
    deep_tune_seconds: float = 120.0  # no new trial starts after this budget
    deep_tune_trials: int = 8
    # each trial trains until its validation stops improving (trials are compared at their peaks), at most
    # this many epochs
    deep_tune_epochs: int = 8
    deep_tune_max_baskets: int = 40000  # trials train on the most recent train baskets, at most this many
    deep_tune_max_val: int = 5000  # ...and are scored on a sample of at most this many validation baskets
    # the configured values give way only to a trial better at its peak by more than this (relative): a
    # trial's proxy figure moves by about 0.6% under the smallest perturbation (two runs of the same trial
    # before op determinism was on), so a smaller win is noise even though each run now repeats
    deep_tune_min_gain: float = 0.02
    # a daily run reuses the search of an earlier run instead of searching again (its chosen values and trace,
    # marked `reused` in the trace, the model card and the task log) when that search ran at most this many
    # days before, with the same configured values and search settings, on a train set and vocabulary within
    # deep_tune_reuse_max_shift (relative) of today's: the window slides by a day, the data barely moves, and a
    # search costs about 100 s of the main job's 5-minute day. 0: search on every run. The DAG and `assoc train
    # --ds` (pipeline.train_day) reuse; the benchmarks call train_candidates without a day: they always search
    deep_tune_reuse_days: int = 6
    deep_tune_reuse_max_shift: float = 0.25
    # wall-clock budget of the deep stage, search included: no new epoch of the final training starts when the
    # last one would not fit (the selected epoch is kept; at least one runs). 0: no budget. On Complete Journey
    # the stage took 477-672 s without it, depending on early stopping and the machine's speed.
    deep_max_seconds: float = 600.0
    # without a GPU, switch on TensorFlow's op determinism before the network trains: the same data, seed and
    # values then train the same network to the digit (the search's choice and the deep rows repeat). Off by
    # default because it costs time: one proxy epoch on Complete Journey took 48-51 s with it, 36-39 s
    # without (2 cores), and the final training's epochs fit the deep stage's budget
    deep_deterministic: bool = False
    seed: int = 1234
    eval_seed: int = 20240101


def decay_list(text: str) -> tuple[float, ...]:
    """``"0,14,30"`` → (0.0, 14.0, 30.0): a comma-separated list of decay times in days."""
    values = tuple(float(x) for x in str(text).split(",") if x.strip())
    if any(v < 0 for v in values):
        raise ValueError(f"decay times must be >= 0 days, got {text!r}")
    return values


@dataclass
class GateConfig:
    metric: str = "ndcg@10"
    tolerance: float = 0.02  # blessed when test metric >= production x (1 - tolerance)
    min_eval_baskets: int = 50
    require_deep: bool = False  # strict mode: only a deep winner may be pushed


@dataclass
class ServingConfig:
    model_name: str = "assoc"
    k: int = 100  # items returned per request by the exported signatures
    keep_versions: int = 5
    port: int = 8500  # gRPC port of `assoc serve` (TF Serving's default)
    rest_port: int = 8501  # REST API + Prometheus metrics of `assoc serve` (TF Serving's); 0 turns REST off
    tf_threads: int = 1  # TensorFlow intra/inter-op threads in `assoc serve` (0: TensorFlow's default)
    processes: int = 1  # `assoc serve` processes sharing the ports (SO_REUSEPORT); one per core for throughput
    infra_requests: int = 20  # requests the infra validation sends to a fresh serving process
    infra_max_p99_ms: float = 2000.0  # ...and the p99 latency above which it refuses the export


@dataclass
class InsightsConfig:
    pair_min_support: float = 0.001  # pair rules below this support are never listed
    multi_min_support: float = 0.005  # FP-growth threshold for multi-item rules
    min_confidence: float = 0.2
    category_k: int = 10  # neighbours voting in category prediction


@dataclass
class AssocConfig:
    paths: PathsConfig = field(default_factory=PathsConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    insights: InsightsConfig = field(default_factory=InsightsConfig)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["privacy"] = {"pseudonym_key": "***" if self.privacy.pseudonym_key else ""}
        return out


def _coerce(current: Any, raw: Any) -> Any:
    if isinstance(current, bool):
        if isinstance(raw, str):
            return raw.strip().lower() in {"1", "true", "yes", "on"}
        return bool(raw)
    if isinstance(current, int):
        return int(raw)
    if isinstance(current, float):
        return float(raw)
    return str(raw) if not isinstance(raw, (list, dict)) else raw


def apply_overrides(cfg: AssocConfig, overrides: dict[str, Any]) -> AssocConfig:
    """Apply ``{"section.key": value}`` or ``{"section": {"key": value}}`` overrides."""
    flat: dict[str, Any] = {}
    for key, value in overrides.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                flat[f"{key}.{sub}"] = v
        else:
            flat[key] = value
    for dotted, value in flat.items():
        if value is None:
            continue
        try:
            section_name, key = dotted.split(".", 1)
            section = getattr(cfg, section_name)
            current = getattr(section, key)
        except (ValueError, AttributeError) as exc:
            raise ValueError(f"unknown config key {dotted!r}") from exc
        setattr(section, key, _coerce(current, value))
    return cfg


def load_config(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> AssocConfig:
    cfg = AssocConfig()
    path = path or os.environ.get("ASSOC_CONFIG")
    if path is None and Path("assoc.toml").exists():
        path = "assoc.toml"
    if path:
        with open(path, "rb") as fh:
            apply_overrides(cfg, tomllib.load(fh))
    env = {}
    for name, value in os.environ.items():
        if name.startswith("ASSOC_") and "__" in name:
            section, key = name[len("ASSOC_") :].lower().split("__", 1)
            env[f"{section}.{key}"] = value
    apply_overrides(cfg, env)
    if overrides:
        apply_overrides(cfg, overrides)
    return cfg
