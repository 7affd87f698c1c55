"""Tests of the procedural shapes dataset: determinism, masks, balance, dataset API."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import to_tensor

from bvit_interp.data.shapes import (
    SHAPE_CLASSES,
    SHAPE_WNIDS,
    ShapesConfig,
    ShapesDataset,
    chance_level,
    render_sample,
    sample_label,
)

CFG = ShapesConfig()


def _same(a, b) -> bool:
    """Two samples are identical in every field."""
    return (
        np.array_equal(a.image, b.image)
        and np.array_equal(a.mask, b.mask)
        and a.label == b.label
        and a.bbox == b.bbox
    )


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Square (Chebyshev) dilation by ``radius`` pixels."""
    out = mask.copy()
    for _ in range(radius):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        row = grown.copy()
        grown[:, 1:] |= row[:, :-1]
        grown[:, :-1] |= row[:, 1:]
        out = grown
    return out


def test_constants() -> None:
    """Ten distinct classes, one fake wnid each."""
    assert len(SHAPE_CLASSES) == 10 == len(set(SHAPE_CLASSES))
    assert SHAPE_WNIDS == tuple(f"n99{i:06d}" for i in range(10))
    assert list(SHAPE_WNIDS) == sorted(SHAPE_WNIDS)


def test_sample_types() -> None:
    """Images are HxWx3 uint8, masks HxW bool, bbox encloses the mask."""
    s = render_sample(CFG, "train", 0)
    assert s.image.shape == (32, 32, 3) and s.image.dtype == np.uint8
    assert s.mask.shape == (32, 32) and s.mask.dtype == np.bool_
    assert 0 <= s.label < 10
    x0, y0, x1, y1 = s.bbox
    assert s.mask[y0:y1, x0:x1].sum() == s.mask.sum() > 0
    assert s.mask[y0, x0:x1].any() and s.mask[y1 - 1, x0:x1].any()
    assert s.mask[y0:y1, x0].any() and s.mask[y0:y1, x1 - 1].any()


def test_deterministic_by_seed() -> None:
    """Same (seed, split, index) -> identical sample; another seed or split -> different."""
    for split in ("train", "val"):
        for i in (0, 7, 12345):
            assert _same(render_sample(CFG, split, i), render_sample(CFG, split, i))
            other = render_sample(ShapesConfig(seed=1), split, i)
            assert not np.array_equal(other.image, render_sample(CFG, split, i).image)
    assert not np.array_equal(
        render_sample(CFG, "train", 3).image, render_sample(CFG, "val", 3).image
    )


def test_order_independent() -> None:
    """A sample does not depend on which samples were rendered before it."""
    idx = [9, 2, 31, 5]
    forward = {i: render_sample(CFG, "train", i) for i in idx}
    backward = {i: render_sample(CFG, "train", i) for i in reversed(idx)}
    for i in idx:
        assert _same(forward[i], backward[i])
    ds = ShapesDataset("val", CFG)
    a = ds[17][0]
    _ = ds[3], ds[40]
    assert torch.equal(a, ds[17][0])


def test_masks_match_drawn_objects() -> None:
    """The object changes most mask pixels and nothing away from the (dilated) mask."""
    for i in range(30):  # three of each class
        with_obj = render_sample(CFG, "val", i)
        without = render_sample(CFG, "val", i, draw_object=False)
        assert np.array_equal(with_obj.mask, without.mask)
        diff = np.abs(with_obj.image.astype(int) - without.image.astype(int)).max(axis=2)
        m = with_obj.mask
        assert (diff[m] > 8).mean() >= 0.8, (i, SHAPE_CLASSES[with_obj.label])
        # Thin star tips are covered < 50% up to 2 px from the thresholded mask.
        assert (diff[~_dilate(m, 2)] == 0).all(), i


def test_object_contrast() -> None:
    """Mean object luminance differs clearly from the background it replaced."""
    luma = np.array([0.299, 0.587, 0.114])
    gaps = []
    for i in range(20):
        s = render_sample(CFG, "val", i)
        bg = render_sample(CFG, "val", i, draw_object=False)
        gaps.append(abs((s.image[s.mask] @ luma).mean() - (bg.image[s.mask] @ luma).mean()) / 255)
    assert min(gaps) > 0.15 and np.mean(gaps) > 0.25, gaps


