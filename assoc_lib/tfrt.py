"""TensorFlow, imported once and quietly: the one place that imports it for the library.

TensorFlow 2.21 prints its start-up lines through absl's C++ logging before absl is initialised, so
``TF_CPP_MIN_LOG_LEVEL`` does not reach them (tensorflow/tensorflow#100442): "All log messages before
absl::InitializeLog()...", "oneDNN custom operations are on...", and on a machine without an NVIDIA device
"Could not find cuda drivers" and "failed call to cuInit". ``tensorflow()`` imports TF and probes its devices
with the process's stderr (file descriptor 2) captured, drops exactly those known start-up lines and writes
everything else back, so a real warning or error is never lost. The CUDA lines are dropped only where no
NVIDIA device node exists: on a GPU machine they mean something and stay. ``tensorflow_serving``'s protos
import TensorFlow too, so modules call ``tensorflow()`` before importing them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import threading
from pathlib import Path

log = logging.getLogger(__name__)

_ALWAYS = (
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"^[IW]\d{4} .*\] oneDNN custom operations are on",
)
_NO_GPU = (
    r"cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine",
    r"cuda_platform\.cc:\d+\] failed call to cuInit: .*(UNKNOWN ERROR \(303\)|NO_DEVICE)",
    r"cuda_executor\.cc:\d+\] failed call to cuInit",
)
_lock = threading.Lock()
_module = None


def has_nvidia_device() -> bool:
    return Path("/dev/nvidiactl").exists() or Path("/dev/nvidia0").exists()


def startup_noise() -> re.Pattern:
    return re.compile("|".join(_ALWAYS + (() if has_nvidia_device() else _NO_GPU)))


def filter_lines(text: str, pattern: re.Pattern) -> tuple[str, int]:
    """``text`` without the lines ``pattern`` matches, and how many were dropped."""
    kept, dropped = [], 0
    for line in text.splitlines(keepends=True):
        if pattern.search(line):
            dropped += 1
        else:
            kept.append(line)
    return "".join(kept), dropped


@contextlib.contextmanager
def filtered_stderr(pattern: re.Pattern):
    """Capture file descriptor 2 (C++ and Python alike) for the block; write back what ``pattern`` spares."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept, _ = filter_lines(capture.read().decode(errors="replace"), pattern)
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


def tensorflow():
    """The ``tensorflow`` module, imported (and its devices probed) once without the start-up noise."""
    global _module
    if _module is not None:
        return _module
    with _lock:
        if _module is None:
            # TF's own default, set explicitly so TF does not announce it on every start
            os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # INFO off; C++ warnings and errors stay
            with filtered_stderr(startup_noise()):
                import tensorflow as tf

                tf.config.list_physical_devices()  # device probing (CUDA init) happens here, once
            # absl's Python logger repeats "Sharding callback duration" at INFO on every checkpoint save
            logging.getLogger("absl").setLevel(logging.WARNING)
            _module = tf
    return _module
