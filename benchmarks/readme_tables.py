"""Regenerate the results tables from ``benchmarks/results/*.json`` and ``experiments/results/*.json``: the README's headline table and
every table in ``docs/results.md``.

    python benchmarks/readme_tables.py          # rewrites both
    python benchmarks/readme_tables.py --print  # prints docs/results.md's content instead

Rows of one (benchmark, dataset, protocol, method) over several seeds become mean ± std. The block opens
with the label-free comparison (issue 9): for each protocol, the untrained network, raw pixels, DeepCluster,
instance discrimination, STML and PLM side by side, the best mean of each metric in bold.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import flat_rows

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- results:start -->", "<!-- results:end -->"
METRICS = [("recall@1", "R@1"), ("recall@2", "R@2"), ("recall@4", "R@4"), ("recall@8", "R@8"),
           ("recall@10", "R@10"), ("recall@100", "R@100"), ("recall@1000", "R@1000"), ("nmi", "NMI"),
           ("precision@1", "P@1"), ("r_precision", "RP"), ("map@r", "MAP@R"),
           ("purity", "purity"), ("correlation", "corr. with same-class"), ("pair_precision", "pair P@0.5"),
           ("pair_recall", "pair R@0.5"), ("positive_same_class", "positive same class"),
           ("negative_same_class", "negative same class"), ("correct", "correct triplets"),
           ("inverted", "inverted triplets")]
#: per-row fields shown when a results file has them (speed and memory benchmarks)
EXTRA_COLUMNS = [("peak_rss_mb", "peak RSS MB"), ("seconds_ratio_vs_pml", "time ÷ PML"),
                 ("peak_rss_ratio_vs_pml", "memory ÷ PML"), ("images_per_second", "img/s"),
                 ("best", "val-selected epoch: R@1 / NMI"), ("paper_value", "paper R@1 / NMI")]
TITLES = {"evaluation_speed": "Evaluation speed: dmlkit.evaluate vs pytorch-metric-learning's AccuracyCalculator",
          "scale": "Scale: refresh and evaluation at 120,000 x 512",
          "propagation_scaling": "SSDML affinity propagation: dense vs sparse",
          "quality": "Pseudo-supervision quality on training embeddings (PLM Table 2 style; x100)", "stml": "STML (no labels)", "plm": "PLM (no labels)", "ssdml": "SSDML (10 labels per class)",
          "slade": "SLADE (labeled teacher + unlabeled pool)", "drml": "DRML (supervised, zero-shot)",
          "drml_official": "DRML with the official training defaults (issue 25; compare with the DRML table)",
          "glyphs": "glyphs, every row (including `--quick` smoke rows)",
          "stml_official": "STML with the official per-batch query draws (issue 25; compare with the STML table)",
          "unsupervised_baselines": "Label-free baselines",
          "ssdml_mining": "SSDML triplet mining against the hidden classes (first partition; % of triplets)",
          "glyphs-large-yardsticks": "glyphs-large yardsticks: raw pixels and ImageNet Lite0 at 64 px (30,000 "
                                     "stratified test images of 1,462 unseen classes)",
          "glyphs_near_duplicates": "glyphs: raw-pixel R@1 with near-clone neighbours excluded (docs/datasets.md)"}


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def _shown(value) -> bool:
    """An extra column's value worth a cell: untrained rows have 0 img/s and a validation 'best' at epoch 0."""
    return bool(value) and not (isinstance(value, dict) and value.get("epoch") == 0)


def _dict_cell(key: str, values: list[dict]) -> str:
    """``best`` (the epoch chosen on validation) and ``paper_value`` cells: R@1 / NMI in %."""
    if len(values) != 1 or not _shown(values[0]):
        return ""
    value = values[0]
    text = f"{100 * value['recall@1']:.1f} / {100 * value['nmi']:.1f}" if {"recall@1", "nmi"} <= set(value) else ""
    return f"ep. {value['epoch']}: {text}" if key == "best" and "epoch" in value else text


