"""Every reader on a tiny fixture in its real on-disk layout, data roots, and each bad-input error."""
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from dmlkit.data import DatasetError, ImageLoader, list_datasets, load_records, make_split
from dmlkit.data.readers.arrays import load_pickle, read_idx
from tests import data_fixtures as fx


@pytest.fixture(autouse=True)
def _isolated_roots(tmp_path, monkeypatch):
    """No real data outside the test: empty env var, cache under tmp."""
    monkeypatch.delenv("DMLKIT_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx(tmp_path, gz):
    fx.write_mnist(tmp_path / "mnist", gz=gz)
    r = load_records("mnist", root=str(tmp_path))  # finds root/mnist
    assert r.images.shape == (18, 1, 28, 28) and r.images.dtype == np.uint8
    assert (r.splits == "train").sum() == 12 and (r.splits == "test").sum() == 6
    np.testing.assert_array_equal(r.images[:, 0, 0, 0], np.arange(18))
    np.testing.assert_array_equal(r.labels, np.r_[np.arange(12) % 3, np.arange(6) % 3])
    assert (r.image_size, r.channels, r.in_memory) == (28, 1, True)


def test_fashion_mnist_from_env_var_and_cache(tmp_path, monkeypatch):
    fx.write_mnist(tmp_path / "env" / "fashion-mnist")
    monkeypatch.setenv("DMLKIT_DATA", str(tmp_path / "env"))
    assert len(load_records("fashion-mnist")) == 18
    # an explicit root comes first
    fx.write_mnist(tmp_path / "explicit", n_train=3, n_test=3)
    assert len(load_records("fashion-mnist", root=str(tmp_path / "explicit"))) == 6
    monkeypatch.delenv("DMLKIT_DATA")
    fx.write_mnist(tmp_path / "cache" / "dmlkit" / "mnist", n_train=4, n_test=2)
    assert len(load_records("mnist")) == 6


DEBIAN = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not (DEBIAN / "train-images-idx3-ubyte.gz").is_file(), reason="dataset-fashion-mnist not installed")
def test_debian_fashion_mnist():
    r = load_records("fashion-mnist")
    assert r.images.shape == (70000, 1, 28, 28)
    assert (r.splits == "train").sum() == 60000 and (r.splits == "test").sum() == 10000
    assert sorted(np.unique(r.labels).tolist()) == list(range(10))
    assert np.bincount(r.labels[r.splits == "test"]).tolist() == [1000] * 10
    assert r.class_names[9] == "Ankle boot"


def test_idx_errors(tmp_path):
    bad = tmp_path / "x-idx3-ubyte"
    bad.write_bytes(b"\x12\x34\x08\x03rest")
    with pytest.raises(DatasetError, match="not an IDX file"):
        read_idx(bad)
    fx.write_idx_file(bad, np.zeros((4, 2, 2)), gz=False)
    bad.write_bytes(bad.read_bytes()[:-3])
    with pytest.raises(DatasetError, match="truncated or corrupt"):
        read_idx(bad)


def test_cifar10(tmp_path):
    fx.write_cifar10(tmp_path)
    r = load_records("cifar10", root=str(tmp_path))
    assert r.images.shape == (24, 3, 32, 32) and (r.splits == "test").sum() == 4
    assert r.labels[:4].tolist() == [0, 1, 2, 3] and r.labels[-4:].tolist() == [5, 6, 7, 8]
    assert r.class_names[3] == "class3" and (r.image_size, r.channels) == (32, 3)
    raw = pickle.loads((tmp_path / "cifar-10-batches-py" / "data_batch_2").read_bytes(), encoding="bytes")
    np.testing.assert_array_equal(r.images[4:8].reshape(4, -1), raw[b"data"])


def test_cifar_unpickler_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo owned",))

    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(DatasetError, match="refusing to load"):
        load_pickle(path)


def test_digits():
    r = load_records("digits")
    assert r.images.shape == (1797, 1, 8, 8) and r.images.max() == 255 and r.images.dtype == np.uint8
    assert (r.splits == "train").sum() == 1195 and (r.splits == "test").sum() == 602
    from sklearn.datasets import load_digits

    np.testing.assert_array_equal(r.images[:, 0], np.rint(load_digits().images * 255 / 16))


