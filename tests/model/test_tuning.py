"""The deep network's hyperparameter search (assoc_lib/tuning.py): trial 0 is the configuration, the
budget is kept, a bad configured value is replaced, trials are compared at their peaks (not after a fixed
short horizon, which favours fast learners), and the trace reaches the summary and model card."""

from __future__ import annotations

import functools
import json

import pytest

from assoc_lib.data.preprocess import load_split, split_baskets
from assoc_lib.evaluate import hold_out
from assoc_lib.models.baselines import baskets_to_csr
from assoc_lib.models.network import DeepParams
from assoc_lib.train import train_deep
from assoc_lib.tuning import COMPARED, SEARCHED, peaked, proxy_split, tune_deep
from tests.conftest import load_benchmark


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
    assert best["state"] in COMPARED
    assert all(getattr(result.params, k) == pytest.approx(best[k]) for k in SEARCHED if k in best)
    complete = [max(t["val_ndcg@10_by_epoch"]) for t in result.trials if t["state"] in COMPARED]
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
    scores = {t["trial"]: max(t["val_ndcg@10_by_epoch"]) for t in capped.trials if t["state"] in COMPARED}
    assert capped.best_gain == pytest.approx(max(scores.values()) / scores[0] - 1.0, abs=1e-6)
    assert capped.trace()["best_gain"] == pytest.approx(capped.best_gain, abs=1e-4)


def test_peaked_is_the_early_stopping_rule():
    """A trial has peaked when its last ``patience`` epochs did not beat the best before them."""
    assert peaked([0.10, 0.12, 0.11], 1) and peaked([0.10, 0.10], 1) and peaked([0.3, 0.1, 0.2], 2)
    assert not peaked([0.10, 0.11, 0.12], 1) and not peaked([0.10], 1) and not peaked([], 1)
    assert not peaked([0.3, 0.1, 0.35], 2) and not peaked([0.1, 0.3, 0.2], 2)
    # a dip is not a peak under patience 2 (the proxy curve of the configured values on Complete Journey)
    assert not peaked([0.0920, 0.0916, 0.0920, 0.0952], 2) and peaked([0.0920, 0.0916], 1)


class _Curves:
    """A stand-in for train.train_deep that replays a scripted validation curve per learning rate under the
    same rules (early stopping after ``params.patience`` epochs without a better figure, at most
    ``params.epochs``, ``on_epoch`` after every epoch), so the search's choice can be checked against curves
    computed by hand; the real training runs in the other tests of this file."""

    def __init__(self, configured_lr: float, configured: list[float], others: list[float]):
        self.configured_lr, self.configured, self.others = configured_lr, configured, others

    def __call__(self, X, val, params, history=None, on_epoch=None, max_seconds=0.0):
        from types import SimpleNamespace

        curve = self.configured if params.learning_rate == self.configured_lr else self.others
        rows, best, waited = [], -1.0, 0
        for epoch, ndcg in enumerate(curve[: params.epochs], start=1):
            rows.append({"val_ndcg@10": ndcg})
            waited = 0 if ndcg > best else waited + 1
            best = max(best, ndcg)
            stop = on_epoch is not None and on_epoch(epoch, ndcg)
            if waited >= params.patience or stop:
                break
        return SimpleNamespace(history=rows)


@pytest.mark.parametrize(
    "others, configured_kept",
    [
        ([0.125, 0.12, 0.11], True),  # ahead of the configured values after one and two epochs, behind at the peak
        ([0.135, 0.14, 0.139, 0.138], False),  # better at its peak by 7.7% (> the 2% bar)
        ([0.131, 0.132, 0.130, 0.129], True),  # better at its peak by 1.5% (< the bar)
    ],
)
def test_trials_are_compared_at_their_peaks(split, others, configured_kept):
    """The configured values climb slowly to 0.13 (epoch 4); a challenger is judged on its own peak against
    that, not on the figure after a fixed number of epochs."""
    X, val = split
    params = DeepParams(embedding_dim=32, batch_size=128, learning_rate=0.002, seed=5)
    configured = [0.10, 0.11, 0.12, 0.13, 0.125, 0.12, 0.11]
    fit = _Curves(0.002, configured, others)
    result = tune_deep(
        X, val, params, fit, seconds=60.0, trials=4, epochs=8, max_baskets=10**6, max_val=10**6, min_gain=0.02
    )
    first = result.trials[0]
    # stopped two epochs after its peak (deep_patience 2, the final training's rule)
    assert params.patience == 2 and first["state"] == "peaked" and first["val_ndcg@10_by_epoch"] == configured[:6]
    assert len(result.trials) == 4 and all(t["state"] == "peaked" for t in result.trials)
    assert result.best_gain == pytest.approx(max(max(others), 0.13) / 0.13 - 1.0)  # the best compared trial
    if configured_kept:
        assert result.best_trial == 0 and result.params == params and "configured values" in result.reason
    else:
        assert result.best_trial != 0 and result.params.learning_rate != 0.002 and "above" in result.reason
    assert result.trace()["reason"] == result.reason


