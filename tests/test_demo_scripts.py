"""scripts/demo_compare.py (the demo's side-by-side table) and scripts/demo_data.py (its Latin-only build)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(tmp_path: Path, name: str, method: str, r1: float, mapr: float, nmi: float, test_subset: int = 2000) -> Path:
    run = tmp_path / name
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({
        "method": method, "test": {"recall@1": r1, "map@r": mapr, "nmi": nmi},
        "config": {"dataset": "glyphs", "test_subset": test_subset}}))
    return run


def test_demo_compare_prints_both_and_the_difference(tmp_path, capsys):
    compare = _script("demo_compare")
    initial = _run(tmp_path, "initial", "initial", 0.791, 0.217, 0.591)
    trained = _run(tmp_path, "stml", "stml", 0.849, 0.317, 0.686)
    assert compare.main([str(initial), str(trained)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| glyphs test split | initial | STML | difference |"
    assert lines[2] == "| R@1 | 0.791 | 0.849 | +0.058 |"
    assert lines[3] == "| MAP@R | 0.217 | 0.317 | +0.100 |"
    assert lines[4] == "| NMI | 0.591 | 0.686 | +0.095 |"
    other = _run(tmp_path, "other", "stml", 0.5, 0.1, 0.1, test_subset=500)
    with pytest.raises(SystemExit, match="different test sets"):
        compare.main([str(initial), str(other)])
    with pytest.raises(SystemExit, match="no metrics.json"):
        compare.main([str(initial), str(tmp_path)])
    assert compare.main([str(initial)]) == 2


def test_demo_data_renders_the_latin_candidates_only():
    from dmlkit.data.glyphs.codepoints import candidate_code_points
    from dmlkit.data.glyphs.render import LATIN

    points = _script("demo_data").demo_code_points()
    assert points == [cp for cp in candidate_code_points() if cp <= 0x17F]
    assert {ord(c) for c in LATIN} <= set(points)  # the picture-font rule compares the faces' Latin letters
    assert ord("é") in points and ord("ſ") in points and ord("Ɓ") not in points
