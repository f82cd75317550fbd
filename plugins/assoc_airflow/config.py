"""Build the one AssocConfig from the project config plus the DAG run's params.

The params' defaults are the configuration read where the DAG file is parsed (dataclass defaults, TOML file,
``ASSOC_<SECTION>__<KEY>`` environment variables), and a run's params are explicit overrides: so a task
uses the environment of the DAG processor, not its own, for every knob that is a param.
"""

from __future__ import annotations

import dataclasses

from assoc_lib.config import AssocConfig, ModelsConfig, load_config

# DAG param name -> config key. Every model parameter ([models] in the config) is a param of the same name.
PARAM_KEYS = {f.name: f"models.{f.name}" for f in dataclasses.fields(ModelsConfig)} | {
    "window_days": "preprocess.window_days",
    "min_count": "preprocess.min_count",
    "tolerance": "gate.tolerance",
    "min_eval_baskets": "gate.min_eval_baskets",
    "require_deep": "gate.require_deep",
    "serving_root": "paths.serving_root",
    "data_dir": "paths.data_dir",
    "artifacts_dir": "paths.artifacts_dir",
    "dvc_repo": "paths.dvc_repo",
}


def default_params() -> dict:
    cfg = load_config()
    out = {}
    for param, key in PARAM_KEYS.items():
        section, name = key.split(".")
        out[param] = getattr(getattr(cfg, section), name)
    return out


def config_from_params(params: dict | None) -> AssocConfig:
    overrides = {PARAM_KEYS[k]: v for k, v in (params or {}).items() if k in PARAM_KEYS and v is not None}
    return load_config(overrides=overrides)
