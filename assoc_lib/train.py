"""Train the deep basket-completion network: tf.data, tf.distribute, early stopping on validation NDCG@10.

Denoising objective: each training basket loses a random share of its items
(``input_dropout``, at least one kept) and the network predicts the whole
basket with a multinomial (softmax) likelihood, or with ``masked_targets`` only
the hidden items (at least one hidden from every basket of two or more: the
evaluation's hide-one task); ``sampled_softmax > 0`` swaps
the full softmax for sampled softmax (one positive drawn per basket per step)
for large vocabularies.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from assoc_lib import evaluate, tuning
from assoc_lib.config import decay_list
from assoc_lib.models import rerank
from assoc_lib.models.network import DeepParams, build_network, column_of, forward_spec, logits_at, numpy_logits
from assoc_lib.models.servable import repeat_gate, repeat_share
from assoc_lib.records import ModelKind
from assoc_lib.tfrt import tensorflow

log = logging.getLogger(__name__)


def pick_strategy(cpu_replicas: int = 0, mixed_precision: bool | None = None, deterministic: bool = False):
    """(strategy, placement): MirroredStrategy with mixed precision when GPUs are visible, the default
    strategy in float32 on CPU. ``cpu_replicas`` > 1 (no GPU): MirroredStrategy over that many logical CPU
    devices, as TensorFlow's own distribution tests run it, so the replica path (a global batch split over
    replicas, the per-replica losses summed, the loss-scaled optimizer with ``mixed_precision``) runs
    without a GPU; it must be asked for before TensorFlow starts its runtime. ``mixed_precision`` None: on
    with GPUs, off otherwise.

    ``deterministic`` (no GPU): TensorFlow's op determinism is switched on, for the process (it stays on):
    the same data, seed and configuration then train the same network to the digit. Measured on Complete
    Journey: one proxy epoch gave 0.09082 three times with it (48-51 s), 0.09156, 0.09099, 0.09118 and
    0.09087 without (36-39 s alone). On GPUs some kernels have no deterministic form: left off there."""
    tf = tensorflow()
    import keras

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        strategy, where = tf.distribute.MirroredStrategy(), f"MirroredStrategy over {len(gpus)} GPU(s)"
    elif cpu_replicas > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_replicas)
        except RuntimeError as exc:
            raise RuntimeError(f"cpu_replicas={cpu_replicas} must be set before TensorFlow starts: {exc}") from exc
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        strategy, where = tf.distribute.MirroredStrategy(devices), f"MirroredStrategy over {len(devices)} CPU replicas"
    else:
        strategy, where = tf.distribute.get_strategy(), "default strategy on CPU"
    if deterministic and not gpus:
        tf.config.experimental.enable_op_determinism()
    mixed = bool(gpus) if mixed_precision is None else mixed_precision
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    return strategy, f"{where}, {'mixed_float16' if mixed else 'float32'}"


@dataclass
class DeepResult:
    spec: dict  # numpy weights of the best epoch (see model.forward_spec)
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_val_ndcg10: float = 0.0
    train_seconds: float = 0.0
    examples_per_second: float = 0.0
    placement: str = ""
    stopped_by_time_budget: bool = False

    def score(self, X: sp.csr_matrix, H=None) -> np.ndarray:
        return numpy_logits(self.spec, X, H)


def _dataset(train: sp.csr_matrix, params: DeepParams, global_batch: int, history=None):
    """(corrupted basket ids, target ids[, history ids, history weights, decayed weights]) per batch, padded
    with -1 / 0.

    Vectorised over the batch: the rows are shuffled as indices, a batch of indices gathers its ragged rows,
    and the corruption runs on the whole batch at once (a map over single baskets, which this replaced, ran
    beside the training step on the same cores and slowed it)."""
    tf = tensorflow()

    def ragged(values, splits, dtype):
        return tf.RaggedTensor.from_row_splits(tf.constant(values.astype(dtype)), tf.constant(splits.astype(np.int64)))

    columns = [ragged(train.indices, train.indptr, np.int32)]
    if params.personal:
        W = history.counts.tocsr()
        decayed = np.log1p(history.weights_at_counts(params.history_decay))
        columns += [
            ragged(W.indices, W.indptr, np.int32),
            ragged(np.log1p(W.data), W.indptr, np.float32),
            ragged(decayed, W.indptr, np.float32),
        ]
    n = train.shape[0]
    p = params.input_dropout

    def corrupt(rows):
        items = tf.gather(columns[0], rows)
        r = items.with_flat_values(tf.random.uniform(tf.shape(items.flat_values), seed=params.seed))
        # each basket keeps the items whose draw is >= p, and always its item with the largest draw
        keep = tf.logical_or(r >= p, tf.equal(r, tf.expand_dims(tf.reduce_max(r, axis=1), 1)))
        if params.masked_targets:
            # hide-and-predict, as evaluated: at least one item hidden from a basket of 2+, only hidden ones scored
            size = tf.expand_dims(items.row_lengths(), 1)
            hide_one = tf.logical_and(size >= 2, tf.equal(r, tf.expand_dims(tf.reduce_min(r, axis=1), 1)))
            keep = tf.logical_and(keep, tf.logical_not(hide_one))
            targets = tf.ragged.boolean_mask(items, tf.logical_not(keep))
        else:
            targets = items
        out = (tf.ragged.boolean_mask(items, keep).to_tensor(-1), targets.to_tensor(-1))
        if params.personal:
            # a share of the baskets trains with no history at all: the anonymous case
            shown = tf.random.uniform(tf.shape(rows), seed=params.seed + 1) >= params.history_dropout
            for column, pad in zip(columns[1:], (-1, 0.0, 0.0)):
                h = tf.gather(column, rows)
                h = tf.ragged.boolean_mask(h, h.with_flat_values(tf.repeat(shown, h.row_lengths())))
                out += (h.to_tensor(pad),)
        return out

    ds = tf.data.Dataset.range(n).shuffle(min(n, 100_000), seed=params.seed, reshuffle_each_iteration=True)
    ds = ds.batch(global_batch).map(corrupt, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def optimizer_update(optimizer, variables, fused: bool):
    """The training step's update, ``update(grads)``: Keras's ``optimizer.apply``, or with ``fused`` the same
    call compiled by XLA into one pass over each table instead of a dozen elementwise ones, on dense gradients
    (the embeddings' sparse rows are scattered first: XLA wants dense). For the default strategy in float32
    (the CPU): ``benchmarks/train_step.py`` measures the step 1.35x as long without it on Complete Journey."""
    tf = tensorflow()
    import keras

    if not fused and isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        # dense gradients, so that its check finds every non-finite one: Keras 3.15's check passes a NaN in an
        # IndexedSlices row that also holds a finite value (an embedding row looked up twice in a batch), and
        # the update then writes the NaN into the table. Under mixed_float16 the history bag's padding entries
        # (weight 0) get inf · 0 when the scaled float16 gradient overflows: the personal network trained to NaN.
        # Over replicas, Keras decides on the first replica's gradients alone, before it sums them: a NaN on
        # another replica is summed into the weights. So a non-finite gradient on any replica makes every
        # replica's non-finite (one scalar all-reduce), and the step is skipped everywhere
        def update(grads):
            grads = [tf.convert_to_tensor(g) for g in grads]
            replica = tf.distribute.get_replica_context()
            if replica is not None and replica.num_replicas_in_sync > 1:
                bad = tf.add_n([tf.reduce_sum(tf.cast(~tf.math.is_finite(g), tf.float32)) for g in grads])
                bad = replica.all_reduce(tf.distribute.ReduceOp.SUM, bad)
                grads = [g + tf.cast(tf.where(bad > 0, np.nan, 0.0), g.dtype) for g in grads]
            return optimizer.apply(grads, variables)

        return update
    if not fused:
        return lambda grads: optimizer.apply(grads, variables)
    apply = tf.function(lambda grads: optimizer.apply(grads, variables), jit_compile=True)
    return lambda grads: apply([tf.convert_to_tensor(g) for g in grads])


def average_momentum(horizon_epochs: float, steps_per_epoch: int) -> float:
    """The per-step momentum of a moving average over about ``horizon_epochs`` epochs: 1 - 1 / steps."""
    return 1.0 - 1.0 / max(horizon_epochs * steps_per_epoch, 1.0)


def update_average(averages, variables, step, momentum: float) -> None:
    """One step of the weights' exponential moving average (Polyak averaging), after the optimizer's step
    ``step`` (its count of steps taken, so 1 after the first): a ← m·a + (1 - m)·w with
    m = min(momentum, step / (step + 9)), the warm-up ``tf.train.ExponentialMovingAverage`` uses, so the
    random initial weights fade out within the first steps."""
    tf = tensorflow()
    t = tf.cast(step, tf.float32)
    m = tf.minimum(tf.constant(momentum, tf.float32), t / (t + 9.0))
    for average, var in zip(averages, variables):
        average.assign(m * average + (1.0 - m) * var)


def train_deep(
    train: sp.csr_matrix,
    val: evaluate.HoldOut,
    params: DeepParams,
    out_dir: str | os.PathLike | None = None,
    history=None,
    on_epoch=None,
    verbose: bool = True,
    max_seconds: float = 0.0,
    strategy=None,
) -> DeepResult:
    """Train on binary train baskets; keep the epoch with the best validation NDCG@10.

    ``params.personal``: ``history`` holds each train basket's earlier purchase counts (CSR aligned
    with ``train``) and ``val`` carries its history; validation is then on the personalised protocol.
    ``on_epoch(epoch, val_ndcg) -> bool``: called after each epoch; True stops training (a pruned trial).
    ``verbose=False`` logs the epochs at DEBUG (tuning trials log one line each instead).
    ``max_seconds`` > 0: no new epoch starts when the last one (training and validation) would not fit in
    what is left of this many seconds since the call; at least one epoch runs.
    ``strategy``: (strategy, placement) from :func:`pick_strategy` (default: picked from the devices, with
    ``params.deterministic``).
    """
    entered = time.perf_counter()
    say = log.info if verbose else log.debug
    if params.personal and history is None:
        raise ValueError("a personal network needs the train baskets' history")
    tensorflow()  # keras imports TF: import it quietly first (tfrt)
    import keras

    tf = tensorflow()

    keras.utils.set_random_seed(params.seed)
    n_items = train.shape[1]
    strategy, placement = strategy or pick_strategy(deterministic=params.deterministic)
    global_batch = params.batch_size * strategy.num_replicas_in_sync
    out_dir = Path(out_dir) if out_dir else None
    with strategy.scope():
        network = build_network(n_items, params)
        optimizer = keras.optimizers.Adam(params.learning_rate)
        if keras.mixed_precision.global_policy().name == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(network.trainable_variables)
        # the weights' moving average (params.weight_average_epochs, update_average), validated beside the raw ones
        averages = (
            [tf.Variable(v, trainable=False, name=f"average_{i}") for i, v in enumerate(network.trainable_variables)]
            if params.weight_average_epochs > 0
            else []
        )
    steps_per_epoch = -(-train.shape[0] // global_batch)
    momentum = average_momentum(params.weight_average_epochs, steps_per_epoch)

    encoder = keras.Model(network.inputs, network.outputs[1])  # the same layers, up to the hidden vector
    # sampling pays only when the vocabulary is well above the draws; below that the full softmax is as cheap
    sampled = 0 < 2 * params.sampled_softmax < n_items

    def per_example_loss(items_in, targets, hist, training):
        mask = tf.cast(targets >= 0, tf.float32)
        if sampled and training:
            return sampled_loss(encoder([items_in, *hist] if hist else items_in, training=True), targets, mask, hist)
        logits, _ = network([items_in, *hist] if hist else items_in, training=training)
        logp = tf.nn.log_softmax(tf.cast(logits, tf.float32))
        picked = tf.gather(logp, tf.maximum(targets, 0), batch_dims=1)
        return -tf.reduce_sum(picked * mask, axis=1)

    def sampled_loss(hidden, targets, mask, hist):
        """The multinomial likelihood over the batch's own items (every basket's targets) plus
        ``sampled_softmax`` items drawn uniformly; the drawn ones stand for all the others through the
        log-Q correction log(others / drawn), so the softmax's normaliser is estimated without bias."""
        positives = tf.boolean_mask(targets, targets >= 0)
        drawn = tf.random.uniform([params.sampled_softmax], 0, n_items, dtype=tf.int32)
        cols, where = tf.unique(tf.concat([positives, drawn], 0))
        n_cols = tf.shape(cols)[0]
        is_positive = tf.math.unsorted_segment_max(tf.ones_like(positives), where[: tf.size(positives)], n_cols) > 0
        n_pos = tf.reduce_sum(tf.cast(is_positive, tf.float32))
        others = tf.cast(n_items, tf.float32) - n_pos
        correction = tf.math.log(others / tf.maximum(tf.cast(n_cols, tf.float32) - n_pos, 1.0))
        logits = logits_at(network, tf.cast(hidden, tf.float32), cols, hist)
        logp = tf.nn.log_softmax(logits + tf.where(is_positive, 0.0, correction)[None, :])
        picked = tf.gather(logp, tf.gather(column_of(cols, n_items), tf.maximum(targets, 0)), batch_dims=1)
        return -tf.reduce_sum(picked * mask, axis=1)

    dataset = strategy.experimental_distribute_dataset(_dataset(train, params, global_batch, history))
    variables = network.trainable_variables
    # MirroredStrategy and the loss-scaled optimizer keep Keras's own update (its cross-replica sum, its check)
    update = optimizer_update(
        optimizer,
        variables,
        fused=not isinstance(strategy, tf.distribute.MirroredStrategy)
        and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer),
    )

    @tf.function(input_signature=[dataset.element_spec])  # one trace for every basket length
    def train_step(batch):
        def step(items_in, targets, *hist):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(per_example_loss(items_in, targets, hist, True)) / global_batch
                if network.losses:
                    loss += tf.add_n(network.losses) / strategy.num_replicas_in_sync
                scaled = optimizer.scale_loss(loss) if hasattr(optimizer, "scale_loss") else loss
            update(tape.gradient(scaled, variables))
            return loss

        per_replica = strategy.run(step, args=tuple(batch))
        loss = strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
        if averages:
            update_average(averages, network.trainable_variables, optimizer.iterations, momentum)
        return loss

    writer = tf.summary.create_file_writer(str(out_dir / "tensorboard")) if out_dir else None
    ckpt_manager = None
    if out_dir:
        ckpt = tf.train.Checkpoint(model=network)
        ckpt_manager = tf.train.CheckpointManager(ckpt, str(out_dir / "checkpoints"), max_to_keep=2)

    def val_ndcg(spec) -> float:
        return (
            evaluate.evaluate_scores(lambda X, H=None: numpy_logits(spec, X, H), val, n_items)["ndcg@10"]
            if val.n
            else 0.0
        )

    def averaged_spec() -> dict:
        """The network's spec with the averaged weights (the raw ones are put back)."""
        current = [v.numpy() for v in network.trainable_variables]
        try:
            for var, average in zip(network.trainable_variables, averages):
                var.assign(average)
            return forward_spec(network)
        finally:
            for var, value in zip(network.trainable_variables, current):
                var.assign(value)

    result = DeepResult(spec={}, placement=placement)
    say(
        "training deep model: %d baskets, %d items, %s, params %s",
        train.shape[0],
        n_items,
        placement,
        json.dumps(params.to_dict()),
    )
    started = time.perf_counter()
    best, best_spec, best_epoch, waited, examples, best_ndcg_selected = -1.0, None, 0, 0, 0, 0.0
    for epoch in range(1, params.epochs + 1):
        t0 = time.perf_counter()
        losses = []
        for batch in dataset:
            losses.append(float(train_step(batch)))
        seconds = time.perf_counter() - t0
        examples += train.shape[0]
        spec = forward_spec(network)
        ndcg = val_ndcg(spec)
        eps = train.shape[0] / max(seconds, 1e-9)
        row = {
            "epoch": epoch,
            "loss": float(np.mean(losses)),
            "val_ndcg@10": ndcg,
            "examples_per_second": eps,
            "seconds": seconds,
        }
        if averages:  # the epoch offers whichever of its raw and averaged weights validates better
            average_spec = averaged_spec()
            average_ndcg = val_ndcg(average_spec)
            row.update({"val_ndcg@10_raw": ndcg, "val_ndcg@10_average": average_ndcg, "weights": "raw"})
            if average_ndcg > ndcg:
                spec, ndcg = average_spec, average_ndcg
                row.update({"val_ndcg@10": ndcg, "weights": "average"})
        result.history.append(row)
        improved = ndcg > best
        best = max(best, ndcg)
        waited = 0 if improved else waited + 1
        selected = ndcg >= best * (1.0 - params.selection_tolerance)
        if selected:
            best_spec, best_epoch, best_ndcg_selected = spec, epoch, ndcg
            if ckpt_manager:
                ckpt_manager.save(checkpoint_number=epoch)
        say(
            "epoch %d/%d loss %.4f val NDCG@10 %.4f%s%s %.0f examples/s",
            epoch,
            params.epochs,
            row["loss"],
            ndcg,
            f" ({row['weights']} weights; raw {row['val_ndcg@10_raw']:.4f}, average {row['val_ndcg@10_average']:.4f})"
            if averages
            else "",
            " (selected)" if selected else f" (selected epoch {best_epoch}, best {best:.4f})",
            eps,
        )
        if writer:
            with writer.as_default():
                tf.summary.scalar("loss", row["loss"], step=epoch)
                tf.summary.scalar("val_ndcg@10", ndcg, step=epoch)
                tf.summary.scalar("examples_per_second", eps, step=epoch)
        stop = on_epoch is not None and on_epoch(epoch, ndcg)  # every epoch's figure reaches the caller
        if waited >= params.patience:
            say("early stop: no better validation NDCG@10 for %d epochs", params.patience)
            break
        if stop:
            break
        now = time.perf_counter()
        if max_seconds > 0 and epoch < params.epochs and (now - entered) + (now - t0) > max_seconds:
            result.stopped_by_time_budget = True
            say(
                "time budget: %.0fs used of %.0fs, another epoch (%.0fs) would not fit; keeping epoch %d",
                now - entered,
                max_seconds,
                now - t0,
                best_epoch,
            )
            break
    result.train_seconds = time.perf_counter() - started
    result.examples_per_second = examples / max(result.train_seconds, 1e-9)
    result.spec, result.best_epoch, result.best_val_ndcg10 = best_spec, best_epoch, best_ndcg_selected
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "history.json").write_text(json.dumps(result.history, indent=2))
    return result


