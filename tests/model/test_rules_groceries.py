"""FP-growth rules reproduce the published Groceries figures (arules / mlxtend / efficient-apriori)."""

from __future__ import annotations

import pandas as pd

from assoc_lib.models import rules


def test_groceries_reference_counts(groceries_csv, tmp_path):
    summary = rules.run(groceries_csv, 0.001, 0.5, tmp_path / "rules.csv")
    assert summary["frequent_itemsets"] == 13492
    assert summary["rules_single_consequent"] == 5668
    table = pd.read_csv(tmp_path / "rules.csv")
    assert list(table.columns[:2]) == ["antecedents", "consequents"]
    assert ((table["n_consequents"] == 1) & (table["confidence"] >= 0.8)).sum() == 410
    assert (table["lift"] > 1).mean() > 0.99


def test_rules_on_contract_partitions(synth_world, tmp_path):
    summary = rules.run(synth_world / "data", 0.01, 0.3, tmp_path / "r.csv", max_len=2)
    assert summary["rules"] > 0 and summary["orders"] > 100
