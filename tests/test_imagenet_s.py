"""Tests of ImageNet-S reading, mask encoding and the shapes export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bvit_interp.data.export import export_shapes
from bvit_interp.data.imagenet_s import (
    IGNORE_ID,
    OTHER_ID,
    ImageNetS,
    SampleError,
    decode_mask,
    encode_mask,
    load_categories,
    resize_mask_nearest,
)
from bvit_interp.data.shapes import SHAPE_CLASSES, SHAPE_WNIDS, ShapesConfig, render_sample

# 1000 fake wnids, so that class ids above 255 exist (id k + 1 for the k-th wnid).
WNIDS = [f"n{i:08d}" for i in range(1000)]
W300, W919 = WNIDS[299], WNIDS[918]  # class ids 300 and 919


def _save_rgb(path: Path, arr: np.ndarray) -> None:
    """Save an RGB array as PNG/JPEG by suffix, creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _image(h: int = 24, w: int = 20) -> np.ndarray:
    """A small random RGB image."""
    return np.random.default_rng(h * 100 + w).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _ids(h: int, w: int, class_id: int) -> np.ndarray:
    """Id map: a block of ``class_id``, an ignore frame, other elsewhere."""
    ids = np.full((h, w), OTHER_ID, dtype=np.int32)
    ids[0, :] = IGNORE_ID
    ids[:, 0] = IGNORE_ID
    ids[5:12, 4:10] = class_id
    return ids


def _add(root: Path, wnid: str, name: str, ids: np.ndarray | None, size=(24, 20)) -> None:
    """Write one image (and its mask unless ``ids`` is None) in ImageNet-S layout."""
    _save_rgb(root / "validation" / wnid / f"{name}.JPEG", _image(*size))
    if ids is not None:
        _save_rgb(root / "validation-segmentation" / wnid / f"{name}.png", encode_mask(ids))


@pytest.fixture
def ims_root(tmp_path: Path) -> Path:
    """A valid two-class ImageNet-S root with class ids 300 and 919 and ignore pixels."""
    root = tmp_path / "ims"
    (root).mkdir()
    (root / "ImageNetS_categories_im1000.txt").write_text("\n".join(WNIDS) + "\n")
    _add(root, W300, "a_1", _ids(24, 20, 300))
    _add(root, W300, "a_2", _ids(24, 20, 300))
    _add(root, W919, "b_1", _ids(24, 20, 919))
    return root


def test_encode_decode_roundtrip(tmp_path: Path) -> None:
    """Ids above 255 (G > 0) and the ignore id survive PNG, PIL and array decoding as int32."""
    ids = np.array([[0, 1, 255, 256], [300, 919, 1000, 65535]], dtype=np.int64)
    rgb = encode_mask(ids)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 4, 3)
    assert rgb[1, 0].tolist() == [300 % 256, 1, 0] and rgb[1, 2].tolist() == [232, 3, 0]
    path = tmp_path / "m.png"
    Image.fromarray(rgb).save(path)
    for src in (path, str(path), Image.open(path), rgb):
        out = decode_mask(src)
        assert out.dtype == np.int32
        assert np.array_equal(out, ids)
    assert np.array_equal(decode_mask(ids.astype(np.int32)), ids)
    for bad in (np.array([[-1]]), np.array([[65536]])):
        with pytest.raises(ValueError):
            encode_mask(bad)


def test_load_categories(tmp_path: Path) -> None:
    """Official category files are sorted (ImageNet-S convention); plain ones keep file order."""
    root = tmp_path / "r"
    (root / "validation" / "n2").mkdir(parents=True)
    (root / "validation" / "n1").mkdir()
    assert load_categories(root) == ["n1", "n2"]  # folder fallback
    (root / "categories.txt").write_text("n3 extra\nn1\n\nn2\n")
    assert load_categories(root) == ["n3", "n1", "n2"]
    assert load_categories(root, order="sorted") == ["n1", "n2", "n3"]
    (root / "ImageNetS_categories_im3.txt").write_text("n9\nn5\nn7\n")
    assert load_categories(root) == ["n5", "n7", "n9"]
    assert load_categories(root, order="file") == ["n9", "n5", "n7"]
    with pytest.raises(ValueError, match="order"):
        load_categories(root, order="alpha")


