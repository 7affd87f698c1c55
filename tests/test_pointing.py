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


def _peaked_model(targets: dict[tuple[int, int], int], steps: int = 2, heads: int = 2, regs: int = 1,
                  num_classes: int = 919):
    """A micro model whose CLS attention at (step, head) peaks on patch ``targets[(step, head)]``."""
    torch.manual_seed(0)
    model = build_model("bvit_micro", steps=steps, num_heads=heads, reg_tokens=regs, num_classes=num_classes).eval()
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


# ----------------------------------------------------------------------------- TorchRay's rule, ignore pixels, macro CI
def torchray_hit(mask: np.ndarray, point: tuple[int, int], tolerance: float) -> bool:
    """TorchRay's ``PointingGame.evaluate`` (torchray/benchmark/pointing_game.py, v1.0.0.2), transcribed to numpy.

    ``v, u = meshgrid((arange(H) - point[1])**2, (arange(W) - point[0])**2); accept = (v + u) < tolerance**2;
    hit = (mask & accept).any()`` with ``point = (u, v) = (x, y)`` integer pixel coordinates.
    """
    v, u = np.meshgrid((np.arange(mask.shape[0], dtype=np.float32) - point[1]) ** 2,
                       (np.arange(mask.shape[1], dtype=np.float32) - point[0]) ** 2, indexing="ij")
    accept = (v + u) < tolerance**2
    return bool((mask & accept).any())


class _ArraySource:
    """A PointingSource over in-memory 16 x 16 images and class-id masks (class id 1, label 0)."""

    def __init__(self, masks: list[np.ndarray]) -> None:
        self.masks = masks
        self.categories = ["n00000000", "n00000001"]
        self.description = "arrays"

    def __len__(self) -> int:
        return len(self.masks)

    def name(self, index: int) -> str:
        return f"n00000000/img{index}.JPEG"

    def load(self, index: int):
        from bvit_interp.analysis.sources import PointingItem

        image = Image.fromarray(np.full((16, 16, 3), 128, np.uint8))
        return PointingItem(image, self.masks[index].astype(np.int32), 1, 0, "n00000000", self.name(index))


def test_within_tolerance_is_torchrays_strict_disk(fixture_root) -> None:
    """Every pixel of a fixture mask, several tolerances: the scorer's hit test equals TorchRay's."""
    from bvit_interp.analysis.pointing import distance_to_target, within_tolerance

    ids = np.array(Image.open(fixture_root / "validation-segmentation" / "n00000299" / "a.png")).astype(np.int32)
    target = ids[..., 0] + 256 * ids[..., 1] == 300
    h, w = target.shape
    for tol in (1, 2, 3, 5, 15, 1.5):
        ours = within_tolerance(distance_to_target(target, tol), tol)
        theirs = np.array([[torchray_hit(target, (x, y), tol) for x in range(w)] for y in range(h)])
        assert (ours == theirs).all(), tol
    # tolerance 0: TorchRay's disk is empty (nothing hits); here it keeps the paper's "inside the mask"
    assert (within_tolerance(distance_to_target(target, 0), 0) == target).all()
    assert not torchray_hit(target, (30, 10), 0)


def test_tolerance_boundary_in_scorer_baselines_tie_rule_and_app() -> None:
    """A point exactly ``tolerance`` px from the mask misses (TorchRay), in points, chance, centre, tie 'any' and the app."""
    from bvit_interp.analysis.pointing import attention_maps

    mask = np.zeros((16, 16), np.int32)
    mask[6:10, 6:10] = 1
    source = _ArraySource([mask])
    target = mask == 1
    # patch 6 centre = pixel (10, 6): nearest target pixel (9, 6) at distance 1; image centre (8, 8) on the target
    model, edits = _peaked_model({(0, 0): 6, (0, 1): 6, (1, 0): 6, (1, 1): 6}, num_classes=5)
    for tol in (1, 2):
        with model.patch(edits):
            pts, images, _ = score_model(model, source, PointingOptions(tolerance=tol), progress=False)
            att = attention_maps(model, source, [0], PointingOptions(tolerance=tol))
        expected = torchray_hit(target, (10, 6), tol)
        assert expected == (tol == 2)
        assert (pts["hit"] == expected).all() and (att.hits == expected).all()
        chance = np.mean([[torchray_hit(target, (x, y), tol) for x in range(16)] for y in range(16)])
        assert images["chance"].iloc[0] == pytest.approx(chance)
    assert images["chance"].iloc[0] > 16 / 256  # tolerance 2 dilates; tolerance 1 does not (checked above)
    # tie 'any': uniform attention, candidate centres at 2, 6, 10, 14; one target pixel at (4, 2), 2 px from two of them
    one = np.zeros((16, 16), np.int32)
    one[2, 4] = 1
    uniform = build_model("bvit_micro", steps=1, num_heads=2, reg_tokens=0).eval()
    flat = {"steps.0.attn.pattern": lambda p: torch.full_like(p, 1.0 / p.shape[-1])}
    for tol, expected in ((2, False), (2.5, True)):
        with uniform.patch(flat):
            anyp, imgs, _ = score_model(uniform, _ArraySource([one]), PointingOptions(tolerance=tol, tie="any"), progress=False)
        assert (anyp["hit"] == expected).all()
        assert bool(imgs["centre_hit"].iloc[0]) == torchray_hit(one == 1, (8, 8), tol)


