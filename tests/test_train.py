"""Training recipe: loss goes down, resume continues, torchrun (gloo) works, bad input fails clearly."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from bvit_interp.cli import main
from bvit_interp.train import TrainConfig, lr_at, train

MICRO = ["--model", "bvit_micro", "--num-classes", "4", "--batch-size", "8", "--device", "cpu", "--ema-decay", "0.9"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A 4-class ImageFolder (train/ and val/) of 16 px images: a red, green, blue or white square anywhere."""
    root = tmp_path_factory.mktemp("imagefolder")
    rng = np.random.default_rng(0)
    colours = [(230, 0, 0), (0, 230, 0), (0, 0, 230), (230, 230, 230)]
    for split, n in (("train", 8), ("val", 4)):
        for c in range(4):
            (root / split / f"class{c}").mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 70, (16, 16, 3), dtype=np.uint8)
                r, q = rng.integers(0, 9, 2)
                img[r : r + 7, q : q + 7] = colours[c]
                Image.fromarray(img).save(root / split / f"class{c}" / f"{i}.png")
    return root


def _metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_lr_schedule_warmup_and_cosine() -> None:
    cfg = TrainConfig(epochs=10, lr=1.0, warmup_epochs=2, warmup_factor=0.033).resolved()
    assert lr_at(cfg, 0, 10) == pytest.approx(0.033)
    assert lr_at(cfg, 20, 10) == pytest.approx(1.0)
    assert lr_at(cfg, 60, 10) == pytest.approx(0.5)
    assert lr_at(cfg, 100, 10) == pytest.approx(0.0)


def test_training_lowers_loss_and_resume_continues(folder, tmp_path) -> None:
    out = tmp_path / "run"
    args = ["train", *MICRO, "--data", str(folder), "--out", str(out), "--recipe", "shapes", "--lr", "3e-3", "--warmup-epochs", "1"]
    assert main([*args, "--epochs", "4"]) == 0
    first = _metrics(out)
    assert [m["epoch"] for m in first] == [1, 2, 3, 4]
    assert main([*args, "--epochs", "8", "--resume"]) == 0
    hist = _metrics(out)
    assert [m["epoch"] for m in hist] == list(range(1, 9))
    assert hist[4]["iteration"] == first[-1]["iteration"] + 4  # continued, not restarted
    assert hist[-1]["train_loss"] < hist[0]["train_loss"] - 0.1
    result = json.loads((out / "result.json").read_text())
    assert (out / "model.safetensors").exists() and result["val_acc"] is not None
    # an existing run is not overwritten without --resume or --force
    assert main([*args, "--epochs", "1"]) == 2


def test_resume_with_other_config_fails(folder, tmp_path) -> None:
    out = tmp_path / "run"
    assert main(["train", *MICRO, "--data", str(folder), "--out", str(out), "--epochs", "1"]) == 0
    other = [a if a != "bvit_micro" else "bvit_micro" for a in MICRO]
    with pytest.raises(ValueError, match="another model config"):
        train(TrainConfig(model="bvit_micro", data=str(folder), out=str(out), epochs=2, batch_size=8, resume=True,
                          device="cpu", model_overrides={"num_classes": 4, "steps": 2}))
    assert other


def test_bad_data_specs(tmp_path, capsys) -> None:
    assert main(["train", *MICRO, "--data", "imagenet", "--out", str(tmp_path / "a")]) == 2
    assert "unknown dataset 'imagenet'" in capsys.readouterr().err
    empty = tmp_path / "empty"
    (empty / "train" / "cls").mkdir(parents=True)
    (empty / "val" / "cls").mkdir(parents=True)
    assert main(["train", *MICRO, "--data", str(empty), "--out", str(tmp_path / "b")]) == 2
    assert "class folders with no images" in capsys.readouterr().err
    assert main(["train", *MICRO, "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "c")]) == 2


def test_shapes_training_smoke(tmp_path) -> None:
    """The default data path (fresh shapes with a curriculum) runs and records its metrics."""
    out = tmp_path / "shapes"
    result = train(TrainConfig(model="bvit_micro", out=str(out), epochs=2, batch_size=16, shapes_train_size=32,
                               curriculum_epochs=1, val_limit=32, device="cpu"))
    assert 0.0 <= result["val_acc"] <= 1.0 and result["shapes"]["img_size"] == 16
    assert len(_metrics(out)) == 2


@pytest.mark.slow
def test_torchrun_two_process_gloo(folder, tmp_path) -> None:
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "bvit_interp.cli", "train", *MICRO, "--data", str(folder), "--out", str(out), "--epochs", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    hist = _metrics(out)
    assert len(hist) == 2
    # 32 training images sharded over 2 processes, 4 per process per step -> 4 iterations per epoch
    assert hist[-1]["iteration"] == 2 * 4 and hist[-1]["samples_seen"] == 2 * 32
    assert json.loads((out / "result.json").read_text())["world_size"] == 2


def test_paper_augmentation_pipeline_runs_at_full_strength() -> None:
    """RandAugment at high magnitude (posterize included) works with the installed Pillow."""
    import random

    from bvit_interp.data.transforms import train_transform
    from bvit_interp.model import get_config

    random.seed(0)
    tf = train_transform(get_config("bvit_micro"), (0.08, 1.0), (0.75, 1.33), 0.5, "rand-m15-mstd0.5-inc1", 0.25)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 24, 3), dtype=np.uint8))
    for _ in range(200):
        assert tf(img).shape == (3, 16, 16)


