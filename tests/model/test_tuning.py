"""The deep network's hyperparameter search (assoc_lib/tuning.py): trial 0 is the configuration, the
budget is kept, a bad configured value is replaced, and the trace reaches the summary and model card."""

from __future__ import annotations

import functools
import json

import pytest

from assoc_lib.data.preprocess import load_split, split_baskets
from assoc_lib.evaluate import hold_out
from assoc_lib.models.baselines import baskets_to_csr
from assoc_lib.models.network import DeepParams
from assoc_lib.train import train_deep
from assoc_lib.tuning import SEARCHED, proxy_split, tune_deep


@pytest.fixture(scope="module")
def split(trained):
    baskets, vocab = load_split(trained["prep_dir"])
    splits = split_baskets(baskets)
    return baskets_to_csr(splits["train"], len(vocab)), hold_out(splits["validation"], len(vocab), 0)


def _tune(split, params, **kw):
    X, val = split
    settings = {"seconds": 120.0, "trials": 6, "epochs": 2, "max_baskets": 100_000, "max_val": 100_000} | kw
    return tune_deep(X, val, params, functools.partial(train_deep, verbose=False), **settings)


def test_a_useless_learning_rate_is_replaced(split):
    """Configured learning rate 1e-6 learns nothing in two epochs: the search must find a better one, and
    the chosen values are those of the best complete trial in the trace."""
    params = DeepParams(embedding_dim=32, batch_size=128, learning_rate=1e-6, input_dropout=0.5, seed=5)
    result = _tune(split, params)
    first = result.trials[0]
    assert first["trial"] == 0 and first["learning_rate"] == pytest.approx(1e-6) and first["embedding_dim"] == 32
    assert result.best_trial != 0 and result.params.learning_rate > 1e-4
    best = next(t for t in result.trials if t["trial"] == result.best_trial)
    assert best["state"] == "complete"
    assert all(getattr(result.params, k) == pytest.approx(best[k]) for k in SEARCHED if k in best)
    complete = [max(t["val_ndcg@10_by_epoch"]) for t in result.trials if t["state"] == "complete"]
    assert max(best["val_ndcg@10_by_epoch"]) == max(complete) > max(first["val_ndcg@10_by_epoch"]) + 0.05
    # what was not searched stays as configured
    assert result.params.batch_size == 128 and result.params.epochs == params.epochs


def test_budget_trial_count_and_min_gain_are_kept(split):
    """No trial starts after the time budget (a budget of 0 s runs none and keeps the configured values);
    the trial count is a cap; the configured values stay unless a trial beats them by more than min_gain."""
    params = DeepParams(embedding_dim=32, batch_size=128, learning_rate=0.01, seed=5)
    result = _tune(split, params, seconds=0.0)
    assert result.trials == [] and result.best_trial == 0 and result.params == params
    capped = _tune(split, params, trials=3, min_gain=100.0)  # and no trial can beat the configuration by 100x
    assert len(capped.trials) == 3 and capped.best_trial == 0 and capped.params == params
    # the margin the choice was made by is recorded: the best complete trial over the configured one
    scores = {t["trial"]: max(t["val_ndcg@10_by_epoch"]) for t in capped.trials if t["state"] == "complete"}
    assert capped.best_gain == pytest.approx(max(scores.values()) / scores[0] - 1.0, abs=1e-6)
    assert capped.trace()["best_gain"] == pytest.approx(capped.best_gain, abs=1e-4)


def test_proxy_split_takes_the_latest_baskets_and_a_sample_of_validation(split):
    X, val = split
    sub_X, sub_val, _ = proxy_split(X, val, None, max_baskets=50, max_val=40, seed=1)
    assert sub_X.shape == (50, X.shape[1]) and (sub_X != X[-50:]).nnz == 0
    assert sub_val.n == 40 and set(sub_val.basket_rows) <= set(val.basket_rows)
    assert proxy_split(X, val, None, max_baskets=10**6, max_val=10**6, seed=1)[1] is val


def test_search_trace_in_summary_and_model_card(trained, exported):
    search = trained["summary"]["hyperparameter_search"]
    assert search["trials"][0]["trial"] == 0 and len(search["trials"]) >= 1
    chosen = search["chosen"]
    deep = json.loads((exported["deep"] / "model_card.json").read_text())
    params = deep["params"]
    assert params["hyperparameter_search"]["chosen"] == chosen
    assert all(params[k] == pytest.approx(chosen[k]) for k in SEARCHED)


def test_deep_training_benchmark_reports_the_breakdown(trained, tmp_path):
    """benchmarks/deep_training.py runs the deep stage as the pipeline does and its figures add up."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "deep_training.py"
    spec = importlib.util.spec_from_file_location("deep_training_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "deep.json"
    settings = ["deep_tune_trials=2", "deep_epochs=2", "deep_embedding_dim=16", "deep_batch_size=128"]
    args = ["--prep", str(trained["prep_dir"]), "--out", str(out)]
    assert bench.main(args + [a for s in settings for a in ("--set", f"models.{s}")]) == 0
    figures = json.loads(out.read_text())
    assert figures["search_trials"] == 2 and len(figures["search"]["trials"]) == 2
    assert figures["final_epochs"] <= 2 and figures["train_baskets"] > 0 and figures["peak_rss_mb"] > 0
    assert figures["deep_stage_seconds"] == pytest.approx(figures["search_seconds"] + figures["final_train_seconds"])
    assert figures["final_train_seconds"] == pytest.approx(
        figures["final_epoch_train_seconds"] + figures["final_validation_seconds"]
    )
    assert figures["examples_per_second_training_only"] >= figures["examples_per_second"] > 0
    assert figures["stopped_by_time_budget"] is False and figures["deep_max_seconds"] > 0


def test_time_budget_stops_between_epochs(split):
    """With a budget smaller than one epoch, training stops after the first epoch and keeps it; without a
    budget the same network runs every epoch (patience high enough never to stop it)."""
    X, val = split
    params = DeepParams(embedding_dim=16, batch_size=128, epochs=3, patience=10, seed=5)
    short = train_deep(X, val, params, verbose=False, max_seconds=1e-3)
    assert short.stopped_by_time_budget and len(short.history) == 1 and short.best_epoch == 1
    assert short.spec  # the kept epoch's weights
    full = train_deep(X, val, params, verbose=False)
    assert not full.stopped_by_time_budget and len(full.history) == 3


def test_fit_deep_counts_the_search_in_the_budget(split):
    """fit_deep gives the final training only what the search left of ``deep_max_seconds``."""
    from assoc_lib.config import ModelsConfig
    from assoc_lib.train import fit_deep

    X, val = split
    m = ModelsConfig(deep_tune_seconds=1.0, deep_tune_trials=1, deep_tune_epochs=1, deep_max_seconds=1e-3)
    params = DeepParams(embedding_dim=16, batch_size=128, epochs=3, patience=10, seed=5)
    _, result, search = fit_deep(X, val, params, m)
    assert len(search["hyperparameter_search"]["trials"]) == 1
    assert result.stopped_by_time_budget and len(result.history) == 1