def fit_deep(
    X: sp.csr_matrix,
    val: evaluate.HoldOut,
    params: DeepParams,
    m,
    out_dir=None,
    history=None,
    *,
    day: str | None = None,
    previous_search: dict | None = None,
):
    """The deep stage: the hyperparameter search within its budget (``[models] deep_tune_*``; skipped at 0),
    or, on a daily run (``day``), an earlier run's search when ``tuning.reusable`` says it stands
    (``previous_search``: that run's trace); then the final training on every basket. Returns (chosen params,
    DeepResult, {"hyperparameter_search": trace} or {})."""
    search, started = {}, time.perf_counter()
    key = tuning.search_key(params, m)
    reuse, why = False, ""
    if day is not None:
        reuse, why = tuning.reusable(
            previous_search, key, day, X.shape[0], X.shape[1], m.deep_tune_reuse_days, m.deep_tune_reuse_max_shift
        )
    if reuse:
        chosen = previous_search["chosen"]
        params = replace(params, **{k: chosen[k] for k in tuning.SEARCHED if k in chosen})
        search = {"hyperparameter_search": tuning.carried(previous_search, why)}
        log.info(
            "tuning: no search; reusing %s: %s (%s)",
            why,
            ", ".join(f"{k}={getattr(params, k):.4g}" for k in tuning.SEARCHED),
            previous_search.get("reason", ""),
        )
    elif m.deep_tune_seconds > 0 and m.deep_tune_trials > 0 and val.n:
        if why:
            log.info("tuning: searching (%s)", why)
        tuned = tuning.tune_deep(
            X,
            val,
            params,
            functools.partial(train_deep, verbose=False),
            seconds=m.deep_tune_seconds,
            trials=m.deep_tune_trials,
            epochs=m.deep_tune_epochs,
            max_baskets=m.deep_tune_max_baskets,
            max_val=m.deep_tune_max_val,
            min_gain=m.deep_tune_min_gain,
            history=history,
        )
        trace = tuning.stamped(tuned.trace(), key, X.shape[0], X.shape[1], day)
        params, search = tuned.params, {"hyperparameter_search": trace}
    budget = m.deep_max_seconds
    left = max(budget - (time.perf_counter() - started), 1e-3) if budget > 0 else 0.0  # the search's time counts
    result = train_deep(X, val, params, out_dir, history=history, max_seconds=left)
    log.info(
        "deep stage: %.0fs (search %.0fs, final training %.0fs)",
        time.perf_counter() - started,
        search["hyperparameter_search"]["seconds"] if search else 0.0,
        result.train_seconds,
    )
    return params, result, search


