"""The glyphs dataset, built from the DejaVu fonts that ship with matplotlib (no apt, a few code points)."""
from __future__ import annotations

import json
import os
import shutil
from types import SimpleNamespace

import matplotlib
import numpy as np
import pytest

from dmlkit.data import load_records
from dmlkit.data.glyphs import build_glyphs, clean
from dmlkit.data.glyphs.build import _instances
from dmlkit.data.glyphs.fonts import Face, cap_families
from dmlkit.data.glyphs.render import FaceRenderer
from dmlkit.data.summary import summarize

TTF = os.path.join(matplotlib.get_data_path(), "fonts", "ttf")
FACES = [Face(os.path.join(TTF, f), 0, family, "Regular") for f, family in
         (("DejaVuSans.ttf", "DejaVu Sans"), ("DejaVuSerif.ttf", "DejaVu Serif"), ("DejaVuSansMono.ttf", "DejaVu Sans Mono"))]
# A, Greek Alpha, Cyrillic A; o/O; e-acute/e-grave; b/d
POINTS = [0x41, 0x391, 0x410, ord("o"), ord("O"), 0xE9, 0xE8, ord("b"), ord("d")]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A data root holding a glyphs-large build (labelled with the large list) of 3 DejaVu faces."""
    root = tmp_path_factory.mktemp("glyphs")
    manifest = build_glyphs(root / "glyphs-large", FACES, POINTS, processes=1, min_instances=1, font_list="large")
    return root, manifest


@pytest.fixture(autouse=True)
def no_user_builds(tmp_path, monkeypatch):
    """The readers must not find (or build into) the user's cache or $DMLKIT_DATA."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("DMLKIT_DATA", raising=False)


def _copy_build(source, target, font_list):
    shutil.copytree(source, target)
    manifest = json.loads((target / "manifest.json").read_text())
    (target / "manifest.json").write_text(json.dumps({**manifest, "font_list": font_list}))


def _class(manifest, char):
    return next(c for c in manifest["classes"] if chr(c["code_points"][0]) == char)


def test_same_fonts_give_the_same_bytes(built, tmp_path):
    root, manifest = built
    again = build_glyphs(tmp_path / "again", FACES, POINTS, processes=1, min_instances=1)
    assert again["sha256"] == manifest["sha256"]
    for name in ("images.npy", "labels.npy", "faces.npy"):
        assert (tmp_path / "again" / name).read_bytes() == (root / "glyphs-large" / name).read_bytes()


def test_manifest_lists_faces_classes_counts_and_a_checksum(built):
    root, manifest = built
    on_disk = json.loads((root / "glyphs-large" / "manifest.json").read_text())
    assert on_disk["sha256"] == manifest["sha256"] and len(manifest["sha256"]) == 64
    assert [f["path"] for f in manifest["faces"]] == [f.path for f in FACES]
    assert all(f["status"] == "kept" and f["rendered"] > 0 for f in manifest["faces"])
    labels = np.load(root / "glyphs-large" / "labels.npy")
    assert manifest["counts"]["images"] == len(labels) == sum(c["instances"] for c in manifest["classes"])
    assert np.array_equal(np.bincount(labels), [c["instances"] for c in manifest["classes"]])
    assert _class(manifest, "b")["name"] == "b U+0062"


def test_homoglyphs_merge_but_accents_do_not(built):
    _, manifest = built
    assert _class(manifest, "A")["code_points"] == [0x41, 0x391, 0x410]
    assert _class(manifest, "A")["name"] == "A U+0041/U+0391/U+0410"
    assert _class(manifest, "é")["code_points"] == [0xE9] and _class(manifest, "è")["code_points"] == [0xE8]
    assert len(manifest["classes"]) == 7  # A, O, b, d, o, è, é
    assert all(c["instances"] == 3 for c in manifest["classes"])