def test_read_dataset(ims_root: Path) -> None:
    """Folder scan pairs images with masks; ids above 255 and ignore pixels are kept."""
    ds = ImageNetS(ims_root)
    assert len(ds) == 3
    by_name = {s.image_path.stem: s for s in ds.samples}
    assert by_name["a_1"].class_id == 300 and by_name["a_1"].label == 299
    assert by_name["b_1"].class_id == 919 and by_name["b_1"].wnid == W919
    assert by_name["b_1"].mask_path == ims_root / "validation-segmentation" / W919 / "b_1.png"
    for i, s in enumerate(ds.samples):
        image, mask = ds.load(i)
        assert image.mode == "RGB" and image.size == (20, 24)
        assert mask.dtype == np.int32 and mask.shape == (24, 20)
        assert set(np.unique(mask).tolist()) == {OTHER_ID, s.class_id, IGNORE_ID}
        assert (mask == s.class_id).sum() == 7 * 6
    only919 = ImageNetS(ims_root, categories=[W919])
    assert [s.class_id for s in only919.samples] == [-1, -1, 1]
    with pytest.raises(SampleError, match="unknown_wnid"):
        only919.load(0)
    with pytest.raises(SampleError, match="empty_target"):  # W919 is class id 1 now
        only919.load(2)


def test_list_file(ims_root: Path) -> None:
    """The official list file decides the samples; extra columns are accepted."""
    (ims_root / "ImageNetS_im1000_validation.txt").write_text(
        f"{W919}/b_1.JPEG 919\nval/ILSVRC2012_val_00000001.JPEG {W300}/a_2.JPEG\n"
    )
    ds = ImageNetS(ims_root)
    assert [s.image_path.name for s in ds.samples] == ["b_1.JPEG", "a_2.JPEG"]
    assert [s.class_id for s in ds.samples] == [919, 300]
    ds.load(1)
    with open(ims_root / "ImageNetS_im1000_validation.txt", "a") as f:
        f.write(f"{W300}/gone.JPEG\n")
    ds = ImageNetS(ims_root)
    with pytest.raises(SampleError, match="missing_image") as info:
        ds.load(2)
    assert info.value.reason == "missing_image" and "gone.JPEG" in info.value.detail


def test_missing_root_and_empty(tmp_path: Path) -> None:
    """Missing root / validation folder and empty folders raise naming the path."""
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ImageNetS(tmp_path / "nowhere")
    (tmp_path / "r").mkdir()
    with pytest.raises(FileNotFoundError, match="validation"):
        ImageNetS(tmp_path / "r")
    (tmp_path / "r" / "validation" / "n1").mkdir(parents=True)
    with pytest.raises(ValueError, match="validation"):
        ImageNetS(tmp_path / "r")


