"""Does the served model answer as the evaluated one? The same test baskets through both paths.

    python benchmarks/served_agreement.py --work-dir W --model deep+ease+personal_cooc+rerank --out a.json

``W`` is a quality run's work directory (``benchmarks/quality.py --work-dir W``). The candidate is exported
as the DAG exports it (``export_saved_model``, into ``W/agreement/<model>`` unless ``--export`` names an
existing export) and the first ``--baskets`` personalised test baskets are scored twice: by the numpy scorer
the comparison uses (histories as the evaluation builds them) and by the SavedModel's
``complete_basket_personal`` with one history row per purchase, every visible purchase, as a shop sends them
(``evaluate.evaluate_topk``, the path production is evaluated on); then the same baskets without history,
by the numpy scorer and by ``complete_basket`` (the anonymous protocol, the anonymous second stage). Prints and
writes each NDCG@10 pair and its ratio; a served model that reads its inputs differently from training (a
history longer than the evaluation's, a feature the graph computes another way) shows here.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from assoc_lib import evaluate
from assoc_lib.config import load_config
from assoc_lib.data.preprocess import load_split
from assoc_lib.models.servable import ServableModel


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work-dir", required=True, type=Path)
    ap.add_argument("--model", default="deep+ease+personal_cooc+rerank")
    ap.add_argument("--export", type=Path, help="an existing export of the model (default: export it now)")
    ap.add_argument("--baskets", type=int, default=1000)
    ap.add_argument(
        "--history-max-items",
        type=int,
        help="set the model's history cap before exporting (candidates saved before the cap travelled with the "
        "model carry none; 0 turns it off)",
    )
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    cfg = load_config().models
    try:
        baskets, vocab = load_split(args.work_dir / "prep")
        model = ServableModel.load(args.work_dir / "train" / "candidates" / f"{args.model}.npz")
    except (OSError, ValueError) as exc:
        print(f"error: {exc} (a work dir of benchmarks/quality.py --work-dir holds prep/ and train/)", file=sys.stderr)
        return 2
    if baskets["user_id"].isna().all() or not model.servable:
        print(f"error: {args.model} needs a personalised split and a servable model", file=sys.stderr)
        return 2
    if args.history_max_items is not None:
        model.history_max_items = args.history_max_items
    export = args.export
    if export is None:
        from assoc_lib.serving.export import export_saved_model

        export = export_saved_model(model, args.work_dir / "agreement" / args.model, {"data_version": "agreement"})
    holdouts, _ = evaluate.make_holdouts(
        baskets, len(vocab), cfg.eval_seed, cfg.history_max_items, decays=model.decays, past=True
    )
    test = holdouts["test"].subset(np.arange(min(args.baskets, holdouts["test"].n)))
    started = time.perf_counter()
    served = evaluate.evaluate_topk(
        evaluate.saved_model_topk(export, personal=True), test, vocab, decay=model.history_decay, per_purchase=True
    )["ndcg@10"]
    served_seconds = time.perf_counter() - started
    numpy = evaluate.evaluate_scores(model.score, test, len(vocab))["ndcg@10"]
    anonymous = test.anonymous()
    served_anonymous = evaluate.evaluate_topk(evaluate.saved_model_topk(export), anonymous, vocab)["ndcg@10"]
    numpy_anonymous = evaluate.evaluate_scores(model.score, anonymous, len(vocab))["ndcg@10"]
    record = {
        "model": args.model,
        "export": str(export),
        "baskets": test.n,
        "history_max_items": model.history_max_items,
        "numpy_ndcg@10": numpy,
        "served_ndcg@10": served,
        "ratio": served / numpy if numpy else None,
        "served_seconds": served_seconds,
        "anonymous": {
            "numpy_ndcg@10": numpy_anonymous,
            "served_ndcg@10": served_anonymous,
            "ratio": served_anonymous / numpy_anonymous if numpy_anonymous else None,
        },
    }
    print(
        f"{args.model} on {test.n} test baskets: served NDCG@10 {served:.4f}, numpy {numpy:.4f} "
        f"= {record['ratio']:.4f}x (history cap {model.history_max_items or 'none'}); without history: served "
        f"{served_anonymous:.4f}, numpy {numpy_anonymous:.4f} = {record['anonymous']['ratio']:.4f}x"
    )
    if args.out:
        args.out.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
