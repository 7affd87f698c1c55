"""Bad input from a user ends in one ``error:`` line (exit 2) naming the file or option, never a traceback,
never a silently wrong number, and nothing on disk (issue 16)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bvit_interp import build_model, load_model, save_model
from bvit_interp.cli import main
from bvit_interp.data.export import export_shapes
from bvit_interp.data.shapes import SHAPE_WNIDS, ShapesConfig

ANALYSES = ("lens", "svd", "ablate", "trajectories", "early-exit", "featviz", "pointing-game")


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    """A bvit_micro checkpoint stem (10 classes, random weights)."""
    torch.manual_seed(0)
    save_model(build_model("bvit_micro", num_classes=10), tmp_path / "m")
    return tmp_path / "m"


@pytest.fixture
def ims(tmp_path: Path) -> Path:
    """A 20-image shapes export in ImageNet-S layout, listed class by class (no list file)."""
    root = export_shapes(tmp_path / "ims", "imagenet-s", ShapesConfig(num_val=20), progress=False)
    (root / "ImageNetS_im10_validation.txt").unlink()
    return root


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """(exit code, stderr) of the command line; argparse's own exit counts as a code too."""
    try:
        code = main(argv)
    except SystemExit as err:
        code = int(err.code or 0)
    return code, capsys.readouterr().err


def assert_user_error(code: int, err: str, *names: str) -> str:
    """Exit 2, exactly one ``error:`` line, no traceback, naming every one of ``names``; returns the line."""
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


# --------------------------------------------------------------------------- checkpoints


def _break(stem: Path, how: str, keep_hash: bool) -> None:
    weights = stem.with_suffix(".safetensors")
    data = weights.read_bytes()
    weights.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"garbage" * 100}[how])
    if not keep_hash:
        doc = json.loads(stem.with_suffix(".json").read_text())
        del doc["weights_sha256"]
        stem.with_suffix(".json").write_text(json.dumps(doc))


@pytest.mark.parametrize("keep_hash", [False, True], ids=["no_hash", "hash"])
@pytest.mark.parametrize("how", ["truncated", "empty", "garbage"])
def test_unreadable_checkpoint_is_a_user_error(ckpt: Path, tmp_path: Path, capsys, how: str, keep_hash: bool) -> None:
    _break(ckpt, how, keep_hash)
    with pytest.raises(ValueError, match="m.safetensors"):
        load_model(ckpt)
    out = tmp_path / "out"
    code, err = run_cli(["lens", "--model", str(ckpt), "--limit", "4", "--out", str(out)], capsys)
    assert_user_error(code, err, "m.safetensors")
    assert not out.exists()


def test_bitflipped_weights_fail_the_recorded_hash(ckpt: Path, tmp_path: Path, capsys) -> None:
    weights = ckpt.with_suffix(".safetensors")
    data = bytearray(weights.read_bytes())
    data[-10] ^= 1  # one bit of the last tensor's data: the file still parses
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        load_model(ckpt)
    out = tmp_path / "out"
    code, err = run_cli(["lens", "--model", str(ckpt), "--limit", "4", "--out", str(out)], capsys)
    assert_user_error(code, err, "m.safetensors", "sha256")
    assert not out.exists()
    # a checkpoint that records no hash (older or hand-made) still loads
    doc = json.loads(ckpt.with_suffix(".json").read_text())
    del doc["weights_sha256"]
    ckpt.with_suffix(".json").write_text(json.dumps(doc))
    assert load_model(ckpt).checkpoint_sha256


# --------------------------------------------------------------------------- devices

BAD_DEVICES = ["foo", "cuda", "cuda:5", "mps", "cuda:x"]


def _available(device: str) -> bool:
    if device == "cuda":
        return torch.cuda.is_available()
    if device == "cuda:5":
        return torch.cuda.device_count() > 5
    if device == "mps":
        return torch.backends.mps.is_available()
    return False


@pytest.mark.parametrize("command", [*ANALYSES, "prune", "train", "bench"])
@pytest.mark.parametrize("device", BAD_DEVICES)
def test_unusable_device_is_a_user_error(ckpt: Path, tmp_path: Path, capsys, command: str, device: str) -> None:
    if _available(device):
        pytest.skip(f"{device} exists on this machine")
    out = tmp_path / "out"
    if command == "bench":
        argv = ["bench", "hooks", "--model", "bvit_micro", "--device", device]
    elif command in ("prune", "train"):
        argv = [command, "--device", device, "--out", str(out)]
    else:
        argv = [command, "--model", str(ckpt), "--device", device, "--out", str(out)]
    code, err = run_cli(argv, capsys)
    assert_user_error(code, err, "--device", device)
    assert not out.exists()


