"""The deep network's training step, part by part, on a prepared split: what each of the step's speed-ups
is worth, against the form it replaced, measured in the same process on the same batches.

    python benchmarks/train_step.py --prep W/prep --out step.json [--steps 40]

Variants of one sampled-softmax step of the personal network at the configured settings (as
``train.train_deep`` runs it, without the log-Q correction, which costs the same in every variant):

- ``shipped``: ``network.logits_at`` (the repeat prior added at the history's entries) and
  ``train.optimizer_update`` fused (Adam's update one XLA-compiled function on dense gradients);
- ``dense_prior``: the prior as dense [batch, columns] rows (``network.scatter_rows``, the former form);
- ``keras_apply``: Keras's own ``optimizer.apply`` on the sparse gradients (the former update);
- ``former``: both former forms.

Also the input pipeline alone (``train._dataset``, seconds per batch), which runs beside the step on the same
cores. Prints seconds per step and each variant's ratio to ``shipped``; writes JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prep", required=True, type=Path, help="a prepared split (quality.py's W/prep)")
    ap.add_argument("--steps", type=int, default=40, help="timed steps per variant and round")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    from assoc_lib import evaluate
    from assoc_lib.config import load_config
    from assoc_lib.data.preprocess import load_split, split_baskets
    from assoc_lib.models.baselines import baskets_to_csr
    from assoc_lib.models.network import build_network, column_of, logits_at, scatter_rows
    from assoc_lib.tfrt import tensorflow
    from assoc_lib.train import _dataset, deep_params, optimizer_update

    tf = tensorflow()
    import keras

    cfg = load_config()
    baskets, vocab = load_split(args.prep)
    n_items = len(vocab)
    X = baskets_to_csr(split_baskets(baskets)["train"], n_items)
    params = deep_params(cfg)
    _, history = evaluate.make_holdouts(
        baskets, n_items, cfg.models.eval_seed, cfg.models.history_max_items, decays=(0.0,),
        train_decays=(params.history_decay,),
    )  # fmt: skip
    params.personal = history is not None
    if not params.personal:
        raise SystemExit("the split has no shoppers: the personal network's step cannot be measured")
    H = history[np.flatnonzero((baskets["split"] == "train").to_numpy())]
    ds = _dataset(X, params, params.batch_size, H)

    started = time.perf_counter()
    batches = list(ds.take(args.steps + 1))
    pipeline = (time.perf_counter() - started) / len(batches)

    keras.utils.set_random_seed(params.seed)
    network = build_network(n_items, params)
    optimizer = keras.optimizers.Adam(params.learning_rate)
    optimizer.build(network.trainable_variables)
    variables = network.trainable_variables
    encoder = keras.Model(network.inputs, network.outputs[1])
    prior = network.get_layer("repeat_prior")
    updates = {fused: optimizer_update(optimizer, variables, fused) for fused in (True, False)}

    def columns(hidden, cols, hist, dense_prior: bool):
        """``network.logits_at`` (shipped), or with ``dense_prior`` the former form of its prior."""
        if not dense_prior:
            return logits_at(network, hidden, cols, hist)
        logits = logits_at(network, hidden, cols)  # without the prior, then the prior as dense rows
        ids, weights, decayed = hist
        n = tf.shape(cols)[0]
        at = tf.where(ids >= 0, tf.gather(column_of(cols, n_items), tf.maximum(ids, 0)), -1)
        logits += scatter_rows(at, weights, n) * tf.gather(prior.gamma + prior.repeat_bias, cols)[None, :]
        return logits + scatter_rows(at, decayed, n) * tf.gather(prior.delta + prior.recency_bias, cols)[None, :]

    def make(dense_prior: bool, fused: bool):
        @tf.function(input_signature=[ds.element_spec])
        def step(batch):
            items_in, targets, *hist = batch
            with tf.GradientTape() as tape:
                hidden = encoder([items_in, *hist], training=True)
                drawn = tf.random.uniform([params.sampled_softmax], 0, n_items, dtype=tf.int32)
                cols, _ = tf.unique(tf.concat([tf.boolean_mask(targets, targets >= 0), drawn], 0))
                logits = columns(hidden, cols, hist, dense_prior)
                where = tf.gather(column_of(cols, n_items), tf.maximum(targets, 0))
                picked = tf.gather(tf.nn.log_softmax(logits), where, batch_dims=1)
                loss = -tf.reduce_mean(tf.reduce_sum(picked * tf.cast(targets >= 0, tf.float32), 1))
            updates[fused](tape.gradient(loss, variables))
            return loss

        return step

    items_in, targets, *hist = batches[0]  # the two forms of the prior give the same logits
    hidden = encoder([items_in, *hist], training=False)
    cols, _ = tf.unique(tf.boolean_mask(targets, targets >= 0))
    prior_diff = float(tf.reduce_max(tf.abs(columns(hidden, cols, hist, True) - columns(hidden, cols, hist, False))))

    variants = {
        "shipped": make(False, True),
        "dense_prior": make(True, True),
        "keras_apply": make(False, False),
        "former": make(True, False),
    }
    for step in variants.values():  # trace and compile outside the timing
        step(batches[0])
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(2):  # two interleaved rounds: a machine that changes speed changes every variant alike
        for name, step in variants.items():
            t0 = time.perf_counter()
            for batch in batches[1:]:
                step(batch)
            seconds[name].append((time.perf_counter() - t0) / args.steps)
    per_step = {name: float(np.mean(s)) for name, s in seconds.items()}
    out = {
        "prep": str(args.prep),
        "batch_size": params.batch_size,
        "sampled_softmax": params.sampled_softmax,
        "steps": args.steps,
        "pipeline_seconds_per_batch": pipeline,
        "prior_forms_max_abs_difference": prior_diff,
        "seconds_per_step": per_step,
        "rounds": seconds,
        "ratio_to_shipped": {name: s / per_step["shipped"] for name, s in per_step.items()},
        "examples_per_second": {name: params.batch_size / s for name, s in per_step.items()},
    }
    print(f"input pipeline alone: {pipeline:.3f} s/batch of {params.batch_size}")
    for name, s in per_step.items():
        ratio, rate = out["ratio_to_shipped"][name], params.batch_size / s
        print(f"{name:12s} {s:.3f} s/step  {ratio:.2f}x shipped  {rate:,.0f} examples/s")
    if args.out:
        args.out.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
