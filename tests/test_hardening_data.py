"""Malformed dataset files through the CLI: exit code 2, one clear error line, nothing half-written.

Every reader (IDX, CIFAR-10 pickles, CUB-200, Cars-196, SOP, In-shop, folder:, csv:) gets a valid
layout from ``tests/data_fixtures.py`` that is then broken one way. ``dmlkit train`` is called
in-process (``dmlkit.cli.main``) with the training-free ``initial`` method, so each case costs
milliseconds: the readers fail before any model is built, and a corrupt image fails at the first
embedding pass.
"""
from __future__ import annotations

import gzip
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from dmlkit.cli import main
from tests import data_fixtures as F

Case = Callable[[Path], tuple[str, Path | None]]  # tmp folder -> (--dataset value, --data-root or None)


@pytest.fixture(autouse=True)
def _isolated_search_path(tmp_path, monkeypatch):
    """Only --data-root is searched: no $DMLKIT_DATA, an empty user cache."""
    monkeypatch.delenv("DMLKIT_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))


def _rewrite_gz(path: Path, edit: Callable[[bytes], bytes]) -> None:
    path.write_bytes(gzip.compress(edit(gzip.decompress(path.read_bytes()))))


# ---------------------------------------------------------------- IDX (Fashion-MNIST, MNIST)
def idx_truncated(tmp: Path):
    root = F.write_mnist(tmp / "d")
    _rewrite_gz(root / "train-images-idx3-ubyte.gz", lambda raw: raw[:-100])
    return "fashion-mnist", root


def idx_truncated_gzip_stream(tmp: Path):
    root = F.write_mnist(tmp / "d")
    path = root / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:50])
    return "fashion-mnist", root


def idx_bad_magic(tmp: Path):
    root = F.write_mnist(tmp / "d")
    _rewrite_gz(root / "t10k-images-idx3-ubyte.gz", lambda raw: b"\x01\x02\x03\x04" + raw[4:])
    return "fashion-mnist", root


def idx_empty_file(tmp: Path):
    root = F.write_mnist(tmp / "d", gz=False)
    (root / "train-labels-idx1-ubyte").write_bytes(b"")
    return "fashion-mnist", root


def idx_label_count_mismatch(tmp: Path):
    root = F.write_mnist(tmp / "d")
    F.write_idx_file(root / "t10k-labels-idx1-ubyte.gz", np.arange(5) % 3, gz=True)
    return "fashion-mnist", root


def idx_missing_file(tmp: Path):
    root = F.write_mnist(tmp / "d")
    (root / "t10k-images-idx3-ubyte.gz").unlink()
    return "mnist", root  # (fashion-mnist would fall back to the Debian package)


def idx_empty_test_split(tmp: Path):
    return "fashion-mnist", F.write_mnist(tmp / "d", n_test=0)


# ---------------------------------------------------------------- CIFAR-10 pickles
def cifar_truncated(tmp: Path):
    folder = F.write_cifar10(tmp / "d")
    path = folder / "data_batch_3"
    path.write_bytes(path.read_bytes()[:200])
    return "cifar10", tmp / "d"


def cifar_missing_labels_key(tmp: Path):
    folder = F.write_cifar10(tmp / "d")
    (folder / "data_batch_2").write_bytes(pickle.dumps({b"data": np.zeros((4, 3072), np.uint8)}, protocol=2))
    return "cifar10", tmp / "d"


def cifar_wrong_row_size(tmp: Path):
    folder = F.write_cifar10(tmp / "d")
    batch = {b"data": np.zeros((4, 3000), np.uint8), b"labels": [0, 1, 2, 3]}
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    return "cifar10", tmp / "d"


def cifar_not_a_dict(tmp: Path):
    folder = F.write_cifar10(tmp / "d")
    (folder / "data_batch_1").write_bytes(pickle.dumps([1, 2, 3]))
    return "cifar10", tmp / "d"


def cifar_missing_batch(tmp: Path):
    folder = F.write_cifar10(tmp / "d")
    (folder / "data_batch_5").unlink()
    return "cifar10", tmp / "d"


def cifar_empty_test_split(tmp: Path):
    folder = F.write_cifar10(tmp / "d")
    batch = {b"data": np.zeros((0, 3072), np.uint8), b"labels": []}
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=4))
    return "cifar10", tmp / "d"