def table(result: dict) -> str:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in flat_rows(result.get("rows", [])):
        if "metrics" in row:
            groups[(row.get("dataset", ""), row.get("protocol", ""), row["method"])].append(row)
    if not groups:
        return ""
    used = [(k, name) for k, name in METRICS if any(k in r["metrics"] for rows in groups.values() for r in rows)]
    extras = [(k, name) for k, name in EXTRA_COLUMNS if any(_shown(r.get(k)) for rows in groups.values() for r in rows)]
    header = ["dataset", "protocol", "method", *[name for _, name in used], "seconds",
              *[name for _, name in extras], "seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (dataset, protocol, method), rows in sorted(groups.items()):
        cells = [dataset, protocol, method]
        for key, _ in used:
            values = [r["metrics"][key] for r in rows if r["metrics"].get(key) is not None]
            cells.append(_cell(values) if values else "")
        seconds = [r["seconds"] for r in rows if r.get("seconds")]
        cells.append(f"{statistics.mean(seconds):.1f}" if seconds else "")
        for key, _ in extras:
            values = [r[key] for r in rows if isinstance(r.get(key), (int, float)) and _shown(r[key])]
            records = [r[key] for r in rows if isinstance(r.get(key), dict)]
            cells.append(f"{statistics.mean(values):.3g}" if values else _dict_cell(key, records))
        cells.append(str(sum(len(r["seeds"]) if isinstance(r.get("seeds"), list) else 1 for r in rows)))
        lines.append("| " + " | ".join(cells) + " |")
    quick = any(r.get("quick") or "quick" in str(r.get("notes", "")) for rows in groups.values() for r in rows)
    caption = (f"*{result.get('machine', '?')}, commit {result.get('commit', '?')}, {result.get('date', '?')}"
               + (" — includes `--quick` smoke rows (reduced data and epochs), not reproductions" if quick else "") + "*")
    return "\n".join([caption, "", *lines])


#: (results file, methods taken from it) for the label-free comparison, in table order
COMPARISON_SOURCES = (("stml", ("initial", "raw-pixels")), ("unsupervised_baselines", ("deepcluster", "instance")),
                      ("stml", ("stml",)), ("plm", ("plm",)))
COMPARISON_METRICS = [("recall@1", "R@1"), ("recall@2", "R@2"), ("recall@4", "R@4"), ("recall@8", "R@8"),
                      ("nmi", "NMI"), ("map@r", "MAP@R")]


def comparison(results: dict[str, dict]) -> str:
    """One table per protocol over the full (not ``--quick``) rows of ``COMPARISON_SOURCES``: mean ± std over
    seeds, the best mean of each metric in bold; ``results`` maps a results-file stem to its content."""
    groups: dict[str, dict[str, list[dict]]] = defaultdict(dict)
    for stem, methods in COMPARISON_SOURCES:
        for row in flat_rows(results.get(stem, {}).get("rows", [])):
            if row.get("method") in methods and not row.get("quick") and "metrics" in row:
                groups[row["protocol"]].setdefault(row["method"], []).append(row)
    if not groups:
        return ""
    order = [m for _, methods in COMPARISON_SOURCES for m in methods]
    lines = []
    for protocol in sorted(groups):
        present = sorted(groups[protocol].items(), key=lambda item: order.index(item[0]))
        means = {m: {k: statistics.mean(r["metrics"][k] for r in rows) for k, _ in COMPARISON_METRICS
                     if all(k in r["metrics"] for r in rows)} for m, rows in present}
        best = {k: max((v[k] for v in means.values() if k in v), default=None) for k, _ in COMPARISON_METRICS}
        header = ["method", *[name for _, name in COMPARISON_METRICS], "seconds", "seeds"]
        lines += [f"**{protocol}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for method, rows in present:
            cells = [method]
            for key, _ in COMPARISON_METRICS:
                if key not in means[method]:
                    cells.append("")
                    continue
                text = _cell([r["metrics"][key] for r in rows])
                cells.append(f"**{text}**" if means[method][key] == best[key] else text)
            cells += [f"{statistics.mean(r['seconds'] for r in rows):.0f}", str(len(rows))]
            lines.append("| " + " | ".join(cells) + " |")
        winners = {name: [m for m, v in means.items() if v.get(key) == best[key]] for key, name in COMPARISON_METRICS
                   if key in ("recall@1", "nmi", "map@r") and best[key] is not None}
        lines += ["", "Best: " + "; ".join(f"{name} {', '.join(ms)}" for name, ms in winners.items()) + ".", ""]
    return "\n".join(lines)


HEADLINE_TITLE = ("### Unseen classes of `glyphs`, from the ImageNet start (mean ± std over seeds; best mean in bold)\n\n"
                  "*From `benchmarks/results/glyphs.json` (`python -m benchmarks --suite glyphs`): 100 train / 100 "
                  "unseen test classes, 64 px; every trained row starts from ImageNet EfficientNet-Lite0 with "
                  "BatchNorm frozen, 128-d unless named -512, on the same budget (36,000 forward+backward images; the MLRC fold rows 17,800 on 3 of 4 folds); "
                  "Δ R@1 is against `initial`. Rows with one seed are marked ¹; the MLRC rows give mean ± std over "
                  "their folds (one seed each). The README leaves out the one-parameter diagnosis rows (docs/results.md, "
                  "docs/glyphs_study.md).*\n\n")
#: the headline's rows in order (glyphs suite rows; others are appended in file order)
HEADLINE_ORDER = ("raw-pixels", "initial", "supervised", "supervised-5labels", "instance", "instance-moco",
                  "deepcluster", "stml", "stml-512", "plm", "plm-512", "plm-lr1e-4", "plm-momentum0.999", "plm-delta1",
                  "ssdml", "ssdml-hinge", "deep-lrml", "deep-isdml", "slade", "proxyanchor",
                  "drml-proxyanchor", "drml-proxyanchor-fold0-nowarmup", "proxyanchor-fold0-8epochs",
                  "drml-proxyanchor-fold0-8epochs", "cosface", "drml-cosface")
#: one-parameter diagnosis rows: in docs/results.md's headline and the glyphs study, not in the README's
DIAGNOSIS_ROWS = ("plm-lr1e-4", "plm-momentum0.999", "drml-proxyanchor-fold0-nowarmup", "proxyanchor-fold0-8epochs",
                  "drml-proxyanchor-fold0-8epochs")
#: the train-split labels each headline row learns from (the rest: none)
HEADLINE_LABELS = {"supervised": "all", "supervised-5labels": "5 / class", "ssdml": "5 / class",
                   "ssdml-hinge": "5 / class", "deep-lrml": "5 / class", "deep-isdml": "5 / class",
                   "slade": "10 / class", "proxyanchor": "all, 75 classes",
                   "drml-proxyanchor": "all, 75 classes", "drml-proxyanchor-fold0-nowarmup": "all, 75 classes",
                   "proxyanchor-fold0-8epochs": "all, 75 classes", "drml-proxyanchor-fold0-8epochs": "all, 75 classes",
                   "cosface": "all, 75 classes", "drml-cosface": "all, 75 classes"}
#: a harness row of one MLRC fold: ``<row>-fold<k>``
FOLD_ROW = re.compile(r"^(?P<row>.+)-fold(?P<fold>\d+)$")


def fold_means(rows: list[dict]) -> list[dict]:
    """Rows ``<row>-fold<k>`` (one seed each) merged into one row ``<row>`` per MLRC experiment: each metric's
    mean and sample std over the folds, ``seeds`` = the folds, ``seconds`` the mean per fold."""
    folds: dict[str, list[tuple[int, dict]]] = defaultdict(list)
    merged = []
    for row in rows:
        match = FOLD_ROW.match(row["method"])
        if match:
            folds[match["row"]].append((int(match["fold"]), row))
        else:
            merged.append(row)
    for name, members in folds.items():
        members.sort(key=lambda member: member[0])
        keys = [k for k in members[0][1]["metrics"] if not k.endswith("_std")]
        metrics = {}
        for key in keys:
            values = [row["metrics"][key] for _, row in members if key in row["metrics"]]
            metrics[key] = statistics.mean(values)
            metrics[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        merged.append({**members[0][1], "method": name, "seeds": [fold for fold, _ in members], "metrics": metrics,
                       "seconds": statistics.mean(row["seconds"] for _, row in members),
                       "display": f"{name} (MLRC, fold{'s' if len(members) > 1 else ''} "
                                  f"{', '.join(str(fold) for fold, _ in members)})"})
    return merged


def _harness_cell(row: dict, key: str) -> str:
    mean, std = row["metrics"][key], row["metrics"].get(f"{key}_std")
    return f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if len(row["seeds"]) > 1 and std is not None else "")


def glyphs_table(result: dict, diagnoses: bool = True) -> str:
    """The headline: full (not ``--quick``) rows of a harness results file, best mean of each metric in bold
    (``diagnoses=False``: without :data:`DIAGNOSIS_ROWS`)."""
    rows = fold_means([r for r in result.get("rows", []) if not r.get("quick") and "metrics" in r
                       and (diagnoses or r["method"] not in DIAGNOSIS_ROWS)])
    if not rows:
        return ""
    rows.sort(key=lambda r: (HEADLINE_ORDER.index(r["method"]) if r["method"] in HEADLINE_ORDER
                             else len(HEADLINE_ORDER), r["method"]))
    keys = [(k, name) for k, name in COMPARISON_METRICS if any(k in r["metrics"] for r in rows)]
    best = {k: max(r["metrics"][k] for r in rows if k in r["metrics"]) for k, _ in keys}
    initial = next((r["metrics"]["recall@1"] for r in rows if r["method"] == "initial"), None)
    header = ["method", "labels", *[name for _, name in keys], "Δ R@1", "seconds", "seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row.get("display", row["method"]) + ("" if len(row["seeds"]) > 1 or row["base_method"] in
                                                      ("raw-pixels", "initial") else " ¹"),
                 HEADLINE_LABELS.get(row["method"], "none")]
        for key, _ in keys:
            text = _harness_cell(row, key) if key in row["metrics"] else ""
            cells.append(f"**{text}**" if text and row["metrics"][key] == best[key] else text)
        delta = "" if initial is None or row["method"] == "initial" else f"{100 * (row['metrics']['recall@1'] - initial):+.1f}"
        cells += [delta, f"{row['seconds']:.0f}", str(len(row["seeds"]))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


FASHION_TITLE = ("### Label-free comparison on Fashion-MNIST, from scratch (mean ± std over seeds; best mean in bold)\n\n"
                 "*From `stml.json`, `unsupervised_baselines.json` and `plm.json`: same network (mnist-net, "
                 "128-d), batch and 10-epoch budget (PLM: 8); initial and raw pixels need no training.*\n\n")
RESULTS_HEADER = ("# Results\n\n*Generated by `python benchmarks/readme_tables.py` from `benchmarks/results/*.json`; "
                  "do not edit by hand. Values are percentages (fractions × 100) unless a column says otherwise.*\n\n")


def load_results() -> dict[str, dict]:
    """Every results file, benchmarks' and experiments', by stem in name order."""
    paths = [*(ROOT / "benchmarks" / "results").glob("*.json"), *(ROOT / "experiments" / "results").glob("*.json")]
    return {path.stem: json.loads(path.read_text()) for path in sorted(paths, key=lambda p: p.stem)}


def headline(results: dict[str, dict], diagnoses: bool = True) -> str:
    """The headline table: every method on glyphs' unseen classes beside its start (the README's, without
    the one-parameter diagnosis rows)."""
    head = glyphs_table(results.get("glyphs", {}), diagnoses)
    return HEADLINE_TITLE + head if head else ""


def render(results: dict[str, dict] | None = None) -> str:
    """``docs/results.md``: the headline, then one table per results file."""
    results = load_results() if results is None else results
    parts = [RESULTS_HEADER.rstrip("\n") + "\n"]
    head = headline(results)
    if head:
        parts.append(head)
    fashion = comparison(results)
    if fashion:
        parts.append(FASHION_TITLE + fashion)
    for stem, result in results.items():
        body = table(result)
        if body:
            parts.append(f"### {TITLES.get(stem, stem)}\n\n{body}\n")
    return "\n".join(parts)


def readme_with_headline(readme: str, results: dict[str, dict]) -> str:
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{headline(results, diagnoses=False)}\n{END}{tail}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--print", action="store_true", help="print docs/results.md's content instead of writing")
    args = parser.parse_args()
    results = load_results()
    if args.print:
        print(render(results))
        return
    readme = ROOT / "README.md"
    readme.write_text(readme_with_headline(readme.read_text(), results))
    (ROOT / "docs" / "results.md").write_text(render(results))


if __name__ == "__main__":
    main()
