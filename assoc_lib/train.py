"""Train the deep basket-completion network: tf.data, tf.distribute, early stopping on validation NDCG@10.

Denoising objective: each training basket loses a random share of its items
(``input_dropout``, at least one kept) and the network predicts the whole
basket with a multinomial (softmax) likelihood; ``sampled_softmax > 0`` swaps
the full softmax for sampled softmax (one positive drawn per basket per step)
for large vocabularies.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from assoc_lib import evaluate
from assoc_lib.model import DeepParams, build_network, csr_to_padded, forward_spec, numpy_logits

log = logging.getLogger(__name__)


def pick_strategy():
    """MirroredStrategy (+ mixed precision) when GPUs are visible, the default strategy on CPU."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        import keras

        keras.mixed_precision.set_global_policy("mixed_float16")
        return tf.distribute.MirroredStrategy(), f"MirroredStrategy over {len(gpus)} GPU(s), mixed_float16"
    return tf.distribute.get_strategy(), "default strategy on CPU, float32"


@dataclass
class DeepResult:
    spec: dict  # numpy weights of the best epoch (see model.forward_spec)
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_val_ndcg10: float = 0.0
    train_seconds: float = 0.0
    examples_per_second: float = 0.0
    placement: str = ""

    def score(self, X: sp.csr_matrix) -> np.ndarray:
        return numpy_logits(self.spec, X)


def _dataset(train: sp.csr_matrix, params: DeepParams, global_batch: int):
    import tensorflow as tf

    values = tf.constant(train.indices.astype(np.int32))
    ragged = tf.RaggedTensor.from_row_splits(values, tf.constant(train.indptr.astype(np.int64)))
    ds = tf.data.Dataset.from_tensor_slices(ragged)
    ds = ds.shuffle(min(train.shape[0], 100_000), seed=params.seed, reshuffle_each_iteration=True)

    p = params.input_dropout

    def corrupt(items):
        n = tf.shape(items)[0]
        r = tf.random.uniform([n], seed=params.seed)
        keep = tf.logical_or(r >= p, tf.equal(tf.range(n), tf.cast(tf.argmax(r), tf.int32)))
        return tf.boolean_mask(items, keep), items

    ds = ds.map(corrupt, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.padded_batch(global_batch, padded_shapes=([None], [None]), padding_values=(-1, -1))
    return ds.prefetch(tf.data.AUTOTUNE)


def train_deep(train: sp.csr_matrix, val: evaluate.HoldOut, params: DeepParams,
               out_dir: str | os.PathLike | None = None) -> DeepResult:
    """Train on binary train baskets; keep the epoch with the best validation NDCG@10."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(params.seed)
    n_items = train.shape[1]
    strategy, placement = pick_strategy()
    global_batch = params.batch_size * strategy.num_replicas_in_sync
    out_dir = Path(out_dir) if out_dir else None
    with strategy.scope():
        network = build_network(n_items, params)
        optimizer = keras.optimizers.Adam(params.learning_rate)
        if keras.mixed_precision.global_policy().name == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(network.trainable_variables)
    out_layer = network.get_layer("item_logits")

    def per_example_loss(items_in, targets, training):
        logits, hidden = network(items_in, training=training)
        mask = tf.cast(targets >= 0, tf.float32)
        if params.sampled_softmax and training:
            # One positive per basket per step, drawn from the full basket.
            r = tf.random.uniform(tf.shape(mask)) * mask
            label = tf.gather(targets, tf.argmax(r, axis=1), batch_dims=1)[:, None]
            loss = tf.nn.sampled_softmax_loss(
                weights=tf.transpose(tf.cast(out_layer.kernel, tf.float32)),
                biases=tf.cast(out_layer.bias, tf.float32), labels=tf.cast(label, tf.int64),
                inputs=tf.cast(hidden, tf.float32), num_sampled=params.sampled_softmax, num_classes=n_items)
            return loss * tf.reduce_sum(mask, axis=1)
        logp = tf.nn.log_softmax(tf.cast(logits, tf.float32))
        picked = tf.gather(logp, tf.maximum(targets, 0), batch_dims=1)
        return -tf.reduce_sum(picked * mask, axis=1)

    dataset = strategy.experimental_distribute_dataset(_dataset(train, params, global_batch))

    @tf.function(input_signature=[dataset.element_spec])  # one trace for every basket length
    def train_step(batch):
        items_in, targets = batch

        def step(items_in, targets):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(per_example_loss(items_in, targets, True)) / global_batch
                if network.losses:
                    loss += tf.add_n(network.losses) / strategy.num_replicas_in_sync
                scaled = optimizer.scale_loss(loss) if hasattr(optimizer, "scale_loss") else loss
            grads = tape.gradient(scaled, network.trainable_variables)
            optimizer.apply(grads, network.trainable_variables)
            return loss

        per_replica = strategy.run(step, args=(items_in, targets))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    writer = tf.summary.create_file_writer(str(out_dir / "tensorboard")) if out_dir else None
    ckpt_manager = None
    if out_dir:
        ckpt = tf.train.Checkpoint(model=network)
        ckpt_manager = tf.train.CheckpointManager(ckpt, str(out_dir / "checkpoints"), max_to_keep=2)

    def val_ndcg() -> float:
        return evaluate.evaluate_scores(lambda X: numpy_logits(forward_spec(network), X), val, n_items)["ndcg@10"] \
            if val.n else 0.0

    result = DeepResult(spec={}, placement=placement)
    log.info("training deep model: %d baskets, %d items, %s, params %s", train.shape[0], n_items, placement,
             json.dumps(params.to_dict()))
    started = time.perf_counter()
    best, best_spec, best_epoch, waited, examples = -1.0, None, 0, 0, 0
    for epoch in range(1, params.epochs + 1):
        t0 = time.perf_counter()
        losses = []
        for batch in dataset:
            losses.append(float(train_step(batch)))
        seconds = time.perf_counter() - t0
        examples += train.shape[0]
        ndcg = val_ndcg()
        eps = train.shape[0] / max(seconds, 1e-9)
        row = {"epoch": epoch, "loss": float(np.mean(losses)), "val_ndcg@10": ndcg, "examples_per_second": eps,
               "seconds": seconds}
        result.history.append(row)
        improved = ndcg > best
        if improved:
            best, best_spec, best_epoch, waited = ndcg, forward_spec(network), epoch, 0
            if ckpt_manager:
                ckpt_manager.save(checkpoint_number=epoch)
        else:
            waited += 1
        log.info("epoch %d/%d loss %.4f val NDCG@10 %.4f%s %.0f examples/s",
                 epoch, params.epochs, row["loss"], ndcg, " (best)" if improved else f" (best {best:.4f} @ {best_epoch})",
                 eps)
        if writer:
            with writer.as_default():
                tf.summary.scalar("loss", row["loss"], step=epoch)
                tf.summary.scalar("val_ndcg@10", ndcg, step=epoch)
                tf.summary.scalar("examples_per_second", eps, step=epoch)
        if waited >= params.patience:
            log.info("early stop: no better validation NDCG@10 for %d epochs", params.patience)
            break
    result.train_seconds = time.perf_counter() - started
    result.examples_per_second = examples / max(result.train_seconds, 1e-9)
    result.spec, result.best_epoch, result.best_val_ndcg10 = best_spec, best_epoch, best
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "history.json").write_text(json.dumps(result.history, indent=2))
    return result


def padded_ids(X: sp.csr_matrix) -> np.ndarray:
    return csr_to_padded(X)
