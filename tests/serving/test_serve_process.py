"""`assoc serve` as a process: startup log naming versions, answers, graceful exit on SIGTERM."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

from assoc_lib.serving import push
from assoc_lib.serving.client import AssocClient


def _kill(proc: subprocess.Popen, siblings: list) -> None:
    """A test's cleanup: nothing it started stays alive, whatever it asserted."""
    proc.kill()
    for sibling in siblings:
        if sibling.is_running():
            sibling.kill()


@contextlib.contextmanager
def _ctrl_c_raises():
    """SIGINT raising KeyboardInterrupt in this process while a test runs, as in a shell's foreground job, and
    what it was before restored afterwards. The Ctrl-C tests need it: pytest started as a background job of
    a non-interactive shell (`cmd &`, no job control) runs with SIGINT ignored (seen: both Ctrl-C tests
    failed in such a run, and pass in the foreground), and an ignored SIGINT is inherited across exec, so an
    `assoc serve` started from here would ignore Ctrl-C. A handler is not inherited (exec resets it to the
    default), so its children get the default too."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def test_serve_process_starts_answers_and_stops_on_sigterm(exported, tmp_path):
    root = tmp_path / "serving"
    push.push(exported["ease"], root, "assoc")
    ready = tmp_path / "ready"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        rest_port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "assoc_lib.cli",
            "serve",
            "--model-config-file",
            str(root / "models.config"),
            "--port",
            "0",
            "--ready-file",
            str(ready),
            "--rest_api_port",
            str(rest_port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while not ready.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert ready.exists(), proc.stdout.read() if proc.poll() is not None else "not ready"
        target = ready.read_text().strip()
        with AssocClient(target) as client:
            assert client.complete_basket([[]]).version == 1
        with AssocClient(f"http://127.0.0.1:{rest_port}") as rest:  # the REST API of the same process
            assert [s["state"] for s in rest.model_status()] == ["AVAILABLE"]
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert "serving assoc on 127.0.0.1" in out and "versions [1]" in out and "REST API and metrics on" in out
    assert "signal 15: stopping" in out


def test_infra_validation_serves_the_export_and_leaves_nothing_behind(exported, tmp_path, monkeypatch):
    """The DAG's infra_validate (``infra.validate_export``): a real `assoc serve` process answers the contract
    over gRPC; after it, good export or broken, nothing of it is left in the temporary directory (it runs
    every day: a directory per run used to stay behind)."""
    import shutil
    import tempfile

    import pytest

    from assoc_lib.serving import infra

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    result = infra.validate_export(str(exported["ease"]), "assoc", requests=5)
    assert {"complete_basket", "related_items", "serving_default"} <= set(result.signatures)
    assert 0 < result.p50_ms <= result.p99_ms
    assert list(scratch.iterdir()) == []
    broken = tmp_path / "broken"
    shutil.copytree(exported["ease"], broken)
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    with pytest.raises(RuntimeError, match="infra validation"):
        infra.validate_export(str(broken), "assoc", requests=5)
    assert list(scratch.iterdir()) == []


def test_sibling_processes_serve_one_port_and_leave_nothing_behind(exported, tmp_path, monkeypatch):
    """`assoc serve --processes 2` starts a sibling on the same ports (``server.start_siblings``): both
    answer there (gRPC and REST), SIGTERM to the first stops both; the ready files' directory is removed
    whether the start succeeds or fails (a failed start used to leave it behind), and a sibling that cannot
    start, or is not ready in time, is reported and stopped."""
    import tempfile

    import psutil
    import pytest

    from assoc_lib.serving import server

    root = tmp_path / "serving"
    push.push(exported["ease"], root, "assoc")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # this process's calls below
    monkeypatch.setenv("TMPDIR", str(scratch))  # the `assoc serve` process's
    rest_port = server.free_port()
    config = ["--model-config-file", str(root / "models.config")]
    args = [*config, "--processes", "2", "--rest_api_port", str(rest_port), "--tensorflow_intra_op_parallelism", "1"]
    # no port is picked beforehand (another process could take it in between): the first process binds
    # port 0, the kernel chooses, and its siblings start on the port it holds
    with monkeypatch.context() as m:
        m.setattr(server, "free_port", lambda *a, **k: pytest.fail("a port was picked before binding"))
        proc, target = server.spawn(args, tmp_path / "serve")
    try:
        siblings = psutil.Process(proc.pid).children()
        assert len(siblings) == 1 and "--ready-file" in siblings[0].cmdline()
        port = int(target.rsplit(":", 1)[1])
        listening = {c.laddr.port for c in psutil.Process(proc.pid).net_connections() if c.status == "LISTEN"}
        sibling_cmd = siblings[0].cmdline()
        assert port in listening and sibling_cmd[sibling_cmd.index("--port") + 1] == str(port)
        assert list(scratch.glob("assoc-serve-*")) == []  # (TensorFlow's autograph files live until exit)
        for _ in range(4):  # a new connection each time: the kernel spreads them over the two processes
            with AssocClient(target) as client:
                assert client.complete_basket([[]]).version == 1
        with AssocClient(f"http://127.0.0.1:{rest_port}") as rest:
            assert [s["state"] for s in rest.model_status()] == ["AVAILABLE"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        _, alive = psutil.wait_procs(siblings, timeout=30)
        assert alive == []
    finally:
        if proc.poll() is None:
            proc.kill()
    assert list(scratch.iterdir()) == []  # both exited cleanly: nothing of theirs left in the temp directory
    assert "is gone: stopping" not in (tmp_path / "serve" / "serve.log").read_text()  # stopped by the first
    # the first process killed outright (no SIGTERM for it to pass on): the sibling notices and stops itself,
    # rather than serving on the shared port unseen
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # a killed process leaves TensorFlow's autograph files
    proc, target = server.spawn([*config, "--processes", "2", "--rest_api_port", "0"], tmp_path / "serve-kill")
    siblings = psutil.Process(proc.pid).children()
    try:
        assert len(siblings) == 1
        proc.kill()
        proc.wait(timeout=30)
        _, alive = psutil.wait_procs(siblings, timeout=30)
        assert alive == []
    finally:
        _kill(proc, siblings)
    assert "is gone: stopping" in (tmp_path / "serve-kill" / "serve.log").read_text()
    common = dict(
        host="127.0.0.1", port=server.free_port(), rest_port=None, tf_threads=1, max_workers=2, poll_seconds=1.0
    )
    with pytest.raises(RuntimeError, match="did not start"):
        server.start_siblings(1, ["--model-config-file", str(tmp_path / "missing.config")], timeout=120, **common)
    assert list(scratch.iterdir()) == []
    # one that starts but is not ready within the time allowed is stopped, not left running on the port
    with pytest.raises(RuntimeError, match="did not start"):
        server.start_siblings(1, config, timeout=0.5, **common)
    assert list(scratch.iterdir()) == []
    left = []
    for child in psutil.Process().children(recursive=True):
        try:
            left += [child.pid] if str(scratch) in " ".join(child.cmdline()) else []
        except psutil.NoSuchProcess:
            pass
    assert left == []


def test_spawned_server_stops_when_its_spawner_is_killed(exported, tmp_path):
    """``server.spawn`` (the DAG's infra validation, the serving benchmark): if the process that spawned the
    server is killed outright (an Airflow task past its timeout gets SIGKILL after SIGTERM), the server stops
    itself instead of holding memory and a port for ever."""
    import psutil

    root = tmp_path / "serving"
    push.push(exported["ease"], root, "assoc")
    helper = (
        "import sys, time\n"
        "from assoc_lib.serving import server\n"
        "proc, target = server.spawn(['--model-config-file', sys.argv[1], '--rest_api_port', '0'], sys.argv[2])\n"
        "print(proc.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    spawner = subprocess.Popen(
        [sys.executable, "-c", helper, str(root / "models.config"), str(tmp_path / "serve")],
        stdout=subprocess.PIPE,
        text=True,
    )
    served = None
    try:
        served = psutil.Process(int(spawner.stdout.readline()))
        assert served.is_running()
        spawner.kill()
        spawner.wait(timeout=30)
        _, alive = psutil.wait_procs([served], timeout=30)
        assert alive == []
    finally:
        spawner.kill()
        if served is not None and served.is_running():
            served.kill()
    assert "is gone: stopping" in (tmp_path / "serve" / "serve.log").read_text()


def test_serve_refuses_a_port_already_served(tmp_path):
    """The servers bind with SO_REUSEPORT (gRPC's default on Linux; ``--processes`` needs it), so a second
    `assoc serve` on a port in use would quietly share its connections with the first (a forgotten server
    answering some of the queries). It stops at once with a message naming the port instead; nothing else
    listening is disturbed."""
    for flag, other in (("--port", "--rest_api_port"), ("--rest_api_port", "--port")):  # other 0: off / free
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            out = subprocess.run(
                [sys.executable, "-m", "assoc_lib.cli", "serve", "--model-config-file", str(tmp_path / "models.config")]
                + [flag, str(port), other, "0"],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert out.returncode == 1, out.stderr
            assert f"127.0.0.1:{port}" in out.stderr and "already in use" in out.stderr
            assert "Traceback" not in out.stderr
            with socket.create_connection(("127.0.0.1", port), timeout=1):  # still the first one's port
                pass


def test_ctrl_c_inside_popen_still_stops_the_sibling(exported, tmp_path, monkeypatch):
    """A Ctrl-C that lands inside ``Popen`` after the fork (the sibling exists, ``Popen`` has not returned)
    is held until the sibling is recorded, then raised: ``start_siblings`` stops that sibling and the
    KeyboardInterrupt reaches the caller. Without the hold the sibling was nobody's to stop (a SIGINT timer
    around Popen raised inside it, with the child alive, 50 times in 1,500). The signal is sent from inside the
    real Popen call, after the child is created, where a Ctrl-C can land."""
    import pytest

    from assoc_lib.serving import server

    root = tmp_path / "serving"
    push.push(exported["ease"], root, "assoc")
    started = []
    real_popen = subprocess.Popen

    def popen_then_ctrl_c(*args, **kwargs):
        child = real_popen(*args, **kwargs)
        started.append(child)
        signal.raise_signal(signal.SIGINT)  # the child exists; this Popen call has not returned yet
        return child

    monkeypatch.setattr(server.subprocess, "Popen", popen_then_ctrl_c)
    try:
        with _ctrl_c_raises(), pytest.raises(KeyboardInterrupt):
            server.start_siblings(
                1,
                ["--model-config-file", str(root / "models.config")],
                host="127.0.0.1",
                port=server.free_port(),
                rest_port=None,
                tf_threads=1,
                max_workers=2,
                poll_seconds=1.0,
            )
        assert len(started) == 1
        assert started[0].poll() is not None, "the sibling started inside the interrupted Popen is still running"
    finally:
        for child in started:
            if child.poll() is None:
                child.kill()
                child.wait()


def test_ctrl_c_while_siblings_start_stops_them(exported, tmp_path):
    """Ctrl-C (SIGINT) to `assoc serve --processes 2` while it waits for its sibling to load: the sibling
    already started is stopped, the ready files' directory removed, and the command ends with "interrupted"
    and exit code 130 (the shell's convention), not a traceback."""
    import psutil

    root = tmp_path / "serving"
    push.push(exported["ease"], root, "assoc")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    with _ctrl_c_raises():  # started as a shell's foreground job: Ctrl-C not ignored (see _ctrl_c_raises)
        proc = subprocess.Popen(
            [sys.executable, "-m", "assoc_lib.cli", "serve", "--model-config-file", str(root / "models.config")]
            + ["--processes", "2", "--port", "0", "--rest_api_port", "0"],
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "TMPDIR": str(scratch)},
        )
    siblings = []
    try:
        deadline = time.time() + 120
        while not siblings and proc.poll() is None and time.time() < deadline:
            siblings = psutil.Process(proc.pid).children()
            time.sleep(0.05)
        assert len(siblings) == 1 and list(scratch.glob("assoc-serve-*")), "no sibling starting"
        proc.send_signal(signal.SIGINT)  # the sibling is still importing TensorFlow: it is not ready yet
        _, err = proc.communicate(timeout=60)
        _, alive = psutil.wait_procs(siblings, timeout=30)
        assert alive == []
    finally:
        _kill(proc, siblings)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err and "sibling server process(es)" not in err
    assert "is gone: stopping" not in err  # (the sibling writes to the same stderr) stopped by the first process
    assert list(scratch.glob("assoc-serve-*")) == []
