"""Frequently-bought-together tables, category prediction and the HTML report (rendered in Chromium)."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from assoc_lib.data.preprocess import load_split, split_baskets
from assoc_lib.insights import report, tables
from assoc_lib.models.baselines import baskets_to_csr
from assoc_lib.models.network import item_embeddings
from assoc_lib.models.servable import ServableModel


def test_pair_rules_hide_low_lift_and_tiny_support():
    vocab = ["a", "b", "c", "d"]
    baskets = [[0, 1]] * 8 + [[2]] * 10 + [[0, 2]] * 1 + [[3, 0]] * 1
    df = tables.pair_rules(baskets_to_csr(baskets, 4), vocab, min_support=0.1)
    assert set(zip(df["antecedents"], df["consequents"])) == {("a", "b"), ("b", "a")}
    assert (df["lift"] > 1).all() and (df["support"] >= 0.1).all()


def test_fbt_tables_and_categories_on_synthetic(trained, tmp_path):
    baskets, vocab = load_split(trained["prep_dir"])
    train = split_baskets(baskets)["train"]
    deep = ServableModel.load(trained["candidates"]["deep"]["path"])
    catalog = trained["cfg"].paths.catalog_path
    out = tables.frequently_bought_together(train, vocab, deep, catalog, tmp_path, 0.005, 0.005, 0.2)
    pairs = pd.read_csv(out["pairs"]["csv"])
    assert len(pairs) > 0 and (pairs["lift"] > 1).all() and pairs["antecedent_titles"].str.startswith("Product").all()
    related = pd.read_parquet(out["deep_related"]["parquet"])
    assert len(related) == 10 * len(vocab) and (related["item_id"] != related["related_item_id"]).all()
    # blank some categories: they get suggestions
    cat = pd.read_parquet(catalog)
    blanked = cat["item_id"].isin(vocab[:5])
    cat.loc[blanked, ["department", "category"]] = None
    cat.to_parquet(tmp_path / "catalog.parquet")
    embeddings = item_embeddings(deep.deep)  # as the DAG's insights task does
    result = tables.category_prediction(train, vocab, embeddings, tmp_path / "catalog.parquet", tmp_path)
    for level in ("department", "category"):
        acc = result["levels"][level]["accuracy"]
        assert set(acc) == {"deep_embedding_knn", "cooccurrence_knn", "popularity"}
        # the synthetic catalogue plants category affinities: both learned neighbourhoods beat the
        # majority-class baseline; on the 12 fine categories the deep embeddings beat it by a wide margin
        assert acc["deep_embedding_knn"] > acc["popularity"], (level, acc)
        assert acc["cooccurrence_knn"] > acc["popularity"], (level, acc)
    fine = result["levels"]["category"]["accuracy"]
    assert fine["deep_embedding_knn"] >= max(2 * fine["popularity"], fine["popularity"] + 0.1), fine
    suggestions = pd.read_csv(result["suggestions"]["csv"])
    assert set(suggestions["item_id"]) == set(vocab[:5])


def _report(trained, tmp_path):
    baskets, vocab = load_split(trained["prep_dir"])
    daily = pd.DataFrame(
        {
            "ds": pd.date_range("2024-03-01", periods=5).strftime("%Y-%m-%d"),
            "rows": [200, 220, 210, 190, 230],
            "min_rows": [20, 22, 21, 19, 23],
            "max_rows": [1000, 1100, 1050, 950, 1150],
        }
    )
    runs = pd.DataFrame(
        {
            "ds": ["2024-03-03", "2024-03-04", "2024-03-05"],
            "winner": ["rules", "ease", "deep"],
            "blessed": [True, False, True],
            "winner_test": [0.3, 0.28, 0.31],
            "production": [None, "production v1", "production v1"],
            "deep_over_classical": [0.9, 0.95, 1.02],
            "version": [1, None, 2],
        }
    )
    comparison = {
        "models": [
            {
                "name": "ease",
                "kind": "classical",
                "protocol": "anonymous",
                "val_ndcg@10": 0.3,
                "ndcg@10": 0.31,
                "recall@10": 0.5,
                "mrr": 0.3,
                "coverage@10": 0.4,
                "n_eval_baskets": 99,
            }
        ],
        "deep_minus_classical": {
            "anonymous": {
                "deep": "deep+ease",
                "classical": "ease_dense",
                "mean": 0.012,
                "low": 0.004,
                "high": 0.02,
                "n": 99,
            }
        },
    }
    catalog = tables.load_catalog(trained["cfg"].paths.catalog_path)
    return report.build_report(tmp_path / "report.html", "2024-03-05", baskets, vocab, daily, catalog, comparison, runs)


def test_report_has_data_in_every_plot(trained, tmp_path):
    from PIL import Image

    rep = _report(trained, tmp_path)
    page = (tmp_path / "report.html").read_text()
    points = [int(x) for x in re.findall(r'data-points="(\d+)"', page)]
    assert len(points) == 5 and all(p > 0 for p in points)
    for b64 in re.findall(r'src="data:image/png;base64,([^"]+)"', page):
        img = np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("L"), dtype=float)
        assert img.std() > 5  # not a blank canvas
    assert rep["counts"]["comparison_rows"] == 1 and "Gate decisions and served versions" in page
    interval = page[page.index("Deep minus classical") :]
    assert "ease_dense" in interval and "0.0040" in interval and "0.0200" in interval


def test_report_renders_in_headless_chromium(trained, tmp_path):
    from PIL import Image

    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no Chromium on this machine (CI installs Debian's chromium in .ci/run)")
    _report(trained, tmp_path)
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--hide-scrollbars",
            "--window-size=1200,2400",
            f"--screenshot={shot}",
            (tmp_path / "report.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.exists(), proc.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB"), dtype=float)
    assert img.shape[0] >= 2000 and img.shape[1] >= 1100
    # the page drew something in its top, middle and lower parts (plots, not a blank page)
    for band in (img[100:700], img[700:1400], img[1400:2100]):
        assert band.std() > 10
    colourful = (np.abs(img[..., 0] - img[..., 2]) > 40).mean()
    assert colourful > 0.01  # coloured plot marks are on screen