def test_sample_errors(ims_root: Path) -> None:
    """Every unusable sample raises SampleError with its reason; good samples still load."""
    _add(ims_root, W300, "missing_mask", None)
    _add(ims_root, W300, "size_mismatch", _ids(12, 20, 300))
    _add(ims_root, W300, "empty_target", _ids(24, 20, 919))
    _add(ims_root, "n99999999", "unknown", _ids(24, 20, 300))
    bad_jpeg = ims_root / "validation" / W300 / "corrupt_image.JPEG"
    bad_jpeg.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg at all" * 4)
    _save_rgb(
        ims_root / "validation-segmentation" / W300 / "corrupt_image.png",
        encode_mask(_ids(24, 20, 300)),
    )
    trunc = ims_root / "validation" / W300 / "truncated.JPEG"
    _save_rgb(trunc, _image(64, 64))
    trunc.write_bytes(trunc.read_bytes()[:300])
    _save_rgb(
        ims_root / "validation-segmentation" / W300 / "truncated.png",
        encode_mask(_ids(64, 64, 300)),
    )
    _add(ims_root, W300, "corrupt_mask", None)
    (ims_root / "validation-segmentation" / W300 / "corrupt_mask.png").write_bytes(b"\x89PNG junk")

    ds = ImageNetS(ims_root)
    assert len(ds) == 10  # 3 good + 7 bad; the missing-mask image is listed
    expected = {
        "missing_mask": "missing_mask",
        "size_mismatch": "size_mismatch",
        "empty_target": "empty_target",
        "unknown": "unknown_wnid",
        "corrupt_image": "corrupt_image",
        "truncated": "corrupt_image",
        "corrupt_mask": "corrupt_mask",
    }
    reasons = {}
    for i, s in enumerate(ds.samples):
        try:
            ds.load(i)
        except SampleError as err:
            reasons[s.image_path.stem] = err.reason
            assert err.reason in str(err)
    assert reasons == expected
    names = {ds.samples[i].image_path.stem for i in ds.missing_masks}
    assert names == {"missing_mask"}


def test_resize_mask_nearest() -> None:
    """Nearest resize keeps ids exactly and matches PIL's NEAREST sampling."""
    ids = np.random.default_rng(0).choice([0, 300, 919, 1000], size=(13, 17)).astype(np.int32)
    out = resize_mask_nearest(ids, (40, 31))
    assert out.shape == (40, 31) and out.dtype == np.int32
    assert set(np.unique(out)) <= {0, 300, 919, 1000}
    ref = np.asarray(Image.fromarray(ids).resize((31, 40), Image.NEAREST))
    assert np.array_equal(out, ref)
    assert resize_mask_nearest(ids, 8).shape == (8, 8)


def test_export_imagenet_s_roundtrip(tmp_path: Path) -> None:
    """20 exported shapes read back with identical masks and labels, plus list/category files."""
    cfg = ShapesConfig()
    out = export_shapes(tmp_path / "exp", config=cfg, limit=20, progress=False)
    cats = (out / "ImageNetS_categories_im10.txt").read_text().split()
    assert cats == list(SHAPE_WNIDS)
    listed = (out / "ImageNetS_im10_validation.txt").read_text().split()
    assert listed[3] == f"{SHAPE_WNIDS[3]}/shape_000003.JPEG" and len(listed) == 20
    meta = json.loads((out / "shapes_export.json").read_text())
    assert meta["count"] == 20 and meta["per_class"][SHAPE_CLASSES[0]] == 2
    assert ShapesConfig.from_dict(meta["config"]) == cfg

    ds = ImageNetS(out)
    assert len(ds) == 20 and ds.categories == list(SHAPE_WNIDS)
    for i, s in enumerate(ds.samples):
        idx = int(s.image_path.stem.split("_")[1])
        ref = render_sample(cfg, "val", idx)
        image, mask = ds.load(i)
        assert s.label == ref.label and s.class_id == ref.label + 1
        assert np.array_equal(mask == s.class_id, ref.mask)
        assert set(np.unique(mask).tolist()) == {0, s.class_id}
        # JPEG (q95, 4:4:4) is close to, not equal to, the rendered pixels.
        assert np.abs(np.asarray(image, dtype=int) - ref.image.astype(int)).mean() < 6