# --------------------------------------------------------------------------- all candidates
CANDIDATES_DIR = "candidates"
SUMMARY_FILE = "train_summary.json"
MIX_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)  # weight of EASE; 1.0 = EASE alone
MIX_PRIOR_EXTRA = (20.0,)  # the mix is on z-scores: its prior weight can need more than HISTORY_GRID


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux ru_maxrss is in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def deep_params(cfg) -> DeepParams:
    return DeepParams.from_config(cfg.models)


def _grid_summary(scores: dict[str, float], top: int = 3) -> str:
    """A grid search in one short log line: the best few settings and the range (the full grid is in the
    candidate's params and the train summary)."""
    best = sorted(scores.items(), key=lambda kv: -kv[1])[:top]
    return ", ".join(f"{k}: {v:.4f}" for k, v in best) + f"; {len(scores)} tried, worst {min(scores.values()):.4f}"


HISTORY_GRID = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


def _tune_history_weight(
    model, holdout: evaluate.HoldOut, n_items: int, decays=(0.0,), weights=HISTORY_GRID
) -> tuple[tuple[float, float], dict]:
    """(τ, β) for score + β·log(1 + decayed purchase count), chosen on the personalised validation hold-out.

    τ (days) runs over ``decays`` (0: plain counts), β over ``weights``; ties go to the smaller β, then
    the plain counts."""
    grid = [(t, b) for t in decays for b in weights]
    scores = evaluate.tune_on_validation(
        holdout,
        n_items,
        model.base_score,
        lambda base, priors, g: base + g[1] * priors[g[0]],
        grid,
        decays=tuple(decays),
    )
    best = max(scores, key=lambda g: (scores[g], -g[1], -g[0]))
    return best, scores