def test_mask_fraction_range() -> None:
    """Objects cover a sane part of the image (the pointing game's chance level)."""
    frac = chance_level(CFG, "val", n=200)
    print(f"val mean mask fraction (200 samples): {frac:.4f}")
    assert 0.05 <= frac <= 0.20


def test_val_balanced_and_labels() -> None:
    """Val labels are i % 10 (balanced); train labels match rendering and cover all classes."""
    ds = ShapesDataset("val", ShapesConfig(num_val=100))
    assert ds.targets == [i % 10 for i in range(100)]
    assert np.bincount(ds.targets, minlength=10).tolist() == [10] * 10
    assert [render_sample(CFG, "val", i).label for i in range(20)] == [i % 10 for i in range(20)]
    train = [sample_label(CFG, "train", i) for i in range(300)]
    assert set(train) == set(range(10))
    assert all(render_sample(CFG, "train", i).label == train[i] for i in range(15))


def test_bad_split_and_index() -> None:
    """Unknown splits and negative indices raise ValueError naming the problem."""
    with pytest.raises(ValueError, match="'test'.*train, val"):
        render_sample(CFG, "test", 0)
    with pytest.raises(ValueError, match="'validation'"):
        ShapesDataset("validation")
    with pytest.raises(ValueError, match="index"):
        render_sample(CFG, "val", -1)
    with pytest.raises(ValueError, match="radius_range"):
        ShapesConfig(radius_range=(0.3, 0.2))


def test_dataset_items() -> None:
    """Items are float CHW tensors in [0,1] (or transformed PIL), labels ints, bool masks."""
    cfg = ShapesConfig(num_val=30)
    ds = ShapesDataset("val", cfg, return_mask=True)
    assert len(ds) == 30 and ds.classes == list(SHAPE_CLASSES) and ds.wnids == list(SHAPE_WNIDS)
    x, y, m = ds[4]
    assert x.dtype == torch.float32 and x.shape == (3, 32, 32)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert isinstance(y, int) and y == 4
    assert m.dtype == torch.bool and m.shape == (32, 32)
    s = render_sample(cfg, "val", 4)
    assert torch.equal(x, to_tensor(Image.fromarray(s.image)))
    assert torch.equal(m, torch.from_numpy(s.mask))
    assert torch.equal(ds[-1][0], ds[29][0])
    with pytest.raises(IndexError):
        ds[30]
    seen = []
    ds2 = ShapesDataset("val", cfg, transform=lambda img: seen.append(img) or img.size)
    assert ds2[0] == ((32, 32), 0)
    assert isinstance(seen[0], Image.Image) and seen[0].mode == "RGB"
    assert len(ShapesDataset("train", ShapesConfig(num_train=123))) == 123


def test_larger_sizes() -> None:
    """Rendering works at 64 and 224 px with masks of the same size."""
    for size, ss in ((64, 4), (224, 2)):
        s = render_sample(ShapesConfig(img_size=size, supersample=ss), "val", 3)
        assert s.image.shape == (size, size, 3) and s.mask.shape == (size, size)
        assert 0.02 < s.mask.mean() < 0.3


def test_config_dict_roundtrip() -> None:
    """Configs survive JSON-style dicts (tuples as lists)."""
    cfg = ShapesConfig(img_size=48, seed=3, num_lines=(1, 2))
    d = cfg.to_dict()
    assert d["num_lines"] == [1, 2]
    assert ShapesConfig.from_dict(d) == cfg
    with pytest.raises(ValueError, match="bogus"):
        ShapesConfig.from_dict({**d, "bogus": 1})


# --------------------------------------------------------------------------- shapes v2 and counterfactuals
def test_v2_preset_makes_the_centre_a_weak_baseline() -> None:
    """Issue 14: on v2's validation split the centre point and chance (mask fraction) are weak baselines."""
    from bvit_interp.data.shapes import SHAPES_VERSIONS

    cfg = ShapesConfig.preset(2)
    assert cfg.version == 2 and cfg.img_size == SHAPES_VERSIONS[2]["img_size"]
    samples = [render_sample(cfg, "val", i) for i in range(300)]
    c = cfg.img_size // 2
    centre = np.mean([s.mask[c, c] for s in samples])
    chance = np.mean([s.mask.mean() for s in samples])
    assert centre <= 0.20 and chance <= 0.10, (centre, chance)
    assert ShapesConfig.from_dict({k: v for k, v in cfg.to_dict().items()}).version == 2
    legacy = {k: v for k, v in ShapesConfig().to_dict().items() if k != "version"}
    assert ShapesConfig.from_dict(legacy).version == 1  # metadata written before versions is v1
    with pytest.raises(ValueError, match="version"):
        ShapesConfig(version=99)


