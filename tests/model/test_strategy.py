"""The replica path of the deep training (what a GPU machine runs: MirroredStrategy, mixed precision) run on
two logical CPU devices, as TensorFlow's own distribution tests do. The GPU run itself needs a GPU; this
checks the code around it: the global batch split over replicas, the per-replica losses summed, the
loss-scaled optimizer, float16 activations against float32 weights, in full and sampled softmax."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# a fresh process: the logical devices must be set before TensorFlow starts its runtime
SCRIPT = r"""
import json
import numpy as np
import scipy.sparse as sp
from assoc_lib import evaluate
from assoc_lib.models.network import DeepParams
from assoc_lib.train import pick_strategy, train_deep

strategy = pick_strategy(cpu_replicas=2, mixed_precision=True)
rng = np.random.default_rng(0)
n_items = 400


def baskets(n):  # planted pairs: items 2i and 2i + 1 are always bought together
    out = []
    for _ in range(n):
        pairs = rng.choice(n_items // 2, size=2, replace=False)
        out.append(sorted(int(i) for p in pairs for i in (2 * p, 2 * p + 1)))
    return out


train = evaluate.baskets_to_csr(baskets(3000), n_items)
val = evaluate.hold_out(baskets(400), n_items, seed=1)
out = {"placement": strategy[1], "replicas": strategy[0].num_replicas_in_sync, "runs": {}}
for sampled in (0, 40):
    params = DeepParams(
        embedding_dim=32, epochs=6, batch_size=32, learning_rate=0.01, sampled_softmax=sampled, patience=6,
        input_dropout=0.0, weight_average_epochs=0.0,
    )
    result = train_deep(train, val, params, strategy=strategy, verbose=False)
    scores = result.score(val.inputs)
    out["runs"][str(sampled)] = {
        "placement": result.placement,
        "losses": [h["loss"] for h in result.history],
        "best_val": result.best_val_ndcg10,
        "numpy_val": float(evaluate.evaluate_scores(result.score, val, n_items)["ndcg@10"]),
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
    for sampled, r in out["runs"].items():
        assert r["placement"] == out["placement"]
        assert all(map(lambda v: v == v and abs(v) < 1e6, r["losses"])), (sampled, r["losses"])  # finite
        assert r["losses"][-1] < r["losses"][0], (sampled, r["losses"])  # it learns
        # the planted partner of each hidden item is in the basket: far above chance (about 0.01)
        assert r["best_val"] > 0.3, (sampled, r)
        # the saved weights are float32 and the numpy scorer reproduces the validation figure
        assert r["dtypes"] == ["float32"] and r["finite"]
        assert abs(r["numpy_val"] - r["best_val"]) < 0.02, (sampled, r)
