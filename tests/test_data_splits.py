"""Protocol arithmetic: class-disjointness, coverage, label draws, validation, MLRC folds, subsets."""
import numpy as np
import pytest

from dmlkit.data import (
    DatasetError,
    DatasetRecords,
    make_split,
    mlrc_folds,
    stratified_indices,
    stratified_subset,
)


def _records(per_class_train=20, per_class_test=6, classes=10, name="toy"):
    """In-memory records; each image carries its record index in pixels (0,0,0) and (0,0,1)."""
    labels = np.r_[np.repeat(np.arange(classes), per_class_train), np.repeat(np.arange(classes), per_class_test)]
    splits = np.array(["train"] * (classes * per_class_train) + ["test"] * (classes * per_class_test))
    n = len(labels)
    images = np.zeros((n, 1, 2, 2), dtype=np.uint8)
    images[:, 0, 0, 0], images[:, 0, 0, 1] = np.arange(n) // 256, np.arange(n) % 256
    return DatasetRecords(name, images, labels, splits, [f"c{i}" for i in range(classes)], image_size=2)


def _ids(ds):
    return (ds.images[:, 0, 0, 0].astype(int) * 256 + ds.images[:, 0, 0, 1]).tolist() if ds is not None else []


def test_standard_keeps_the_dataset_split():
    r = _records()
    s = make_split(r)
    assert sorted(_ids(s.train) + _ids(s.query)) == list(range(len(r)))  # union = dataset
    assert set(_ids(s.train)) == set(np.flatnonzero(r.splits == "train").tolist())
    assert s.gallery is None and s.val is None
    assert (s.train.labels == s.train.true_labels).all()
    assert s.info["n_train"] == 200 and s.info["n_query"] == 60 and s.info["class_disjoint"] is False
    assert s.query.name == "toy/test" and s.train.recall_at == (1, 2, 4, 8)


def test_zero_shot_uses_class_halves_of_each_split():
    r = _records()
    s = make_split(r, "zero-shot")
    assert set(s.train.true_labels) == {0, 1, 2, 3, 4} and set(s.query.true_labels) == {5, 6, 7, 8, 9}
    assert all(r.splits[i] == "train" for i in _ids(s.train)) and all(r.splits[i] == "test" for i in _ids(s.query))
    assert len(s.train) == 100 and len(s.query) == 30
    assert s.info["class_disjoint"] is True


def test_zero_shot_on_disjoint_data_is_the_standard_split():
    labels = np.repeat(np.arange(4), 3)
    r = DatasetRecords("cub-like", np.zeros((12, 1, 2, 2), np.uint8), labels, np.where(labels < 2, "train", "test"))
    a, b = make_split(r), make_split(r, "zero-shot")
    assert _ids(a.train) == _ids(b.train) and _ids(a.query) == _ids(b.query)
    assert "already class-disjoint" in b.info["zero_shot"]


def test_labels_per_class_exact_and_seeded():
    r = _records()
    s = make_split(r, labels_per_class=3, seed=5)
    visible = s.train.labels
    assert np.bincount(visible[visible >= 0]).tolist() == [3] * 10
    assert (visible[visible >= 0] == s.train.true_labels[visible >= 0]).all()
    assert s.info["n_labeled"] == 30 and s.info["n_unlabeled"] == 170
    again = make_split(r, labels_per_class=3, seed=5)
    np.testing.assert_array_equal(visible, again.train.labels)
    other = make_split(r, labels_per_class=3, seed=6)
    assert not np.array_equal(visible, other.train.labels)


def test_too_many_labels_per_class_names_the_class():
    labels = np.r_[np.repeat([0, 1], [5, 2]), [0, 1]]
    r = DatasetRecords("toy", np.zeros((9, 1, 2, 2), np.uint8), labels, ["train"] * 7 + ["test"] * 2, ["cat", "dog"])
    with pytest.raises(DatasetError, match=r"labels_per_class=3 but class 1 \(dog\) has only 2 labeled training images"):
        make_split(r, labels_per_class=3)


def test_val_fraction_is_per_class_and_disjoint_from_labels():
    r = _records()
    s = make_split(r, labels_per_class=4, val_fraction=0.15, seed=1)
    assert np.bincount(s.val.true_labels).tolist() == [3] * 10  # rint(0.15 * 20)
    assert not set(_ids(s.val)) & set(_ids(s.train))
    assert sorted(_ids(s.val) + _ids(s.train)) == np.flatnonzero(r.splits == "train").tolist()
    assert np.bincount(s.train.labels[s.train.labels >= 0]).tolist() == [4] * 10
    assert s.info["n_val"] == 30 and s.info["n_train"] == 170
    # the validation set is fixed (val_seed) while the label draw follows seed
    t = make_split(r, labels_per_class=4, val_fraction=0.15, seed=2)
    assert _ids(t.val) == _ids(s.val) and not np.array_equal(t.train.labels, s.train.labels)


def test_mlrc_folds_are_contiguous_disjoint_and_cover():
    folds = mlrc_folds(np.arange(1, 101), 4)
    assert [(int(f[0]), int(f[-1])) for f in folds] == [(1, 25), (26, 50), (51, 75), (76, 100)]
    assert np.array_equal(np.sort(np.concatenate(folds)), np.arange(1, 101))
    with pytest.raises(ValueError, match="cannot cut 3 classes into 4 folds"):
        mlrc_folds([0, 1, 2])


def test_mlrc_fold_split():
    labels = np.repeat(np.arange(12), 2)
    r = DatasetRecords("toy", np.zeros((24, 1, 2, 2), np.uint8), labels, np.where(labels < 8, "train", "test"))
    s = make_split(r, fold=1)
    assert set(s.val.true_labels) == {2, 3}
    assert s.train.labels.tolist() == np.repeat(np.arange(6), 2).tolist()  # renumbered 0..5
    assert s.info["train_classes"] == [0, 1, 4, 5, 6, 7] and s.info["fold_classes"] == [2, 3]
    assert set(s.query.true_labels) == set(range(8, 12))
    with pytest.raises(ValueError, match="fold must be in 0..3"):
        make_split(r, fold=4)
    with pytest.raises(ValueError, match="either fold"):
        make_split(r, fold=0, val_fraction=0.1)
    with pytest.raises(ValueError, match="unknown protocol 'open'"):
        make_split(r, "open")


def test_stratified_subset():
    r = _records()
    s = make_split(r)
    sub = stratified_subset(s.train, 50, seed=0)
    assert len(sub) == 50 and np.bincount(sub.true_labels).tolist() == [5] * 10
    assert _ids(sub) == _ids(stratified_subset(s.train, 50, seed=0))
    assert _ids(sub) != _ids(stratified_subset(s.train, 50, seed=1))
    idx = stratified_indices(np.r_[np.zeros(90), np.ones(9), [2]], 10, seed=0)
    assert np.bincount(np.r_[np.zeros(90), np.ones(9), [2]].astype(int)[idx]).tolist() == [8, 1, 1]
    assert stratified_subset(s.train, 10_000) is s.train


def test_lone_queries_are_counted():
    labels = np.array([0, 0, 1, 1, 1, 2, 3])
    r = DatasetRecords("toy", np.zeros((7, 1, 2, 2), np.uint8), labels, ["train", "train", "test", "test", "test", "test", "test"])
    assert make_split(r).info["lone_queries"] == 2  # classes 2 and 3 have a single test image