def _with_budget(budget, X, val, params, history=None, on_epoch=None, max_seconds=0.0):
    return train_deep(X, val, params, history=history, on_epoch=on_epoch, max_seconds=budget, verbose=False)


def test_capped_trials_are_compared_and_trial_zero_cut_by_the_budget_is_not(split):
    """A trial still improving at the epoch cap has had the longest horizon the search gives: it is compared.
    Trial 0 cut by the time budget while improving (real training, a budget shorter than one epoch) cannot
    be judged against: the search stops after it and keeps the configured values, and says why."""
    X, val = split
    params = DeepParams(embedding_dim=32, batch_size=128, learning_rate=0.002, seed=5)
    fit = _Curves(0.002, [0.10, 0.11, 0.12], [0.13, 0.14, 0.15])
    capped = tune_deep(
        X, val, params, fit, seconds=60.0, trials=2, epochs=3, max_baskets=10**6, max_val=10**6, min_gain=0.02
    )
    assert [t["state"] for t in capped.trials] == ["capped", "capped"] and capped.best_trial == 1
    # real training; its time budget (a millisecond) is shorter than one epoch on any machine, whatever the
    # search's own budget, so the cut does not depend on how fast the machine is
    tight = functools.partial(_with_budget, 1e-3)
    X, val = split
    cut = tune_deep(X, val, params, tight, seconds=60.0, trials=4, epochs=3, max_baskets=10**6, max_val=10**6)
    assert len(cut.trials) == 1 and cut.trials[0]["state"] == "unfinished"
    assert len(cut.trials[0]["val_ndcg@10_by_epoch"]) == 1
    assert cut.best_trial == 0 and cut.params == params and cut.best_gain is None
    assert "had not reached its peak" in cut.reason


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
    bench = load_benchmark("deep_training")
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


def test_search_horizon_benchmark_ranks_at_two_epochs_and_at_the_peak(trained, tmp_path):
    """benchmarks/search_horizon.py trains the configured values and another set on the search's proxy and
    reports each curve's figure after two epochs and at its peak, relative to the configured values'."""
    bench = load_benchmark("search_horizon")
    out = tmp_path / "horizon.json"
    args = ["--prep", str(trained["prep_dir"]), "--out", str(out), "--epochs", "3"]
    args += ["--values", "learning_rate=0.02,embedding_dim=16,input_dropout=0.3,history_dropout=0.1"]
    args += ["--set", "models.deep_embedding_dim=16", "--set", "models.deep_batch_size=128"]
    assert bench.main(args) == 0
    figures = json.loads(out.read_text())
    configured, other = figures["sets"]
    assert configured["values"]["embedding_dim"] == 16 and other["values"]["learning_rate"] == 0.02
    for row in (configured, other):
        curve = row["val_ndcg@10_by_epoch"]
        assert len(curve) == 3 and row["peak"] == max(curve) >= row["after_2_epochs"] == max(curve[:2])
        assert row["peak_epoch"] == curve.index(max(curve)) + 1
    assert configured["peak_vs_configured"] == 0.0 == configured["after_2_epochs_vs_configured"]
    assert other["peak_vs_configured"] == pytest.approx(other["peak"] / configured["peak"] - 1.0)


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


