"""The project's local Airflow: an Airflow home that carries our settings, and replays under the real scheduler.

    python scripts/airflow_local.py init                 # write $AIRFLOW_HOME/airflow.cfg, migrate the DB
    python scripts/airflow_local.py replay DAY [DAY...]  # scheduler + dag-processor + api-server (LocalExecutor),
                                                         # one triggered run per day, in order; then stop them all
    python scripts/airflow_local.py gate DAY             # print a finished day's gate decision

``init`` writes the settings into ``airflow.cfg`` itself (dags and plugins folders, examples off, SQLite,
LocalExecutor, a parallelism sized to this machine, one shared JWT secret), so the stock ``airflow`` CLI works
from any shell with only ``AIRFLOW_HOME`` set. Keys already in the file that we do not own are kept.

``replay`` starts each Airflow service in its own session, unpauses the DAG, triggers ``replay__DAY`` for each
day with its logical date (a run already there for that date is replaced), waits for each to finish, prints the
task states and the gate decision, and always stops every process it started, children included. It exits
non-zero when a run did not succeed. The DAG's own schedule is switched off for the replay
(``ASSOC_SCHEDULE=none`` in the services' environment), so the scheduler creates no run for today meanwhile.
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DAG_ID = "assoc_daily"
SERVICES = ("scheduler", "dag-processor", "api-server")
FINISHED = {"success", "failed"}


def airflow_home() -> Path:
    home = os.environ.get("AIRFLOW_HOME")
    if not home:
        sys.exit("AIRFLOW_HOME is not set (source scripts/airflow_env.sh)")
    return Path(home).resolve()


def airflow_bin() -> str:
    return str(Path(sys.executable).with_name("airflow"))


def project_settings(home: Path) -> dict[str, dict[str, str]]:
    """What the project sets in airflow.cfg; everything else keeps Airflow's defaults."""
    slots = str(max(2, 2 * (os.cpu_count() or 1)))
    return {
        "core": {
            "dags_folder": str(ROOT / "dags"),
            "plugins_folder": str(ROOT / "plugins"),
            "load_examples": "False",
            "executor": "LocalExecutor",
            # LocalExecutor starts `parallelism` worker processes: size it to the machine (default 32)
            "parallelism": slots,
            "max_active_tasks_per_dag": slots,
            # the tasks pass assoc_lib.records dataclasses through XCom
            "allowed_deserialization_classes": "airflow.* assoc_lib.*",
        },
        "database": {"sql_alchemy_conn": f"sqlite:///{home / 'airflow.db'}"},
        "api": {"workers": "1"},
        # the in-process execution API of `airflow dags test` logs three INFO lines per task state change
        "logging": {"colored_console_log": "False", "namespace_levels": "airflow.api_fastapi.execution_api=WARNING"},
    }


