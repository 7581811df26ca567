"""register_dataset: a dataset of your own works wherever a built-in name does, and bad names fail clearly."""
import json

import numpy as np
import pytest

import dmlkit
from dmlkit.cli import main
from dmlkit.data import DatasetError, list_datasets, load_records, register_dataset
from tests.data_fixtures import restored_dataset_registry, tiny_records

METRIC_KEYS = {"recall@1", "recall@2", "recall@4", "recall@8", "nmi", "precision@1", "r_precision", "map@r"}
QUICK = {"batch_size": 16, "pictures": False, "progress": False, "threads": 1, "options": {"backbone": "mnist-net"}}


def test_exported_from_the_package_and_dmlkit_data():
    import dmlkit.data

    assert "register_dataset" in dmlkit.__all__ and "register_dataset" in dmlkit.data.__all__
    assert dmlkit.data.register_dataset is register_dataset


def test_registered_dataset_loads_lists_and_passes_the_root(dataset_registry):
    roots = []

    def reader(root):
        roots.append(root)
        return tiny_records("tiny")

    dmlkit.register_dataset("tiny", reader, "four classes of 28x28 noise with one bright cell")
    assert list_datasets()["tiny"] == "four classes of 28x28 noise with one bright cell"
    names = list(list_datasets())
    assert names.index("inshop") < names.index("tiny") < names.index("folder:PATH")  # built-in, own, prefixed
    records = load_records("tiny")
    assert len(records) == 48 and records.in_memory and set(records.splits) == {"train", "test"}
    assert len(load_records("TINY", root="/data/here")) == 48  # case-insensitive like the built-in names
    assert roots == [None, "/data/here"]


def test_cli_lists_a_registered_dataset(dataset_registry, capsys):
    register_dataset("tiny", lambda root: tiny_records(), "a tiny in-memory set")
    assert main(["datasets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split(None, 1) == ["tiny", "a tiny in-memory set"] for line in lines)
    assert any(line.startswith("fashion-mnist ") for line in lines)


@pytest.mark.parametrize("method", ["initial", "supervised"])
def test_train_on_a_registered_dataset(method, dataset_registry, tmp_path):
    register_dataset("tiny", lambda root: tiny_records(), "a tiny in-memory set")
    result = dmlkit.train(method, "tiny", str(tmp_path / "run"), epochs=1, **QUICK)
    assert METRIC_KEYS <= set(result["test"]) and all(0 <= result["test"][k] <= 1 for k in METRIC_KEYS)
    assert result["test"]["recall@1"] > 0.5  # one bright cell per class: far above chance (0.25)
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "dataset: tiny" in config
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test"] == result["test"]


def test_clashes_are_refused_unless_overwrite(dataset_registry):
    register_dataset("tiny", lambda root: tiny_records(), "first")
    with pytest.raises(ValueError, match=r"'tiny' is already registered \(first\).*overwrite=True"):
        register_dataset("tiny", lambda root: tiny_records(), "second")
    with pytest.raises(ValueError, match="'Tiny' is already registered"):  # names are case-insensitive
        register_dataset("Tiny", lambda root: tiny_records(), "second")
    assert list_datasets()["tiny"] == "first"
    register_dataset("tiny", lambda root: tiny_records(classes=3), "second", overwrite=True)
    assert list_datasets()["tiny"] == "second" and len(load_records("tiny")) == 36

    for builtin in ("mnist", "fashion-mnist", "Digits"):
        with pytest.raises(ValueError, match=rf"{builtin!r} is a built-in dataset.*choose another name.*overwrite=True"):
            register_dataset(builtin, lambda root: tiny_records(), "mine")
    register_dataset("digits", lambda root: tiny_records("digits"), "my digits", overwrite=True)
    assert len(load_records("digits")) == 48


@pytest.mark.parametrize("name", ["folder:x", "csv:data.csv", "FOLDER:PATH", "csv:PATH"])
def test_prefixed_forms_are_reserved_even_with_overwrite(name, dataset_registry):
    with pytest.raises(ValueError, match=r"starts with '(folder|csv):', which is reserved"):
        register_dataset(name, lambda root: tiny_records(), "mine", overwrite=True)


def test_bad_arguments(dataset_registry):
    with pytest.raises(ValueError, match="name is empty"):
        register_dataset("", lambda root: tiny_records(), "mine")
    with pytest.raises(ValueError, match="white space; use one word such as 'my-data'"):
        register_dataset("my data", lambda root: tiny_records(), "mine")
    with pytest.raises(TypeError, match="must be a string"):
        register_dataset(None, lambda root: tiny_records(), "mine")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"reader for 'tiny' must be callable as reader\(root\)"):
        register_dataset("tiny", tiny_records(), "mine")  # type: ignore[arg-type]  # records, not a reader
    with pytest.raises(ValueError, match="description of 'tiny' is empty"):
        register_dataset("tiny", lambda root: tiny_records(), "  ")
    with pytest.raises(TypeError, match="description of 'tiny' must be a string"):
        register_dataset("tiny", lambda root: tiny_records(), None)  # type: ignore[arg-type]
    assert "tiny" not in list_datasets()  # nothing half-registered


def test_a_reader_must_return_records(dataset_registry):
    register_dataset("arrays", lambda root: (np.zeros((4, 1, 28, 28)), np.arange(4)), "a tuple, not records")
    with pytest.raises(DatasetError, match="reader of dataset 'arrays' returned tuple, not DatasetRecords"):
        load_records("arrays")


def test_reader_errors_reach_the_cli_as_one_line(dataset_registry, tmp_path, capsys):
    def missing(root):
        raise DatasetError(f"my-set: no data under {root}; download it first")

    register_dataset("my-set", missing, "needs a download")
    code = main(["train", "--method", "initial", "--dataset", "my-set", "--data-root", str(tmp_path),
                 "--no-progress", "--no-pictures", "--out", str(tmp_path / "run")])
    assert code == 2
    assert f"my-set: no data under {tmp_path}; download it first" in capsys.readouterr().err


def test_the_registry_is_restored_afterwards():
    before = list_datasets()
    with restored_dataset_registry():
        register_dataset("tiny", lambda root: tiny_records(), "temporary")
        register_dataset("mnist", lambda root: tiny_records("mnist"), "replaced", overwrite=True)
        assert list_datasets()["tiny"] == "temporary" and list_datasets()["mnist"] == "replaced"
    assert list_datasets() == before and "tiny" not in list_datasets()
    with pytest.raises(DatasetError, match="unknown dataset 'tiny'"):
        load_records("tiny")


def test_initial_does_not_need_a_full_training_batch(dataset_registry, tmp_path):
    """`initial` never trains, so a training split smaller than the default batch (128) is fine; a method
    that trains still refuses it with the clear 'fewer than one batch' error."""
    register_dataset("tiny", lambda root: tiny_records(), "a tiny in-memory set")
    result = dmlkit.train("initial", "tiny", str(tmp_path / "initial"), progress=False, pictures=False)
    assert 0 <= result["test"]["recall@1"] <= 1
    with pytest.raises(ValueError, match="fewer than one batch"):
        dmlkit.train("supervised", "tiny", str(tmp_path / "supervised"), epochs=1, progress=False, pictures=False)
