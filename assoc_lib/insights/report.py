"""The daily shopping-behaviour report: one static HTML page with embedded plots.

Basket sizes, daily order volume against the validation bounds, top categories, a category
co-purchase heatmap (lift), the model comparison, and the history of gate decisions and
served versions. Every figure carries ``data-points`` (how many values it drew) so a check
can tell an empty plot from a real one.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _figure(title: str, fig, points: int, caption: str = "") -> str:
    return (
        f'<figure class="plot" data-points="{points}"><h2>{html.escape(title)}</h2>'
        f'<img alt="{html.escape(title)}" src="data:image/png;base64,{_png(fig)}"/>'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _table(df: pd.DataFrame, title: str) -> str:
    return (
        f'<section class="table" data-rows="{len(df)}"><h2>{html.escape(title)}</h2>'
        + df.to_html(index=False, float_format=lambda x: f"{x:.4f}", border=0, escape=True)
        + "</section>"
    )


def build_report(
    out_path: str | Path,
    ds: str,
    baskets: pd.DataFrame,
    vocab: list[str],
    daily: pd.DataFrame,
    catalog: pd.DataFrame,
    comparison: dict | None,
    runs: pd.DataFrame,
    categories: dict | None = None,
    top_n_categories: int = 12,
) -> dict:
    """Write the HTML report; returns counts per figure.

    ``daily``: ds, orders, rows, min_rows, max_rows (validation bounds, may be NaN).
    ``runs``: ds, winner, blessed, winner_test, production, version (one row per past run).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts, counts = [], {}
    sizes = baskets["items"].map(len)
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.hist(sizes, bins=range(1, int(sizes.max()) + 2), color="#4c72b0")
    ax.set_xlabel("items per basket")
    ax.set_ylabel("baskets")
    counts["basket_sizes"] = int(len(sizes))
    parts.append(
        _figure("Basket size distribution", fig, len(sizes), f"{len(sizes)} baskets, median {sizes.median():.0f} items")
    )

    fig, ax = plt.subplots(figsize=(7, 3))
    d = daily.sort_values("ds")
    x = pd.to_datetime(d["ds"])
    ax.plot(x, d["rows"], marker="o", ms=3, label="order lines")
    if d["min_rows"].notna().any():
        ax.fill_between(
            x,
            d["min_rows"].astype(float),
            d["max_rows"].astype(float),
            color="#55a868",
            alpha=0.2,
            label="validation bounds",
        )
    ax.set_ylabel("order lines per day")
    ax.legend(loc="upper left", fontsize=8)
    fig.autofmt_xdate()
    counts["daily_volume"] = int(len(d))
    parts.append(_figure("Daily order volume against the validation bounds", fig, len(d)))

    item_cat = pd.Series([catalog["category"].get(v) if "category" in catalog.columns else None for v in vocab])
    flat = pd.Series(np.concatenate([np.asarray(b, int) for b in baskets["items"]]) if len(baskets) else [])
    cats = item_cat.iloc[flat.to_numpy()].dropna() if len(flat) else pd.Series(dtype=object)
    top = cats.value_counts().head(top_n_categories)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.barh(top.index[::-1].astype(str), top.to_numpy()[::-1], color="#dd8452")
    ax.set_xlabel("order lines")
    counts["top_categories"] = int(len(top))
    parts.append(_figure("Top categories", fig, len(top)))

    names = list(top.index)
    lift = np.zeros((len(names), len(names)))
    if names:
        pos = {c: k for k, c in enumerate(names)}
        B = np.zeros((len(baskets), len(names)), dtype=bool)
        for r, items in enumerate(baskets["items"]):
            for it in items:
                c = item_cat.iat[int(it)]
                if c in pos:
                    B[r, pos[c]] = True
        n = max(len(baskets), 1)
        support = B.mean(axis=0)
        both = (B.T.astype(float) @ B.astype(float)) / n
        lift = both / np.maximum(np.outer(support, support), 1e-12)
        np.fill_diagonal(lift, np.nan)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    im = ax.imshow(lift, cmap="RdBu_r", vmin=0, vmax=max(2.0, np.nanmax(lift) if names else 2.0))
    ax.set_xticks(range(len(names)), [str(s)[:18] for s in names], rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), [str(s)[:18] for s in names], fontsize=7)
    fig.colorbar(im, ax=ax, label="lift (1 = independent)")
    counts["category_lift"] = int(np.isfinite(lift).sum())
    parts.append(
        _figure(
            "Category co-purchase (lift)",
            fig,
            counts["category_lift"],
            "baskets holding both categories / expected if independent",
        )
    )

    if comparison:
        rows = pd.DataFrame(comparison["models"])
        cols = [
            c
            for c in (
                "name",
                "kind",
                "protocol",
                "val_ndcg@10",
                "ndcg@10",
                "recall@10",
                "mrr",
                "coverage@10",
                "history_decay",
                "servable",
                "n_eval_baskets",
            )
            if c in rows.columns
        ]
        parts.append(
            _table(
                rows[cols],
                "Model comparison (test; the winner is chosen on validation among servable models; "
                "history_decay: the personal prior's decay time in days, 0 = plain counts)",
            )
        )
        counts["comparison_rows"] = int(len(rows))
        intervals = comparison.get("deep_minus_classical") or {}
        if intervals:
            ci = pd.DataFrame(
                [
                    {
                        "protocol": p,
                        "best deep (val)": c["deep"],
                        "best classical (val)": c["classical"],
                        "test NDCG@10 difference": c["mean"],
                        "95% low": c["low"],
                        "95% high": c["high"],
                        "baskets": c["n"],
                    }
                    for p, c in intervals.items()
                ]
            )
            parts.append(
                _table(ci, "Deep minus classical on the same test baskets (paired bootstrap, 2,000 resamples)")
            )

    fig, ax = plt.subplots(figsize=(7, 3))
    r = runs.sort_values("ds")
    if len(r):
        rx = pd.to_datetime(r["ds"])
        ax.plot(rx, r["winner_test"], marker="o", label="winner test NDCG@10")
        blessed = r["blessed"].astype(bool)
        ax.scatter(rx[blessed], r.loc[blessed, "winner_test"], color="#55a868", zorder=3, label="blessed")
        ax.scatter(
            rx[~blessed], r.loc[~blessed, "winner_test"], color="#c44e52", marker="x", zorder=3, label="not blessed"
        )
        ax.legend(fontsize=8)
        fig.autofmt_xdate()
    ax.set_ylabel("NDCG@10")
    counts["gate_history"] = int(len(r))
    parts.append(_figure("Gate decisions over past runs", fig, len(r)))
    parts.append(_table(r, "Gate decisions and served versions"))

    if categories and categories.get("levels"):
        acc = pd.DataFrame(
            [
                {"level": lvl, **v["accuracy"], "held-out products": v["n_test_products"], "classes": v["n_classes"]}
                for lvl, v in categories["levels"].items()
            ]
        )
        parts.append(_table(acc, "Category prediction accuracy (held-out products)"))

    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>basket-association report {ds}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}} figure{{display:inline-block;margin:1em;
vertical-align:top}} table{{border-collapse:collapse;font-size:13px}}
td,th{{padding:3px 8px;border-bottom:1px solid #ddd}}
</style></head><body><h1>Shopping behaviour and models, ds={html.escape(ds)}</h1>
<p>{len(baskets)} baskets in the window, {len(vocab)} products in the vocabulary.</p>
{"".join(parts)}</body></html>"""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(page)
    log.info("report: %s (%s)", out_path.resolve(), ", ".join(f"{k}={v}" for k, v in counts.items()))
    return {"path": str(out_path), "counts": counts}


def past_runs(runs_root: str | Path) -> pd.DataFrame:
    """One row per past run: gate decision, winner, production, pushed version."""
    rows = []
    for run in sorted(Path(runs_root).glob("ds=*")):
        blessing = run / "gate" / "blessing.json"
        if not blessing.exists():
            continue
        b = json.loads(blessing.read_text())
        versions = run / "versions.json"
        v = json.loads(versions.read_text()) if versions.exists() else {}
        rows.append(
            {
                "ds": run.name[3:],
                "winner": b.get("winner"),
                "blessed": bool(b.get("blessed")),
                "winner_test": b.get("winner_test"),
                "production": b.get("production"),
                "deep_over_classical": (b.get("verdict") or {}).get("deep_over_classical"),
                "version": v.get("model_version"),
            }
        )
    df = pd.DataFrame(
        rows, columns=["ds", "winner", "blessed", "winner_test", "production", "deep_over_classical", "version"]
    )
    df["version"] = df["version"].astype("Int64")
    return df
