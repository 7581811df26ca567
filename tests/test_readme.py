"""The README's examples run as written: every block marked `<!-- readme-test: run -->`."""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCK = re.compile(r"<!-- readme-test: (run|skip) -->\n```(\w+)\n(.*?)```", re.DOTALL)
BLOCKS = [(mode, lang, body) for mode, lang, body in BLOCK.findall(README)]
FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def test_every_code_block_is_marked():
    fenced = re.findall(r"```(?:console|python|bash)\n", README)
    assert len(fenced) == len(BLOCKS), "mark every console/python block with <!-- readme-test: run|skip -->"


def _needs_data(body: str) -> bool:
    return "fashion-mnist" in body


@pytest.mark.parametrize("index", [i for i, b in enumerate(BLOCKS) if b[0] == "run" and b[1] == "python"])
def test_python_example(index, tmp_path, monkeypatch, dataset_registry):
    body = BLOCKS[index][2]
    if _needs_data(body) and not FMNIST.exists():
        pytest.skip("Fashion-MNIST not installed")
    monkeypatch.chdir(tmp_path)  # dataset_registry: undoes the blocks' register_dataset calls
    exec(compile(body, f"README block {index}", "exec"), {"__name__": "__readme__"})


@pytest.mark.parametrize("index", [i for i, b in enumerate(BLOCKS) if b[0] == "run" and b[1] == "console"])
def test_console_example(index, tmp_path):
    body = BLOCKS[index][2]
    if _needs_data(body) and not FMNIST.exists():
        pytest.skip("Fashion-MNIST not installed")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), PYTHONWARNINGS="ignore")
    for line in body.splitlines():
        if not line.startswith("$ dmlkit"):
            continue
        args = shlex.split(line[2:])[1:]
        result = subprocess.run([sys.executable, "-m", "dmlkit", *args], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{line}\n{result.stderr[-3000:]}"
