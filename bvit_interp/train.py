"""The paper's training recipe (Sec. 3.3), single process or under ``torchrun`` (DDP).

AdamW, linear warm-up from ``warmup_factor`` x lr, cosine to zero, label smoothing, Mixup /
CutMix, EMA of weights, RandomResizedCrop, flip, RandAugment, Random Erasing, no stochastic
depth. Two presets fill unset options: ``paper`` (ImageNet values) and ``shapes`` (a
small-data default for the bundled CPU models: fresh procedural data every epoch makes
heavy augmentation unnecessary). A checkpoint is written every epoch and ``--resume``
continues from it; one process resumes exactly (the random generators' states are saved too),
under ``torchrun`` every rank reseeds per resumed epoch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from .atomic import atomic_write
from .data.datasets import build_datasets
from .data.shapes import ShapesConfig
from .data.transforms import eval_transform, train_transform
from .distributed import DistInfo, barrier, cleanup, init_distributed, resolve_device
from .evaluation import evaluate_accuracy
from .model import BViT, build_model, get_config, save_model
from .model.init import mimetic_init_, sincos_pos_embed_
from .model.io import load_state_dict_checked
from .train_losses import DistillationLoss, RelativeLocalizationLoss, distillation_loss

AMP_DTYPE = torch.bfloat16  # CUDA autocast: bf16 has fp32's range, so no gradient scaler is needed


def amp_enabled(amp: bool | str, device: torch.device) -> bool:
    """Whether training autocasts to ``AMP_DTYPE``: on CUDA when ``amp``; anywhere with ``"always"``."""
    if amp == "always":
        return True
    return bool(amp) and device.type == "cuda"


class _Trainable(torch.nn.Module):
    """The model plus training-only heads: forward returns (logits, auxiliary loss or None).

    One module so that DistributedDataParallel sees every trainable parameter; the auxiliary
    relative-localisation head is dropped when the model is saved.
    """

    def __init__(self, model: BViT, aux: RelativeLocalizationLoss | None) -> None:
        super().__init__()
        self.model, self.aux = model, aux

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        tokens = self.model.forward_features(images)
        logits = self.model.forward_head(tokens)
        aux = self.aux(tokens[:, self.model.num_prefix_tokens :]) if self.aux is not None else None
        return logits, aux

RECIPES: dict[str, dict[str, Any]] = {
    # Paper Sec. 3.3; our copy of the paper lost some numbers (base lr, Mixup/CutMix alphas,
    # crop size/scale): those are DeiT's (Touvron et al. 2021), which the recipe follows. Each
    # constant says where it comes from.
    "paper": {
        "epochs": 300,  # paper Sec. 3.3
        # Global batch: the paper trains on 4 GPUs x 256 images = 1024 (Sec. 3.3). Under
        # torchrun the global batch is split over the processes (4 x 256 on 4 GPUs).
        "batch_size": 1024,
        "base_lr": 5e-4,  # DeiT: peak lr = 5e-4 x batch / 512 (= 1e-3 at batch 1024); value lost in our copy
        "weight_decay": 0.05,  # paper Sec. 3.3
        "warmup_epochs": 30,  # paper Sec. 3.3
        "warmup_factor": 0.033,  # paper Sec. 3.3
        "label_smoothing": 0.1,  # paper Sec. 3.3
        "mixup": 0.8,  # DeiT (the paper uses Mixup; its alpha was lost in our copy)
        "cutmix": 1.0,  # DeiT (the paper uses CutMix; its alpha was lost in our copy)
        "ema_decay": 0.99995,  # paper Sec. 3.3 (per optimizer step at global batch 1024)
        "crop_scale": (0.08, 1.0),  # DeiT / torchvision RandomResizedCrop default (lost in our copy)
        "crop_ratio": (3 / 4, 4 / 3),  # DeiT / torchvision RandomResizedCrop default (lost in our copy)
        "hflip": 0.5,  # paper Sec. 3.3 (random horizontal flip), p = 0.5 as DeiT
        "rand_augment": "rand-m9-mstd0.5-inc1",  # paper Sec. 3.3 (RandAugment), DeiT's magnitude
        "reprob": 0.25,  # paper Sec. 3.3 (Random Erasing), DeiT's probability
        "clip_grad": 0.0,  # DeiT: none
    },
    # Bundled CPU models on never-repeating shapes (ours, not the paper's): no Mixup/CutMix/
    # RandAugment/erasing, short warm-up, EMA with a horizon that fits a ~1k-iteration run.
    "shapes": {
        "epochs": 4,
        "batch_size": 64,
        "base_lr": 5.6e-3,  # = lr 7e-4 at batch 64
        "weight_decay": 0.05,
        "warmup_epochs": 0.2,
        "warmup_factor": 0.033,
        "label_smoothing": 0.1,
        "mixup": 0.0,
        "cutmix": 0.0,
        "ema_decay": 0.995,
        "crop_scale": (1.0, 1.0),
        "crop_ratio": (1.0, 1.0),
        "hflip": 0.5,
        "rand_augment": "",
        "reprob": 0.0,
        "clip_grad": 1.0,
    },
}


@dataclass
class TrainConfig:
    """Every knob of a training run; ``None`` means "take the recipe's value"."""

    model: str = "bvit_tiny"
    data: str = "shapes"
    out: str = "runs/train"
    recipe: str | None = None
    epochs: float | None = None
    batch_size: int | None = None
    base_lr: float | None = None
    lr: float | None = None  # absolute lr; overrides base_lr * batch / 512
    weight_decay: float | None = None
    warmup_epochs: float | None = None
    warmup_factor: float | None = None
    label_smoothing: float | None = None
    mixup: float | None = None
    cutmix: float | None = None
    ema_decay: float | None = None
    crop_scale: tuple[float, float] | None = None
    crop_ratio: tuple[float, float] | None = None
    hflip: float | None = None
    rand_augment: str | None = None
    reprob: float | None = None
    clip_grad: float | None = None
    shapes_train_size: int = 50_000
    curriculum_epochs: float = 0.0  # shapes only: clutter ramps from none to full over these epochs
    shapes_img_size: int | None = None
    shapes_version: int = 0  # 0: DEFAULT_SHAPES_VERSION
    pos_embed: str = "learned"  # "learned" (timm) or "sincos" (fixed 2-D sin-cos, frozen)
    init: str = "timm"  # "timm" or "mimetic" (Trockman & Kolter 2023)
    aux_loc: float = 0.0  # weight of the dense relative-localisation loss (Liu et al. 2021); 0 = off
    teacher: str | None = None  # checkpoint of a teacher (bvit-interp or timm CNN, see teacher.py)
    distill: str | None = None  # "soft" (KL at distill_tau) or "hard" (teacher argmax); None: hard for -dist models
                                # (DeiT distillation token, App. C), soft otherwise
    distill_alpha: float = 0.5
    distill_tau: float = 2.0
    val_limit: int | None = None
    workers: int = 0
    device: str = "auto"
    amp: bool | str = True  # bf16 autocast on CUDA; "always" also on CPU (tests of the CUDA branch's logic)
    seed: int = 0
    resume: bool = False
    force: bool = False
    save_name: str | None = None
    log_every: int = 20
    model_overrides: dict[str, Any] = field(default_factory=dict)

    def resolved(self) -> TrainConfig:
        """A copy with every ``None`` filled from the recipe (``shapes`` for ``shapes`` data)."""
        recipe = self.recipe or ("shapes" if self.data == "shapes" else "paper")
        if recipe not in RECIPES:
            raise ValueError(f"unknown recipe {recipe!r}; choose from {sorted(RECIPES)}")
        filled = {k: v for k, v in RECIPES[recipe].items() if getattr(self, k) is None}
        return dataclasses.replace(self, recipe=recipe, **filled)

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else self.base_lr * self.batch_size / 512


def lr_at(cfg: TrainConfig, iteration: int, iters_per_epoch: int) -> float:
    """Linear warm-up from ``warmup_factor * lr`` to ``lr``, then cosine to zero (per iteration)."""
    total = max(1, int(cfg.epochs * iters_per_epoch))
    warm = int(cfg.warmup_epochs * iters_per_epoch)
    if iteration < warm:
        return cfg.peak_lr * (cfg.warmup_factor + (1 - cfg.warmup_factor) * iteration / warm)
    progress = min(1.0, (iteration - warm) / max(1, total - warm))
    return cfg.peak_lr * 0.5 * (1 + math.cos(math.pi * progress))


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases, norms, tokens and embeddings (timm convention)."""
    decay, no_decay = [], []
    skip = {"cls_token", "dist_token", "reg_token", "pos_embed", "time_embed"}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.rsplit(".", 1)[-1] in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class TrainState:
    """Everything needed to resume: optimizer, EMA weights, epoch, iteration, metrics so far."""

    FILE = "train_state.pt"

    @staticmethod
    def save(out: Path, payload: dict[str, Any]) -> None:
        atomic_write(out / TrainState.FILE, lambda tmp: torch.save(payload, tmp))

    @staticmethod
    def load(out: Path) -> dict[str, Any]:
        path = out / TrainState.FILE
        if not path.exists():
            raise FileNotFoundError(f"--resume: no {path}; start without --resume")
        return torch.load(path, map_location="cpu", weights_only=True)