def test_cub(tmp_path):
    fx.write_cub(tmp_path, classes=4, per_class=3)
    r = load_records("cub200", root=str(tmp_path))
    assert len(r) == 12 and not r.in_memory and (r.image_size, r.channels) == (224, 3)
    assert r.labels.tolist() == np.repeat(np.arange(4), 3).tolist()
    # zero-shot: first half of the classes train, train_test_split.txt (all 1 = train) ignored
    assert r.splits.tolist() == ["train"] * 6 + ["test"] * 6
    assert r.class_names[0] == "001.Bird_1" and all(os.path.isfile(p) for p in r.images)
    s = make_split(r)
    item = s.train[0]
    assert item["image"].shape == (3, 256, 256) and 0 <= item["image"].min() and item["image"].max() <= 1


def test_cars_annos(tmp_path):
    fx.write_cars(tmp_path, classes=4, per_class=3)
    r = load_records("cars196", root=str(tmp_path))
    assert len(r) == 12 and r.images[0].endswith("car_ims/000001.jpg")
    assert r.labels.tolist() == np.repeat(np.arange(4), 3).tolist()
    assert r.splits.tolist() == ["train"] * 6 + ["test"] * 6  # the mat's alternating test flag is ignored
    assert r.class_names == ["Car 1", "Car 2", "Car 3", "Car 4"]


def test_cars_devkit_halves_are_merged(tmp_path):
    fx.write_cars_devkit(tmp_path, classes=4, per_class=4)
    r = load_records("cars196", root=str(tmp_path / "stanford_cars"))
    assert len(r) == 16 and np.bincount(r.labels).tolist() == [4, 4, 4, 4]
    assert sum("cars_test" in p for p in r.images) == 8
    assert set(r.labels[r.splits == "train"]) == {0, 1} and set(r.labels[r.splits == "test"]) == {2, 3}
    assert r.class_names[2] == "Car 3"


def test_corrupt_annotation_file(tmp_path):
    folder = fx.write_cars(tmp_path)
    (folder / "cars_annos.mat").write_bytes(b"not a mat file" * 20)
    with pytest.raises(DatasetError, match=r"cannot read .*cars_annos.mat .*re-download it"):
        load_records("cars196", root=str(folder))


def test_sop(tmp_path):
    fx.write_sop(tmp_path, train_classes=3, test_classes=2, per_class=2)
    r = load_records("sop", root=str(tmp_path))
    assert len(r) == 10 and r.recall_at == (1, 10, 100, 1000)
    assert r.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert (r.splits == "train").sum() == 6 and "chair_final" in r.images[0]


def test_inshop(tmp_path):
    fx.write_inshop(tmp_path)
    r = load_records("inshop", root=str(tmp_path))
    assert len(r) == 11 and r.recall_at == (1, 10, 20, 30, 40, 50)
    assert [(r.splits == t).sum() for t in ("train", "query", "gallery")] == [5, 3, 3]
    s = make_split(r)
    assert s.gallery is not None and len(s.query) == 3 and len(s.gallery) == 3 and len(s.train) == 5
    # query and gallery share items, not files
    assert set(s.query.true_labels) == set(s.gallery.true_labels) == {2, 3}
    assert not set(s.query.images) & set(s.gallery.images)
    assert s.info["lone_queries"] == 0


def test_inshop_bad_header(tmp_path):
    folder = fx.write_inshop(tmp_path)
    path = folder / "Eval" / "list_eval_partition.txt"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "name item status"] + lines[2:]))
    with pytest.raises(DatasetError, match="line 2 must be the header 'image_name item_id evaluation_status'"):
        load_records("inshop", root=str(folder))


def test_image_folder_flat_and_presplit(tmp_path):
    flat = fx.write_folder(tmp_path / "a", classes=4, per_class=2)
    r = load_records(f"folder:{flat}")
    assert len(r) == 8 and r.class_names == ["cls_0", "cls_1", "cls_2", "cls_3"]
    assert r.splits.tolist() == ["train"] * 4 + ["test"] * 4
    pre = fx.write_folder(tmp_path / "b", classes=3, per_class=2, presplit=True)
    r = load_records(f"folder:{pre}")
    assert len(r) == 12 and (r.splits == "train").sum() == 6
    assert set(r.labels[r.splits == "train"]) == set(r.labels[r.splits == "test"]) == {0, 1, 2}
    s = make_split(r, "zero-shot")
    assert set(s.train.true_labels) == {0} and set(s.query.true_labels) == {1, 2}


def test_csv_contract(tmp_path):
    path = fx.write_csv(tmp_path)
    r = load_records(f"csv:{path}")
    assert len(r) == 12 and r.class_names == ["bird_0", "bird_1", "bird_2"]
    assert r.labeled.tolist() == [i % 2 == 0 for i in range(12)]
    assert r.images[0] == str(tmp_path / "pics" / "0.png")
    s = make_split(r)
    assert s.train.labels.tolist() == [0, -1, 2, -1, 1, -1]
    assert s.train.true_labels.tolist() == [0, 1, 2, 0, 1, 2]


