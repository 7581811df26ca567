import os

import numpy as np
import pytest
import torch

os.environ.setdefault("DMLKIT_NUM_THREADS", "2")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)
    yield


@pytest.fixture()
def dataset_registry():
    """dmlkit's dataset registry, restored after the test (``register_dataset`` changes it process-wide)."""
    from dmlkit.data import registry
    from tests.data_fixtures import restored_dataset_registry

    with restored_dataset_registry():
        yield registry


@pytest.fixture()
def load_benchmark(tmp_path, monkeypatch):
    """``load_benchmark("harness.py")``: a script of benchmarks/ (or else experiments/) imported as a fresh
    module, its results directories redirected to ``tmp_path`` (the repository's results files are never touched)."""
    import importlib.util
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    folder = root / "benchmarks"
    monkeypatch.syspath_prepend(str(folder))

    def load(filename: str):
        path = folder / filename if (folder / filename).is_file() else root / "experiments" / filename
        spec = importlib.util.spec_from_file_location(f"bench_{Path(filename).stem}", path)
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
        spec.loader.exec_module(module)
        if "_common" in sys.modules:  # scripts that write results (readme_tables.py only reads)
            monkeypatch.setattr(sys.modules["_common"], "RESULTS_DIR", tmp_path)
            monkeypatch.setattr(sys.modules["_common"], "EXPERIMENT_RESULTS_DIR", tmp_path)
        for name in ("RESULTS_DIR", "EXPERIMENT_RESULTS_DIR"):  # the script's own binding of a folder
            if hasattr(module, name):
                monkeypatch.setattr(module, name, tmp_path)
        return module

    return load
