"""The Python examples in docs/ run as written, and the README stays a short user guide."""
from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_readme_is_a_short_user_guide():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for heading in ("## Install", "## Results", "## Command line", "## Python", "## Citing", "## License"):
        assert heading in readme
    assert "Zheng, Wenzhao" in readme  # DRML's first author (seed 004)


def test_adding_a_method_example_trains_and_registers(tmp_path, monkeypatch):
    from dmlkit.methods import REGISTRY, available_methods, method_class

    text = (ROOT / "docs" / "adding_a_method.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    assert len(code.splitlines()) <= 40
    monkeypatch.chdir(tmp_path)
    module = types.ModuleType("docs_adding_a_method")  # a real module: dataclasses look their class up there
    monkeypatch.setitem(sys.modules, module.__name__, module)
    try:
        exec(compile(code, "docs/adding_a_method.md", "exec"), module.__dict__)
        cls = method_class("my-contrastive")
        assert cls.uses_labels == "all" and "my-contrastive" in available_methods()
        metrics = (tmp_path / "runs" / "readme-my-method" / "metrics.json").read_text()
        assert '"recall@1"' in metrics
    finally:
        REGISTRY.pop("my-contrastive", None)


def test_register_method_refuses_bad_input():
    import dmlkit
    from dmlkit.methods import REGISTRY, Method

    with pytest.raises(TypeError, match="subclass of dmlkit.methods.Method"):
        dmlkit.register_method("x", dict)
    with pytest.raises(ValueError, match="already registered"):
        dmlkit.register_method("stml", type("Other", (Method,), {}))
    with pytest.raises(ValueError, match="without spaces"):
        dmlkit.register_method("my method", type("Other", (Method,), {}))
    assert isinstance(REGISTRY["stml"], str)