# the deep mix is on z-scores (plus its prior): on Complete Journey its best weight was 5, the old grid's end
COOC_GRID = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0)


def _tune_cooc_weight(model, holdout: evaluate.HoldOut, n_items: int, decays) -> tuple[tuple[float, float], dict]:
    """(τ, γ) for score + gate·γ·log(1 + personal co-occurrence at decay τ), chosen on the personalised
    validation hold-out with the model's own score (its gated prior included) and its repeat/explore gate
    fixed, so γ = 0 is the model itself; ties go to the smaller γ, then smaller τ."""

    def parts(X, H):
        cooc = {t: np.log1p(H.past.cooc(X, t).toarray()).astype(np.float32) for t in decays}
        return model.score(X, H), cooc, model.personal_gate(X, H)

    grid = [(t, g) for t in decays for g in COOC_GRID]
    scores = evaluate.tune_on_validation(
        holdout, n_items, parts, lambda p, _priors, g: p[0] + p[2] * g[1] * p[1][g[0]], grid
    )
    return max(scores, key=lambda g: (scores[g], -g[1], -g[0])), scores


# the repeat/explore gate (ServableModel.personal_scale, repeat_slope); (1, 0) is no gate
GATE_SCALES = (0.5, 0.75, 1.0, 1.25)
GATE_SLOPES = (0.0, 0.5, 1.0, 2.0)