def write_config(home: Path) -> Path:
    """Merge the project's settings into ``<home>/airflow.cfg`` (created when missing)."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / "airflow.cfg"
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.optionxform = str  # keep keys as written
    if path.exists():
        cfg.read(path)
    for section, values in project_settings(home).items():
        if not cfg.has_section(section):
            cfg.add_section(section)
        for key, value in values.items():
            cfg.set(section, key, value)
    # one secret for every service of this home, so task processes can talk to the API server
    if not cfg.has_section("api_auth"):
        cfg.add_section("api_auth")
    if not cfg.get("api_auth", "jwt_secret", fallback=""):
        cfg.set("api_auth", "jwt_secret", secrets.token_urlsafe(32))
    tmp = path.with_suffix(".cfg.tmp")
    with tmp.open("w") as fh:
        fh.write(
            "# Written by scripts/airflow_local.py init (basket-association); edit freely, our keys are\n"
            "# rewritten on the next init.\n"
        )
        cfg.write(fh)
    tmp.replace(path)
    return path


def init(home: Path) -> None:
    path = write_config(home)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}  # airflow.cfg is the truth
    env["AIRFLOW_HOME"] = str(home)
    log = home / "db-migrate.log"
    with log.open("w") as fh:
        rc = subprocess.run([airflow_bin(), "db", "migrate"], env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        sys.exit(f"airflow db migrate failed (rc={rc}); see {log}:\n" + "".join(log.read_text().splitlines(True)[-20:]))
    print(f"Airflow home {home}: {path.name} written, database migrated")


# --------------------------------------------------------------------------- gate decision of a day
def gate_line(artifacts: Path, day: str) -> str:
    run = artifacts / "runs" / f"ds={day}"
    blessing = run / "gate" / "blessing.json"
    if not blessing.exists():
        return f"   no gate decision for {day} (no {blessing})"
    b = json.loads(blessing.read_text())
    ratio = b["verdict"].get("deep_over_classical")
    line = (
        f"   gate: {'BLESSED' if b['blessed'] else 'not blessed'} winner={b['winner']} "
        f"test ndcg@10={b.get('winner_test', 0):.4f} production={b.get('production')}; "
        f"deep/classical={ratio if ratio is None else round(ratio, 3)}"
    )
    versions = run / "versions.json"
    # a versions.json older than today's gate decision is an earlier run's (this run pushed nothing)
    if versions.exists() and versions.stat().st_mtime >= blessing.stat().st_mtime:
        r = json.loads(versions.read_text())
        how = "pushed" if r.get("pushed", True) else "already pushed by an earlier run of the day: serving"
        card = run / "export" / "model_card.json"  # the export the version was pushed from
        sliced = json.loads(card.read_text()).get("training_data") if card.exists() else None
        parts = (
            f"; trained on partitions {sliced['partitions']['first']}..{sliced['partitions']['last']}" if sliced else ""
        )
        line += f"\n   {how} version {r['model_version']} (data {r['data_version']}{parts})"
    return line


# --------------------------------------------------------------------------- services
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Services:
    """Airflow's scheduler, dag-processor and api-server for one home; stop() ends them and all their children."""

    def __init__(self, home: Path, port: int, extra_env: dict[str, str]):
        self.home, self.port = home, port
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
        self.env.update(
            {
                "AIRFLOW_HOME": str(home),
                "AIRFLOW__API__PORT": str(port),
                "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
                **extra_env,
            }
        )
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs = home / "logs" / "services"

    def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        for name in SERVICES:
            args = [airflow_bin(), name] + (["--port", str(self.port)] if name == "api-server" else [])
            with (self.logs / f"{name}.log").open("ab") as fh:
                self.procs[name] = subprocess.Popen(
                    args,
                    env=self.env,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
        print(
            f"   started {', '.join(f'{n} (pid {p.pid})' for n, p in self.procs.items())}; "
            f"UI and API on http://127.0.0.1:{self.port}; service logs in {self.logs}",
            flush=True,
        )

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = "".join((self.logs / f"{name}.log").read_text(errors="replace").splitlines(True)[-30:])
                raise RuntimeError(f"airflow {name} exited with {proc.returncode}:\n{tail}")

    def tree_pids(self) -> set[int]:
        import psutil

        pids = set()
        for proc in self.procs.values():
            try:
                parent = psutil.Process(proc.pid)
                pids |= {parent.pid} | {c.pid for c in parent.children(recursive=True)}
            except psutil.NoSuchProcess:
                pass
        return pids

    def stop(self, grace: float = 30.0) -> list[int]:
        """SIGTERM every process of every service (whole process groups and recorded children), then SIGKILL
        what is left after ``grace`` seconds. Returns the pids that were still alive at the end (none)."""
        import psutil

        pids = self.tree_pids()
        for proc in self.procs.values():
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass

        def alive(pid: int) -> bool:
            try:
                return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return False

        while time.time() < deadline and any(alive(p) for p in pids):
            time.sleep(0.2)
        for pid in [p for p in pids if alive(p)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for proc in self.procs.values():
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
        time.sleep(0.5)
        return [p for p in pids if alive(p)]


# --------------------------------------------------------------------------- replay
def _db():
    from airflow.models import DagModel, DagRun
    from airflow.utils.session import create_session

    return create_session, DagModel, DagRun


def wait_for_dag(services: Services, timeout: float) -> None:
    """Until the dag-processor has parsed and serialised the DAG (or it reports an import error)."""
    from airflow.models.serialized_dag import SerializedDagModel
    from sqlalchemy import select

    create_session, DagModel, _ = _db()
    deadline = time.time() + timeout
    while time.time() < deadline:
        services.check_alive()
        with create_session() as s:
            if s.scalar(select(SerializedDagModel.dag_id).where(SerializedDagModel.dag_id == DAG_ID)):
                return
            try:
                from airflow.models.errors import ParseImportError

                errors = s.scalars(select(ParseImportError)).all()
            except ImportError:  # pragma: no cover - moved in another Airflow version
                errors = []
            if errors:
                raise RuntimeError("the DAG did not import: " + "; ".join(e.stacktrace[-500:] for e in errors))
        time.sleep(2)
    raise TimeoutError(f"{DAG_ID} was not parsed within {timeout:.0f} s (see {services.logs}/dag-processor.log)")


def airflow_cli(services: Services, *args: str) -> str:
    proc = subprocess.run([airflow_bin(), *args], env=services.env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"airflow {' '.join(args)} failed: {proc.stderr[-2000:]}")
    return proc.stdout


def replace_existing_run(day: str) -> None:
    """A replayed day is run anew: drop a run already recorded for that logical date (e.g. by `dags test`);
    its task instances go with it (foreign keys cascade)."""
    import pendulum
    from sqlalchemy import delete, select

    create_session, _, DagRun = _db()
    where = (DagRun.dag_id == DAG_ID, DagRun.logical_date == pendulum.parse(day))
    with create_session() as s:
        for run_id, state in s.execute(select(DagRun.run_id, DagRun.state).where(*where)).all():
            print(f"   replacing the earlier run {run_id} ({state}) for {day}", flush=True)
        s.execute(delete(DagRun).where(*where))


def wait_for_run(services: Services, run_id: str, timeout: float) -> tuple[str, dict[str, str]]:
    from sqlalchemy import select

    create_session, _, DagRun = _db()
    deadline = time.time() + timeout
    while True:
        services.check_alive()
        with create_session() as s:
            run = s.scalar(select(DagRun).where(DagRun.dag_id == DAG_ID, DagRun.run_id == run_id))
            state = str(run.state) if run else "missing"
            tasks = {ti.task_id: str(ti.state) for ti in run.get_task_instances(session=s)} if run else {}
        if state in FINISHED:
            return state, tasks
        if time.time() > deadline:
            return f"timeout ({state})", tasks
        time.sleep(3)


def replay(days: list[str], conf: dict, timeout: float, artifacts: Path, port: int | None) -> dict:
    home = airflow_home()
    write_config(home)
    services = Services(home, port or free_port(), {"ASSOC_SCHEDULE": "none"})
    result = {"runs": [], "pids": []}

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, on_signal)
    started = time.time()
    try:
        services.start()
        result["pids"] = [p.pid for p in services.procs.values()]
        wait_for_dag(services, timeout=min(timeout, 300))
        airflow_cli(services, "dags", "unpause", DAG_ID)
        for day in days:
            run_id = f"replay__{day}"
            replace_existing_run(day)
            airflow_cli(
                services,
                "dags",
                "trigger",
                DAG_ID,
                "--run-id",
                run_id,
                "--logical-date",
                f"{day}T00:00:00+00:00",
                "--conf",
                json.dumps(conf),
            )
            print(
                f"-- {run_id}: triggered, waiting (task logs: {home}/logs/dag_id={DAG_ID}/run_id={run_id}/)", flush=True
            )
            t0 = time.time()
            state, tasks = wait_for_run(services, run_id, timeout - (time.time() - started))
            result["pids"] = sorted(set(result["pids"]) | services.tree_pids())
            print(
                f"   {run_id}: {state} in {time.time() - t0:.0f} s; tasks: "
                + ", ".join(f"{t}={s}" for t, s in sorted(tasks.items())),
                flush=True,
            )
            print(gate_line(artifacts, day), flush=True)
            result["runs"].append({"day": day, "run_id": run_id, "state": state, "tasks": tasks})
            if state != "success":
                break
    finally:
        result["pids"] = sorted(set(result["pids"]) | services.tree_pids())
        left = services.stop()
        signal.signal(signal.SIGTERM, previous)
        result["left_running"] = left
        print(
            f"   stopped the Airflow services ({len(result['pids'])} processes); still running: {left or 'none'}",
            flush=True,
        )
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("init", help="write airflow.cfg with the project's settings and migrate the database")
    p = sub.add_parser("replay", help="run days through the real scheduler, then stop every Airflow process")
    p.add_argument("days", nargs="+", help="logical dates, YYYY-MM-DD, run in this order")
    p.add_argument("--conf", default="{}", help="DAG run conf (JSON): params such as data_dir, artifacts_dir")
    p.add_argument("--timeout", type=float, default=1800, help="seconds for the whole replay")
    p.add_argument("--port", type=int, help="API server port (default: a free one)")
    p.add_argument("--artifacts", default=str(ROOT / "artifacts"), help="where the runs write (for the gate line)")
    p.add_argument("--json", help="write the result (runs, task states, pids) here")
    p = sub.add_parser("gate", help="print a finished day's gate decision")
    p.add_argument("day")
    p.add_argument("--artifacts", default=str(ROOT / "artifacts"))
    args = ap.parse_args(argv)
    if args.cmd == "init":
        init(airflow_home())
        return 0
    if args.cmd == "gate":
        print(gate_line(Path(args.artifacts), args.day))
        return 0
    result = replay(args.days, json.loads(args.conf), args.timeout, Path(args.artifacts), args.port)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    ok = len(result["runs"]) == len(args.days) and all(r["state"] == "success" for r in result["runs"])
    return 0 if ok and not result["left_running"] else 1


if __name__ == "__main__":
    sys.exit(main())
