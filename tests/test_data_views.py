"""Views: shapes, view-major order, ranges, randomness, deterministic eval transform."""
import numpy as np
import pytest
import torch

from dmlkit.data.base import DatasetRecords
from dmlkit.data.views import Views, preset_for


@pytest.mark.parametrize(
    "preset, shape, out",
    [("grey28", (3, 1, 28, 28), 28), ("colour32", (3, 3, 32, 32), 32), ("imagenet224", (2, 3, 256, 256), 224),
     ("grey28", (3, 1, 8, 8), 8)],
)
def test_views_shapes_ranges_and_randomness(preset, shape, out):
    views = Views(preset, n_views=2)
    images = torch.rand(shape)
    v = views(images)
    assert v.shape == (2 * shape[0], shape[1], out, out)
    assert v.min() >= 0 and v.max() <= 1
    assert not torch.allclose(v[: shape[0]], v[shape[0]:]), "two views of a batch must differ"
    e = views.eval_transform(images)
    assert e.shape == (shape[0], shape[1], out, out)
    assert torch.equal(e, views.eval_transform(images))


def test_views_are_ordered_view_major():
    # constant images with distinct grey levels: every augmentation that keeps the content inside
    # the frame (no padding or zero fill) keeps the level, so row v*B+i must carry image i's level
    levels = torch.tensor([0.2, 0.5, 0.8])
    images = levels[:, None, None, None].expand(3, 1, 64, 64).contiguous()
    v = Views("imagenet224", n_views=3)(images)
    assert v.shape[0] == 9
    centre = v[:, 0, 100:120, 100:120].mean(dim=(1, 2))
    torch.testing.assert_close(centre, levels.repeat(3), atol=1e-4, rtol=0)


def test_eval_transform_is_center_crop_or_identity():
    images = torch.rand(2, 3, 256, 256)
    torch.testing.assert_close(Views("imagenet224").eval_transform(images), images[..., 16:240, 16:240])
    assert Views("imagenet224", crop_size=227).eval_transform(images).shape[-1] == 227
    small = torch.rand(2, 1, 28, 28)
    assert torch.equal(Views("grey28").eval_transform(small), small)


def test_preset_for_and_bad_input():
    grey = DatasetRecords("x", np.zeros((2, 1, 28, 28), np.uint8), [0, 1], ["train", "test"])
    colour = DatasetRecords("x", np.zeros((2, 3, 32, 32), np.uint8), [0, 1], ["train", "test"], image_size=32, channels=3)
    files = DatasetRecords("x", ["a.jpg", "b.jpg"], [0, 1], ["train", "test"], image_size=224, channels=3)
    assert [preset_for(r) for r in (grey, colour, files)] == ["grey28", "colour32", "imagenet224"]
    with pytest.raises(ValueError, match="unknown views preset 'big'"):
        Views("big")
    with pytest.raises(ValueError, match="colour32 expects 3 channels"):
        Views("colour32")(torch.rand(2, 1, 32, 32))


def _today(preset: str, h: int, w: int, crop_size: int = 224):
    """The views pipelines as they were before ``strength`` existed (the reference for strength 1)."""
    import kornia.augmentation as K

    if preset == "grey28":
        return torch.nn.Sequential(K.RandomResizedCrop((h, w), scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3)),
                                   K.RandomAffine(degrees=10.0, translate=(0.1, 0.1), p=0.5))
    if preset == "colour32":
        return torch.nn.Sequential(K.RandomCrop((h, w), padding=4), K.RandomHorizontalFlip(),
                                   K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8))
    return torch.nn.Sequential(
        K.RandomResizedCrop((crop_size, crop_size), scale=(0.16, 1.0), ratio=(3 / 4, 4 / 3)), K.RandomHorizontalFlip())


@pytest.mark.parametrize("preset, shape", [("grey28", (4, 1, 64, 64)), ("colour32", (4, 3, 32, 32)),
                                           ("imagenet224", (2, 3, 256, 256))])
def test_default_strength_is_todays_views_bit_for_bit(preset, shape):
    images = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(7)
    ours = Views(preset, n_views=2)(images)
    torch.manual_seed(7)
    today = _today(preset, *shape[-2:])(images.repeat(2, 1, 1, 1)).clamp_(0.0, 1.0)
    assert torch.equal(ours, today)
    torch.manual_seed(7)
    assert torch.equal(Views(preset, n_views=2, strength=1.0)(images), ours)


@pytest.mark.parametrize("preset, shape", [("grey28", (3, 1, 64, 64)), ("colour32", (3, 3, 32, 32)),
                                           ("imagenet224", (2, 3, 256, 256))])
def test_strength_zero_is_the_input_resized(preset, shape):
    import kornia.augmentation as K

    images = torch.rand(shape)
    views = Views(preset, n_views=2, strength=0)(images)
    expected = images if preset != "imagenet224" else K.Resize((224, 224))(images).clamp(0, 1)
    torch.testing.assert_close(views, expected.repeat(2, 1, 1, 1), atol=0, rtol=0)


def test_stronger_views_change_more_pixels():
    # a glyph-like image: a bright bar on black, 64 px; mean |view - input| over many seeded views
    images = torch.zeros(16, 1, 64, 64)
    images[:, :, 16:48, 28:36] = 1.0
    images[:, :, 16:22, 16:48] = 1.0
    change = []
    for strength in (0.0, 0.5, 1.0, 2.0):
        torch.manual_seed(0)
        views = Views("grey28", n_views=4, strength=strength)(images)
        change.append(float((views - images.repeat(4, 1, 1, 1)).abs().mean()))
    assert change[0] == 0.0
    assert change[0] < change[1] < change[2] < change[3], change


def test_bad_strength_is_refused():
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="view strength must be a finite number >= 0"):
            Views("grey28", strength=bad)
