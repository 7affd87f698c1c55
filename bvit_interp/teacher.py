"""A small timm CNN teacher trained on the shapes data, for distilling into the bundled ViTs (issue 14).

``train_teacher`` trains any timm model (default ``resnet10t``) with a plain loop (AdamW,
one-cycle, no augmentation) and writes ``<out>.safetensors`` + ``<out>.json``;
``load_teacher`` reopens it, or a bvit-interp checkpoint, as a frozen module that maps the
student's normalised input to logits.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm import tqdm

from .atomic import atomic_write
from .data.datasets import FreshShapes
from .data.shapes import ShapesConfig, ShapesDataset
from .data.transforms import eval_transform
from .evaluation import evaluate_accuracy
from .model.config import BViTConfig
from .model.io import checkpoint_paths

TEACHER_FORMAT = "bvit-interp-teacher"


class _Logits(torch.nn.Module):
    """Wraps a timm model so that ``model(x, steps=...)`` calls from evaluation code work."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        return self.net(x)


def train_teacher(
    out: str | Path,
    arch: str = "resnet10t",
    shapes: ShapesConfig | None = None,
    samples: int = 32_000,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a timm ``arch`` on fresh shapes images for ``samples`` images; returns its record."""
    import timm

    shapes = shapes or ShapesConfig.preset()
    torch.manual_seed(seed)
    net = timm.create_model(arch, num_classes=10, pretrained=False)
    student_cfg = BViTConfig(img_size=shapes.img_size, patch_size=shapes.img_size, num_classes=10, crop_pct=1.0)
    tf = eval_transform(student_cfg)
    train = FreshShapes(shapes, tf)
    loader = DataLoader(train, batch_size, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(seed))
    iters = max(1, samples // batch_size)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=iters)
    net.train()
    t0, done, epoch = time.perf_counter(), 0, 0
    bar = tqdm(total=iters, desc=f"teacher {arch}", disable=not progress)
    while done < iters:
        train.set_epoch(epoch)
        for images, labels in loader:
            loss = torch.nn.functional.cross_entropy(net(images), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            done += 1
            bar.update(1)
            if done >= iters:
                break
        epoch += 1
    bar.close()
    val = DataLoader(ShapesDataset("val", shapes, transform=tf), 256)
    acc, n = evaluate_accuracy(_Logits(net), val)
    record = {
        "format": TEACHER_FORMAT, "arch": arch, "num_classes": 10, "img_size": shapes.img_size,
        "mean": list(student_cfg.mean), "std": list(student_cfg.std), "shapes": shapes.to_dict(),
        "samples": iters * batch_size, "batch_size": batch_size, "lr": lr, "seed": seed,
        "val_acc": acc, "val_images": n, "train_time_s": time.perf_counter() - t0,
        "params": sum(p.numel() for p in net.parameters()),
    }
    weights, meta = checkpoint_paths(out)
    weights.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    atomic_write(weights, lambda tmp: save_file(state, tmp))
    atomic_write(meta, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2) + "\n"))
    return record


def load_teacher(path: str | Path) -> torch.nn.Module:
    """A frozen teacher: a ``train_teacher`` checkpoint (timm CNN) or any bvit-interp checkpoint."""
    weights, meta = checkpoint_paths(path)
    if not meta.exists():
        raise FileNotFoundError(f"--teacher {path}: no {meta}")
    doc = json.loads(meta.read_text())
    if doc.get("format") == TEACHER_FORMAT:
        import timm

        net = timm.create_model(doc["arch"], num_classes=doc["num_classes"], pretrained=False)
        net.load_state_dict(load_file(str(weights)))
        module: torch.nn.Module = _Logits(net)
    else:
        from .model.io import load_model

        module = load_model(path)
    return module.eval().requires_grad_(False)