def test_one_device_resolver(monkeypatch: pytest.MonkeyPatch) -> None:
    from bvit_interp import distributed
    from bvit_interp.commands import common

    assert common.resolve_device is distributed.resolve_device
    assert distributed.resolve_device("cpu") == torch.device("cpu")
    assert distributed.resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(distributed.DeviceError, match="--device foo"):
        distributed.resolve_device("foo")
    assert issubclass(distributed.DeviceError, ValueError)
    # the CUDA branch's logic, on a pretend two-GPU machine
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert distributed.resolve_device("cuda:1") == torch.device("cuda", 1)
    assert distributed.resolve_device("auto") == torch.device("cuda")
    torchrun = distributed.DistInfo(rank=1, world_size=2, local_rank=1)
    assert distributed.resolve_device("cuda", torchrun) == torch.device("cuda", 1)
    with pytest.raises(distributed.DeviceError, match="2 CUDA device"):
        distributed.resolve_device("cuda:5")


# --------------------------------------------------------------------------- data roots


@pytest.mark.parametrize("workers", ["0", "1"])
def test_strict_stops_at_a_bad_sample_with_a_user_error(ckpt: Path, ims: Path, tmp_path: Path, capsys,
                                                        workers: str) -> None:
    bad = sorted((ims / "validation" / SHAPE_WNIDS[3]).iterdir())[0]
    bad.write_bytes(b"not a jpeg")
    code, err = run_cli(["pointing-game", "--model", str(ckpt), "--data", str(ims), "--strict", "--overlays", "0",
                         "--workers", workers, "--out", str(tmp_path / "out")], capsys)
    assert_user_error(code, err, "--strict", "corrupt_image", bad.name)


def test_root_without_usable_images_says_so(ckpt: Path, ims: Path, tmp_path: Path, capsys) -> None:
    shutil.rmtree(ims / "validation-segmentation")
    out = tmp_path / "out"
    code, err = run_cli(["pointing-game", "--model", str(ckpt), "--data", str(ims), "--overlays", "0",
                         "--out", str(out)], capsys)
    line = assert_user_error(code, err, "no usable images", str(ims))
    assert "missing_mask" in line and "skipped" in line
    assert pd.read_parquet(out / "skipped.parquet")["reason"].eq("missing_mask").all()


def test_stray_folder_without_categories_file_does_not_shift_class_ids(ckpt: Path, ims: Path, tmp_path: Path,
                                                                         capsys) -> None:
    """Without a categories file a stray folder sorting first used to shift every class id by one."""
    (ims / "ImageNetS_categories_im10.txt").unlink()
    stray = ims / "validation" / "n00000001"
    stray.mkdir()
    shutil.copy(next((ims / "validation" / SHAPE_WNIDS[0]).iterdir()), stray / "copy.JPEG")
    out = tmp_path / "out"
    code, err = run_cli(["pointing-game", "--model", str(ckpt), "--data", str(ims), "--overlays", "0",
                         "--out", str(out)], capsys)
    assert code == 0, err
    images = pd.read_parquet(out / "images.parquet")
    skipped = pd.read_parquet(out / "skipped.parquet")
    assert len(images) == 20 and set(images["wnid"]) == set(SHAPE_WNIDS)
    assert skipped["name"].tolist() == ["n00000001/copy.JPEG"]
    # the same stray folder with a mask of class 1 claims the id of a real class: refused, not guessed
    masks = ims / "validation-segmentation"
    (masks / "n00000001").mkdir()
    shutil.copy(next((masks / SHAPE_WNIDS[0]).iterdir()), masks / "n00000001" / "copy.png")
    out2 = tmp_path / "out2"
    code, err = run_cli(["pointing-game", "--model", str(ckpt), "--data", str(ims), "--overlays", "0",
                         "--out", str(out2)], capsys)
    assert_user_error(code, err, "n00000001", SHAPE_WNIDS[0], "categories")
    assert not out2.exists()


# --------------------------------------------------------------------------- option values

PARSE_ERRORS = [
    ("lens", "--limit", "0"),
    ("lens", "--limit", "-3"),
    ("svd", "--batch-size", "0"),
    ("featviz", "--exemplars-limit", "0"),
    ("pointing-game", "--limit", "0"),
    ("pointing-game", "--chunk-size", "0"),
    ("pointing-game", "--batch-size", "0"),
    ("pointing-game", "--steps", "0"),
    ("pointing-game", "--tolerance", "nan"),
    ("pointing-game", "--tolerance", "inf"),
    ("pointing-game", "--tolerance", "-1"),
    ("lens", "--max-steps", "0"),
    ("svd", "--threshold", "nan"),
    ("early-exit", "--thresholds", "0.5,nan"),
    ("early-exit", "--lr", "nan"),
    ("featviz", "--tv-weight", "nan"),
    ("featviz", "--scale", "nan,1"),
    ("prune", "--rate", "nan"),
    ("prune", "--epochs", "inf"),
    ("train", "--lr", "nan"),
    ("train", "--epochs", "nan"),
    ("train", "--crop-scale", "0.1"),
    ("train", "--batch-size", "0"),
]


