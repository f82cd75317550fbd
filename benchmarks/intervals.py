"""Paired bootstrap intervals between any two models of a comparison, from its per-basket file.

    python benchmarks/intervals.py --per-basket W/evaluation/per_basket.parquet --protocol personalised \
        --pair deep+ease+personal_cooc ease --pair deep+ease+personal_cooc ease+personal_cooc --out i.json

``benchmarks/quality.py --work-dir W`` (and the DAG's evaluate task) write ``per_basket.parquet``: each test
basket's hidden item and its rank under every model. For each ``--pair A B`` this prints the test NDCG@10 of
both, their ratio, and the paired bootstrap 95% interval of (A − B) over the same baskets (the evaluation's
own ``paired_bootstrap``, seeded with ``models.eval_seed`` as the comparison is), so any comparison in the
README can be rerun without training again. ``--by COLUMN`` also gives them inside each value of a column
of the file, e.g. ``--by hidden_in_history`` (personalised: was the hidden item bought before?).
``--against OTHER`` pairs two runs of the same split instead: B is read from OTHER's per-basket file, each
basket matched by (split, protocol, order id, hidden item), e.g. ``--pair X X`` for one model before and after
a change.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from assoc_lib.config import load_config
from assoc_lib.evaluate import ndcg10_per_basket, paired_bootstrap


def intervals(
    frame: pd.DataFrame, protocol: str, pairs: list[tuple[str, str]], seed: int = 0, by: str | None = None
) -> list[dict]:
    """One record per pair (and per value of the column ``by``): both models' mean NDCG@10, the ratio and the
    interval of the difference."""
    rows = frame[(frame["protocol"] == protocol) & (frame["split"] == "test")]
    if rows.empty:
        raise ValueError(f"no test baskets under the {protocol!r} protocol (have {sorted(frame['protocol'].unique())})")
    if by is not None:
        if by not in rows.columns:
            raise ValueError(f"no column {by!r} in the per-basket file")
        groups = rows[by].dropna()
        if groups.empty:
            raise ValueError(f"column {by!r} is empty under the {protocol!r} protocol")
        return [
            {**r, "by": by, "value": value.item() if hasattr(value, "item") else value}
            for value in sorted(groups.unique())
            for r in intervals(rows[rows[by] == value], protocol, pairs, seed)
        ]
    out = []
    for a, b in pairs:
        missing = [m for m in (a, b) if f"rank:{m}" not in rows.columns]
        if missing:
            have = [c.removeprefix("rank:") for c in rows.columns if c.startswith("rank:")]
            raise ValueError(f"no ranks for {missing} in the per-basket file (models: {have})")
        na, nb = (ndcg10_per_basket(rows[f"rank:{m}"].to_numpy(float)) for m in (a, b))
        if pd.isna(na).any() or pd.isna(nb).any():
            raise ValueError(f"{a} or {b} has no rank for some {protocol} baskets")
        ci = paired_bootstrap(na, nb, seed=seed)
        out.append(
            {
                "a": a,
                "b": b,
                "protocol": protocol,
                "ndcg@10_a": float(na.mean()),
                "ndcg@10_b": float(nb.mean()),
                "ratio": float(na.mean() / nb.mean()) if nb.mean() > 0 else None,
                **ci,
            }
        )
    return out


KEYS = ["split", "protocol", "order_id", "hidden_item"]
AGAINST = " (against)"


def across_runs(frame: pd.DataFrame, other: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with ``other``'s ranks beside it, as ``rank:<model> (against)``, basket by basket. Two runs of
    the same split hold the same baskets and hidden items; files that do not are an error."""
    missing = [k for k in KEYS if k not in frame.columns or k not in other.columns]
    if missing:
        raise ValueError(f"a per-basket file lacks {missing}")
    ranks = other[KEYS + [c for c in other.columns if c.startswith("rank:")]]
    joined = frame.merge(ranks.rename(columns=lambda c: f"{c}{AGAINST}" if c.startswith("rank:") else c), on=KEYS)
    if not len(joined) == len(frame) == len(other):
        raise ValueError(
            f"the two files hold different baskets ({len(frame)} and {len(other)} rows, {len(joined)} matched): "
            "not two runs of the same split"
        )
    return joined


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-basket", required=True, type=Path)
    ap.add_argument("--protocol", default="personalised", choices=("anonymous", "personalised"))
    ap.add_argument("--pair", nargs=2, action="append", required=True, metavar=("A", "B"))
    ap.add_argument("--against", type=Path, help="another run's per-basket file: B is read from it")
    ap.add_argument("--by", help="also split the baskets by this column's values (e.g. hidden_in_history)")
    ap.add_argument("--seed", type=int, help="bootstrap seed (default: models.eval_seed, the comparison's own)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    seed = load_config().models.eval_seed if args.seed is None else args.seed
    pairs = [(a, f"{b}{AGAINST}" if args.against else b) for a, b in args.pair]
    try:
        frame = pd.read_parquet(args.per_basket)
        if args.against:
            frame = across_runs(frame, pd.read_parquet(args.against))
        result = intervals(frame, args.protocol, pairs, seed, args.by)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for r in result:
        where = f" ({r['by']} = {r['value']})" if "by" in r else ""
        print(
            f"{r['protocol']}{where}: {r['a']} {r['ndcg@10_a']:.4f} vs {r['b']} {r['ndcg@10_b']:.4f} "
            f"= {r['ratio']:.3f}x; "
            f"difference {r['mean']:+.4f}, 95% paired bootstrap interval [{r['low']:+.4f}, {r['high']:+.4f}] "
            f"({r['n']} baskets)"
        )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
