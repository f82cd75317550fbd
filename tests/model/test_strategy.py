"""The replica path of the deep training (what a GPU machine runs: MirroredStrategy, mixed precision) run on
two logical CPU devices, as TensorFlow's own distribution tests do. The GPU run itself needs a GPU; this
checks the code around it: the global batch split over replicas, the per-replica losses summed, the
loss-scaled optimizer, float16 activations against float32 weights, in full and sampled softmax, anonymous
and personal (the history inputs and the repeat prior: the first GPU run, on an H200, found the personal
network could not be built under mixed precision, which the anonymous runs here had not shown)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# a fresh process: the logical devices must be set before TensorFlow starts its runtime
SCRIPT = r"""
import dataclasses
import json
import numpy as np
import scipy.sparse as sp
from assoc_lib import evaluate
from assoc_lib.data.history import History
from assoc_lib.models.network import DeepParams
from assoc_lib.train import pick_strategy, train_deep

strategy = pick_strategy(cpu_replicas=2, mixed_precision=True)
rng = np.random.default_rng(0)
n_items = 400


def baskets(n):  # planted pairs: items 2i and 2i + 1 (i < 150) are always bought together
    out = []
    for _ in range(n):
        pairs = rng.choice(150, size=2, replace=False)
        out.append(sorted(int(i) for p in pairs for i in (2 * p, 2 * p + 1)))
    return out


def shoppers(rows):  # personal: shopper u = row % 100 also buys item 300 + u every time, and it is in the history
    items = [b + [300 + r % 100] for r, b in enumerate(rows)]
    counts = sp.csr_matrix(
        (np.full(2 * len(rows), 3.0, np.float32), ([r for r in range(len(rows)) for _ in (0, 1)],
         [i for r in range(len(rows)) for i in (300 + r % 100, 300 + (r + 37) % 100)])),
        shape=(len(rows), n_items),
    )
    return items, History(counts, {30.0: counts * 0.5})


train_rows, val_rows = baskets(3000), baskets(400)
train = evaluate.baskets_to_csr(train_rows, n_items)
val = evaluate.hold_out(val_rows, n_items, seed=1)
train_items, train_h = shoppers(train_rows)
train_p = evaluate.baskets_to_csr(train_items, n_items)
val_items, val_h = shoppers(val_rows)
val_p = evaluate.hold_out(val_items, n_items, seed=1)
val_p = dataclasses.replace(val_p, history=val_h[val_p.basket_rows])
out = {"placement": strategy[1], "replicas": strategy[0].num_replicas_in_sync, "runs": {}}
for personal in (False, True):
    for sampled in (0, 40):
        params = DeepParams(
            embedding_dim=32, epochs=6, batch_size=32, learning_rate=0.01, sampled_softmax=sampled, patience=6,
            input_dropout=0.0, weight_average_epochs=0.0, personal=personal, history_decay=30.0,
        )
        X, V = (train_p, val_p) if personal else (train, val)
        result = train_deep(X, V, params, history=train_h if personal else None, strategy=strategy, verbose=False)
        scores = result.score(V.inputs, V.history)
        out["runs"][("personal " if personal else "") + str(sampled)] = {
            "placement": result.placement,
            "losses": [h["loss"] for h in result.history],
            "best_val": result.best_val_ndcg10,
            "numpy_val": float(evaluate.evaluate_scores(result.score, V, n_items)["ndcg@10"]),
            "dtypes": sorted({str(np.asarray(v).dtype) for v in result.spec.values() if isinstance(v, np.ndarray)}),
            "finite": bool(np.isfinite(scores).all()),
        }
print("RESULT" + json.dumps(out))
"""


def test_mirrored_mixed_precision_training_on_two_cpu_replicas():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    line = next(x for x in run.stdout.splitlines() if x.startswith("RESULT"))
    out = json.loads(line.removeprefix("RESULT"))
    assert out["replicas"] == 2
    assert out["placement"] == "MirroredStrategy over 2 CPU replicas, mixed_float16"
    assert sorted(out["runs"]) == ["0", "40", "personal 0", "personal 40"]
    for sampled, r in out["runs"].items():
        assert r["placement"] == out["placement"]
        assert all(map(lambda v: v == v and abs(v) < 1e6, r["losses"])), (sampled, r["losses"])  # finite
        assert r["losses"][-1] < r["losses"][0], (sampled, r["losses"])  # it learns
        # the planted partner of a hidden pair item is in the basket, a hidden personal item in the history:
        # far above chance (about 0.01)
        assert r["best_val"] > 0.3, (sampled, r)
        # the saved weights are float32 and the numpy scorer reproduces the validation figure
        assert r["dtypes"] == ["float32"] and r["finite"]
        assert abs(r["numpy_val"] - r["best_val"]) < 0.02, (sampled, r)


def test_a_non_finite_embedding_gradient_is_skipped_under_loss_scaling():
    """The loss-scaled update must skip a step whose gradient has a NaN anywhere, also in an embedding row
    that a batch looked up twice (an IndexedSlices with a repeated index, one finite value and one NaN):
    the table stays as it was and the loss scale halves. Keras's own check passes that NaN through."""
    import keras
    import numpy as np
    import tensorflow as tf

    from assoc_lib.train import optimizer_update

    table = tf.Variable(np.ones((4, 2), np.float32))
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(0.1))
    optimizer.build([table])
    update = optimizer_update(optimizer, [table], fused=False)
    scale = float(optimizer.dynamic_scale.numpy())
    nan = tf.IndexedSlices(tf.constant([[1.0, np.nan], [2.0, 3.0]]), tf.constant([1, 1]), tf.constant([4, 2]))
    update([nan])
    np.testing.assert_array_equal(table.numpy(), np.ones((4, 2), np.float32))
    assert float(optimizer.dynamic_scale.numpy()) == scale / 2
    finite = tf.IndexedSlices(tf.constant([[1.0, 1.0], [2.0, 3.0]]), tf.constant([1, 1]), tf.constant([4, 2]))
    update([finite])  # a finite step still moves the rows it names, and only those
    moved = table.numpy()
    assert np.isfinite(moved).all() and (moved[1] < 1).all()
    np.testing.assert_array_equal(moved[[0, 2, 3]], np.ones((3, 2), np.float32))