def test_export_imagefolder_and_refusal(tmp_path: Path) -> None:
    """ImageFolder export layout; non-empty targets are refused unless forced."""
    out = export_shapes(tmp_path / "f", fmt="imagefolder", split="train", limit=12, progress=False)
    files = sorted((out / "train").glob("*/*.png"))
    assert len(files) == 12
    first = files[0]
    idx = int(first.stem.split("_")[1])
    ref = render_sample(ShapesConfig(), "train", idx)
    assert first.parent.name == SHAPE_CLASSES[ref.label]
    assert np.array_equal(np.asarray(Image.open(first)), ref.image)
    assert not list(out.rglob("*.tmp*"))

    with pytest.raises(FileExistsError, match=str(out)):
        export_shapes(out, fmt="imagefolder", split="train", limit=3, progress=False)
    export_shapes(out, fmt="imagefolder", split="train", limit=3, force=True, progress=False)
    assert len(list((out / "train").glob("*/*.png"))) == 3  # the earlier export was replaced

    other = tmp_path / "user"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        export_shapes(other, limit=2, progress=False)
    export_shapes(other, limit=2, force=True, progress=False)
    assert (other / "keep.txt").exists() and len(ImageNetS(other)) == 2

    with pytest.raises(ValueError, match="format"):
        export_shapes(tmp_path / "g", fmt="coco", progress=False)
    with pytest.raises(ValueError, match="limit"):
        export_shapes(tmp_path / "g", config=ShapesConfig(num_val=5), limit=6, progress=False)


def test_imagenet_s_folders_get_imagenet_1k_labels_without_a_train_split(tmp_path) -> None:
    """Analyses read an ImageNet-S-style root with only validation/; a 1000-class model sees ImageNet-1k indices."""
    from timm.data import ImageNetInfo

    from bvit_interp.data.loaders import data_loader
    from bvit_interp.model import get_config

    info = ImageNetInfo()
    wnids = [info.index_to_label_name(i) for i in (7, 404, 999)]  # sorted folder order 0, 1, 2
    for w in wnids:
        (tmp_path / "validation" / w).mkdir(parents=True)
        Image.new("RGB", (40, 30), (10, 20, 30)).save(tmp_path / "validation" / w / f"{w}_1.JPEG")
    big = get_config("bvit_micro", num_classes=1000)
    loader, classes = data_loader(str(tmp_path), big, "val", batch_size=8)
    assert classes == wnids
    assert next(iter(loader))[1].tolist() == [7, 404, 999]
    small = get_config("bvit_micro", num_classes=3)  # a model trained on these folders keeps folder indices
    assert next(iter(data_loader(str(tmp_path), small, "val", batch_size=8)[0]))[1].tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="no train folder"):
        data_loader(str(tmp_path), small, "train")


def test_class_ids_without_categories_file_come_from_the_masks(ims_root: Path) -> None:
    """No categories file: each folder's class id is the id its masks carry, not its sorted position."""
    (ims_root / "ImageNetS_categories_im1000.txt").unlink()
    _add(ims_root, "n00000000_stray", "s_1", None)  # sorts first, no mask: used to shift every id by one
    ds = ImageNetS(ims_root)
    by_name = {s.image_path.stem: s for s in ds.samples}
    assert by_name["a_1"].class_id == 300 and by_name["a_2"].class_id == 300 and by_name["b_1"].class_id == 919
    assert by_name["a_1"].label == 299 and ds.categories[299] == W300 and ds.categories[918] == W919
    for stem in ("a_1", "a_2", "b_1"):
        ds.load(next(i for i, s in enumerate(ds.samples) if s.image_path.stem == stem))
    with pytest.raises(SampleError, match="unknown_wnid") as info:
        ds.load(next(i for i, s in enumerate(ds.samples) if s.image_path.stem == "s_1"))
    assert "categories" in info.value.detail


def test_class_ids_from_masks_resolve_shared_ids_and_refuse_conflicts(ims_root: Path) -> None:
    """A mask holding a second class is resolved by the other folders; two folders claiming one id are refused."""
    (ims_root / "ImageNetS_categories_im1000.txt").unlink()
    both = _ids(24, 20, 919)
    both[20:23, 10:15] = 300  # b_2 holds class 300 too, as ImageNet-S masks may
    _add(ims_root, W919, "b_0", both)
    ds = ImageNetS(ims_root)
    assert {s.wnid: s.class_id for s in ds.samples} == {W300: 300, W919: 919}
    _add(ims_root, "n00000000_copy", "c_1", _ids(24, 20, 300))
    with pytest.raises(ValueError, match="categories") as info:
        ImageNetS(ims_root)
    assert "n00000000_copy" in str(info.value) and W300 in str(info.value) and "300" in str(info.value)
