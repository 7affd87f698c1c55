"""RTL-style iterative magnitude pruning with per-step masks and graft training (paper App. G.3).

Round ``r`` = 0..R works on the masks ``M_r`` (r pruning rounds applied, mask-level sparsity
``1 - (1 - rate)^r``):

1. rewind every weight to ``theta_0`` (the initial weights, saved once) and train the full
   model with ``M_r`` (all parameters trainable);
2. for each step t: copy the shared block(s) into a graft masked by ``M_r[t]``, freeze the
   main model, train the graft (own AdamW, own schedule) while it replaces the block at
   step t only, and mark the smallest-magnitude ``rate`` of its active weights;
3. ``M_{r+1}[t]`` = ``M_r[t]`` without the marked weights, for every t.

Round R only trains and evaluates (the accuracy of the final masks). Weights that no step
uses are set to exactly zero after every optimizer step (full model and grafts), so AdamW
momentum and weight decay cannot revive them. Every phase draws its randomness from a seed
derived from (seed, round, phase, step), so a run resumed after an interruption reproduces
an uninterrupted one. This module computes and writes nothing; the run layer
(``bvit_interp.runs.pruning``) saves theta_0, each round's masks, the trained model, the metric
tables and ``state.json``, and resumes after the last finished round.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from ..data.datasets import build_datasets
from ..data.shapes import shapes_for_model
from ..data.transforms import eval_transform, train_transform
from ..evaluation import evaluate_accuracy
from ..model import BViT, build_model, get_config
from ..model.io import load_state_dict_checked
from ..train import TrainConfig, _param_groups, lr_at
from .masked import attach_masks, grafted, make_graft, masked_layers, set_masks, zero_unused_weights
from .masks import LAYER_TYPES, StepMasks, check_layer_types
from .strategy import SCOPES, prune_step_masks

Progress = Callable[[str, dict[str, Any]], None]
PHASES = {"init": 0, "train": 1, "graft": 2, "control": 3, "control_masks": 4}


@dataclass(frozen=True)
class PruneConfig:
    """Every option of a pruning run; ``None`` training values come from the data's training recipe."""

    model: str = "bvit_tiny"
    init_from: str | None = None  # bundled model or checkpoint whose weights are theta_0
    data: str = "shapes"
    rounds: int = 30
    rate: float = 0.2
    scope: str = "layer"
    layer_types: tuple[str, ...] = LAYER_TYPES
    epochs: float = 2.0  # full-model training per round
    graft_epochs: float = 0.5  # training of each step's graft per round
    batch_size: int = 128
    lr: float | None = None  # peak lr of full training (None: recipe base_lr * batch / 512)
    graft_lr: float | None = None  # peak lr of graft training (None: as full training)
    weight_decay: float | None = None
    warmup_epochs: float | None = None  # None: 10% of each phase
    label_smoothing: float | None = None
    clip_grad: float | None = None
    shapes_train_size: int = 50_000
    val_limit: int | None = None
    train_eval_limit: int = 2_000  # training images re-evaluated for train accuracy
    random_control: bool = True  # also train with random masks of the same densities
    num_classes: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "layer_types", check_layer_types(self.layer_types))
        problems = []
        if self.rounds < 0:
            problems.append(f"--rounds must be >= 0, got {self.rounds}")
        if not 0.0 < self.rate < 1.0:
            problems.append(f"--rate must be in (0, 1), got {self.rate}")
        if self.scope not in SCOPES:
            problems.append(f"--scope must be one of {SCOPES}, got {self.scope!r}")
        if self.epochs <= 0 or self.graft_epochs <= 0:
            problems.append("--epochs and --graft-epochs must be > 0")
        if problems:
            raise ValueError("; ".join(problems))

    def train_config(self, device: str = "cpu") -> TrainConfig:
        """The full-training recipe (no Mixup/CutMix/EMA: masks make them out of scope here)."""
        cfg = TrainConfig(
            model=self.model, data=self.data, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
            weight_decay=self.weight_decay, label_smoothing=self.label_smoothing, clip_grad=self.clip_grad,
            warmup_epochs=self.warmup_epochs if self.warmup_epochs is not None else 0.1 * self.epochs,
            mixup=0.0, cutmix=0.0, ema_decay=0.0, shapes_train_size=self.shapes_train_size,
            val_limit=self.val_limit, device=device, seed=self.seed,
        ).resolved()
        return dataclasses.replace(cfg, lr=cfg.peak_lr)

    def graft_config(self, device: str = "cpu") -> TrainConfig:
        """The graft-training recipe: the full recipe rescaled to ``graft_epochs``."""
        full = self.train_config(device)
        return dataclasses.replace(
            full, epochs=self.graft_epochs, warmup_epochs=full.warmup_epochs * self.graft_epochs / self.epochs,
            lr=self.graft_lr if self.graft_lr is not None else full.peak_lr,
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


# Presets fill the options a user leaves unset. ``paper``: App. G.3 with the App. G.1 model
# (``--model-config bvit_prune_g1``). ``quick``: the bundled bvit_tiny config on a 2-core CPU in
# about 15 minutes, with a higher rate so that the few rounds still reach the sparsities where
# steps specialize.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        # App. G.5: "removing 20% of remaining weights per step over 30 steps" (~99.9% mask sparsity).
        "rounds": 30,
        "rate": 0.2,
        # ASSUMPTION: App. G.3 gives the full-training and graft-training epochs per round, but the
        # numbers are lost in our copy of the paper; 2 and 0.5 epochs are our choice, not the paper's.
        # (App. G.2's 20-epoch warm-up cannot apply within such rounds; warm-up is 10% of each phase.)
        "epochs": 2.0,
        "graft_epochs": 0.5,
        # ASSUMPTION: shapes images per epoch = CIFAR-10's 50,000 training images (only used with --data shapes).
        "shapes_train_size": 50_000,
        "random_control": True,  # ours: the random-mask accuracy control (not in the paper)
    },
    "quick": {"rounds": 5, "rate": 0.5, "epochs": 1.0, "graft_epochs": 0.1, "shapes_train_size": 6_144,
              "val_limit": 1_000, "train_eval_limit": 1_000, "random_control": False},
}