def cifar_unknown_label(tmp: Path):
    folder = F.write_cifar10(tmp / "d", per_batch=12)
    batch = {b"data": np.zeros((12, 3072), np.uint8), b"labels": [i % 3 for i in range(11)] + [99]}
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    return "cifar10", tmp / "d"


# ---------------------------------------------------------------- CUB-200-2011
def cub_unknown_image_id(tmp: Path):
    folder = F.write_cub(tmp / "d")
    with open(folder / "image_class_labels.txt", "a") as fh:
        fh.write("99 2\n")
    return "cub200", tmp / "d"


def cub_missing_column(tmp: Path):
    folder = F.write_cub(tmp / "d")
    lines = (folder / "images.txt").read_text().splitlines()
    (folder / "images.txt").write_text("\n".join([lines[0].split()[0], *lines[1:]]) + "\n")
    return "cub200", tmp / "d"


def cub_non_integer_class(tmp: Path):
    folder = F.write_cub(tmp / "d")
    text = (folder / "image_class_labels.txt").read_text()
    (folder / "image_class_labels.txt").write_text(text.replace("1 1\n", "1 bird\n", 1))
    return "cub200", tmp / "d"


def cub_missing_image(tmp: Path):
    folder = F.write_cub(tmp / "d")
    sorted((folder / "images").rglob("*.jpg"))[2].unlink()
    return "cub200", tmp / "d"


def cub_corrupt_image(tmp: Path):
    folder = F.write_cub(tmp / "d")
    max((folder / "images").rglob("*.jpg")).write_bytes(b"not a jpeg")  # a test image
    return "cub200", tmp / "d"


def cub_empty_annotations(tmp: Path):
    folder = F.write_cub(tmp / "d")
    (folder / "images.txt").write_text("")
    (folder / "image_class_labels.txt").write_text("")
    return "cub200", tmp / "d"


def cub_one_class(tmp: Path):
    F.write_cub(tmp / "d", classes=1)
    return "cub200", tmp / "d"


# ---------------------------------------------------------------- Cars-196
def cars_garbage_mat(tmp: Path):
    folder = F.write_cars(tmp / "d")
    (folder / "cars_annos.mat").write_bytes(b"garbage" * 10)
    return "cars196", tmp / "d"


def cars_truncated_mat(tmp: Path):
    folder = F.write_cars(tmp / "d")
    path = folder / "cars_annos.mat"
    path.write_bytes(path.read_bytes()[:300])
    return "cars196", tmp / "d"


def cars_no_annotations(tmp: Path):
    import scipy.io

    folder = F.write_cars(tmp / "d")
    scipy.io.savemat(str(folder / "cars_annos.mat"), {"something": np.zeros(3)})
    return "cars196", tmp / "d"


def cars_missing_class_field(tmp: Path):
    import scipy.io

    folder = F.write_cars(tmp / "d")
    rows = [{"relative_im_path": f"car_ims/{i + 1:06d}.jpg", "test": 0} for i in range(12)]
    scipy.io.savemat(str(folder / "cars_annos.mat"), {"annotations": F._cars_struct(rows)})
    return "cars196", tmp / "d"


def cars_missing_image(tmp: Path):
    folder = F.write_cars(tmp / "d")
    (folder / "car_ims" / "000003.jpg").unlink()
    return "cars196", tmp / "d"


# ---------------------------------------------------------------- Stanford Online Products
def sop_bad_header(tmp: Path):
    folder = F.write_sop(tmp / "d")
    (folder / "Ebay_train.txt").write_text("id class path\n1 1 a.JPG\n")
    return "sop", tmp / "d"


def sop_missing_column(tmp: Path):
    folder = F.write_sop(tmp / "d")
    lines = (folder / "Ebay_test.txt").read_text().splitlines()
    lines[1] = " ".join(lines[1].split()[:2])
    (folder / "Ebay_test.txt").write_text("\n".join(lines) + "\n")
    return "sop", tmp / "d"