# op determinism is for the whole process once on: the runs go in a fresh one
REPEAT = r"""
import hashlib, json, sys
import numpy as np
from assoc_lib.data.preprocess import load_split, split_baskets
from assoc_lib.evaluate import hold_out
from assoc_lib.models.baselines import baskets_to_csr
from assoc_lib.models.network import DeepParams
from assoc_lib.train import train_deep

baskets, vocab = load_split(sys.argv[1])
splits = split_baskets(baskets)
X, val = baskets_to_csr(splits["train"], len(vocab)), hold_out(splits["validation"], len(vocab), 0)
deterministic = sys.argv[2] == "1"
params = DeepParams(embedding_dim=16, batch_size=64, epochs=2, patience=10, seed=7, deterministic=deterministic)
out = []
for _ in range(2):
    run = train_deep(X, val, params, verbose=False)
    digest = hashlib.sha256()
    for key in sorted(run.spec):
        if isinstance(run.spec[key], np.ndarray):
            digest.update(key.encode() + run.spec[key].tobytes())
    out.append({"val": [h["val_ndcg@10"] for h in run.history], "weights": digest.hexdigest()})
from tensorflow.python.framework import config  # the public API can switch it on, not read it
print("RESULT" + json.dumps({"runs": out, "determinism": config.is_op_determinism_enabled()}))
"""