def rng_state(loader_generator: torch.Generator) -> dict[str, Any]:
    """The random generators one training process draws from (torch, NumPy, Python, the loader's), as plain data."""
    np_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "loader": loader_generator.get_state(),
        "numpy_key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
        "numpy_rest": [int(np_state["state"]["pos"]), int(np_state["has_gauss"]), float(np_state["gauss"])],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any], loader_generator: torch.Generator) -> None:
    """Put the generators back where ``rng_state`` found them (RandAugment draws from NumPy and Python, flips from torch)."""
    torch.set_rng_state(state["torch"])
    loader_generator.set_state(state["loader"])
    pos, has_gauss, gauss = state["numpy_rest"]
    np.random.set_state({"bit_generator": "MT19937", "state": {"key": state["numpy_key"].numpy().astype(np.uint32),
                                                               "pos": int(pos)},
                         "has_gauss": int(has_gauss), "gauss": float(gauss)})
    random.setstate(state["python"])


def _hardware() -> str:
    cpu = platform.processor() or platform.machine()
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    return f"CPU {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train a model with ``cfg`` and return the final metrics; writes checkpoints into ``cfg.out``."""
    cfg = cfg.resolved()
    info = init_distributed(cfg.device)
    try:
        return _train(cfg, info)
    finally:
        cleanup(info)