def preset_config(preset: str = "paper", **options: Any) -> PruneConfig:
    """A ``PruneConfig`` from a preset, with the given (non-None) options taking precedence."""
    if preset not in PRESETS:
        raise ValueError(f"unknown --preset {preset!r}; choose from {sorted(PRESETS)}")
    given = {k: v for k, v in options.items() if v is not None}
    return PruneConfig(**{**PRESETS[preset], **given})


def phase_seed(seed: int, round_: int, phase: str, step: int = 0) -> int:
    """Independent, reproducible seed of one phase of one round."""
    return int(np.random.SeedSequence([seed, round_, PHASES[phase], step]).generate_state(1)[0])


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch, numpy and random (augmentations use all three); returns a loader generator."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    return torch.Generator().manual_seed(seed)


class RenderCache(Dataset):
    """A rendered dataset (``set_epoch``, PIL items) remembered per (epoch, index) as uint8, transformed on access.

    Why: every round (and every graft) revisits the same shapes images, and rendering one
    costs more than a tiny model's training step on it. Wrappers with different transforms
    share one ``store``; caching stops at ``max_bytes`` (memory stays bounded), and with
    loader workers each worker keeps its own short-lived copy (so use workers=0 to benefit).
    """

    def __init__(self, base: Dataset, transform: Callable[[Any], Any], store: dict[Any, Any] | None = None,
                 max_bytes: int = 512 << 20) -> None:
        self.base, self.transform, self.max_bytes = base, transform, max_bytes
        self.store: dict[Any, Any] = store if store is not None else {}
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        from PIL import Image

        key = (self.epoch, index)
        if key not in self.store:
            self.base.set_epoch(self.epoch)  # type: ignore[attr-defined]
            image, label = self.base[index]
            array = np.asarray(image)
            used = self.store.setdefault("__bytes__", 0)
            if used + array.nbytes > self.max_bytes:
                return self.transform(image), label
            self.store[key] = (array, label)
            self.store["__bytes__"] = used + array.nbytes
        array, label = self.store[key]
        return self.transform(Image.fromarray(array)), label


@dataclass
class PruneData:
    """Training set, train-accuracy subset and validation set of one run."""

    train: Dataset
    train_eval: Dataset
    val: Dataset
    num_classes: int