def sop_non_integer_class(tmp: Path):
    folder = F.write_sop(tmp / "d")
    lines = (folder / "Ebay_train.txt").read_text().splitlines()
    parts = lines[1].split()
    lines[1] = " ".join([parts[0], "chair", *parts[2:]])
    (folder / "Ebay_train.txt").write_text("\n".join(lines) + "\n")
    return "sop", tmp / "d"


def sop_empty_test_split(tmp: Path):
    folder = F.write_sop(tmp / "d")
    (folder / "Ebay_test.txt").write_text("image_id class_id super_class_id path\n")
    return "sop", tmp / "d"


def sop_missing_image(tmp: Path):
    folder = F.write_sop(tmp / "d")
    min(folder.rglob("*.JPG")).unlink()
    return "sop", tmp / "d"


# ---------------------------------------------------------------- In-shop
def _partition(folder: Path) -> Path:
    return folder / "Eval" / "list_eval_partition.txt"


def inshop_bad_header(tmp: Path):
    path = _partition(F.write_inshop(tmp / "d"))
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "name item status", *lines[2:]]) + "\n")
    return "inshop", tmp / "d"


def inshop_unknown_status(tmp: Path):
    path = _partition(F.write_inshop(tmp / "d"))
    path.write_text(path.read_text().replace(" train\n", " training\n", 1))
    return "inshop", tmp / "d"


def inshop_count_mismatch(tmp: Path):
    path = _partition(F.write_inshop(tmp / "d"))
    lines = path.read_text().splitlines()
    path.write_text("\n".join(["13", *lines[1:]]) + "\n")
    return "inshop", tmp / "d"


def inshop_no_query(tmp: Path):
    path = _partition(F.write_inshop(tmp / "d"))
    path.write_text(path.read_text().replace(" query\n", " gallery\n"))
    return "inshop", tmp / "d"


def inshop_missing_image(tmp: Path):
    folder = F.write_inshop(tmp / "d")
    sorted(folder.rglob("*.jpg"))[4].unlink()
    return "inshop", tmp / "d"


# ---------------------------------------------------------------- folder:
def folder_not_a_folder(tmp: Path):
    return f"folder:{tmp / 'nowhere'}", None


def folder_without_class_folders(tmp: Path):
    (tmp / "empty").mkdir()
    (tmp / "empty" / "notes.txt").write_text("no images here")
    return f"folder:{tmp / 'empty'}", None


def folder_one_class(tmp: Path):
    return f"folder:{F.write_folder(tmp, classes=1)}", None


def folder_presplit_without_test(tmp: Path):
    folder = F.write_folder(tmp, presplit=True)
    shutil.rmtree(folder / "test")
    return f"folder:{folder}", None


def folder_corrupt_image(tmp: Path):
    folder = F.write_folder(tmp, classes=4, per_class=3)
    (folder / "cls_3" / "2.png").write_bytes(b"\x89PNG broken")  # a test-side image
    return f"folder:{folder}", None


# ---------------------------------------------------------------- csv:
def csv_missing_column(tmp: Path):
    return f"csv:{F.write_csv(tmp, header='path,label')}", None


def csv_unknown_column(tmp: Path):
    rows = [f"pics/{i}.png,bird_{i % 3},{'train' if i < 6 else 'test'},x" for i in range(12)]
    return f"csv:{F.write_csv(tmp, header='path,label,split,comment', rows=rows)}", None


def csv_unknown_split(tmp: Path):
    return f"csv:{F.write_csv(tmp, header='path,label,split', rows=['pics/0.png,a,train', 'pics/1.png,b,validation'])}", None


def csv_empty_label(tmp: Path):
    return f"csv:{F.write_csv(tmp, header='path,label,split', rows=['pics/0.png,a,train', 'pics/1.png,,test'])}", None


def csv_bad_labeled_flag(tmp: Path):
    rows = ["pics/0.png,a,train,maybe", "pics/1.png,b,test,1"]
    return f"csv:{F.write_csv(tmp, header='path,label,split,labeled', rows=rows)}", None


def csv_no_rows(tmp: Path):
    return f"csv:{F.write_csv(tmp, header='path,label,split', rows=[])}", None


def csv_missing_file(tmp: Path):
    return f"csv:{tmp / 'absent.csv'}", None