def test_one_scale_per_font_keeps_o_and_O_apart(built):
    root, manifest = built
    images, labels = np.load(root / "glyphs-large" / "images.npy"), np.load(root / "glyphs-large" / "labels.npy")
    faces = np.load(root / "glyphs-large" / "faces.npy")
    small, big = _class(manifest, "o")["id"], _class(manifest, "O")["id"]
    for face in range(3):
        o = images[(labels == small) & (faces == face)][0, 0]
        capital = images[(labels == big) & (faces == face)][0, 0]
        rows_o, rows_cap = np.flatnonzero(o.any(1)), np.flatnonzero(capital.any(1))
        assert rows_o[-1] == pytest.approx(rows_cap[-1], abs=1)  # same baseline
        assert len(rows_cap) > 1.3 * len(rows_o)  # cap height vs x-height, not both filling the box
        assert clean.relative_distance(o, capital) > clean.NEAR


def test_renderer_centres_and_shrinks_only_on_overflow():
    face = FACES[0]
    renderer = FaceRenderer(face.path, 0, {ord(c) for c in "HxO→"} | {0x2014, 0x21FF})
    o = renderer.render(ord("O"))
    cols = np.flatnonzero(o.any(0))
    assert abs((cols[0] + cols[-1]) / 2 - 31.5) <= 1
    wide = renderer.render(0x21FF)  # a wide arrow fits by shrinking, inside the 1-pixel border
    assert wide is not None and not wide[:, 0].any() and not wide[:, -1].any()
    assert renderer.render(0x20) is None  # a space draws no ink


def test_near_duplicate_faces_are_kept_once(tmp_path):
    twin = Face(FACES[0].path, 0, "DejaVu Sans Copy", "Regular")
    manifest = build_glyphs(tmp_path / "g", [*FACES[:2], twin], [ord("b"), ord("d")], processes=1, min_instances=1)
    assert [c["instances"] for c in manifest["classes"]] == [2, 2]
    assert set(np.load(tmp_path / "g" / "faces.npy").tolist()) == {0, 1}


def test_a_collision_within_one_face_drops_both_classes_there():
    # face 0 draws 1 and 2 alike (a placeholder box): both leave face 0, face 1 keeps both
    renders = SimpleNamespace(face=np.array([0, 0, 0, 1, 1, 1]), cp=np.array([1, 2, 3, 1, 2, 3]))
    pairs = {0: np.array([[1, 2]]), 1: np.zeros((0, 2), int)}
    classes = _instances(renders, pairs, {0, 1}, {})
    assert classes == {1: [3], 2: [4], 3: [2, 5]}
    # merged homoglyphs 1 ~ 2 are no collision: one instance per face, the lowest code point's
    assert _instances(renders, pairs, {0, 1}, {1: 1, 2: 1}) == {1: [0, 3], 3: [2, 5]}


def test_picture_fonts_are_found_by_their_letters():
    rng = np.random.default_rng(0)
    letters = {cp: {} for cp in range(65, 91)}
    for faces in letters.values():
        shape = rng.random(256).astype(np.float32)
        for face in range(5):
            faces[face] = shape + 0.1 * rng.random(256).astype(np.float32)
        faces[5] = np.roll(shape, 128) * (rng.random(256) > 0.7)  # a dingbat where the letter should be
    assert set(clean.picture_faces(letters)) == {5}


def test_family_cap_keeps_regular_bold_italic_first():
    styles = ["Thin", "Regular", "Black", "Bold", "Italic", "Bold Italic", "Light"]
    faces = [Face(f"/f/{s}.ttf", 0, "Fam", s) for s in styles] + [Face("/f/copy.otf", 0, "Fam", "Regular")]
    kept = cap_families(faces, max_styles=4)
    assert sorted(f.style for f in kept) == ["Bold", "Bold Italic", "Italic", "Regular"]
    assert next(f for f in kept if f.style == "Regular").path == "/f/Regular.ttf"


