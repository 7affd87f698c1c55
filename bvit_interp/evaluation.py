"""Accuracy of a model on a loader, with optional step count (shared by training, tests and analyses)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from .distributed import DistInfo, all_reduce_sum


@torch.no_grad()
def evaluate_accuracy(
    model: torch.nn.Module,
    loader: DataLoader,
    device: torch.device | str = "cpu",
    steps: int | None = None,
    dist_info: DistInfo | None = None,
    amp: bool = False,
) -> tuple[float, int]:
    """(top-1 accuracy, number of images) of ``model`` over ``loader``; summed over processes."""
    was_training = model.training
    model.eval()
    correct = torch.zeros(2, dtype=torch.float64, device=device)
    for batch in loader:
        images, labels = batch[0].to(device), batch[1].to(device)
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=amp):
            logits = model(images, steps=steps) if steps is not None else model(images)
        correct[0] += (logits.argmax(-1) == labels).sum()
        correct[1] += labels.numel()
    all_reduce_sum(correct, dist_info or DistInfo())
    model.train(was_training)
    return float(correct[0] / correct[1].clamp(min=1)), int(correct[1])