def csv_missing_image(tmp: Path):
    rows = ["pics/0.png,a,train", "pics/1.png,a,train", "pics/2.png,b,test", "pics/gone.png,b,test"]
    return f"csv:{F.write_csv(tmp, header='path,label,split', rows=rows)}", None


def csv_corrupt_image(tmp: Path):
    rows = [f"pics/{i}.png,c{i % 2},{'train' if i < 6 else 'test'}" for i in range(12)]
    path = F.write_csv(tmp, header="path,label,split", rows=rows)
    (tmp / "pics" / "9.png").write_bytes(b"")  # an empty test image
    return f"csv:{path}", None


def csv_empty_test_split(tmp: Path):
    rows = [f"pics/{i}.png,bird_{i % 3},train" for i in range(12)]
    return f"csv:{F.write_csv(tmp, header='path,label,split', rows=rows)}", None


# case -> (builder, words the error line must contain)
CASES: dict[str, tuple[Case, tuple[str, ...]]] = {
    "idx-truncated": (idx_truncated, ("train-images-idx3-ubyte.gz", "truncated")),
    "idx-truncated-gzip": (idx_truncated_gzip_stream, ("train-images-idx3-ubyte.gz", "corrupt")),
    "idx-bad-magic": (idx_bad_magic, ("t10k-images-idx3-ubyte.gz", "not an IDX file")),
    "idx-empty-file": (idx_empty_file, ("train-labels-idx1-ubyte", "not an IDX file")),
    "idx-label-count": (idx_label_count_mismatch, ("test images", "do not match")),
    "idx-missing-file": (idx_missing_file, ("'mnist' not found", "--data-root")),
    "idx-empty-test": (idx_empty_test_split, ("test split is empty",)),
    "cifar-truncated": (cifar_truncated, ("data_batch_3", "corrupt")),
    "cifar-no-labels": (cifar_missing_labels_key, ("data_batch_2", "'labels'")),
    "cifar-row-size": (cifar_wrong_row_size, ("test_batch", "CIFAR-10")),
    "cifar-not-dict": (cifar_not_a_dict, ("data_batch_1", "dict")),
    "cifar-missing-batch": (cifar_missing_batch, ("'cifar10' not found", "cifar-10-python.tar.gz")),
    "cifar-empty-test": (cifar_empty_test_split, ("test split is empty",)),
    "cifar-unknown-label": (cifar_unknown_label, ("test_batch", "99")),
    "cub-unknown-id": (cub_unknown_image_id, ("image_class_labels.txt", "different image ids")),
    "cub-missing-column": (cub_missing_column, ("images.txt", "2 columns")),
    "cub-non-integer-class": (cub_non_integer_class, ("image_class_labels.txt", "bird")),
    "cub-missing-image": (cub_missing_image, ("cub200", "missing", ".jpg")),
    "cub-corrupt-image": (cub_corrupt_image, ("cannot decode image", ".jpg")),
    "cub-empty": (cub_empty_annotations, ("images.txt", "no images")),
    "cub-one-class": (cub_one_class, ("train split is empty",)),
    "cars-garbage-mat": (cars_garbage_mat, ("cars_annos.mat", "re-download")),
    "cars-truncated-mat": (cars_truncated_mat, ("cars_annos.mat",)),
    "cars-no-annotations": (cars_no_annotations, ("cars_annos.mat", "'annotations'")),
    "cars-no-class-field": (cars_missing_class_field, ("cars_annos.mat", "class")),
    "cars-missing-image": (cars_missing_image, ("cars196", "000003.jpg", "missing")),
    "sop-bad-header": (sop_bad_header, ("Ebay_train.txt", "header")),
    "sop-missing-column": (sop_missing_column, ("Ebay_test.txt", "4 columns")),
    "sop-non-integer-class": (sop_non_integer_class, ("Ebay_train.txt", "chair")),
    "sop-empty-test": (sop_empty_test_split, ("test split is empty",)),
    "sop-missing-image": (sop_missing_image, ("sop", "missing", ".JPG")),
    "inshop-bad-header": (inshop_bad_header, ("list_eval_partition.txt", "header")),
    "inshop-unknown-status": (inshop_unknown_status, ("list_eval_partition.txt", "training")),
    "inshop-count": (inshop_count_mismatch, ("list_eval_partition.txt", "13")),
    "inshop-no-query": (inshop_no_query, ("test split is empty",)),
    "inshop-missing-image": (inshop_missing_image, ("inshop", "missing", ".jpg")),
    "folder-absent": (folder_not_a_folder, ("nowhere", "not a folder")),
    "folder-no-classes": (folder_without_class_folders, ("no class sub-folders",)),
    "folder-one-class": (folder_one_class, ("at least 2 classes",)),
    "folder-no-test": (folder_presplit_without_test, ("test split is empty",)),
    "folder-corrupt-image": (folder_corrupt_image, ("cannot decode image", "2.png")),
    "csv-missing-column": (csv_missing_column, ("data.csv", "missing column", "split")),
    "csv-unknown-column": (csv_unknown_column, ("data.csv", "unknown column", "comment")),
    "csv-unknown-split": (csv_unknown_split, ("data.csv", "validation")),
    "csv-empty-label": (csv_empty_label, ("data.csv", "row 3", "empty label")),
    "csv-bad-flag": (csv_bad_labeled_flag, ("data.csv", "maybe")),
    "csv-no-rows": (csv_no_rows, ("data.csv", "no rows")),
    "csv-absent": (csv_missing_file, ("absent.csv", "does not exist")),
    "csv-missing-image": (csv_missing_image, ("gone.png", "missing")),
    "csv-corrupt-image": (csv_corrupt_image, ("cannot decode image", "9.png")),
    "csv-empty-test": (csv_empty_test_split, ("test split is empty",)),
}