def test_reader_serves_glyphs_large_without_horizontal_flips(built):
    root, manifest = built
    records = load_records("glyphs-large", str(root))
    assert records.class_names == [c["name"] for c in manifest["classes"]]
    assert records.images.shape[1:] == (1, 64, 64) and records.image_size == 64
    assert "hflip" not in records.augmentations
    summary = summarize(records)
    assert summary["class_disjoint"] and summary["splits"]["train"]["classes"] == 4
    assert summary["splits"]["test"] == {"images": 9, "classes": 3}
    from dmlkit.data import make_split

    split = make_split(records, fold=1)  # the reality-check protocol: 4 class-disjoint folds of the train classes
    assert split.info["n_train_classes"] == 3 and len(np.unique(split.val.true_labels)) == 1
    assert split.train.class_names is not None and "hflip" not in split.train.augmentations


def test_views_leave_out_augmentations_the_dataset_does_not_allow():
    import kornia.augmentation as K
    import torch

    from dmlkit.data.views import Views

    for preset in ("colour32", "imagenet224"):
        views = Views(preset, 2, augmentations=frozenset({"crop", "affine"}))
        views(torch.zeros(2, 3, 32, 32))
        modules = [m for p in views._pipelines.values() for m in p]
        assert modules and not any(isinstance(m, K.RandomHorizontalFlip) for m in modules)
    with pytest.raises(ValueError, match="unknown augmentation"):
        Views("grey28", augmentations=frozenset({"mirror"}))


