"""Pointing game against independent computations on hand-built ImageNet-S fixtures."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from bvit_interp import build_model, save_model
from bvit_interp.analysis.pointing import (
    PointingOptions,
    baseline_table,
    hit_rate_table,
    score_model,
    wilson_interval,
)
from bvit_interp.analysis.sources import ImageNetSSource
from bvit_interp.data.imagenet_s import encode_mask
from bvit_interp.data.transforms import CropGeometry, eval_transform

IMG, PATCH, GRID = 16, 4, 4


def _write_sample(root, wnid: str, name: str, image: np.ndarray, mask: np.ndarray) -> None:
    (root / "validation" / wnid).mkdir(parents=True, exist_ok=True)
    (root / "validation-segmentation" / wnid).mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / "validation" / wnid / f"{name}.JPEG", quality=95)
    Image.fromarray(encode_mask(mask)).save(root / "validation-segmentation" / wnid / f"{name}.png")


@pytest.fixture
def fixture_root(tmp_path):
    """Three classes with ids 1, 300 and 919 (ids above 255), ignore pixels, non-square images."""
    root = tmp_path / "ims"
    wnids = [f"n{i:08d}" for i in range(919)]
    (root).mkdir()
    (root / "ImageNetS_categories_im919.txt").write_text("\n".join(wnids) + "\n")
    rng = np.random.default_rng(0)
    # a: 40 x 24 (landscape); class 300 occupies the right part; ignore border around it
    mask = np.zeros((24, 40), np.int32)
    mask[4:20, 28:38] = 300
    mask[3, 27:39] = 1000
    _write_sample(root, wnids[299], "a", rng.integers(0, 255, (24, 40, 3), dtype=np.uint8), mask)
    # b: 20 x 32 (portrait); class 919 top-left, another class (5) bottom-right
    mask = np.zeros((32, 20), np.int32)
    mask[0:10, 0:8] = 919
    mask[20:32, 12:20] = 5
    _write_sample(root, wnids[918], "b", rng.integers(0, 255, (32, 20, 3), dtype=np.uint8), mask)
    # c: square 16 x 16, class 1 in the centre
    mask = np.zeros((16, 16), np.int32)
    mask[6:10, 6:10] = 1
    _write_sample(root, wnids[0], "c", rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), mask)
    return root


def _peaked_model(targets: dict[tuple[int, int], int], steps: int = 2, heads: int = 2, regs: int = 1):
    """A micro model whose CLS attention at (step, head) peaks on patch ``targets[(step, head)]``."""
    torch.manual_seed(0)
    model = build_model("bvit_micro", steps=steps, num_heads=heads, reg_tokens=regs, num_classes=919).eval()
    npt = 1 + regs

    def make(step: int):
        def edit(pattern: torch.Tensor) -> torch.Tensor:
            out = pattern.clone()
            for h in range(heads):
                row = torch.full((pattern.shape[-1],), 0.2 / (pattern.shape[-1] - 1))
                row[npt + targets[(step, h)]] = 0.8
                out[:, h, 0] = row
            return out

        return edit

    edits = {f"steps.{t}.attn.pattern": make(t) for t in range(steps)}
    return model, edits


def _index(source: ImageNetSSource, stem: str) -> int:
    return next(i for i in range(len(source)) if source.name(i).endswith(f"/{stem}.JPEG"))


def _independent_point(patch: int, w: int, h: int) -> tuple[float, float]:
    """Patch centre in the crop mapped to the original image, computed from first principles."""
    scale = IMG  # crop_pct 1.0 for bvit_micro
    if w <= h:
        rw, rh = scale, int(scale * h / w)
    else:
        rw, rh = int(scale * w / h), scale
    left, top = round((rw - IMG) / 2), round((rh - IMG) / 2)
    cx, cy = (patch % GRID + 0.5) * PATCH, (patch // GRID + 0.5) * PATCH
    return (cx + left) * w / rw, (cy + top) * h / rh


def test_crop_geometry_matches_timm_eval_transform() -> None:
    cfg = build_model("bvit_micro", crop_pct=0.875).config
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (30, 50, 3), dtype=np.uint8))
    geo = CropGeometry(50, 30, cfg.img_size, cfg.crop_pct)
    torch.testing.assert_close(geo.apply(image, cfg.mean, cfg.std), eval_transform(cfg)(image))


def test_points_hits_and_baselines_against_hand_computation(fixture_root) -> None:
    targets = {(0, 0): 0, (0, 1): 11, (1, 0): 5, (1, 1): 15}
    model, edits = _peaked_model(targets)
    source = ImageNetSSource(str(fixture_root))
    with model.patch(edits):
        points, images, skipped = score_model(model, source, PointingOptions(), progress=False)
    assert skipped.empty and len(images) == 3
    sizes = {"a": (40, 24), "b": (20, 32), "c": (16, 16)}
    masks = {r.name.split("/")[1].split(".")[0]: r for r in images.itertuples()}
    for row in points.itertuples():
        name = images.set_index("image_index").loc[row.image_index, "name"].split("/")[1].split(".")[0]
        w, h = sizes[name]
        x, y = _independent_point(targets[(row.step - 1, row.head)], w, h)
        assert row.x == pytest.approx(x) and row.y == pytest.approx(y)
        mask = np.array(Image.open(fixture_root / "validation-segmentation" / source.name(row.image_index).replace(".JPEG", ".png")))
        ids = mask[..., 0].astype(np.int32) + 256 * mask[..., 1].astype(np.int32)
        target_id = {"a": 300, "b": 919, "c": 1}[name]
        assert row.hit == (ids[int(y), int(x)] == target_id)
    # chance = target fraction of the visible crop (all of a square image; a crop of the others)
    c = masks["c"]
    assert c.chance == pytest.approx(16 / 256) and c.mask_fraction == pytest.approx(16 / 256)
    assert bool(c.centre_hit) is True  # the centre point (8, 8) lies in the 6..9 square
    assert points["hit"].any() and not points["hit"].all()


def test_tolerance_dilates_hits_and_chance(fixture_root) -> None:
    targets = {(0, 0): 10, (0, 1): 10, (1, 0): 10, (1, 1): 10}  # patch 10 centre = (10, 10) in c
    model, edits = _peaked_model(targets)
    source = ImageNetSSource(str(fixture_root))
    with model.patch(edits):
        p0, im0, _ = score_model(model, source, PointingOptions(tolerance=0), indices=[_index(source, "c")], progress=False)
        p2, im2, _ = score_model(model, source, PointingOptions(tolerance=1.5), indices=[_index(source, "c")], progress=False)
    # point pixel (10, 10); nearest target pixel (9, 9): distance sqrt(2) ~ 1.41
    assert not p0["hit"].any() and p2["hit"].all()
    yy, xx = np.mgrid[0:16, 0:16]
    target = (yy >= 6) & (yy < 10) & (xx >= 6) & (xx < 10)
    ty, tx = np.nonzero(target)
    dist = np.sqrt((yy[..., None] - ty) ** 2 + (xx[..., None] - tx) ** 2).min(-1)
    assert im2["chance"].iloc[0] == pytest.approx((dist <= 1.5).mean())


def test_tie_rules(fixture_root) -> None:
    """Uniform attention: 'first' takes patch 0 (miss), 'any' hits because some patch centre is in the mask."""
    model = build_model("bvit_micro", steps=1, num_heads=2, reg_tokens=0, num_classes=919).eval()
    uniform = {"steps.0.attn.pattern": lambda p: torch.full_like(p, 1.0 / p.shape[-1])}
    source = ImageNetSSource(str(fixture_root))
    with model.patch(uniform):
        c = [_index(source, "c")]
        first, _, _ = score_model(model, source, PointingOptions(tie="first"), indices=c, progress=False)
        anyp, _, _ = score_model(model, source, PointingOptions(tie="any"), indices=c, progress=False)
    assert not first["hit"].any() and anyp["hit"].all()


def test_crop_frame_and_upsample_point(fixture_root) -> None:
    targets = {(0, 0): 7, (0, 1): 7, (1, 0): 7, (1, 1): 7}
    model, edits = _peaked_model(targets)
    source = ImageNetSSource(str(fixture_root))
    with model.patch(edits):
        a = [_index(source, "a")]
        pts, _, _ = score_model(model, source, PointingOptions(frame="crop"), indices=a, progress=False)
    assert (pts["x"] == 14.0).all() and (pts["y"] == 6.0).all()  # patch 7 centre in crop coordinates
    # an interior one-patch peak: the bilinear map is maximal at the pixel centres next to the patch centre
    inner = {k: 5 for k in targets}
    model, edits = _peaked_model(inner)
    with model.patch(edits):
        up, _, _ = score_model(model, source, PointingOptions(point="upsample", frame="crop"), indices=a, progress=False)
    assert np.allclose(up["x"], 6.0, atol=0.5) and np.allclose(up["y"], 6.0, atol=0.5)


def test_skipped_samples_are_recorded_and_strict_raises(fixture_root) -> None:
    root = fixture_root
    wnids = (root / "ImageNetS_categories_im919.txt").read_text().split()
    (root / "validation" / wnids[1]).mkdir()
    (root / "validation" / wnids[1] / "corrupt.JPEG").write_bytes(b"not a jpeg")
    (root / "validation-segmentation" / wnids[1]).mkdir()
    Image.fromarray(encode_mask(np.full((8, 8), 2))).save(root / "validation-segmentation" / wnids[1] / "corrupt.png")
    (root / "validation" / wnids[2]).mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "validation" / wnids[2] / "nomask.JPEG")
    _write_sample(root, wnids[3], "small", np.zeros((8, 8, 3), np.uint8), np.full((4, 4), 4, np.int32))
    _write_sample(root, wnids[4], "empty", np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.int32))
    (root / "validation" / "n99999999").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "validation" / "n99999999" / "x.JPEG")
    model = build_model("bvit_micro", num_classes=919).eval()
    source = ImageNetSSource(str(root))
    _, images, skipped = score_model(model, source, PointingOptions(), progress=False)
    assert len(images) == 3
    assert sorted(skipped["reason"]) == sorted(["corrupt_image", "missing_mask", "size_mismatch", "empty_target", "unknown_wnid"])
    from bvit_interp.data.imagenet_s import SampleError

    with pytest.raises(SampleError):
        score_model(model, source, PointingOptions(), strict=True, progress=False)


def test_wilson_micro_macro() -> None:
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    # class A: 3 images, 3 hits; class B: 1 image, 0 hits -> micro 0.75, macro 0.5
    images = pd.DataFrame({"image_index": [0, 1, 2, 3], "wnid": ["A", "A", "A", "B"],
                           "chance": [0.1, 0.1, 0.1, 0.5], "centre_hit": [True, False, False, False],
                           "mask_fraction": [0.1] * 4})
    points = pd.DataFrame({"image_index": [0, 1, 2, 3], "step": 1, "head": 0, "hit": [True, True, True, False]})
    rates = hit_rate_table(points, images)
    assert rates["rate"].iloc[0] == 0.75 and rates["macro_rate"].iloc[0] == 0.5
    base = baseline_table(images)
    assert base["chance_micro"].iloc[0] == pytest.approx(0.2) and base["chance_macro"].iloc[0] == pytest.approx(0.3)
    assert base["centre_micro"].iloc[0] == 0.25 and base["centre_macro"].iloc[0] == pytest.approx(1 / 6)


def test_cli_end_to_end_resume_and_force(tmp_path, capsys) -> None:
    from bvit_interp.cli import main
    from bvit_interp.data.export import export_shapes
    from bvit_interp.data.shapes import ShapesConfig

    data = export_shapes(tmp_path / "shapes_ims", "imagenet-s", ShapesConfig(num_val=40), progress=False)
    torch.manual_seed(0)
    save_model(build_model("bvit_tiny", steps=3, reg_tokens=2), tmp_path / "m")
    out = tmp_path / "run"
    args = ["pointing-game", "--model", str(tmp_path / "m"), "--data", str(data), "--out", str(out),
            "--chunk-size", "16", "--batch-size", "8", "--overlays", "2"]
    assert main(args) == 0
    summary = capsys.readouterr().out
    assert "best head" in summary and "chance" in summary
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "complete" and meta["models"][0]["sha256"]
    for name in ("points", "hit_rates", "per_class", "baselines", "summary", "skipped"):
        assert (out / f"{name}.parquet").exists()
    for fig in ("curves.png", "heatmap_m.png", "overlay_m.png"):
        assert (out / fig).stat().st_size > 1000
    first = pd.read_parquet(out / "hit_rates.parquet")
    assert len(first) == 3 * 4 and first["n"].iloc[0] == 40
    # finished runs are not overwritten
    assert main(args) == 2
    # an interrupted run resumes from its parts and gives the same tables
    (out / "parts" / "m" / "00000016_points.parquet").unlink()
    meta["status"] = "running"
    (out / "meta.json").write_text(json.dumps(meta))
    assert main(args) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(out / "hit_rates.parquet"), first)
    assert main([*args, "--force"]) == 0


@pytest.mark.slow
def test_torchrun_two_processes_match_single_process(tmp_path) -> None:
    """Sharding images over two gloo processes gathers the same hit rates as one process."""
    import os
    import subprocess
    import sys

    torch.manual_seed(0)
    save_model(build_model("bvit_tiny", steps=2), tmp_path / "m")
    base = ["pointing-game", "--model", str(tmp_path / "m"), "--limit", "24", "--chunk-size", "16",
            "--overlays", "0", "--device", "cpu"]
    from bvit_interp.cli import main

    assert main([*base, "--out", str(tmp_path / "one")]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "bvit_interp.cli", *base, "--out", str(tmp_path / "two")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = pd.read_parquet(tmp_path / "one" / "hit_rates.parquet")
    two = pd.read_parquet(tmp_path / "two" / "hit_rates.parquet")
    pd.testing.assert_frame_equal(one, two)
    assert json.loads((tmp_path / "two" / "meta.json").read_text())["world_size"] == 2


def test_tables_with_several_models_count_each_image_once() -> None:
    images = pd.DataFrame({"model": ["a", "a", "b", "b"], "image_index": [0, 1, 0, 1], "wnid": ["A", "B", "A", "B"]})
    points = pd.DataFrame({"model": ["a", "a", "b", "b"], "image_index": [0, 1, 0, 1], "step": 1, "head": 0,
                           "hit": [True, False, True, True]})
    rates = hit_rate_table(points, images).set_index("model")
    assert rates.loc["a", "n"] == 2 and rates.loc["a", "rate"] == 0.5 and rates.loc["b", "rate"] == 1.0