def _tune_repeat_gate(model, holdout: evaluate.HoldOut, n_items: int) -> dict:
    """Set ``model``'s repeat/explore gate (scale a, slope b) on the personalised validation hold-out: its
    personal terms (prior and co-occurrence, weights fixed) times max(a + b·(s - 1/2), 0) per basket, s the
    share of the basket's items bought before. The scale re-weighs the terms together (their weights were
    chosen one after the other); ties go to no gate. Returns the search's trace."""
    if not (model.history_weight or model.cooc_weight):
        return {}

    def parts(X, H):
        return model.base_score(X, H), model.personal_terms(X, H), repeat_share(X, H)[:, None]

    def combine(p, _priors, g):
        return p[0] + repeat_gate(p[2], *g) * p[1]

    grid = [(a, b) for a in GATE_SCALES for b in GATE_SLOPES]
    scores = evaluate.tune_on_validation(holdout, n_items, parts, combine, grid)
    model.personal_scale, model.repeat_slope = max(scores, key=lambda g: (scores[g], -abs(g[0] - 1.0), -g[1]))
    trace = {f"scale={a:g} slope={b:g}": round(v, 5) for (a, b), v in scores.items()}
    model.params = {
        **model.params,
        "personal_scale": model.personal_scale,
        "repeat_slope": model.repeat_slope,
        "repeat_gate_search_val_ndcg@10": trace,
    }
    log.info(
        "%s: repeat/explore gate scale %g, slope %g chosen on validation (NDCG@10 %s)",
        model.name,
        model.personal_scale,
        model.repeat_slope,
        _grid_summary(trace),
    )
    return trace


def _derived_entry(model, base: dict, started: float, personal_only: bool = True, **extra) -> dict:
    """The train summary's entry of a candidate derived from a saved one (``+personal_cooc``, ``+rerank``):
    its base's kind, its base's training time plus its own since ``started``; ``personal_only`` when its
    anonymous answer is its base's (then the anonymous comparison leaves it out)."""
    return {
        "name": model.name,
        "kind": base["kind"],
        "train_seconds": (base.get("train_seconds") or 0.0) + time.perf_counter() - started,
        "servable": model.servable,
        "personal_only": personal_only,
        **extra,
    }


def _save_cooc_candidate(entry: dict, val: evaluate.HoldOut, n_items: int, decays, save) -> None:
    """``<model>+personal_cooc``: a saved candidate plus its personal co-occurrence (PerNIR-style, what this
    shopper bought together with the items now in the basket), τ and γ chosen on validation with the base
    fixed, then the repeat/explore gate chosen again over both terms (in ``save``; the base's gate is in its
    grid, so the candidate is never below its base on validation). Served from the request's history rows
    (``export.personal_cooc``) when the base is servable; on a dense EASE it stays an evaluation reference."""
    from assoc_lib.models.servable import ServableModel

    started = time.perf_counter()
    model = ServableModel.load(entry["path"])
    base = model.name
    (model.cooc_decay, model.cooc_weight), scores = _tune_cooc_weight(model, val, n_items, decays)
    trace = {f"tau={t:g} gamma={g:g}": round(v, 5) for (t, g), v in scores.items()}
    model.name = f"{base}+personal_cooc"
    model.params = {
        **model.params,
        "served": model.servable,
        "cooc_decay_days": model.cooc_decay,
        "cooc_weight": model.cooc_weight,
        "cooc_search_val_ndcg@10": trace,
    }
    log.info(
        "%s: personal co-occurrence decay %g days, weight %g chosen on validation (NDCG@10 %s)",
        model.name,
        model.cooc_decay,
        model.cooc_weight,
        _grid_summary(trace),
    )
    save(model, _derived_entry(model, entry, started, cooc_weight_grid=trace))


RERANK_HIDDEN = (32, 32)
# the candidates the derived ones are built on: + personal co-occurrence, then + a second stage on those (or,
# without the personal co-occurrence, on these themselves)
DERIVED_BASES = ("ease", "ease_dense", "deep+ease")


