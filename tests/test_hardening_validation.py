"""Every user mistake of issue 23 is one line on stderr, exit 2, no traceback, and nothing written.

Each probe runs ``main([...])`` in-process: the CLI's exit code and stderr, without a new interpreter
(``python -m dmlkit`` is ``sys.exit(main())``; test_hardening_rundir runs it in a real process).
"""
from __future__ import annotations

import math
import os
import pickle
from pathlib import Path

import pytest

from dmlkit.cli import main

FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
TRAIN = ["train", "--method", "supervised", "--dataset", "fashion-mnist", "--train-subset", "100", "--test-subset",
         "100", "--batch-size", "50", "--epochs", "1", "--no-progress", "--no-pictures", "--threads", "1",
         "--set", "backbone=mnist-net"]


def _one_error(capsys, argv: list[str], code: int = 2) -> str:
    capsys.readouterr()
    assert main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("dmlkit: ")]
    assert len(lines) == 1, err
    return lines[0]


def _files(tmp_path: Path) -> set[str]:
    return {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")}


def _write_inputs(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("mine\n")
    (tmp_path / "evil.yaml").write_text("method: !!python/object/apply:os.system ['touch pwned']\n")
    (tmp_path / "list.yaml").write_text("- method\n- stml\n")
    (tmp_path / "typo.yaml").write_text("method: supervised\nepohcs: 2\n")
    (tmp_path / "weights.pkl").write_bytes(pickle.dumps(os.getcwd))
    (tmp_path / "bad.csv").write_bytes(b"path,label,split\na.png,dog,train\nb.png,caf\xe9,train\n")


# (argv after the common train flags, words the one line must contain); None: the common flags are not used
PROBES = {
    "set-sigma-abc": (["train", "--method", "stml", "--dataset", "digits", "--set", "sigma=abc"],
                      ["option sigma of method stml", "'abc'", "a number"]),
    "threads-negative": (["--threads", "-3"], ["threads", "at least 1", "-3"]),
    "accelerator-gpu": (["--accelerator", "gpu"], ["--accelerator gpu", "no GPU", "cpu or auto"]),
    "out-is-a-file": (["--out", "a-file"], ["a-file is a file", "--out"]),
    "out-under-a-file": (["--out", "a-file/run"], ["a-file is a file", "--out"]),
    "out-unwritable": (["--out", "/proc/dmlkit-run"], ["cannot create the directory", "writable --out"]),
    "yaml-python-tag": (["--preset", "evil.yaml"], ["evil.yaml", "line 1", "python/object", "plain YAML"]),
    "yaml-list-at-top": (["--preset", "list.yaml"], ["list.yaml", "mapping", "got a list"]),
    "yaml-unknown-key": (["--preset", "typo.yaml"], ["'epohcs'", "did you mean 'epochs'"]),
    "pretrained-pickle": (["--set", "pretrained=weights.pkl"], ["weights.pkl", "not a plain state dict"]),
    "lr-nan": (["--lr", "nan"], ["lr", "nan"]),
    "lr-negative": (["--lr", "-0.1"], ["lr", "-0.1", ">= 0"]),
    "epochs-bool": (["--set", "epochs=true"], ["epochs", "an integer", "True"]),
    "unknown-option": (["--set", "embeding_dim=64"], ["no option 'embeding_dim'", "did you mean 'embedding_dim'"]),
    "unknown-method": (["train", "--method", "stlm"], ["unknown method 'stlm'", "did you mean 'stml'"]),
    "csv-not-utf8": (["train", "--method", "stml", "--dataset", "csv:bad.csv"], ["line 3", "0xe9", "not UTF-8"]),
    "resume-and-overwrite": (["--resume", "--overwrite"], ["--resume", "--overwrite", "one of them"]),
}


@pytest.mark.parametrize("name", list(PROBES))
def test_each_mistake_is_one_line_exit_2_and_writes_nothing(name, tmp_path, monkeypatch, capsys):
    argv, words = PROBES[name]
    if argv[0] != "train":
        if not FMNIST.exists():
            pytest.skip("Fashion-MNIST not installed")
        argv = [*TRAIN, *argv]
    if "--out" not in argv:
        argv = [*argv, "--out", "run"]
    monkeypatch.chdir(tmp_path)
    _write_inputs(tmp_path)
    before = _files(tmp_path)
    line = _one_error(capsys, argv)
    assert line.startswith("dmlkit: error: ")
    for word in words:
        assert word in line, line
    assert _files(tmp_path) == before, "a refused command wrote or deleted something"
    assert not (tmp_path / "pwned").exists()


def test_verbose_shows_the_traceback(capsys):
    with pytest.raises(Exception, match="sigma"):
        main(["-v", "train", "--method", "stml", "--set", "sigma=abc"])


@pytest.mark.parametrize("value, ok", [(3, True), (3.5, True), (True, False), ("3", False), (math.nan, False)])
def test_types_follow_the_dataclasses_bool_is_not_a_number(value, ok):
    from dmlkit.engine.config import ConfigError
    from dmlkit.engine.validate import method_options

    if ok:
        assert method_options("stml", {"sigma": value})["sigma"] == value
    else:
        with pytest.raises(ConfigError, match="option sigma of method stml must be a number"):
            method_options("stml", {"sigma": value})


def test_version(capsys):
    import dmlkit

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"dmlkit {dmlkit.__version__}"


def test_options_lists_every_option_with_type_default_and_meaning(capsys):
    import dataclasses

    from dmlkit.methods import REGISTRY, method_class
    from dmlkit.methods.options import option_docs

    for method in REGISTRY:
        config = method_class(method).Config
        docs = option_docs(method)
        assert [d.name for d in docs] == ([f.name for f in dataclasses.fields(config)] if config else [])
        assert all(d.meaning and d.type for d in docs), [d.name for d in docs if not d.meaning]
    assert main(["options", "instance"]) == 0
    rows = {line.split()[0]: line.split(None, 3) for line in capsys.readouterr().out.splitlines()}
    assert rows["temperature"][1:3] == ["float", "0.5"]  # SimCLR's τ, the dataclass default
    assert "SimCLR" in rows["temperature"][3]
    assert _one_error(capsys, ["options", "stlm"]).endswith("did you mean 'stml'?")


def test_resolved_options_fill_every_default():
    """What config.yaml records: `instance` says its temperature, `deepcluster` its cluster count."""
    from dmlkit.engine.validate import method_options

    assert method_options("instance", {})["temperature"] == 0.5
    options = method_options("deepcluster", {"embedding_dim": 64})
    assert options["embedding_dim"] == 64 and options["n_clusters"] == 100
