"""benchmarks/readme_tables.py's label-free comparison: rows from several results files side by side per
protocol, mean ± std over seeds, the best mean in bold, --quick rows and other methods left out."""
from __future__ import annotations


def _row(method, protocol, r1, nmi, seed=0, **extra):
    return {"method": method, "dataset": "fashion-mnist", "protocol": protocol, "seed": seed, "seconds": 10.0,
            "metrics": {"recall@1": r1, "recall@2": r1, "recall@4": r1, "recall@8": r1, "nmi": nmi, "map@r": 0.3},
            **extra}


def test_comparison_averages_seeds_and_bolds_the_best_mean(load_benchmark):
    tables = load_benchmark("readme_tables.py")
    results = {
        "stml": {"rows": [_row("initial", "zero-shot", 0.80, 0.50), _row("stml", "zero-shot", 0.90, 0.40),
                          _row("stml", "zero-shot", 0.70, 0.40, seed=1)]},
        "unsupervised_baselines": {"rows": [_row("instance", "zero-shot", 0.85, 0.45),
                                            _row("instance", "zero-shot", 0.99, 0.99, seed=1, quick=True),
                                            _row("instance-moco", "zero-shot", 0.99, 0.99)]},
        "plm": {"rows": [_row("plm-binary", "zero-shot", 0.99, 0.99), _row("plm", "unsupervised", 0.6, 0.2)]},
    }
    text = tables.comparison(results)
    lines = text.splitlines()
    zero_shot = lines[lines.index("**zero-shot**"):]
    rows = {line.split(" | ")[0].lstrip("| "): line for line in zero_shot if line.startswith("| ") and "---" not in line}
    assert list(rows) == ["method", "initial", "instance", "stml"]  # table order; quick, moco and ablations left out
    assert "| 80.0 ± 14.1 |" in rows["stml"] and rows["stml"].endswith("| 2 |")  # mean ± sample std, 2 seeds
    assert "**85.0**" in rows["instance"] and "**50.0**" in rows["initial"]  # best R@1 / best NMI
    assert "**" not in rows["stml"].split(" | ")[1]
    assert "Best: R@1 instance; NMI initial; MAP@R initial, instance, stml." in zero_shot
    assert "**unsupervised**" in lines and "| plm | **60.0** |" in text


def test_comparison_is_empty_without_rows(load_benchmark):
    assert load_benchmark("readme_tables.py").comparison({}) == ""


def test_committed_tables_are_generated_from_the_results(load_benchmark):
    """README's headline and docs/results.md equal what the results files give (regenerate with
    `python benchmarks/readme_tables.py` after a benchmark writes rows)."""
    from pathlib import Path

    tables = load_benchmark("readme_tables.py")
    root = Path(__file__).resolve().parent.parent
    results = tables.load_results()
    readme = (root / "README.md").read_text()
    assert tables.readme_with_headline(readme, results) == readme
    assert (root / "docs" / "results.md").read_text() == tables.render(results)
    assert "### Unseen classes of `glyphs`" in readme and "### DRML" not in readme  # README: the headline only


def test_mlrc_fold_rows_become_one_row_of_fold_means(load_benchmark):
    tables = load_benchmark("readme_tables.py")
    rows = [{"method": f"drml-pa-fold{fold}", "base_method": "drml", "seeds": [0], "seconds": 10.0 * (fold + 1),
             "metrics": {"recall@1": r1, "recall@1_std": 0.0}} for fold, r1 in ((1, 0.90), (0, 0.80))]
    rows += [{"method": "drml-pa-fold0-nowarmup", "base_method": "drml", "seeds": [0], "seconds": 1.0,
              "metrics": {"recall@1": 0.5}}, {"method": "stml", "base_method": "stml", "seeds": [0, 1],
                                                "seconds": 1.0, "metrics": {"recall@1": 0.7}}]
    merged = {row["method"]: row for row in tables.fold_means(rows)}
    assert set(merged) == {"drml-pa", "drml-pa-fold0-nowarmup", "stml"}  # a suffix after the fold is its own row
    row = merged["drml-pa"]
    assert row["seeds"] == [0, 1] and row["seconds"] == 15.0 and row["display"] == "drml-pa (MLRC, folds 0, 1)"
    assert abs(row["metrics"]["recall@1"] - 0.85) < 1e-12
    assert abs(row["metrics"]["recall@1_std"] - 0.0707107) < 1e-6  # sample std of .80 and .90


def test_the_readme_headline_leaves_out_the_diagnosis_rows(load_benchmark):
    tables = load_benchmark("readme_tables.py")
    rows = [{"method": name, "base_method": "plm", "seeds": [0], "seconds": 1.0, "metrics": {"recall@1": 0.5}}
            for name in ("plm", "plm-lr1e-4")]
    assert "plm-lr1e-4" in tables.glyphs_table({"rows": rows})
    readme_table = tables.glyphs_table({"rows": rows}, diagnoses=False)
    assert "| plm ¹ |" in readme_table and "plm-lr1e-4" not in readme_table