@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.parametrize("kind", ["class", "none"])
def test_counterfactuals_differ_only_inside_the_objects(split: str, kind: str) -> None:
    """Issue 19: a counterfactual changes the target object and nothing else; it is deterministic."""
    from bvit_interp.data.shapes import counterfactual_label, render_counterfactual

    cfg = ShapesConfig.preset(2)
    for i in range(12):
        pair = render_counterfactual(cfg, split, i, kind)
        changed = np.any(pair.clean.image != pair.counterfactual.image, axis=-1)
        assert changed.any()
        assert not (changed & ~pair.footprint).any(), f"sample {i}: pixels outside both objects changed"
        assert np.array_equal(pair.clean.image, render_sample(cfg, split, i).image)
        if kind == "class":
            assert pair.counterfactual.label == counterfactual_label(cfg, split, i) != pair.clean.label
            assert pair.counterfactual.mask.any()
        else:
            assert not pair.counterfactual.mask.any() and pair.counterfactual.label == pair.clean.label
        again = render_counterfactual(cfg, split, i, kind)
        assert np.array_equal(again.counterfactual.image, pair.counterfactual.image)


def test_counterfactual_labels_cover_the_other_classes() -> None:
    from bvit_interp.data.shapes import SHAPE_CLASSES, counterfactual_label, sample_label

    cfg = ShapesConfig.preset(2)
    pairs = [(sample_label(cfg, "val", i), counterfactual_label(cfg, "val", i)) for i in range(500)]
    assert all(a != b for a, b in pairs)
    assert {b for a, b in pairs if a == 0} == set(range(1, len(SHAPE_CLASSES)))


def test_class_set_b_is_a_separate_task_with_exact_masks() -> None:
    """Issue 18's embedded transfer target: six new classes from the same generator, with masks."""
    from bvit_interp.data.datasets import build_datasets
    from bvit_interp.data.shapes import SHAPE_CLASSES, SHAPE_CLASSES_B, class_names

    cfg = ShapesConfig.preset(2, classes="b")
    assert class_names(cfg) == SHAPE_CLASSES_B and not set(SHAPE_CLASSES_B) & set(SHAPE_CLASSES)
    labels = [render_sample(cfg, "val", i).label for i in range(24)]
    assert labels == [i % 6 for i in range(24)]
    for i in range(12):
        s = render_sample(cfg, "val", i)
        without = render_sample(cfg, "val", i, draw_object=False)
        changed = np.any(s.image != without.image, axis=-1)
        assert s.mask.any() and not (s.mask & ~changed).any(), "the mask lies on drawn pixels"
    # every class draws something different from every other at the same pose
    masks = [render_sample(cfg, "val", 0, label=k).mask for k in range(6)]
    for a in range(6):
        for b in range(a + 1, 6):
            assert (masks[a] != masks[b]).mean() > 0.005, (SHAPE_CLASSES_B[a], SHAPE_CLASSES_B[b])
    bundle = build_datasets("shapes-b", None, None, ShapesConfig.preset(2))
    assert bundle.classes == list(SHAPE_CLASSES_B) and bundle.val[0][1] == 0
    with pytest.raises(ValueError, match="class set"):
        ShapesConfig(classes="z")


def test_model_without_a_shapes_record_gets_version_1_whatever_the_default(monkeypatch) -> None:
    """Checkpoints from before version records were trained on v1; flipping the default must not move them."""
    import types

    import bvit_interp.data.shapes as shapes_mod

    monkeypatch.setattr(shapes_mod, "DEFAULT_SHAPES_VERSION", 2)
    old = types.SimpleNamespace(img_size=32, extra={})
    new = types.SimpleNamespace(img_size=48, extra={"shapes": {"version": 2, "classes": "b"}})
    assert shapes_mod.shapes_for_model(old).version == 1
    assert shapes_mod.shapes_for_model(old).radius_range == shapes_mod.ShapesConfig().radius_range
    got = shapes_mod.shapes_for_model(new)
    assert (got.version, got.classes, got.img_size) == (2, "b", 48)
