"""Choose the deep network's data-dependent hyperparameters on validation, within a time budget (Optuna).

The idea: a full training run is too dear to repeat, so each trial is a cheap proxy of one: the
network trains on the most recent train baskets (at most ``deep_tune_max_baskets``) and is scored by
validation NDCG@10 on at most ``deep_tune_max_val`` held-out baskets after every epoch, **until its
validation stops improving** (``deep_patience`` epochs without a better figure: the final training's
early-stopping rule), or for ``deep_tune_epochs`` (the longest horizon a trial gets). Trials are compared
at their peaks. A comparison after a fixed short number of epochs favours fast learners: on Complete
Journey the configured values (learning rate 0.002) climbed from 0.0910 to 0.0999 over six proxy epochs,
after a dip at the second (so one epoch without gain is not a peak), while a learning rate of 0.006
peaked at 0.0922 in its first; after two epochs the latter led, and on the full data it was 4.5% worse.

A trial below the median of earlier trials at the same epoch is pruned. The configured values are
trial 0, so the search only replaces them with values that did better on the same proxy, by more than
``deep_tune_min_gain`` (relative; a trial's figure moves by about 0.6% under the smallest
perturbation), and only when trial 0
itself reached its peak or the epoch cap: if the budget cut trial 0 before its peak, no trial can be
judged fairly against it, the search stops and the configured values stay (said in the trace and the
log). Trials stop starting once ``deep_tune_seconds`` have passed, or when what is left would not fit
``deep_patience`` + 1 epochs, or after ``deep_tune_trials``; a trial gets what is left of the budget. The final network
then trains on every basket with the chosen values and early stopping (``train.train_deep``).
Searched: width, learning rate, input dropout, and with shoppers' histories the share of baskets
trained without one. The trace (every trial's values, scores by epoch, state, seconds; the choice and
its reason) goes to the train summary, the model card and the task log. See docs/design.md §5.

A daily run need not search again: the window slides by one day and the data barely moves, so a search
of a recent run stands (``reusable``: at most ``deep_tune_reuse_days`` old, the same configured values
and search settings (``search_key``), a train set and vocabulary within ``deep_tune_reuse_max_shift`` of
the searched ones). Its chosen values are used and its trace is carried, marked ``reused``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field, replace

import numpy as np
import scipy.sparse as sp

from assoc_lib import evaluate
from assoc_lib.models.network import DeepParams

log = logging.getLogger(__name__)

WIDTHS = (64, 128, 200, 256)
LEARNING_RATES = (1e-3, 1e-2)  # log-uniform
INPUT_DROPOUT = (0.25, 0.75)
HISTORY_DROPOUT = (0.0, 0.4)
SEARCHED = ("embedding_dim", "learning_rate", "input_dropout", "history_dropout")


COMPARED = ("peaked", "capped")  # the trials whose best figure is compared (see objective's states)


def peaked(scores: list[float], patience: int) -> bool:
    """Whether a trial's validation figures by epoch have passed their peak: its last ``patience`` epochs
    did not beat the best before them (the final training's early-stopping rule, ``deep_patience``)."""
    return len(scores) - 1 - int(np.argmax(scores)) >= patience if scores else False


@dataclass
class TuneResult:
    params: DeepParams  # the chosen values (the configured ones when no trial did better)
    trials: list[dict] = field(default_factory=list)  # number, values, val NDCG@10 per epoch, state, seconds
    best_trial: int = 0
    seconds: float = 0.0
    min_gain: float = 0.0
    # the best compared trial's proxy score over the configured values' (relative; None without both): a
    # choice made close to min_gain may go the other way on slightly different data
    best_gain: float | None = None
    reason: str = "no trial ran"  # why these values: in the trace and the task log

    def trace(self) -> dict:
        """The search in the model card: what was tried and what it scored."""
        return {
            "best_trial": self.best_trial,
            "min_gain": self.min_gain,
            "best_gain": None if self.best_gain is None else round(self.best_gain, 4),
            "reason": self.reason,
            "seconds": round(self.seconds, 1),
            "chosen": {k: getattr(self.params, k) for k in SEARCHED},
            "trials": self.trials,
        }


TUNE_SETTINGS = (
    "deep_tune_seconds",
    "deep_tune_trials",
    "deep_tune_epochs",
    "deep_tune_max_baskets",
    "deep_tune_max_val",
    "deep_tune_min_gain",
)


def search_key(params: DeepParams, m) -> str:
    """What a search's outcome depends on besides the data: the configured values (trial 0 and everything
    the trials share) and the search's settings (``m``: the models config). Equal keys, comparable searches."""
    blob = json.dumps({"params": params.to_dict(), **{k: getattr(m, k) for k in TUNE_SETTINGS}}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def reusable(
    previous: dict | None, key: str, day: str, n_train: int, n_items: int, max_days: int, max_shift: float
) -> tuple[bool, str]:
    """Whether an earlier run's search trace ``previous`` can stand for today's search (``day``, ISO date),
    and why (or why not), in words for the task log and the trace."""
    if max_days <= 0:
        return False, "reuse off (deep_tune_reuse_days = 0)"
    if not previous:
        return False, f"no search in the last {max_days} days' runs"
    missing = [k for k in ("key", "searched_on", "train_baskets", "n_items", "chosen") if k not in previous]
    if missing:
        return False, f"the earlier search's trace lacks {', '.join(missing)} (written by an older version)"
    if previous["key"] != key:
        return False, f"the configuration changed since the search of {previous['searched_on']}"
    age = (dt.date.fromisoformat(day) - dt.date.fromisoformat(previous["searched_on"])).days
    if not 0 < age <= max_days:
        return False, f"the last search ran on {previous['searched_on']}, {age} days before (at most {max_days})"
    since = previous["searched_on"]
    for what, now, then in (
        ("train baskets", n_train, previous["train_baskets"]),
        ("items", n_items, previous["n_items"]),
    ):
        if abs(now / max(then, 1) - 1.0) > max_shift:
            return False, f"{what} moved from {then:,} to {now:,} since {since} (over {max_shift:.0%})"
    return True, (
        f"the search of {previous['searched_on']} ({age} days before; same configuration; train baskets "
        f"{previous['train_baskets']:,} then, {n_train:,} now; items {previous['n_items']:,} then, {n_items:,} now)"
    )


def stamped(trace: dict, key: str, n_train: int, n_items: int, day: str | None) -> dict:
    """A new search's trace with what ``reusable`` checks later: its key, data size and (on a daily run) day."""
    return trace | {"key": key, "train_baskets": n_train, "n_items": n_items} | ({"searched_on": day} if day else {})


def carried(previous: dict, why: str) -> dict:
    """An earlier search's trace carried into today's run: it cost nothing today (``seconds`` 0), keeps the
    original's day, data size and cost (``searched_seconds``), and says why it stands (``reused``)."""
    return previous | {
        "seconds": 0.0,
        "searched_seconds": previous.get("searched_seconds", previous.get("seconds", 0.0)),
        "reused": why,
    }


def proxy_split(train: sp.csr_matrix, val: evaluate.HoldOut, history, max_baskets: int, max_val: int, seed: int):
    """The trials' data: the most recent ``max_baskets`` train baskets (rows are in time order) with their
    histories, and a seeded sample of at most ``max_val`` validation baskets."""
    rows = np.arange(max(0, train.shape[0] - max_baskets), train.shape[0])
    sub_val = val
    if val.n > max_val:
        sub_val = val.subset(np.sort(np.random.default_rng(seed).choice(val.n, max_val, replace=False)))
    return train[rows], sub_val, (history[rows] if history is not None else None)


def tune_deep(
    train: sp.csr_matrix,
    val: evaluate.HoldOut,
    params: DeepParams,
    fit,
    *,
    seconds: float,
    trials: int,
    epochs: int,
    max_baskets: int,
    max_val: int,
    min_gain: float = 0.0,
    history=None,
) -> TuneResult:
    """Search around ``params`` (trial 0); returns the best values found (see the module docstring).

    ``fit(train, val, params, history=..., on_epoch=..., max_seconds=...)`` trains one network
    (``train.train_deep``); ``on_epoch(epoch, val_ndcg) -> stop`` lets the pruner end a trial early, and
    ``max_seconds`` keeps a trial within what is left of the budget."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial comes from here instead
    started = time.perf_counter()
    X, sub_val, H = proxy_split(train, val, history, max_baskets, max_val, params.seed)
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=params.seed, n_startup_trials=4),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
    )
    study.enqueue_trial({k: getattr(params, k) for k in SEARCHED if params.personal or k != "history_dropout"})
    result = TuneResult(params=params, min_gain=min_gain)

    def around(bounds, value):  # the ranges always hold the configured value (trial 0)
        return min(bounds[0], value), max(bounds[1], value)

    widths = tuple(sorted(set(WIDTHS) | {params.embedding_dim}))

    def objective(trial) -> float:
        left = seconds - (time.perf_counter() - started)
        if result.trials and left < (params.patience + 1) * epoch_seconds[0]:  # too short to show a peak
            study.stop()
            raise optuna.TrialPruned()
        values = {
            "embedding_dim": trial.suggest_categorical("embedding_dim", widths),
            "learning_rate": trial.suggest_float(
                "learning_rate", *around(LEARNING_RATES, params.learning_rate), log=True
            ),
            "input_dropout": trial.suggest_float("input_dropout", *around(INPUT_DROPOUT, params.input_dropout)),
        }
        if params.personal:
            values["history_dropout"] = trial.suggest_float(
                "history_dropout", *around(HISTORY_DROPOUT, params.history_dropout)
            )
        candidate = replace(params, **values, epochs=epochs)  # early stopping as the final training's
        t0 = time.perf_counter()
        pruned = []

        def report(epoch: int, ndcg: float) -> bool:
            trial.report(ndcg, epoch)
            pruned.append(trial.should_prune())
            return pruned[-1]

        run = fit(X, sub_val, candidate, history=H, on_epoch=report, max_seconds=max(left, 1e-3))
        scores = [round(h["val_ndcg@10"], 5) for h in run.history]
        # peaked: its validation stopped improving (a trial cut by the pruner on that epoch has shown its peak
        # all the same); capped: it ran every epoch a trial may and improved to the last (the longest horizon
        # the search allows); pruned, or unfinished: cut by the budget while improving
        if peaked(scores, params.patience):
            state = "peaked"
        elif any(pruned):
            state = "pruned"
        else:
            state = "capped" if len(scores) >= epochs else "unfinished"
        took = time.perf_counter() - t0
        epoch_seconds.append(took / max(len(scores), 1))
        result.trials.append(
            {
                "trial": trial.number,
                **values,
                "val_ndcg@10_by_epoch": scores,
                "state": state,
                "seconds": round(took, 1),
            }
        )
        log.info(
            "tuning trial %d: %s -> val NDCG@10 %s %s (%.0fs)",
            trial.number,
            ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()),
            scores,
            state,
            took,
        )
        if state == "pruned":
            raise optuna.TrialPruned()
        if trial.number == 0 and state == "unfinished":
            study.stop()  # nothing can be judged fairly against trial 0: no further trial
        return max(scores)

    epoch_seconds: list[float] = []
    study.optimize(objective, n_trials=trials, timeout=seconds, gc_after_trial=True)
    scores = {t["trial"]: max(t["val_ndcg@10_by_epoch"]) for t in result.trials if t["state"] in COMPARED}
    first = result.trials[0] if result.trials else None
    if first is None:
        result.reason = "no trial ran within the budget: the configured values"
    elif first["state"] not in COMPARED:
        result.reason = (
            f"the configured values: trial 0 had not reached its peak when the budget stopped it ({first['state']}, "
            f"{len(first['val_ndcg@10_by_epoch'])} epochs), so no trial could be compared with it at its peak"
        )
    else:
        best = max(scores, key=lambda n: (scores[n], -n))  # ties keep the earlier (trial 0: the config)
        result.best_gain = scores[best] / scores[0] - 1.0 if scores[0] > 0 else None
        # a proxy's small win is noise: the configured values give way only to a trial better by more than min_gain
        if best != 0 and scores[best] > scores[0] * (1.0 + min_gain):
            trial = next(t for t in result.trials if t["trial"] == best)
            result.best_trial = best
            result.params = replace(params, **{k: trial[k] for k in SEARCHED if k in trial})
            result.reason = (
                f"trial {best} scored {result.best_gain:+.1%} above the configured values (bar {min_gain:+.0%})"
            )
        else:
            result.reason = (
                "the configured values: no trial beat them at its peak by more than the bar "
                f"(best {result.best_gain:+.1%}, bar {min_gain:+.0%})"
            )
    result.seconds = time.perf_counter() - started
    log.info(
        "tuning: %d trials in %.0fs on %d baskets (validation %d); chose trial %d: %s (%s)",
        len(result.trials),
        result.seconds,
        X.shape[0],
        sub_val.n,
        result.best_trial,
        ", ".join(f"{k}={getattr(result.params, k):.4g}" for k in SEARCHED),
        result.reason,
    )
    return result