@pytest.mark.parametrize(("command", "option", "value"), PARSE_ERRORS, ids=[f"{c}{o}={v}" for c, o, v in PARSE_ERRORS])
def test_bad_option_values_are_rejected_before_anything_runs(tmp_path: Path, capsys, command: str, option: str,
                                                             value: str) -> None:
    out = tmp_path / "out"
    code, err = run_cli([command, option, value, "--out", str(out)], capsys)
    assert_user_error(code, err, option)
    assert not out.exists()


def test_lens_options_refuse_zero_steps() -> None:
    from bvit_interp.analysis.lens import LensOptions

    with pytest.raises(ValueError, match="max_steps"):
        LensOptions(max_steps=0)


def test_pointing_options_refuse_nan_tolerance() -> None:
    from bvit_interp.analysis.pointing import PointingOptions

    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="tolerance"):
            PointingOptions(tolerance=bad)


# --------------------------------------------------------------------------- nothing on disk

REJECTED = [
    ("lens", ["--data", "/nonexistent/root"], "/nonexistent/root"),
    ("svd", ["--data", "/nonexistent/root"], "/nonexistent/root"),
    ("trajectories", ["--data", "/nonexistent/root"], "/nonexistent/root"),
    ("ablate", ["--steps", "9"], "steps"),
    ("early-exit", ["--exits", "9"], "exit"),
    ("featviz", ["--neurons", "99999"], "neuron"),
    ("featviz", ["--steps", "9"], "step"),
    ("pointing-game", ["--data", "/nonexistent/root"], "/nonexistent/root"),
    ("prune", ["--data", "/nonexistent/root"], "/nonexistent/root"),
    ("train", ["--data", "/nonexistent/root"], "/nonexistent/root"),
    ("train", ["--model", "no_such_config"], "no_such_config"),
]


@pytest.mark.parametrize(("command", "extra", "named"), REJECTED, ids=[f"{c}{'='.join(e)}" for c, e, _ in REJECTED])
def test_rejected_input_creates_nothing(ckpt: Path, tmp_path: Path, capsys, command: str, extra: list[str],
                                        named: str) -> None:
    out = tmp_path / "out"
    model = [] if command in ("prune", "train") else ["--model", str(ckpt)]
    code, err = run_cli([command, *model, *extra, "--device", "cpu", "--out", str(out)], capsys)
    assert_user_error(code, err, named)
    assert not out.exists()


def test_debug_shows_the_traceback(ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        main(["lens", "--model", str(ckpt), "--data", "/nonexistent/root", "--debug", "--out", str(tmp_path / "o")])


# --------------------------------------------------------------------------- pointing --limit


def test_pointing_limit_is_a_seeded_subset_stratified_by_class(ckpt: Path, ims: Path, tmp_path: Path, capsys) -> None:
    base = ["pointing-game", "--model", str(ckpt), "--data", str(ims), "--overlays", "0", "--limit", "10"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    assert main([*base, "--out", str(tmp_path / "b")]) == 0
    assert main([*base, "--seed", "1", "--out", str(tmp_path / "c")]) == 0
    a, b, c = (pd.read_parquet(tmp_path / r / "images.parquet") for r in "abc")
    assert sorted(a["wnid"]) == sorted(SHAPE_WNIDS), "one image of each of the 10 classes (listing order: 2 per class)"
    assert a["image_index"].tolist() == b["image_index"].tolist()
    assert a["image_index"].tolist() != c["image_index"].tolist()
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    assert meta["options"]["limit"] == 10 and meta["options"]["seed"] == 0
    assert meta["options"]["subset"] == "stratified by class"


def test_stratified_indices() -> None:
    from bvit_interp.data.loaders import stratified_indices

    labels = ["a"] * 50 + ["b"] * 30 + ["c"] * 20
    chosen = stratified_indices(labels, 10, seed=0)
    assert len(chosen) == 10 and chosen == sorted(chosen)
    assert [labels[i] for i in chosen].count("a") == 5 and [labels[i] for i in chosen].count("c") == 2
    assert chosen == stratified_indices(labels, 10, seed=0) != stratified_indices(labels, 10, seed=1)
    assert stratified_indices(labels, None, 0) == list(range(100)) == stratified_indices(labels, 500, 0)
    few = stratified_indices(labels, 2, seed=3)
    assert len(few) == 2 and len({labels[i] for i in few}) == 2
    rng = np.random.default_rng(0)
    many = rng.integers(0, 919, 5000).tolist()
    picked = stratified_indices(many, 919, seed=0)
    assert len(picked) == 919 and len({many[i] for i in picked}) > 800
