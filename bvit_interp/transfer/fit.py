"""Train and evaluate one (model, method, seed) transfer run: a library function, no files, no printing."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..evaluation import evaluate_accuracy
from ..model import BViT
from .methods import METHOD_LABELS, check_method, head_parameters, prepare, trainable_parameters
from .schedule import TransferSchedule

NO_DECAY = {"time_embed"}  # with timm's no_weight_decay() names: tokens and embeddings


@dataclass
class TransferResult:
    """The trained model, one tidy row (``row``) and the per-epoch history."""

    model: BViT
    row: dict[str, Any]
    history: pd.DataFrame

    def frame(self) -> pd.DataFrame:
        """``row`` as a one-row DataFrame."""
        return pd.DataFrame([self.row])


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters only; no weight decay on biases, norms, tokens and embeddings (timm convention)."""
    skip = set(getattr(model, "no_weight_decay", lambda: set())()) | NO_DECAY
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def infer_num_classes(loader: Iterable[Any]) -> int:
    """Number of classes from ``loader.dataset`` (``classes`` or ``num_classes``); ValueError if unknown."""
    dataset = getattr(loader, "dataset", None)
    if hasattr(dataset, "classes"):
        return len(dataset.classes)
    if hasattr(dataset, "num_classes"):
        return int(dataset.num_classes)
    raise ValueError("cannot tell the number of classes from train_loader.dataset; pass num_classes")


def _steps_per_epoch(loader: Iterable[Any], schedule: TransferSchedule) -> int:
    try:
        n = len(loader)  # type: ignore[arg-type]
    except TypeError:
        n = None
    if n is None and schedule.max_steps_per_epoch is None:
        raise ValueError("train_loader has no length; set schedule.max_steps_per_epoch")
    steps = n if schedule.max_steps_per_epoch is None else min(n or schedule.max_steps_per_epoch, schedule.max_steps_per_epoch)
    if steps < 1:
        raise ValueError("train_loader is empty")
    return steps


def _bar(iterable: Iterable[Any], enabled: bool, **kwargs: Any) -> Iterable[Any]:
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)


def fit_transfer(
    model: BViT,
    method: str,
    train_loader: Iterable[Any],
    val_loader: Iterable[Any],
    schedule: TransferSchedule | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
    *,
    num_classes: int | None = None,
    amp: bool = False,
    method_options: dict[str, Any] | None = None,
    copy_model: bool = True,
) -> TransferResult:
    """Prepare ``model`` for ``method``, train it on ``train_loader`` and evaluate on ``val_loader``.

    ``schedule`` defaults to App. H's (``TransferSchedule()``), unset lr / min_lr / weight decay
    come from ``METHOD_DEFAULTS``. ``seed`` seeds the new head, the adapters and the loader's
    shuffling inside a forked RNG (the caller's global RNG is left as it was). The input model
    is deep-copied unless ``copy_model=False``. ``amp``: bf16 autocast. Batches are
    ``(images, labels, ...)``.
    """
    check_method(method)
    schedule = (schedule or TransferSchedule()).resolved(method)
    num_classes = infer_num_classes(train_loader) if num_classes is None else num_classes
    device = torch.device(device)
    steps_per_epoch = _steps_per_epoch(train_loader, schedule)
    rng_devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(seed)
        net = copy.deepcopy(model) if copy_model else model
        prepare(net, method, num_classes, **(method_options or {}))
        net.to(device)
        trainable = trainable_parameters(net, exclude_head=True)
        optimizer = torch.optim.AdamW(param_groups(net, schedule.weight_decay), lr=schedule.lr, betas=schedule.betas)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        history, step, start = [], 0, time.perf_counter()
        accuracy, val_images = float("nan"), 0
        for epoch in _bar(range(schedule.epochs), progress, desc=method, unit="epoch"):
            net.train()
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            correct = torch.zeros((), dtype=torch.float64, device=device)
            seen, lr = 0, schedule.lr
            batches = _bar(train_loader, progress, total=steps_per_epoch, leave=False, desc=f"epoch {epoch + 1}")
            for i, batch in enumerate(batches):
                if i >= steps_per_epoch:
                    break
                images = batch[0].to(device, non_blocking=True)
                labels = batch[1].to(device, non_blocking=True)
                lr = schedule.lr_at(step, steps_per_epoch)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                    logits = net(images)
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=schedule.label_smoothing)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"{method}: non-finite loss at epoch {epoch + 1}, step {i + 1} (lr {lr:.3g}); lower the lr"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if schedule.clip_grad:
                    torch.nn.utils.clip_grad_norm_(params, schedule.clip_grad)
                optimizer.step()
                step += 1
                loss_sum += loss.detach().double() * labels.numel()
                correct += (logits.detach().argmax(-1) == labels).sum()
                seen += labels.numel()
            last = epoch + 1 == schedule.epochs
            val = float("nan")
            if last or (epoch + 1) % schedule.eval_every == 0:
                val, val_images = evaluate_accuracy(net, val_loader, device, amp=amp)
                accuracy = val
            history.append(
                {
                    "epoch": epoch + 1,
                    "lr": lr,
                    "train_loss": float(loss_sum) / max(seen, 1),
                    "train_accuracy": float(correct) / max(seen, 1),
                    "val_accuracy": val,
                    "seconds": time.perf_counter() - start,
                }
            )
    net.eval()
    row = {
        "model": net.config.name,
        "method": method,
        "label": METHOD_LABELS[method],
        "trainable_params": trainable,
        "head_params": head_parameters(net),
        "num_classes": num_classes,
        "accuracy": accuracy,
        "val_images": val_images,
        "train_loss": history[-1]["train_loss"] if history else math.nan,
        "epochs": schedule.epochs,
        "steps": step,
        "seed": seed,
        "lr": schedule.lr,
        "min_lr": schedule.min_lr,
        "weight_decay": schedule.weight_decay,
        "warmup_epochs": schedule.warmup_epochs,
        "seconds": time.perf_counter() - start,
    }
    history_df = pd.DataFrame(history)
    history_df.insert(0, "seed", seed)
    history_df.insert(0, "method", method)
    return TransferResult(model=net, row=row, history=history_df)


def summarize_transfer(rows: pd.DataFrame) -> pd.DataFrame:
    """Table 4 layout: accuracy mean / std over seeds per (model, method[, dataset]), with trainable parameters."""
    keys = [k for k in ("model", "dataset", "method") if k in rows.columns]
    out = (
        rows.groupby(keys, sort=False)
        .agg(
            trainable_params=("trainable_params", "first"),
            accuracy_mean=("accuracy", "mean"),
            accuracy_std=("accuracy", lambda s: float(s.std(ddof=0))),
            seeds=("seed", "nunique"),
        )
        .reset_index()
    )
    out.insert(keys.index("method") + 1, "label", out["method"].map(METHOD_LABELS))
    return out