# Readers that give an unclear message or crash today (reported to the data owner; see the report).


def _train(dataset: str, root: Path | None, out: Path) -> int:
    argv = ["train", "--method", "initial", "--dataset", dataset, "--batch-size", "2", "--no-progress",
            "--no-pictures", "--threads", "1", "--set", "backbone=mnist-net", "--out", str(out)]
    if root is not None:
        argv += ["--data-root", str(root)]
    return main(argv)


def _params():
    for name, (builder, words) in CASES.items():
        yield pytest.param(builder, words, id=name)


@pytest.mark.parametrize("builder, words", list(_params()))
def test_malformed_dataset_exits_2_with_one_clear_line(builder: Case, words: tuple[str, ...], tmp_path, capsys):
    dataset, root = builder(tmp_path)
    out = tmp_path / "run"
    capsys.readouterr()
    code = _train(dataset, root, out)
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("dmlkit: error:")]
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert not (out / "metrics.json").exists() and not (out / "report.md").exists()


def test_the_valid_fixtures_pass_the_readers(tmp_path):
    """The cases above fail because of the break, not the fixture: each unbroken layout loads."""
    from dmlkit.data import load_records

    layouts = {
        "fashion-mnist": F.write_mnist(tmp_path / "m"),
        "cifar10": (F.write_cifar10(tmp_path / "c"), tmp_path / "c")[1],
        "cub200": (F.write_cub(tmp_path / "u"), tmp_path / "u")[1],
        "cars196": (F.write_cars(tmp_path / "k"), tmp_path / "k")[1],
        "sop": (F.write_sop(tmp_path / "s"), tmp_path / "s")[1],
        "inshop": (F.write_inshop(tmp_path / "i"), tmp_path / "i")[1],
    }
    for name, root in layouts.items():
        records = load_records(name, str(root))
        assert len(records) > 0 and {"train"} <= set(records.splits.tolist()), name
    assert len(load_records(f"folder:{F.write_folder(tmp_path / 'f')}")) == 8
    assert len(load_records(f"csv:{F.write_csv(tmp_path / 'v')}")) == 12


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_crafted_cifar_pickle_is_refused_and_never_runs(tmp_path, capsys):
    folder = F.write_cifar10(tmp_path / "d")
    marker = tmp_path / "pwned"
    (folder / "data_batch_4").write_bytes(pickle.dumps({b"data": _Payload(str(marker)), b"labels": [0]}))
    code = _train("cifar10", tmp_path / "d", tmp_path / "run")
    err = capsys.readouterr().err
    assert code == 2 and "data_batch_4" in err and "refusing to load" in err
    assert not marker.exists()
