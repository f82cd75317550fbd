"""Third-party start-up noise is silenced at its source, and real warnings and errors still come through."""

from __future__ import annotations

import os
import subprocess
import sys

from assoc_lib import tfrt
from tests.conftest import REPO_ROOT


def _run(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300
    )


def test_filter_keeps_real_warnings_and_errors():
    pattern = tfrt.startup_noise()
    text = (
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
        "I0000 00:00:1.2 123 port.cc:153] oneDNN custom operations are on. You may see ...\n"
        "E0000 00:00:1.3 123 bfc_allocator.cc:10] Allocator ran out of memory\n"
        "W0000 00:00:1.4 123 op_kernel.cc:1] a real kernel warning\n"
        "Traceback (most recent call last):\n"
    )
    kept, dropped = tfrt.filter_lines(text, pattern)
    assert dropped == 2
    assert kept.splitlines() == text.splitlines()[2:]


def test_tensorflow_starts_without_startup_lines_and_keeps_other_stderr():
    plain = _run("import tensorflow as tf; tf.config.list_physical_devices()")
    assert "absl::InitializeLog" in plain.stderr  # the noise exists without the helper ...
    quiet = _run(
        "import os, sys\n"
        "from assoc_lib.tfrt import tensorflow, filtered_stderr, startup_noise\n"
        "tf = tensorflow()\n"
        "with filtered_stderr(startup_noise()):\n"
        "    os.write(2, b'E0000 00:00:1.0 1 disk.cc:1] a real error\\n')\n"
        "    os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called are written"
        " to STDERR\\n')\n"
        "print(tf.__version__)\n"
    )
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == "E0000 00:00:1.0 1 disk.cc:1] a real error\n"  # ... and is gone with it
    assert quiet.stdout.strip().startswith("2.")


def test_great_expectations_imports_without_its_info_lines():
    code = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stderr)\n"
        "{quiet}\n"
        "import great_expectations\n"
        "logging.getLogger('great_expectations.core').warning('a real GE warning')\n"
    )
    noisy = _run(code.format(quiet=""))
    assert "Skipping registering function" in noisy.stderr
    quiet = _run(code.format(quiet="from assoc_lib.data import validate; validate.quiet_great_expectations()"))
    assert "Skipping registering function" not in quiet.stderr and "a real GE warning" in quiet.stderr
    # GE sets some module loggers to INFO when they are imported: the second call clamps those too
    after = _run(
        code.format(quiet="from assoc_lib.data import validate; validate.quiet_great_expectations()")
        + "import great_expectations.data_context.types.base as base\n"
        + "validate.quiet_great_expectations()\n"
        + "base.logger.info('ephemeral docs site probe'); base.logger.warning('a kept warning')\n"
    )
    assert "ephemeral docs site probe" not in after.stderr and "a kept warning" in after.stderr


def test_airflow_cli_starts_without_the_graphviz_warning():
    from pathlib import Path

    airflow = Path(sys.executable).with_name("airflow")
    proc = subprocess.run([str(airflow), "dags", "--help"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0
    assert "graphviz" not in proc.stderr + proc.stdout


def test_building_the_network_prints_no_tensorflow_startup_lines():
    """Keras imports TensorFlow: the library's paths into Keras go through the quiet import first."""
    proc = _run(
        "from assoc_lib.models.network import DeepParams, build_network\n"
        "build_network(5, DeepParams(embedding_dim=2))\n"
        "print('built')\n"
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "built", proc.stderr[-2000:]
    for noise in ("absl::InitializeLog", "oneDNN custom operations", "cpu_feature_guard", "cuda drivers"):
        assert noise not in proc.stderr, proc.stderr[-2000:]