def _build(cfg: TrainConfig) -> tuple[BViT, ShapesConfig | None]:
    overrides = dict(cfg.model_overrides)
    shapes_cfg = None
    if cfg.data == "shapes":
        base = get_config(cfg.model, **overrides)
        img = cfg.shapes_img_size or base.img_size
        shapes_cfg = ShapesConfig.preset(cfg.shapes_version, img_size=img, num_train=cfg.shapes_train_size)
        overrides.setdefault("num_classes", 10)
        # the data travels with the model: analyses on `shapes` reopen this version (shapes_for_model)
        overrides["extra"] = {**base.extra, "shapes": {"version": shapes_cfg.version, "classes": shapes_cfg.classes}}
    return build_model(cfg.model, **overrides), shapes_cfg


def _same_architecture(saved: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """Config keys that differ between a train state and this run (the data record in ``extra`` aside)."""
    def strip(d: dict[str, Any]) -> dict[str, Any]:
        extra = {k: v for k, v in (d.get("extra") or {}).items() if k != "shapes"}
        return {**d, "extra": extra}

    a, b = strip(saved), strip(config)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _train(cfg: TrainConfig, info: DistInfo) -> dict[str, Any]:
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from timm.utils import ModelEmaV3, random_seed

    out = Path(cfg.out)
    device = resolve_device(cfg.device, info)
    amp = amp_enabled(cfg.amp, device)
    random_seed(cfg.seed, info.rank)  # torch, NumPy (RandAugment's op choice) and Python (crops, magnitudes)
    if cfg.pos_embed not in ("learned", "sincos"):
        raise ValueError(f"--pos-embed must be 'learned' or 'sincos', got {cfg.pos_embed!r}")
    if cfg.init not in ("timm", "mimetic"):
        raise ValueError(f"--init must be 'timm' or 'mimetic', got {cfg.init!r}")
    if cfg.aux_loc < 0:
        raise ValueError(f"--aux-loc must be >= 0, got {cfg.aux_loc}")
    teacher = None
    if cfg.teacher:
        from .teacher import load_teacher, train_teacher

        path = cfg.teacher
        if path.startswith("timm:"):  # train that timm CNN on the same shapes data first (kept in OUT)
            path = str(out / "teacher")
            if not Path(path + ".json").exists() and info.is_main:
                out.mkdir(parents=True, exist_ok=True)
                _, shapes = _build(cfg)
                if shapes is None:
                    raise ValueError("--teacher timm:ARCH trains a teacher on shapes data only; pass a checkpoint")
                rec = train_teacher(path, cfg.teacher.split(":", 1)[1], shapes, seed=cfg.seed)
                print(json.dumps({"teacher": rec}), file=sys.stderr)
            barrier(info)
        teacher = load_teacher(path).to(device)

    if info.is_main:
        if out.exists() and any(p.name not in ("teacher.json", "teacher.safetensors") for p in out.iterdir()) \
                and not (cfg.resume or cfg.force):
            raise FileExistsError(f"{out} already holds a run; pass --resume to continue or --force to overwrite")
        out.mkdir(parents=True, exist_ok=True)
    barrier(info)

    model, shapes_cfg = _build(cfg)
    data = build_datasets(
        cfg.data,
        train_transform(model.config, cfg.crop_scale, cfg.crop_ratio, cfg.hflip, cfg.rand_augment, cfg.reprob),
        eval_transform(model.config),
        shapes_cfg,
        cfg.curriculum_epochs,
    )
    if len(data.classes) != model.config.num_classes:
        raise ValueError(
            f"{cfg.data} has {len(data.classes)} classes but model {cfg.model} has {model.config.num_classes}; "
            "pass --num-classes"
        )
    val = data.val
    if cfg.val_limit:
        val = torch.utils.data.Subset(val, range(min(cfg.val_limit, len(val))))
    train_sampler = DistributedSampler(data.train, seed=cfg.seed, drop_last=True) if info.enabled else None
    val_sampler = DistributedSampler(val, shuffle=False) if info.enabled else None
    per_proc_batch = max(1, cfg.batch_size // info.world_size)
    gen = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(
        data.train, per_proc_batch, shuffle=train_sampler is None, sampler=train_sampler, generator=gen,
        num_workers=cfg.workers, drop_last=True, pin_memory=device.type == "cuda",
    )
    val_loader = DataLoader(val, 256, sampler=val_sampler, num_workers=cfg.workers)
    iters_per_epoch = len(train_loader)
    total_iters = max(1, int(cfg.epochs * iters_per_epoch))

    if cfg.init == "mimetic":
        mimetic_init_(model, generator=torch.Generator().manual_seed(cfg.seed))
    if cfg.pos_embed == "sincos":
        sincos_pos_embed_(model)
    aux = RelativeLocalizationLoss(model.config.embed_dim, model.config.grid_size) if cfg.aux_loc else None
    trainable = _Trainable(model, aux).to(device)
    ema = ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema_decay else None
    optimizer = torch.optim.AdamW(_param_groups(trainable, cfg.weight_decay), lr=cfg.peak_lr, betas=(0.9, 0.999))
    mixup = None
    if cfg.mixup > 0 or cfg.cutmix > 0:
        mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing,
                      num_classes=model.config.num_classes)
        criterion: torch.nn.Module = SoftTargetCrossEntropy()
    else:
        criterion = LabelSmoothingCrossEntropy(cfg.label_smoothing) if cfg.label_smoothing else torch.nn.CrossEntropyLoss()
    dist_token = bool(getattr(model.config, "dist_token", False))
    if dist_token and teacher is not None:
        if cfg.distill == "soft":
            raise ValueError("--distill soft: a -dist model learns its distillation token from hard teacher labels (App. C)")
        model.set_distilled_training(True)  # forward_head returns (cls_logits, dist_logits) in train mode
        distill = None
    elif teacher is not None:
        distill = DistillationLoss(criterion, teacher, cfg.distill or "soft", cfg.distill_alpha, cfg.distill_tau)
    else:
        distill = None

    start_epoch, iteration, history = 0, 0, []
    if cfg.resume:
        state = TrainState.load(out)
        diff = _same_architecture(state["model_config"], model.config.to_dict())
        if diff:
            raise ValueError(f"--resume: {out} was trained with another model config (differs in {diff})")
        load_state_dict_checked(model, state["model"], str(out / TrainState.FILE))
        if aux is not None:
            aux.load_state_dict(state["aux"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None and state.get("ema") is not None:
            ema.module.load_state_dict(state["ema"])
        start_epoch, iteration, history = state["epoch"], state["iteration"], json.loads(state["history"])
        if state.get("rng") is not None and not info.enabled:
            set_rng_state(state["rng"], gen)
        else:  # torchrun (only rank 0's state is saved) or a state from before the generators were saved
            random_seed(cfg.seed + 1000 * start_epoch, info.rank)
        if info.is_main:
            print(f"resuming {out} at epoch {start_epoch} (iteration {iteration})", file=sys.stderr)

    ddp_model = DistributedDataParallel(trainable) if info.enabled else trainable
    n_epochs = math.ceil(cfg.epochs)
    elapsed_before = history[-1]["elapsed_s"] if history else 0.0
    t_start = time.perf_counter()
    for epoch in range(start_epoch, n_epochs):
        if hasattr(data.train, "set_epoch"):
            data.train.set_epoch(epoch)
        if train_sampler is not None:
            train_sampler.set_epoch(epoch)
        trainable.train()
        seen, loss_sum, t_epoch = 0, 0.0, time.perf_counter()
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{n_epochs}", disable=not info.is_main, leave=False)
        for images, labels in bar:
            if iteration >= total_iters:
                break
            lr = lr_at(cfg, iteration, iters_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if mixup is not None:
                images, labels = mixup(images, labels)
            with torch.autocast(device_type=device.type, dtype=AMP_DTYPE, enabled=amp):
                logits, aux_loss = ddp_model(images)
                if isinstance(logits, tuple):  # -dist model with a teacher: DeiT hard distillation
                    with torch.no_grad():
                        teacher_logits = teacher(images)
                    loss = distillation_loss(logits[0], logits[1], labels, teacher_logits, criterion, cfg.distill_alpha)
                elif distill is not None:
                    loss = distill(images, logits, labels)
                else:
                    loss = criterion(logits, labels)
                if aux_loss is not None:
                    loss = loss + cfg.aux_loc * aux_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_grad:
                torch.nn.utils.clip_grad_norm_(trainable.parameters(), cfg.clip_grad)
            optimizer.step()
            if ema is not None:
                ema.update(model, step=iteration)
            iteration += 1
            seen += images.shape[0]
            loss_sum += float(loss.detach()) * images.shape[0]
            if iteration % cfg.log_every == 0:
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", lr=f"{lr:.2e}")
        train_time = time.perf_counter() - t_epoch
        val_acc, _ = evaluate_accuracy(model, val_loader, device, dist_info=info, amp=amp)
        ema_acc = evaluate_accuracy(ema.module, val_loader, device, dist_info=info, amp=amp)[0] if ema else None
        record = {
            "epoch": epoch + 1,
            "iteration": iteration,
            "samples_seen": iteration * per_proc_batch * info.world_size,
            "train_loss": loss_sum / max(1, seen),
            "val_acc": val_acc,
            "val_acc_ema": ema_acc,
            "lr": lr_at(cfg, max(0, iteration - 1), iters_per_epoch),
            "images_per_s": seen * info.world_size / max(train_time, 1e-9),
            "elapsed_s": elapsed_before + time.perf_counter() - t_start,
        }
        history.append(record)
        if info.is_main:
            print(json.dumps(record), file=sys.stderr)
            with open(out / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")
            save_model(model, out / "last", metadata={"epoch": epoch + 1, "val_acc": val_acc})
            if ema is not None:
                save_model(ema.module, out / "last_ema", metadata={"epoch": epoch + 1, "val_acc": ema_acc})
            TrainState.save(out, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "aux": aux.state_dict() if aux is not None else None,
                "ema": ema.module.state_dict() if ema else None, "epoch": epoch + 1, "iteration": iteration,
                "history": json.dumps(history), "model_config": model.config.to_dict(),
                "rng": rng_state(gen),
            })
        barrier(info)

    final = history[-1] if history else {}
    use_ema = bool(ema) and final.get("val_acc_ema") is not None and final["val_acc_ema"] >= final["val_acc"]
    best = ema.module if use_ema else model
    result = {
        "val_acc": final.get("val_acc_ema") if use_ema else final.get("val_acc"),
        "weights": "ema" if use_ema else "raw",
        "train_time_s": final.get("elapsed_s"),
        "samples_seen": final.get("samples_seen"),
        "hardware": _hardware(),
        "world_size": info.world_size,
        "config": {k: v for k, v in dataclasses.asdict(cfg).items()},
        "shapes": shapes_cfg.to_dict() if shapes_cfg else None,
        "command": " ".join(sys.argv),
        "torch": torch.__version__,
    }
    if info.is_main:
        save_model(best, out / (cfg.save_name or "model"), metadata={"training": result})
        (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
