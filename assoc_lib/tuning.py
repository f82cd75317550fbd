"""Choose the deep network's data-dependent hyperparameters on validation, within a time budget (Optuna).

The idea: a full training run is too dear to repeat, so each trial is a cheap proxy of one: the
network trains on the most recent train baskets (at most ``deep_tune_max_baskets``) for
``deep_tune_epochs`` epochs and is scored by validation NDCG@10 on at most ``deep_tune_max_val``
held-out baskets, after every epoch (a trial below the median of earlier trials at the same epoch
is pruned). The configured values are trial 0, so the search only replaces them with values that
did better on the same proxy, by more than ``deep_tune_min_gain`` (relative): short trials on a sample
favour fast learners (a learning rate that wins two short epochs can overfit the full data in one) and
small wins are noise. Trials stop starting once ``deep_tune_seconds`` have passed or
``deep_tune_trials`` have run. The final network then trains on every basket with the chosen
values and early stopping (``train.train_deep``). Searched: width, learning rate, input dropout,
and with shoppers' histories the share of baskets trained without one. The trace (every trial's
values, score, epochs and seconds) goes to the train summary, the model card and the task log.
See docs/design.md §5.
"""

from __future__ import annotations

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


@dataclass
class TuneResult:
    params: DeepParams  # the chosen values (the configured ones when no trial did better)
    trials: list[dict] = field(default_factory=list)  # number, values, val NDCG@10 per epoch, state, seconds
    best_trial: int = 0
    seconds: float = 0.0
    min_gain: float = 0.0
    # the best complete trial's proxy score over the configured values' (relative; None without both): a
    # choice made close to min_gain, either way, may go the other way in another run (CPU training is not
    # repeatable to the digit)
    best_gain: float | None = None

    def trace(self) -> dict:
        """The search in the model card: what was tried and what it scored."""
        return {
            "best_trial": self.best_trial,
            "min_gain": self.min_gain,
            "best_gain": None if self.best_gain is None else round(self.best_gain, 4),
            "seconds": round(self.seconds, 1),
            "chosen": {k: getattr(self.params, k) for k in SEARCHED},
            "trials": self.trials,
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

    ``fit(train, val, params, history=..., on_epoch=...)`` trains one network (``train.train_deep``);
    ``on_epoch(epoch, val_ndcg) -> stop`` lets the pruner end a trial early."""
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
        candidate = replace(params, **values, epochs=epochs, patience=epochs)
        t0 = time.perf_counter()

        def report(epoch: int, ndcg: float) -> bool:
            trial.report(ndcg, epoch)
            return trial.should_prune()

        run = fit(X, sub_val, candidate, history=H, on_epoch=report)
        scores = [round(h["val_ndcg@10"], 5) for h in run.history]
        pruned = len(scores) < epochs
        result.trials.append(
            {
                "trial": trial.number,
                **values,
                "val_ndcg@10_by_epoch": scores,
                "state": "pruned" if pruned else "complete",
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
        log.info(
            "tuning trial %d: %s -> val NDCG@10 %s%s (%.0fs)",
            trial.number,
            ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()),
            scores,
            " pruned" if pruned else "",
            time.perf_counter() - t0,
        )
        if pruned:
            raise optuna.TrialPruned()
        return max(scores)

    study.optimize(objective, n_trials=trials, timeout=seconds, gc_after_trial=True)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if complete:
        best = max(complete, key=lambda t: (t.value, -t.number))  # ties keep the earlier (trial 0: the config)
        configured = next((t.value for t in complete if t.number == 0), None)
        # a proxy's small win is noise (and short trials favour fast learners): the configured values give
        # way only to a trial better by more than min_gain
        if configured:
            result.best_gain = best.value / configured - 1.0
        if configured is None or best.value > configured * (1.0 + min_gain):
            result.best_trial = best.number
            result.params = replace(params, **best.params)
    result.seconds = time.perf_counter() - started
    log.info(
        "tuning: %d trials in %.0fs on %d baskets (validation %d); chose trial %d: %s%s",
        len(result.trials),
        result.seconds,
        X.shape[0],
        sub_val.n,
        result.best_trial,
        ", ".join(f"{k}={getattr(result.params, k):.4g}" for k in SEARCHED),
        ""
        if result.best_gain is None
        else f" (the best trial {result.best_gain:+.1%} over the configured values on the proxy; bar {min_gain:+.0%})",
    )
    return result
