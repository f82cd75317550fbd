"""The evaluation gate: pick the winner on validation, bless it only if it does not regress on test.

Also records, every day, the verdict on the central claim: the best deep
model's test metric over the best classical model's.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from assoc_lib.records import ModelKind, Protocol

log = logging.getLogger(__name__)

BLESSING_FILE = "blessing.json"


def _verdict(rows: list[dict], metric: str) -> dict:
    best_of = lambda kind: max((r for r in rows if r["kind"] == kind), key=lambda r: r[metric], default=None)
    deep, classical = best_of(ModelKind.DEEP), best_of(ModelKind.CLASSICAL)
    verdict = {
        "best_deep": deep and deep["name"],
        "best_deep_test": deep and deep[metric],
        "best_classical": classical and classical["name"],
        "best_classical_test": classical and classical[metric],
        "deep_over_classical": (deep[metric] / classical[metric])
        if deep and classical and classical[metric] > 0
        else None,
    }
    if verdict["deep_over_classical"] is not None:
        verdict["deep_beats_classical"] = verdict["deep_over_classical"] >= 1.0
    return verdict


def decide(comparison: dict, cfg) -> dict:
    """Pure decision from a comparison payload (see evaluate.evaluate_candidates).

    On data with user ids the personalised protocol decides; the anonymous one is still reported.
    """
    g = cfg.gate
    metric, val_metric = g.metric, f"val_{g.metric}"
    all_rows = comparison["models"]
    protocols = sorted({r.get("protocol", Protocol.ANONYMOUS) for r in all_rows}, key=lambda p: p != Protocol.ANONYMOUS)
    protocol = Protocol.PERSONALISED if Protocol.PERSONALISED in protocols else Protocol.ANONYMOUS
    rows = [r for r in all_rows if r.get("protocol", Protocol.ANONYMOUS) == protocol]
    verdicts = {
        p: _verdict([r for r in all_rows if r.get("protocol", Protocol.ANONYMOUS) == p], metric) for p in protocols
    }
    production = next((r for r in rows if r["kind"] == ModelKind.PRODUCTION), None)
    pool = [  # reference models (a dense EASE) are in the verdict, never served
        r
        for r in rows
        if r["kind"] in ((ModelKind.DEEP,) if g.require_deep else (ModelKind.DEEP, ModelKind.CLASSICAL))
        and r.get("servable", True)
    ]
    reasons: list[str] = [f"decided on the {protocol} protocol"]
    verdict = verdicts[protocol]
    if not pool:
        return {
            "blessed": False,
            "winner": None,
            "metric": metric,
            "protocol": protocol,
            "reasons": reasons + ["no eligible candidate" + (" (require_deep)" if g.require_deep else "")],
            "verdict": verdict,
            "verdicts": verdicts,
            "production": production and production["name"],
        }
    winner = max(pool, key=lambda r: r[val_metric])  # chosen on validation only; ties: first listed
    reasons.append(
        f"winner {winner['name']} ({winner['kind']}) by validation {metric} "
        f"{winner[val_metric]:.4f} among {[r['name'] for r in pool]}"
    )
    blessed = True
    n_eval = winner.get("n_eval_baskets", 0)
    if n_eval < g.min_eval_baskets:
        blessed = False
        reasons.append(f"only {n_eval} test baskets evaluated (< min_eval_baskets {g.min_eval_baskets})")
    else:
        reasons.append(f"{n_eval} test baskets evaluated (>= {g.min_eval_baskets})")
    if production is None:
        reasons.append("no model in production: nothing to regress against")
    else:
        floor = production[metric] * (1.0 - g.tolerance)
        if winner[metric] >= floor:
            reasons.append(
                f"test {metric} {winner[metric]:.4f} >= production {production[metric]:.4f} "
                f"x (1 - {g.tolerance}) = {floor:.4f}"
            )
        else:
            blessed = False
            reasons.append(
                f"test {metric} {winner[metric]:.4f} < production {production[metric]:.4f} "
                f"x (1 - {g.tolerance}) = {floor:.4f}: would regress"
            )
    return {
        "blessed": blessed,
        "winner": winner["name"],
        "winner_kind": winner["kind"],
        "winner_path": winner.get("path"),
        "metric": metric,
        "winner_test": winner[metric],
        "winner_val": winner[val_metric],
        "production": production and production["name"],
        "production_test": production and production[metric],
        "require_deep": g.require_deep,
        "tolerance": g.tolerance,
        "reasons": reasons,
        "verdict": verdict,
        "protocol": protocol,
        "verdicts": verdicts,
    }


def run_gate(comparison: dict, cfg, out_dir: str | Path) -> dict:
    decision = decide(comparison, cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / BLESSING_FILE).write_text(json.dumps(decision, indent=2, default=float) + "\n")
    v = decision["verdict"]
    ratio = v.get("deep_over_classical")
    others = "; ".join(
        f"{p}: {'n/a' if x.get('deep_over_classical') is None else round(x['deep_over_classical'], 3)}"
        for p, x in decision.get("verdicts", {}).items()
    )
    log.info(
        "gate: %s %s\n  %s\n  verdict: deep/classical on test %s (%s %.4f vs %s %.4f); by protocol: %s",
        "BLESSED" if decision["blessed"] else "NOT BLESSED",
        decision["winner"],
        "\n  ".join(decision["reasons"]),
        "n/a" if ratio is None else f"{ratio:.3f}",
        v.get("best_deep"),
        v.get("best_deep_test") or 0.0,
        v.get("best_classical"),
        v.get("best_classical_test") or 0.0,
        others,
    )
    return decision
