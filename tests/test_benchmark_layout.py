"""benchmarks/ and experiments/: one entry point, no script importing another, no monkeypatching, every
experiment saying what question it answered (issue 24)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted([*(ROOT / "benchmarks").glob("*.py"), *(ROOT / "experiments").glob("*.py")])
#: sibling modules a script may import: the shared helpers, and the harness's own two halves
SHARED = {"_common", "harness", "suites"}


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_script_imports_another_or_patches_a_module(path):
    siblings = {p.stem for p in SCRIPTS} - SHARED
    tree = _tree(path)
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
            modules |= {alias.asname or alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        assert not {name.split(".")[0] for name in names} & siblings, f"{path.name} imports another script"
    patched = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Assign)
               for target in node.targets
               if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id in modules]
    assert not patched, f"{path.name} assigns into an imported module at line(s) {patched}"


def test_experiments_say_what_question_they_answered():
    for path in (ROOT / "experiments").glob("*.py"):
        doc = ast.get_docstring(_tree(path)) or ""
        first = doc.split("\n\n")[0].replace("\n", " ")
        assert first.endswith("?") or path.stem == "convert_results_schema", f"{path.name}: {first[:80]!r}"


def test_benchmarks_keep_one_entry_point():
    """benchmarks/ holds the harness (``python -m benchmarks``), its helpers and the table generator only;
    measurements that are not "train a method, evaluate" (speed, scaling, analyses) live in experiments/."""
    names = {p.name for p in (ROOT / "benchmarks").glob("*.py")}
    assert names == {
        "__main__.py", "_common.py", "harness.py", "suites.py", "readme_tables.py"}


#: results files in their own shape: the speed branch's measurements, the glyphs near-clone analysis, CPU settings
OWN_SHAPE = {"evaluation_speed", "propagation_scaling", "propagation_partitioned", "train_overhead", "glyphs_near_duplicates",
              "cpu_settings"}
SCHEMA = {"method", "base_method", "preset", "dataset", "protocol", "seeds", "metrics", "seconds", "per_seed", "quick"}


def test_results_files_follow_the_row_schema():
    import json
    import statistics

    paths = [*(ROOT / "benchmarks" / "results").glob("*.json"), *(ROOT / "experiments" / "results").glob("*.json")]
    checked = 0
    for path in paths:
        if path.stem in OWN_SHAPE:
            continue
        data = json.loads(path.read_text())
        assert {"benchmark", "machine", "commit", "date", "rows"} <= set(data), path.name
        for row in data["rows"]:
            assert SCHEMA <= set(row), (path.name, sorted(SCHEMA - set(row)))
            assert row["seeds"] == [s["seed"] for s in row["per_seed"]], (path.name, row["method"])
            for key, mean in ((k, v) for k, v in row["metrics"].items() if not k.endswith("_std")):
                values = [s["metrics"][key] for s in row["per_seed"] if s.get("metrics", {}).get(key) is not None]
                assert mean == statistics.mean(values), (path.name, row["method"], key)
            checked += 1
    assert checked > 100