def test_cli_datasets_json_lists_and_refuses_unknown_builds(capsys):
    from dmlkit.cli import main

    assert main(["datasets", "digits", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["splits"] == {"train": {"images": 1195, "classes": 10}, "test": {"images": 602, "classes": 10}}
    assert not summary["class_disjoint"]
    assert main(["datasets"]) == 0
    listing = capsys.readouterr().out
    assert "glyphs-large" in listing and "fashion-mnist" in listing
    assert main(["datasets", "build", "mnist"]) == 2
    assert "only the glyphs variants are built" in capsys.readouterr().err


def test_cli_builds_glyphs_large_once(built, capsys):
    from dmlkit.cli import main

    root, _ = built
    assert main(["datasets", "build", "glyphs-large", "--data-root", str(root)]) == 0
    assert f"already built in {root / 'glyphs-large'}" in capsys.readouterr().out


def test_each_variant_reads_only_the_build_of_its_font_list(built, tmp_path, capsys):
    from dmlkit.cli import main
    from dmlkit.data.base import DatasetError
    from dmlkit.data.readers.glyphs import find_build

    root, _ = built
    assert find_build("glyphs-large", str(root)) == root / "glyphs-large"
    assert find_build("glyphs", str(root)) is None  # the large build never serves glyphs
    mixed = tmp_path / "mixed"
    _copy_build(root / "glyphs-large", mixed / "glyphs", "installed")  # an old build of whatever was installed
    before = (mixed / "glyphs" / "manifest.json").read_bytes()
    with pytest.raises(DatasetError, match="core font list.*build glyphs --force"):
        load_records("glyphs", str(mixed))
    assert main(["datasets", "build", "glyphs", "--data-root", str(mixed)]) == 2
    assert "--force" in capsys.readouterr().err
    assert (mixed / "glyphs" / "manifest.json").read_bytes() == before  # not replaced without --force


def test_a_missing_font_package_is_named_with_the_apt_command(tmp_path, monkeypatch, capsys):
    from dmlkit.cli import main
    from dmlkit.data.base import DatasetError
    from dmlkit.data.glyphs import fonts

    packages = fonts.pinned_packages("core")
    monkeypatch.setattr(fonts, "installed", lambda wanted: wanted - {"fonts-urw-base35"})
    with pytest.raises(DatasetError, match=r"1 of the \d+ font packages of the core list .*fonts-urw-base35.*"
                                           r"sudo apt-get install .*core\.txt"):
        fonts.pinned_faces("core")
    assert "fonts-urw-base35" in packages and "fonts-freefont-ttf" not in packages
    assert main(["datasets", "build", "glyphs", "--data-root", str(tmp_path)]) == 2
    assert "apt-get install" in capsys.readouterr().err and not (tmp_path / "glyphs").exists()


def test_a_build_goes_to_the_data_root_given(built, tmp_path, monkeypatch):
    import dmlkit.data.glyphs
    from dmlkit.data.base import DatasetError
    from dmlkit.data.readers.glyphs import build_variant

    root, _ = built
    shutil.copytree(root / "glyphs-large", tmp_path / "cache" / "dmlkit" / "glyphs-large")  # the user cache has one
    calls = []
    monkeypatch.setattr(dmlkit.data.glyphs, "build_glyphs", lambda out, font_list: calls.append((out, font_list)) or {})
    assert build_variant("glyphs-large", None) == (tmp_path / "cache" / "dmlkit" / "glyphs-large", None)
    assert build_variant("glyphs-large", str(tmp_path / "mine"), force=True) == (tmp_path / "mine" / "glyphs-large", {})
    assert calls == [(tmp_path / "mine" / "glyphs-large", "large")]  # not the cache's build
    with pytest.raises(DatasetError, match="itself a glyphs build of the large fonts"):  # never nested in another
        build_variant("glyphs", str(root / "glyphs-large"))


def test_the_list_chooses_faces_before_the_family_cap():
    from dmlkit.data.glyphs.fonts import select_pinned

    other = Face("/a/Fam.otf", 0, "Fam", "Regular", "fonts-other")  # sorts first: cap_families alone keeps it
    listed = Face("/b/Fam.ttf", 0, "Fam", "Regular", "fonts-listed")
    assert cap_families([other, listed]) == [other]
    assert select_pinned([other, listed], {"fonts-listed"}) == [listed]


def test_cub_like_variant_takes_200_alphabetic_classes_of_at_most_60():
    from dmlkit.data.readers.glyphs import select

    points = list(range(0x41, 0x41 + 250)) + list(range(0x3B1, 0x3B1 + 100)) + list(range(0x3041, 0x3041 + 50))
    classes = [{"id": i, "code_points": [cp], "instances": 70 if i % 3 else 39} for i, cp in enumerate(points)]
    labels = np.repeat(np.arange(len(classes)), [c["instances"] for c in classes])
    rows = select({"classes": classes, "counts": {"faces_used": 70}}, labels, "glyphs")
    chosen, counts = np.unique(labels[rows], return_counts=True)
    assert len(chosen) == 200 and counts.max() == 60 and counts.min() == 60  # the 39-instance classes are out
    assert all(points[c] < 0x3041 for c in chosen)  # kana is not alphabetic: never chosen
    assert np.array_equal(rows, select({"classes": classes, "counts": {}}, labels, "glyphs"))  # deterministic


def test_cub_like_variant_says_how_to_get_more_fonts(built, tmp_path):
    from dmlkit.data.base import DatasetError

    root, _ = built
    _copy_build(root / "glyphs-large", tmp_path / "glyphs", "core")  # a core build with too few classes
    with pytest.raises(DatasetError, match="core.txt"):
        load_records("glyphs", str(tmp_path))


def test_every_method_builds_its_views_with_the_datasets_augmentations():
    import ast
    from pathlib import Path

    import dmlkit.methods

    calls = []
    for path in sorted(Path(dmlkit.methods.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Views":
                calls.append((path.name, {k.arg: ast.unparse(k.value) for k in node.keywords}))
    assert len(calls) >= 9
    assert all(kw.get("augmentations") == "info.augmentations" for _, kw in calls), calls


def test_a_method_built_for_glyphs_never_flips():
    import kornia.augmentation as K
    import torch

    from dmlkit.methods import BuildInfo, method_class

    info = BuildInfo(channels=3, image_size=32, num_train=10, dataset="toy", views_preset="colour32",
                     augmentations=frozenset({"crop", "affine"}))
    method = method_class("initial").from_options({"backbone": "resnet18-small"}, info)
    method.views(torch.zeros(2, 3, 32, 32))
    modules = [m for p in method.views._pipelines.values() for m in p]
    assert any(isinstance(m, K.RandomCrop) for m in modules)
    assert not any(isinstance(m, (K.RandomHorizontalFlip, K.ColorJitter)) for m in modules)