def build_model_and_data(cfg: PruneConfig) -> tuple[BViT, PruneData]:
    """theta_0 (fresh from ``cfg.model`` with ``cfg.seed``, or ``cfg.init_from``) and the datasets."""
    overrides: dict[str, Any] = {"num_classes": cfg.num_classes} if cfg.num_classes else {}
    if cfg.init_from:
        from ..defaults import resolve_model

        model = resolve_model(cfg.init_from)
        base = model.config
    else:
        base = get_config(cfg.model, **overrides)
        if cfg.data == "shapes" and not cfg.num_classes:
            base = base.replace(num_classes=10)
        torch.manual_seed(phase_seed(cfg.seed, 0, "init"))
        model = build_model(base)
    shapes = shapes_for_model(base, num_train=cfg.shapes_train_size) if cfg.data == "shapes" else None
    tcfg = cfg.train_config()
    train_tf = train_transform(base, tcfg.crop_scale, tcfg.crop_ratio, tcfg.hflip, tcfg.rand_augment, tcfg.reprob)
    eval_tf = eval_transform(base)
    data = build_datasets(cfg.data, train_tf, eval_tf, shapes)
    if len(data.classes) != base.num_classes:
        raise ValueError(f"{cfg.data} has {len(data.classes)} classes but the model has {base.num_classes}; pass --num-classes")
    if shapes is not None:
        raw = build_datasets(cfg.data, None, None, shapes).train
        train: Dataset = RenderCache(raw, train_tf)
        plain: Dataset = RenderCache(raw, eval_tf, store=train.store)
    else:
        train, plain = data.train, build_datasets(cfg.data, eval_tf, eval_tf).train
    val = data.val if not cfg.val_limit else Subset(data.val, range(min(cfg.val_limit, len(data.val))))
    train_eval = Subset(plain, range(min(cfg.train_eval_limit, len(plain))))  # type: ignore[arg-type]
    return model, PruneData(train, train_eval, val, base.num_classes)