def test_csv_errors(tmp_path):
    with pytest.raises(DatasetError, match=r"unknown column\(s\) \['weight'\]"):
        load_records(f"csv:{fx.write_csv(tmp_path / 'a', header='path,label,split,weight', rows=['pics/0.png,a,train,1'])}")
    with pytest.raises(DatasetError, match=r"missing column\(s\) \['split'\]"):
        load_records(f"csv:{fx.write_csv(tmp_path / 'b', header='path,label', rows=['pics/0.png,a'])}")
    path = fx.write_csv(tmp_path / "c", header="path,label,split", rows=["pics/0.png,a,train", "pics/nope.png,b,test"])
    with pytest.raises(DatasetError, match=r"1 of 2 image files are missing: .*pics/nope.png.*relative to the CSV"):
        load_records(f"csv:{path}")
    path = fx.write_csv(tmp_path / "d", header="path,label,split", rows=["pics/0.png,a,valid"])
    with pytest.raises(DatasetError, match=r"unknown split value\(s\) \['valid'\]"):
        load_records(f"csv:{path}")
    path = fx.write_csv(tmp_path / "e", header="path,label,split,labeled", rows=["pics/0.png,,test,0"])
    with pytest.raises(DatasetError, match="row 2 has an empty label"):
        load_records(f"csv:{path}")
    with pytest.raises(DatasetError, match="does not exist"):
        load_records(f"csv:{tmp_path / 'none.csv'}")


def test_missing_dataset_says_where_it_looked(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_records("cub200", root=str(tmp_path / "nowhere"))
    msg = str(err.value)
    assert "dataset 'cub200' not found" in msg and str(tmp_path / "nowhere") in msg
    assert str(tmp_path / "cache" / "dmlkit" / "cub200") in msg and "CUB_200_2011.tgz" in msg
    assert "--data-root" in msg
    with pytest.raises(DatasetError, match="dataset-fashion-mnist"):
        from dmlkit.data import roots
        from dmlkit.data.readers.arrays import read_mnist_like

        old = roots.DEBIAN
        roots.DEBIAN = {"fashion-mnist": ("dataset-fashion-mnist", str(tmp_path / "no-debian"))}
        try:
            read_mnist_like("fashion-mnist")
        finally:
            roots.DEBIAN = old
    with pytest.raises(DatasetError, match="unknown dataset 'imagenet'; choose one of: fashion-mnist"):
        load_records("imagenet")
    with pytest.raises(DatasetError, match="is not a folder"):
        load_records(f"folder:{tmp_path / 'absent'}")


def test_missing_image_files_are_named(tmp_path):
    folder = fx.write_cub(tmp_path)
    victim = next((folder / "images").rglob("*.jpg"))
    victim.unlink()
    with pytest.raises(DatasetError, match=f"1 of 12 image files are missing: {victim}"):
        load_records("cub200", root=str(tmp_path))


def test_corrupt_image_names_the_file(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(DatasetError, match=f"cannot decode image {bad}.*corrupt"):
        ImageLoader(32, 3)(str(bad))
    good = fx.write_image(tmp_path / "ok.png", 0, size=(40, 20))
    array = ImageLoader(32, 3)(str(good))
    assert array.shape == (3, 32, 32) and array.dtype == np.uint8
    assert ImageLoader(16, 1)(str(good)).shape == (1, 16, 16)


def test_full_size_counts_are_checked(tmp_path):
    from dmlkit.data import DatasetRecords
    from dmlkit.data.readers.benchmarks import check_counts

    labels = np.arange(200)
    splits = np.where(labels < 100, "train", "test")
    wrong = DatasetRecords("cub200", [f"{i}.jpg" for i in labels], labels, splits)
    with pytest.raises(DatasetError, match=r"split sizes \{'test': 100, 'train': 100\}, expected \{'train': 5864"):
        check_counts(wrong, tmp_path)
    partial = DatasetRecords("cub200", ["a.jpg", "b.jpg"], [0, 1], ["train", "test"])
    assert check_counts(partial, tmp_path) is partial  # a subset of the classes is not checked


def test_list_datasets():
    names = list_datasets()
    for key in ("fashion-mnist", "mnist", "cifar10", "digits", "cub200", "cars196", "sop", "inshop", "folder:PATH", "csv:PATH"):
        assert names.get(key)
