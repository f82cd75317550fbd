#!/usr/bin/env bash
# The deep stage on the lent GPU machine, from the parts benchmarks/gpu_bundle.py made (see its docstring).
#
#   benchmarks/gpu_run.sh receive      # each call but the last: move the carried parts to /tmp/gpu
#   benchmarks/gpu_run.sh run PREP     # the last: unpack, check the GPU is TensorFlow's, then
#                                      # benchmarks/deep_training.py --prep PREP, its JSON and log to $OUT
#
# Run from the repository root there (the device tool's working copy), with the parts under .gpu/.
set -euo pipefail
mkdir -p /tmp/gpu
shopt -s nullglob
for part in .gpu/part.*; do mv -f "$part" /tmp/gpu/; done
ls -l /tmp/gpu
[ "${1:-}" = receive ] && exit 0
[ "${1:-}" = run ] || { echo "usage: $0 receive | run PREP" >&2; exit 2; }
PREP=${2:?the prepared split, e.g. .gpu/prep}
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT" /tmp/site
start=$(date +%s)
[ -e /tmp/site/tensorflow ] || cat /tmp/gpu/part.* | xz -dc -T0 | tar -x -C /tmp/site
echo "unpacked in $(($(date +%s) - start)) s: $(du -sh /tmp/site | cut -f1)"
cudnn=$(find /opt /usr -name 'libcudnn.so.9' 2>/dev/null | head -1)
[ -n "$cudnn" ] || { echo "no cuDNN 9 on this machine" >&2; exit 1; }
# TensorFlow's runpath does not reach every carried library (libcusolver.so.11 was not found through it)
libs=$(printf '%s:' /tmp/site/nvidia/*/lib)
export LD_LIBRARY_PATH=$libs$(dirname "$cudnn")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
# dso_loader's own log names each GPU library it opened or could not
TF_CPP_VMODULE=dso_loader=2 python3 - <<'EOF' 2>&1 | tee "$OUT/smoke.log"
import time
import tensorflow as tf
gpus = tf.config.list_physical_devices("GPU")
print("TensorFlow", tf.__version__, "GPUs:", gpus, "built with CUDA:", tf.test.is_built_with_cuda())
assert gpus, "TensorFlow sees no GPU: the dso_loader lines above say which library it could not load"
x = tf.random.normal([8192, 8192], dtype=tf.float16)
tf.matmul(x, x).numpy()
t = time.perf_counter()
for _ in range(10):
    y = tf.matmul(x, x)
y.numpy()
print(f"fp16 matmul 8192^3: {10 * 2 * 8192**3 / (time.perf_counter() - t) / 1e12:.0f} TFLOP/s")
EOF
TF_CPP_MIN_LOG_LEVEL=1 python3 benchmarks/deep_training.py --prep "$PREP" --out "$OUT/deep_gpu.json" 2>&1 | tee "$OUT/deep_gpu.log"