def fit(
    forward: Callable[[torch.Tensor], torch.Tensor],
    params: nn.Module,
    dataset: Dataset,
    tcfg: TrainConfig,
    seed: int,
    device: torch.device,
    amp: bool,
) -> dict[str, float]:
    """Train ``params`` (AdamW, warm-up + cosine, clipping) through ``forward``; masked weights stay zero."""
    gen = seed_everything(seed)
    loader = DataLoader(dataset, tcfg.batch_size, shuffle=True, generator=gen, drop_last=True,
                        num_workers=tcfg.workers, pin_memory=device.type == "cuda")
    if len(loader) == 0:
        raise ValueError(f"training set of {len(dataset)} images is smaller than one batch of {tcfg.batch_size}")
    optimizer = torch.optim.AdamW(_param_groups(params, tcfg.weight_decay), lr=tcfg.peak_lr, betas=(0.9, 0.999))
    criterion = nn.CrossEntropyLoss(label_smoothing=tcfg.label_smoothing)
    total = max(1, int(tcfg.epochs * len(loader)))
    iteration, seen, loss_sum, correct = 0, 0, 0.0, 0
    zero_unused_weights(params)
    for epoch in range(math.ceil(tcfg.epochs)):
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        for images, labels in itertools.islice(loader, total - iteration):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(tcfg, iteration, len(loader))
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                logits = forward(images)
            loss = criterion(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if tcfg.clip_grad:
                torch.nn.utils.clip_grad_norm_(params.parameters(), tcfg.clip_grad)
            optimizer.step()
            zero_unused_weights(params)
            iteration += 1
            seen += labels.numel()
            loss_sum += float(loss.detach()) * labels.numel()
            correct += int((logits.argmax(-1) == labels).sum())
    return {"iterations": iteration, "loss": loss_sum / max(1, seen), "running_acc": correct / max(1, seen)}


class RTLPruner:
    """The rounds of one pruning run, in memory: theta_0, rewinding, training, graft pruning (no files)."""

    def __init__(
        self, cfg: PruneConfig, device: str | torch.device = "cpu", amp: bool = True,
        progress: Progress | None = None, workers: int = 0,
    ) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.amp = amp and self.device.type == "cuda"
        self.progress = progress or (lambda event, info: None)
        self.full_cfg = dataclasses.replace(cfg.train_config(str(self.device)), workers=workers)
        self.graft_cfg = dataclasses.replace(cfg.graft_config(str(self.device)), workers=workers)
        self.model, self.data = build_model_and_data(cfg)
        self.model.to(self.device)
        self.theta0 = self._snapshot()

    def _snapshot(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def set_initial_weights(self, state: dict[str, torch.Tensor], source: str = "theta_0") -> None:
        """Make ``state`` theta_0 (a resumed run reloads the one it saved, so rewinding survives restarts)."""
        load_state_dict_checked(self.model, state, source)
        self.theta0 = self._snapshot()

    def initial_masks(self) -> StepMasks:
        """The masks of round 0: all ones."""
        return StepMasks.ones(self.model, self.model.config.steps, self.cfg.layer_types)

    # ------------------------------------------------------------- phases
    def rewind(self, masks: StepMasks) -> None:
        """Weights back to theta_0, masks set to ``masks``; unused weights zeroed."""
        self.model.load_state_dict(self.theta0)
        if masked_layers(self.model):
            set_masks(self.model, masks)
        else:
            attach_masks(self.model, masks)
        zero_unused_weights(self.model)

    def train_full(self, masks: StepMasks, seed: int) -> dict[str, float]:
        self.rewind(masks)
        self.model.requires_grad_(True).train()
        return fit(self.model, self.model, self.data.train, self.full_cfg, seed, self.device, self.amp)

    def accuracy(self, dataset: Dataset) -> float:
        loader = DataLoader(dataset, 256, num_workers=self.full_cfg.workers)
        return evaluate_accuracy(self.model, loader, self.device, amp=self.amp)[0]

    def graft_prune(self, masks: StepMasks, round_: int) -> tuple[StepMasks, list[float], float]:
        """Step 2-3 of App. G.3: one graft per step, each pruning its own step's mask.

        Returns the next round's masks, each graft's final training loss and the seconds
        spent choosing weights (the rest is graft training).
        """
        steps = self.model.config.steps
        new = {k: v.clone() for k, v in masks.items()}
        losses, select_s = [], 0.0
        self.model.requires_grad_(False)
        try:
            for t in range(steps):
                t0 = time.perf_counter()
                graft = make_graft(self.model, t).train()
                with grafted(self.model, graft, t):
                    stats = fit(self.model, graft, self.data.train, self.graft_cfg,
                                phase_seed(self.cfg.seed, round_, "graft", t), self.device, self.amp)
                t1 = time.perf_counter()
                weights = {name: graft.get_submodule(name.removeprefix("blocks.")).weight for name in masks}
                pruned = prune_step_masks(weights, {k: v[t] for k, v in masks.items()}, self.cfg.rate, self.cfg.scope)
                for name, mask in pruned.items():
                    new[name][t] = mask.cpu()
                select_s += time.perf_counter() - t1
                losses.append(stats["loss"])
                self.progress("graft", {"round": round_, "step": t + 1, "steps": steps, "loss": stats["loss"],
                                        "seconds": time.perf_counter() - t0})
        finally:
            self.model.requires_grad_(True)
        return StepMasks(new, round_ + 1), losses, select_s

    def random_control(self, masks: StepMasks, round_: int) -> float:
        """Validation accuracy after training from theta_0 with random masks of the same densities."""
        gen = torch.Generator().manual_seed(phase_seed(self.cfg.seed, round_, "control_masks"))
        self.train_full(masks.random_like(gen), phase_seed(self.cfg.seed, round_, "control"))
        return self.accuracy(self.data.val)

    # ------------------------------------------------------------- rounds
    def run_round(self, round_: int, masks: StepMasks) -> tuple[dict[str, Any], StepMasks | None]:
        """Train and evaluate round ``round_`` with ``masks``; before the last round also graft-prune.

        Returns the round's record and the next round's masks (None after the last round).
        """
        cfg = self.cfg
        record: dict[str, Any] = {"round": round_, "mask_sparsity": masks.sparsity()}
        self.progress("round", {"round": round_, "rounds": cfg.rounds, "sparsity": masks.sparsity()})
        t0 = time.perf_counter()
        record["val_acc_random"] = None
        if cfg.random_control and round_ > 0:
            record["val_acc_random"] = self.random_control(masks, round_)
        record["time_control_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        stats = self.train_full(masks, phase_seed(cfg.seed, round_, "train"))
        record.update(train_loss=stats["loss"], train_running_acc=stats["running_acc"], iterations=stats["iterations"])
        record["time_train_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        record["train_acc"] = self.accuracy(self.data.train_eval)
        record["val_acc"] = self.accuracy(self.data.val)
        record["chance"] = 1.0 / self.data.num_classes
        record["time_eval_s"] = time.perf_counter() - t0
        self.progress("trained", {**record, "rounds": cfg.rounds})

        record["time_grafts_s"] = record["time_prune_s"] = 0.0
        if round_ == cfg.rounds:
            return record, None
        t0 = time.perf_counter()
        new, losses, select_s = self.graft_prune(masks, round_)
        record["time_grafts_s"] = time.perf_counter() - t0 - select_s
        record["graft_loss"] = losses
        record["time_prune_s"] = select_s
        new.meta.update(seed=cfg.seed, rate=cfg.rate, scope=cfg.scope)
        return record, new


def rounds_table(history: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per round: sparsity, accuracies (with the random-mask control and chance), timings."""
    return pd.DataFrame([{k: v for k, v in rec.items() if k != "graft_loss"} for rec in history])