def fit_reranker(feats: np.ndarray, labels: np.ndarray, seed: int, epochs: int, k: int) -> rerank.Reranker:
    """The second stage (``models/rerank.py``) fitted with Keras: standardised features, ReLU layers of
    ``RERANK_HIDDEN``, one score per listed item, a softmax over each list against its hidden item
    (``labels``: one 1 per row). Returns its weights for the numpy and TensorFlow scorers."""
    tensorflow()
    import keras

    keras.utils.set_random_seed(seed)
    flat = feats.reshape(-1, feats.shape[-1])  # accumulated in float64, without a float64 copy
    mean = flat.mean(0, dtype=np.float64).astype(np.float32)
    scale = (flat.std(0, dtype=np.float64) + 1e-6).astype(np.float32)
    inputs = keras.Input(feats.shape[1:])
    h = (inputs - mean) / scale
    for width in RERANK_HIDDEN:
        h = keras.layers.Dense(width, activation="relu")(h)
    out = keras.layers.Reshape((feats.shape[1],))(keras.layers.Dense(1)(h))
    net = keras.Model(inputs, out)
    net.compile(keras.optimizers.Adam(1e-3), loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    net.fit(feats, labels, batch_size=128, epochs=epochs, verbose=0)
    dense = [layer for layer in net.layers if isinstance(layer, keras.layers.Dense)]
    kernels = [np.asarray(d.kernel.numpy(), np.float32) for d in dense]
    biases = [np.asarray(d.bias.numpy(), np.float32) for d in dense]
    return rerank.Reranker(mean, scale, kernels, biases, k)


def list_ndcg(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per list: NDCG@10 of its hidden item ordered by ``scores`` (pessimistic on ties; 0 when it is not in
    the list). With lists of at least 10 items it is the whole-vocabulary figure."""
    target = (scores * labels).sum(1)
    ranks = np.where(labels.any(1), (scores >= target[:, None]).sum(1), np.inf)
    return evaluate.ndcg10_per_basket(ranks)


def rerank_lists(model, holdout: evaluate.HoldOut, k: int, batch: int = 512, listed_only: bool = False):
    """(features [rows, k, F], labels [rows, k], bool [rows]: the rows with a history) of ``model``'s first
    stage's top ``k`` on ``holdout`` (anonymous: no row with a history, the history features 0).
    ``listed_only``: only the lists a stage is fitted on (the stage's rows, with a history on the
    personalised protocol, whose hidden item is listed), plus int [rows]: their positions in ``holdout``."""
    feats, labels, rows, at = [], [], [], []
    personal = holdout.history is not None
    for start in range(0, holdout.n, batch):
        sl = slice(start, start + batch)
        H = holdout.history[sl] if personal else None
        _, top, f, r = model.rerank_lists(holdout.inputs[sl], H, k)
        lab = (top == holdout.hidden[sl, None]).astype(np.float32)
        if listed_only:
            keep = np.flatnonzero((r if personal else ~r) & lab.any(1))
            f, lab, r = f[keep], lab[keep], r[keep]
            at.append(start + keep)
        feats.append(f)
        labels.append(lab)
        rows.append(r)
    out = np.concatenate(feats), np.concatenate(labels), np.concatenate(rows)
    return (*out, np.concatenate(at)) if listed_only else out


def cross_fit(fit_lists: tuple, fit_fold: np.ndarray, feats, labels, rows, fold, seed: int, epochs: int, k: int):
    """(the reranker fitted on every list of ``fit_lists`` (features, labels: the lists a stage is fitted
    on), the two halves' rerankers (fitted on the lists of ``fit_fold`` != h), the first stage's per-basket
    NDCG@10 on the evaluation lists ``feats``/``labels``, the cross-fitted one: each evaluated basket of
    ``rows`` (bool) scored by the reranker fitted on the half ``fold`` it is not in). The two sets of lists
    come from the same baskets, a basket's lists in its basket's half, so no half sees a basket it scores."""
    fit_feats, fit_labels = fit_lists
    full = fit_reranker(fit_feats, fit_labels, seed, epochs, k)
    # fold h is scored by the reranker fitted on the other half
    folds = tuple(fit_reranker(fit_feats[fit_fold != h], fit_labels[fit_fold != h], seed, epochs, k) for h in (0, 1))
    base = list_ndcg(-np.arange(feats.shape[1], dtype=np.float64)[None, :].repeat(len(labels), 0), labels)
    crossed = base.copy()
    for h in (0, 1):
        at = rows & (fold == h)
        crossed[at] = list_ndcg(folds[h].forward(feats[at]), labels[at])
    return full, folds, base, crossed


def _fit_stage(model, holdout: evaluate.HoldOut, fold: np.ndarray, fit: evaluate.HoldOut, fit_fold, cfg):
    """(the reranker, its two halves, the record) of one second stage of ``model`` fitted on the lists of
    ``fit`` (the validation baskets, up to ``rerank_lists_per_basket`` hidden items each:
    :func:`evaluate.hold_out_lists`) whose hidden item is in the first stage's top k: on the personalised
    protocol the rows with a history (the stage for shoppers), on the anonymous one every row (the stage for
    a basket without history). Its validation figure is cross-fitted on ``holdout`` (the evaluation's
    hold-out of the same baskets; ``fold``/``fit_fold``: each row's half, by order id). None when a half of
    validation has under ``rerank_min_lists`` lists."""
    k, epochs, seed = cfg.models.rerank_top_k, cfg.models.rerank_epochs, cfg.models.seed
    fit_feats, fit_labels, _, at = rerank_lists(model, fit, k, listed_only=True)
    fit_fold = fit_fold[at]
    least = cfg.models.rerank_min_lists
    if min(int((fit_fold == h).sum()) for h in (0, 1)) < least:
        log.info("%s: no %s reranker (under %d lists in a half of validation)", model.name, holdout.protocol, least)
        return None
    feats, labels, with_history = rerank_lists(model, holdout, k)
    rows = with_history if holdout.history is not None else ~with_history
    keep = rows & labels.any(1)
    full, folds, base, crossed = cross_fit(
        (fit_feats, fit_labels), fit_fold, feats, labels, rows, fold, seed, epochs, k
    )
    record = {
        "lists": len(fit_labels),
        "baskets_listed": int(keep.sum()),
        "val_ndcg@10_first_stage": round(float(base.mean()), 5),
        "val_ndcg@10_cross_fitted": round(float(crossed.mean()), 5),
    }
    log.info(
        "%s: %s reranker over the top %d fitted on %d validation lists (up to %s hidden items per basket); "
        "validation NDCG@10 %.4f -> %.4f (cross-fitted: each half scored by the reranker fitted on the other)",
        model.name,
        holdout.protocol,
        k,
        record["lists"],
        cfg.models.rerank_lists_per_basket or "all",
        record["val_ndcg@10_first_stage"],
        record["val_ndcg@10_cross_fitted"],
    )
    return full, folds, record


def _save_rerank_candidate(
    entry: dict, val: evaluate.HoldOut, order_ids, fit: evaluate.HoldOut, fit_order_ids, cfg, save
) -> None:
    """``<model>+rerank``: a saved candidate with the second stage (``models/rerank.py``): one reranker
    fitted on the validation baskets with a history (personalised protocol), one on every validation basket
    without it (anonymous protocol), each on the lists of ``fit`` (up to ``rerank_lists_per_basket`` hidden
    items per basket, :func:`evaluate.hold_out_lists`) whose hidden item is in the candidate's top k. Each
    network is also fitted on each half of those baskets (``rerank.fold_of``: a hash of the order id; the
    same halves for both), and evaluation scores each validation basket with the halves that did not see it,
    so the gate's validation figure is cross-fitted; test and serving use the ones fitted on all of
    validation. The first stage (its weights, prior, co-occurrence and gate) is the candidate's, unchanged.
    None saved when neither stage has enough lists."""
    from assoc_lib.models.servable import ServableModel

    started = time.perf_counter()
    model = ServableModel.load(entry["path"])
    fold = rerank.fold_of(order_ids, cfg.models.eval_seed)
    fit_fold = rerank.fold_of(fit_order_ids, cfg.models.eval_seed)  # a basket's lists in its basket's half
    personal = _fit_stage(model, val, fold, fit, fit_fold, cfg) if val.history is not None else None
    anonymous = _fit_stage(model, val.anonymous(), fold, fit.anonymous(), fit_fold, cfg)
    if personal is None and anonymous is None:
        return
    model.name = f"{model.name}+rerank"
    model.reranker, model.reranker_folds = personal[:2] if personal else (None, None)
    model.reranker_anonymous, model.reranker_anonymous_folds = anonymous[:2] if anonymous else (None, None)
    model.fold_seed = cfg.models.eval_seed
    record = {
        "top_k": cfg.models.rerank_top_k,
        "features": list(rerank.FEATURES),
        "hidden": list(RERANK_HIDDEN),
        "epochs": cfg.models.rerank_epochs,
        "lists_per_basket": cfg.models.rerank_lists_per_basket,
        "personal": personal and personal[2],
        "anonymous": anonymous and anonymous[2],
    }
    model.params = {**model.params, "reranker": record}
    # with an anonymous stage its anonymous answer is its own, not its base's
    only = bool(entry.get("personal_only")) and anonymous is None
    save(model, _derived_entry(model, entry, started, personal_only=only, reranker=record))


def train_candidates(
    prep_dir: str | os.PathLike,
    cfg,
    out_dir: str | os.PathLike,
    *,
    day: str | None = None,
    previous_search: dict | None = None,
) -> dict:
    """Fit every classical scorer and the deep network on the same train split; save each as a candidate.

    On data with user ids the personalised protocol is on: each candidate also gets a history
    weight β tuned on validation, ``personal_frequency`` joins as a baseline, and the deep network
    takes the shopper's history as a second input. A daily run passes its ``day`` and the most recent
    earlier run's search trace (``previous_search``), which ``fit_deep`` may reuse instead of searching.
    Returns a small summary for XCom and logs.
    """
    from assoc_lib.data.preprocess import load_split, split_baskets
    from assoc_lib.models import baselines
    from assoc_lib.models.explain import evidence_table
    from assoc_lib.models.network import standardise
    from assoc_lib.models.servable import ServableModel

    out_dir = Path(out_dir)
    cand_dir = out_dir / CANDIDATES_DIR
    cand_dir.mkdir(parents=True, exist_ok=True)
    baskets, vocab = load_split(prep_dir)
    splits = split_baskets(baskets)
    n_items = len(vocab)
    X = baselines.baskets_to_csr(splits["train"], n_items)
    params = deep_params(cfg)
    prior_decays = decay_list(cfg.models.prior_decay_days) or (0.0,)
    cooc_decays = decay_list(cfg.models.personal_cooc_decay_days)  # the personal co-occurrence candidates
    holdouts, history = evaluate.make_holdouts(
        baskets,
        n_items,
        cfg.models.eval_seed,
        cfg.models.history_max_items,
        decays=prior_decays,
        train_decays=(params.history_decay,),
        past=bool(cooc_decays) or bool(cfg.models.rerank_top_k),  # both read the shopper's past baskets
    )
    personal = history is not None
    cooc_decays = cooc_decays if personal else ()
    log.info("split loaded, histories built: peak RSS %.0f MB", peak_rss_mb())
    val = holdouts["validation"]  # personalised when the data has users
    popularity = baselines.popularity_counts(X)
    popularity_only = baselines.NeighbourTable.bias_only(baselines.TIE_BREAK * popularity)  # ties, empty baskets
    evidence = evidence_table(X, cfg.models.evidence_top_n)
    entries, ease_table, ease_fit = [], None, None

    def save(
        model, entry: dict, decays=prior_decays, weights=HISTORY_GRID, tuned: bool = False, gate: bool = True
    ) -> None:
        model.evidence = evidence
        if personal:  # the cap its histories were built with: the served graph applies it to a request's rows
            model.history_max_items = cfg.models.history_max_items
        entry["peak_rss_mb"] = peak_rss_mb()
        if personal and not tuned:
            (model.history_decay, model.history_weight), grid = _tune_history_weight(
                model, val, n_items, decays, weights
            )
            trace = {f"tau={t:g} beta={b:g}": round(v, 5) for (t, b), v in grid.items()}
            entry["history_weight_grid"] = trace
            # the choice and its search trace travel with the model (and into the export's model card)
            model.params = {
                **model.params,
                "prior_decay_days": model.history_decay,
                "prior_weight": model.history_weight,
                "prior_search_val_ndcg@10": trace,
            }
            log.info(
                "%s: personal prior decay %g days, weight %.3g chosen on validation (personalised NDCG@10 %s)",
                model.name,
                model.history_decay,
                model.history_weight,
                _grid_summary(trace),
            )
        if personal:
            if gate:
                entry["repeat_gate_grid"] = _tune_repeat_gate(model, val, n_items)
            entry["history_weight"], entry["history_decay"] = model.history_weight, model.history_decay
            entry["personal_scale"], entry["repeat_slope"] = model.personal_scale, model.repeat_slope
        entry["path"] = str(model.save(cand_dir / f"{model.name}.npz"))
        entries.append(entry)

    for scorer in baselines.default_scorers(cfg):
        seconds = baselines.fit_timed(scorer, X)
        model = ServableModel(
            scorer.name, ModelKind.CLASSICAL, vocab, popularity, table=scorer.neighbour_table(), params=scorer.params()
        )
        save(model, {"name": scorer.name, "kind": ModelKind.CLASSICAL, "train_seconds": seconds})
        if scorer.name == "ease":
            ease_table = model.table
            ease_fit = scorer if scorer.m == n_items else None  # the full matrix: ease_dense reuses it
        del scorer
    dense_max = cfg.models.ease_dense_max_items
    if dense_max and n_items <= dense_max:
        # the strongest classical reference: full-rank EASE on every item, scored with its dense matrix
        if ease_fit is not None:
            ease_dense, seconds = ease_fit, next(e["train_seconds"] for e in entries if e["name"] == "ease")
        else:
            ease_dense = baselines.EASE(l2=cfg.models.ease_l2, max_items=n_items)
            seconds = baselines.fit_timed(ease_dense, X)
        model = ServableModel(
            "ease_dense",
            ModelKind.CLASSICAL,
            vocab,
            popularity,
            table=popularity_only,
            dense=ease_dense.B,
            params={**ease_dense.params(), "dense": True, "served": False},
        )
        save(model, {"name": "ease_dense", "kind": ModelKind.CLASSICAL, "train_seconds": seconds, "servable": False})
        del ease_dense, model
    elif dense_max:
        log.info("ease_dense skipped: %d items > ease_dense_max_items %d", n_items, dense_max)
    ease_fit = None  # the full matrix is saved: free it before the network trains
    if personal:
        frequency = ServableModel(
            "personal_frequency",
            ModelKind.CLASSICAL,
            vocab,
            popularity,
            table=popularity_only,
            history_weight=1.0,
            params={"score": "log(1 + decayed purchase count), decay chosen on validation; ties by popularity"},
        )
        save(
            frequency,
            {"name": "personal_frequency", "kind": ModelKind.CLASSICAL, "train_seconds": 0.0, "personal_only": True},
            weights=(1.0,),
        )
    params.personal = personal
    train_rows = np.flatnonzero((baskets["split"] == "train").to_numpy())
    train_history = history[train_rows] if personal else None
    log.info("classical candidates done: peak RSS %.0f MB", peak_rss_mb())
    params, result, search = fit_deep(
        X, val, params, cfg.models, out_dir / "deep", train_history, day=day, previous_search=previous_search
    )
    search_seconds = search["hyperparameter_search"]["seconds"] if search else 0.0
    log.info("deep training done: peak RSS %.0f MB", peak_rss_mb())
    # a deep model's own prior uses the network's decay (or plain counts): one decay per served model, so a
    # request with one row per item (count, days) reproduces it exactly
    deep_decays = (0.0, params.history_decay)
    deep = ServableModel("deep", ModelKind.DEEP, vocab, popularity, deep=result.spec, params=params.to_dict() | search)
    save(
        deep,
        {
            "name": "deep",
            "kind": ModelKind.DEEP,
            # the search included: the deep stage's whole cost (the final training alone: final_train_seconds)
            "train_seconds": result.train_seconds + search_seconds,
            "final_train_seconds": result.train_seconds,
            "search_seconds": search_seconds,
            "best_epoch": result.best_epoch,
            "examples_per_second": result.examples_per_second,
            "stopped_by_time_budget": result.stopped_by_time_budget,
        },
        decays=deep_decays,
    )
    if cfg.models.deep_mix_with_ease and ease_table is not None and val.n:
        started = time.perf_counter()
        # the mix weight and the personal prior are chosen together: (EASE weight w, decay τ, prior weight β);
        # w = 1 is EASE alone (+ prior), so on validation deep+ease is never worse than EASE
        grid = (
            [(w, t, b) for w in (0.0,) + MIX_GRID for t in deep_decays for b in HISTORY_GRID + MIX_PRIOR_EXTRA]
            if personal
            else [(w, 0.0, 0.0) for w in (0.0,) + MIX_GRID]
        )
        scores = evaluate.tune_on_validation(
            val,
            n_items,
            lambda Xb, Hb: (standardise(result.score(Xb, Hb)), standardise(ease_table.score(Xb))),
            lambda parts, priors, g: (1 - g[0]) * parts[0] + g[0] * parts[1] + g[2] * priors[g[1]],
            grid,
            decays=deep_decays,
        )
        weight, decay, beta = max(scores, key=lambda g: (scores[g], -g[2], g[0]))
        trace = {f"w={w:g} tau={t:g} beta={b:g}": round(v, 5) for (w, t, b), v in scores.items()}
        weight_anonymous, anonymous_trace = None, {}
        if personal:  # a basket without history gets its own mix, chosen on the anonymous validation protocol
            anon = evaluate.tune_on_validation(
                val.anonymous(),
                n_items,
                lambda Xb, Hb: (standardise(result.score(Xb)), standardise(ease_table.score(Xb))),
                lambda parts, priors, w: (1 - w) * parts[0] + w * parts[1],
                (0.0,) + MIX_GRID,
            )
            weight_anonymous = max(anon, key=lambda w: (anon[w], w))
            anonymous_trace = {f"w={w:g}": round(v, 5) for w, v in anon.items()}
        hybrid = ServableModel(
            "deep+ease",
            ModelKind.DEEP,
            vocab,
            popularity,
            table=ease_table,
            deep=result.spec,
            mix_weight=weight,
            mix_weight_anonymous=weight_anonymous,
            history_weight=beta if personal else 0.0,
            history_decay=decay if personal else 0.0,
            params={
                **params.to_dict(),
                **search,
                "mix_weight": weight,
                "prior_decay_days": decay,
                "prior_weight": beta,
                "mix_and_prior_search_val_ndcg@10": trace,
                "mix_weight_anonymous": weight_anonymous,
                "anonymous_mix_search_val_ndcg@10": anonymous_trace,
            },
        )
        log.info(
            "deep+ease: weight of EASE %.1f, personal prior decay %g days, weight %g chosen together on validation "
            "(NDCG@10 %s)%s",
            weight,
            decay,
            beta,
            _grid_summary(trace),
            f"; without history: weight of EASE {weight_anonymous:g} ({_grid_summary(anonymous_trace)})"
            if personal
            else "",
        )
        save(
            hybrid,
            {
                "name": "deep+ease",
                "kind": ModelKind.DEEP,
                "mix_weight": weight,
                "mix_weight_anonymous": weight_anonymous,
                "history_weight_grid": trace,
                "anonymous_mix_grid": anonymous_trace,
                "train_seconds": result.train_seconds + search_seconds + time.perf_counter() - started,
            },
            tuned=True,
        )
    for base in DERIVED_BASES if cooc_decays and val.n else ():
        entry = next((e for e in entries if e["name"] == base), None)
        if entry is not None:
            _save_cooc_candidate(entry, val, n_items, cooc_decays, lambda model, e: save(model, e, tuned=True))
    if cfg.models.rerank_top_k and val.n:
        # the second stage, deep and classical alike (so the verdict stays best against best): on every
        # candidate with the personal co-occurrence, or, without users, on the candidates it would be built on
        order_ids = baskets["order_id"].to_numpy()[val.frame_rows]
        # the stages' training lists: the same validation baskets, up to rerank_lists_per_basket hidden items each
        val_rows = np.flatnonzero((baskets["split"] == "validation").to_numpy())
        fit = evaluate.hold_out_lists(
            splits["validation"],
            n_items,
            cfg.models.rerank_lists_per_basket,
            cfg.models.eval_seed + 2,  # its own stream (the hold-outs' are eval_seed and eval_seed + 1)
            history[val_rows] if history is not None else None,
        )
        fit_order_ids = baskets["order_id"].to_numpy()[val_rows[fit.basket_rows]]
        bases = [
            e for e in entries if (e["name"].endswith("+personal_cooc") if cooc_decays else e["name"] in DERIVED_BASES)
        ]
        for entry in bases:
            _save_rerank_candidate(
                entry, val, order_ids, fit, fit_order_ids, cfg, lambda model, e: save(model, e, tuned=True, gate=False)
            )
    summary = {
        "prep_dir": str(prep_dir),
        "out_dir": str(out_dir),
        "n_items": n_items,
        "n_train_baskets": X.shape[0],
        "placement": result.placement,
        "candidates": entries,
        "protocol": "personalised" if personal else "anonymous",
        "deep_history": result.history,
        **search,
    }
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=float) + "\n")
    return summary