def test_ignore_pixels_miss_or_excluded() -> None:
    """Default: a point on an ignore pixel is a miss and chance counts ignore pixels; exclude drops both."""
    from bvit_interp.data.imagenet_s import IGNORE_ID

    mask = np.zeros((16, 16), np.int32)
    mask[0:4, 0:4] = 1  # target: patch 0
    mask[4:8, 12:16] = IGNORE_ID  # ignore: patch 7
    mask[6:10, 6:10] = IGNORE_ID  # ignore under the image centre (8, 8)
    second = np.zeros((16, 16), np.int32)
    second[0:4, 0:4] = 1
    source = _ArraySource([mask, second])
    # head 0 points at patch 0 (target), head 1 at patch 7 (ignore in image 0, background in image 1)
    model, edits = _peaked_model({(0, 0): 0, (0, 1): 7, (1, 0): 0, (1, 1): 7}, num_classes=5)
    with model.patch(edits):
        miss = score_model(model, source, PointingOptions(), progress=False)
        excl = score_model(model, source, PointingOptions(ignore="exclude"), progress=False)
    n_ignore = int((mask == IGNORE_ID).sum())
    for (points, images, _), rule in ((miss, "miss"), (excl, "exclude")):
        rates = hit_rate_table(points, images).set_index(["step", "head"])
        base = baseline_table(images)
        if rule == "miss":
            assert not points["excluded"].any()
            assert (rates.xs(1, level="head")["n"] == 2).all() and (rates.xs(1, level="head")["rate"] == 0).all()
            assert images["chance"].iloc[0] == pytest.approx(16 / 256)
            assert base["centre_micro"].iloc[0] == 0.0  # both centres miss, none dropped
        else:
            on_ignore = points[(points["image_index"] == 0) & (points["head"] == 1)]
            assert on_ignore["excluded"].all() and not on_ignore["hit"].any()
            assert not points.loc[points["head"] == 0, "excluded"].any()
            assert (rates.xs(1, level="head")["n"] == 1).all()  # only image 1's point counts
            assert (rates.xs(0, level="head")["n"] == 2).all() and (rates.xs(0, level="head")["rate"] == 1).all()
            assert images["chance"].iloc[0] == pytest.approx(16 / (256 - n_ignore))
            assert images["chance"].iloc[1] == pytest.approx(16 / 256)
            assert bool(images["centre_excluded"].iloc[0]) and not bool(images["centre_excluded"].iloc[1])
            assert base["centre_micro"].iloc[0] == 0.0 and base["n"].iloc[0] == 2
        assert (rates.xs(0, level="head")["rate"] == 1).all()


def test_macro_rate_gets_its_own_bootstrap_interval() -> None:
    """hit_rates' macro interval is a seeded bootstrap over classes; the macro summary and curves use it."""
    from bvit_interp.analysis.pointing import BOOTSTRAP_SAMPLES, step_summary

    rng = np.random.default_rng(3)
    wnids = np.repeat(["A", "B", "C", "D", "E"], [2, 3, 10, 4, 1])
    images = pd.DataFrame({"image_index": range(len(wnids)), "wnid": wnids, "chance": 0.1, "centre_hit": False,
                           "mask_fraction": 0.1})
    points = pd.concat([pd.DataFrame({"image_index": range(len(wnids)), "step": s, "head": h,
                                      "hit": rng.random(len(wnids)) < 0.3 + 0.2 * h})
                        for s in (1, 2) for h in (0, 1)], ignore_index=True)
    rates = hit_rate_table(points, images, seed=7)
    for row in rates.itertuples():
        cell = points[(points["step"] == row.step) & (points["head"] == row.head)].merge(images, on="image_index")
        class_rates = cell.groupby("wnid")["hit"].mean().sort_index().to_numpy()
        draws = np.random.default_rng(7).integers(0, len(class_rates), size=(BOOTSTRAP_SAMPLES, len(class_rates)))
        boot = class_rates[draws].mean(axis=1)
        lo, hi = np.quantile(boot, [0.025, 0.975])
        assert row.macro_rate == pytest.approx(class_rates.mean())
        assert row.macro_ci_low == pytest.approx(lo, abs=1e-12) and row.macro_ci_high == pytest.approx(hi, abs=1e-12)
        assert row.macro_ci_low <= row.macro_rate <= row.macro_ci_high
        assert (row.macro_ci_low, row.macro_ci_high) != (row.ci_low, row.ci_high)
    again = hit_rate_table(points, images, seed=7)
    pd.testing.assert_frame_equal(rates, again)
    summary = step_summary(rates, baseline_table(images), "macro")
    for row in summary.itertuples():
        best = rates[(rates["step"] == row.step) & (rates["head"] == row.best_head)].iloc[0]
        assert row.best_rate == best["macro_rate"]
        assert (row.best_ci_low, row.best_ci_high) == (best["macro_ci_low"], best["macro_ci_high"])
    micro = step_summary(rates, baseline_table(images), "micro")
    best = rates.loc[rates[rates["step"] == 1]["rate"].idxmax()]
    assert micro["best_ci_low"].iloc[0] == best["ci_low"]