def _repeat(prep_dir, deterministic: bool) -> dict:
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(root)}
    args = [sys.executable, "-c", REPEAT, str(prep_dir), "1" if deterministic else "0"]
    run = subprocess.run(args, capture_output=True, text=True, env=env, cwd=root, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(next(x for x in run.stdout.splitlines() if x.startswith("RESULT")).removeprefix("RESULT"))


def test_deterministic_cpu_training_repeats_to_the_digit(trained):
    """``deep_deterministic`` (no GPU): op determinism is on and the same data, seed and values train the same
    network twice (every epoch's validation figure and every weight's bytes equal); off by default."""
    on = _repeat(trained["prep_dir"], True)
    assert on["determinism"] is True
    assert on["runs"][0]["val"] == on["runs"][1]["val"] and on["runs"][0]["weights"] == on["runs"][1]["weights"]
    assert DeepParams().deterministic is False
    off = _repeat(trained["prep_dir"], False)
    assert off["determinism"] is False  # the default leaves TensorFlow as it is


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


def _searched(**kw) -> dict:
    trace = {
        "key": "k1",
        "searched_on": "2017-10-26",
        "train_baskets": 1000,
        "n_items": 500,
        "chosen": {"embedding_dim": 24, "learning_rate": 0.0123, "input_dropout": 0.4, "history_dropout": 0.1},
        "seconds": 98.0,
        "trials": [{"trial": 0}],
        "reason": "the configured values",
    }
    return trace | kw


def test_a_recent_search_of_the_same_configuration_on_similar_data_is_reused():
    """``tuning.reusable``: a search at most ``deep_tune_reuse_days`` before, same key, train baskets and items
    within the shift; anything else (stale, same day, another configuration, moved data, an old trace without
    the fields, reuse off) searches again, each with its reason in words."""
    from assoc_lib.config import ModelsConfig
    from assoc_lib.tuning import reusable, search_key

    ok, why = reusable(_searched(), "k1", "2017-10-27", 1100, 480, 6, 0.25)
    assert ok and "2017-10-26" in why and "1 days before" in why
    assert reusable(_searched(), "k1", "2017-11-01", 1000, 500, 6, 0.25)[0]  # 6 days: still reused
    cases = {
        "7 days before": (_searched(), "k1", "2017-11-02", 1000, 500, 6, 0.25),
        "0 days before": (_searched(), "k1", "2017-10-26", 1000, 500, 6, 0.25),
        "configuration changed": (_searched(), "k2", "2017-10-27", 1000, 500, 6, 0.25),
        "train baskets moved from 1,000 to 1,300": (_searched(), "k1", "2017-10-27", 1300, 500, 6, 0.25),
        "items moved from 500 to 300": (_searched(), "k1", "2017-10-27", 1000, 300, 6, 0.25),
        "lacks key": ({k: v for k, v in _searched().items() if k != "key"}, "k1", "2017-10-27", 1000, 500, 6, 0.25),
        "no search in the last 6 days": (None, "k1", "2017-10-27", 1000, 500, 6, 0.25),
        "reuse off": (_searched(), "k1", "2017-10-27", 1000, 500, 0, 0.25),
    }
    for expected, args in cases.items():
        ok, why = reusable(*args)
        assert not ok and expected in why, (expected, why)
    # the key follows the configured values and the search's settings, nothing else
    p, m = DeepParams(learning_rate=0.002), ModelsConfig()
    assert search_key(p, m) == search_key(DeepParams(learning_rate=0.002), ModelsConfig())
    assert search_key(p, m) != search_key(DeepParams(learning_rate=0.003), m)
    assert search_key(p, m) != search_key(p, ModelsConfig(deep_tune_seconds=60.0))
    assert search_key(p, m) == search_key(p, ModelsConfig(ease_l2=1.0))


def test_fit_deep_reuses_an_earlier_days_search_and_searches_when_it_is_stale(split):
    """A daily run (``day``) with a reusable earlier trace trains the final network with that trace's chosen
    values, runs no trial, and carries the trace marked ``reused`` (0 s; the original's seconds kept); the same
    trace a week older, or no trace, makes it search, and its own trace names the day and the data it ran on."""
    from assoc_lib.config import ModelsConfig
    from assoc_lib.train import fit_deep

    X, val = split
    m = ModelsConfig(deep_tune_seconds=60.0, deep_tune_trials=1, deep_tune_epochs=1)
    params = DeepParams(embedding_dim=16, batch_size=128, epochs=1, patience=10, seed=5)
    _, _, first = fit_deep(X, val, params, m, day="2017-10-26")
    searched = first["hyperparameter_search"]
    assert searched["searched_on"] == "2017-10-26" and "reused" not in searched and len(searched["trials"]) == 1
    assert searched["train_baskets"] == X.shape[0] and searched["n_items"] == X.shape[1] and searched["seconds"] > 0
    # the next day: the earlier trace's choice (set apart from the configuration here, to see it used)
    earlier = searched | {"chosen": searched["chosen"] | {"embedding_dim": 24, "learning_rate": 0.0123}}
    chosen, result, again = fit_deep(X, val, params, m, day="2017-10-27", previous_search=earlier)
    trace = again["hyperparameter_search"]
    assert chosen.embedding_dim == 24 and chosen.learning_rate == pytest.approx(0.0123) and chosen.batch_size == 128
    assert result.spec["embeddings"].shape == (X.shape[1], 24)  # the network trained at the reused width
    assert trace["trials"] == searched["trials"] and trace["searched_on"] == "2017-10-26"
    assert trace["seconds"] == 0.0 and trace["searched_seconds"] == searched["seconds"]
    assert "the search of 2017-10-26 (1 days before" in trace["reused"]
    # carried on: two days later the reused trace still dates from the 26th and keeps the original's seconds
    _, _, chained = fit_deep(X, val, params, m, day="2017-10-28", previous_search=trace)
    assert chained["hyperparameter_search"]["searched_seconds"] == searched["seconds"]
    assert "2 days before" in chained["hyperparameter_search"]["reused"]
    # a week after the search: searched again, on that day
    _, _, stale = fit_deep(X, val, params, m, day="2017-11-02", previous_search=trace)
    assert stale["hyperparameter_search"]["searched_on"] == "2017-11-02"
    assert "reused" not in stale["hyperparameter_search"] and stale["hyperparameter_search"]["seconds"] > 0


def test_previous_search_is_the_latest_earlier_runs_trace(cfg, caplog):
    """``pipeline.previous_search`` reads the most recent earlier run's train summary that has a trace,
    within ``deep_tune_reuse_days``; a run without a trace or with an unreadable summary is passed over
    (the latter with a warning), and today's own run is not an earlier one."""
    import logging

    from assoc_lib.config import apply_overrides
    from assoc_lib.pipeline import previous_search, run_dir
    from assoc_lib.train import SUMMARY_FILE

    def write(day: str, text: str) -> None:
        path = run_dir(cfg, day) / "train" / SUMMARY_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    assert previous_search(cfg, "2017-10-30") is None
    write("2017-10-30", json.dumps({"hyperparameter_search": _searched(searched_on="2017-10-30")}))
    write("2017-10-26", json.dumps({"hyperparameter_search": _searched(searched_on="2017-10-26")}))
    write("2017-10-28", json.dumps({"n_items": 3}))  # search off that day
    write("2017-10-29", "{not json")
    with caplog.at_level(logging.WARNING, logger="assoc_lib.pipeline"):
        assert previous_search(cfg, "2017-10-30")["searched_on"] == "2017-10-26"
    assert any("ignoring the earlier train summary" in r.getMessage() for r in caplog.records)
    assert previous_search(cfg, "2017-10-31")["searched_on"] == "2017-10-30"
    assert previous_search(apply_overrides(cfg, {"models.deep_tune_reuse_days": 3}), "2017-10-30") is None