def test_amp_branch_trains_in_bf16_without_a_scaler(tmp_path) -> None:
    """Issue 16: the CUDA branch autocasts to bf16 (fp32's exponent range: tiny residual-stream gradients
    do not underflow as in fp16, so no GradScaler is needed); its logic runs on CPU with amp='always'."""
    import torch

    from bvit_interp.train import AMP_DTYPE, amp_enabled

    assert AMP_DTYPE is torch.bfloat16
    assert amp_enabled(True, torch.device("cuda")) and not amp_enabled(True, torch.device("cpu"))
    assert amp_enabled("always", torch.device("cpu")) and not amp_enabled(False, torch.device("cuda"))
    # a gradient far below fp16's smallest normal (6e-5) survives bf16, not fp16
    tiny = torch.tensor(1e-8)
    assert tiny.to(torch.bfloat16).item() > 0 and tiny.to(torch.float16).item() == 0
    out = tmp_path / "amp"
    result = train(TrainConfig(model="bvit_micro", out=str(out), epochs=1, batch_size=8, shapes_train_size=32,
                               val_limit=16, amp="always", model_overrides={"num_classes": 10}))
    hist = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(h["train_loss"]) for h in hist) and result["val_acc"] is not None


def _weights(path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def _same_weights(a, b) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(bool((wa[k] == wb[k]).all()) for k in wa)


def test_same_seed_same_model_with_the_papers_augmentations(folder, tmp_path) -> None:
    """Two runs with one seed train the same weights, RandAugment and random crops included (Python's RNG)."""
    args = ["train", *MICRO, "--data", str(folder), "--epochs", "2", "--seed", "3"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    assert _same_weights(tmp_path / "a" / "last.safetensors", tmp_path / "b" / "last.safetensors")


@pytest.mark.parametrize("data", ["folder", "shapes"])
def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(data, folder, tmp_path, monkeypatch) -> None:
    """A run stopped after epoch 2 of 4 and resumed ends with the same weights as one that never stopped:
    the shuffle order, the augmentations' and the loader workers' random draws continue where they were."""
    from bvit_interp import train as train_module

    source = ["--data", str(folder)] if data == "folder" else ["--shapes-train-size", "32", "--val-limit", "16",
                                                                "--curriculum-epochs", "2"]
    classes = ["--num-classes", "10"] if data == "shapes" else []  # the last --num-classes wins
    args = ["train", *MICRO, *classes, *source, "--epochs", "4", "--seed", "5", "--workers", "1" if data == "shapes" else "0"]
    assert main([*args, "--out", str(tmp_path / "straight")]) == 0

    saved = train_module.TrainState.save

    def save_then_stop(out, payload):
        saved(out, payload)
        if payload["epoch"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module.TrainState, "save", staticmethod(save_then_stop))
    assert main([*args, "--out", str(tmp_path / "stopped")]) == 130  # Ctrl-C's exit status
    monkeypatch.setattr(train_module.TrainState, "save", staticmethod(saved))
    assert main([*args, "--out", str(tmp_path / "stopped"), "--resume"]) == 0
    assert _metrics(tmp_path / "stopped") == [
        {**m, "images_per_s": m2["images_per_s"], "elapsed_s": m2["elapsed_s"]}
        for m, m2 in zip(_metrics(tmp_path / "straight"), _metrics(tmp_path / "stopped"), strict=True)
    ]
    assert _same_weights(tmp_path / "straight" / "last.safetensors", tmp_path / "stopped" / "last.safetensors")
