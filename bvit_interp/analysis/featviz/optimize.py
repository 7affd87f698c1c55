"""The batched optimiser: many (neuron, step) targets, one image each (or a few), in one batch.

Each batch element carries its own target. The loss is a sum over targets of
``-mean over copies(activation) + tv_weight * TV(image)`` (+ ``diversity`` * Gram similarity
between a target's images), so every image receives exactly the gradient it would get alone;
Adam is element-wise and the schedule is shared, hence batching gives the same image as
optimising one target at a time (up to floating-point summation order). Every target draws its
initial image and its augmentations from a generator seeded by (seed, neuron, step, patch).

Defaults are Ghiasi et al. 2022's recipe: Adam lr 0.1, betas (0.5, 0.99), cosine schedule to 0,
400 iterations, 8 augmented copies, jitter, colour shift/scale, annealed noise, TV 0.0005.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

import torch
from tqdm import tqdm

from ...model import BViT
from .objectives import Objective, Target, diversity, evaluate, target_activations, total_variation
from .param import PARAMS, make_param
from .transforms import Augment, TransformOptions, normalize

SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class FeatvizOptions:
    """The optimisation recipe; every Ghiasi default can be changed."""

    iterations: int = 400
    lr: float = 0.1
    betas: tuple[float, float] = (0.5, 0.99)
    eps: float = 1e-8
    schedule: str = "cosine"  # cosine annealing to 0 over the iterations, or constant
    param: str = "pixel"  # pixel (clamp, Ghiasi), pixel-sigmoid, spectral (Lucid)
    tv_weight: float = 0.0005  # Ghiasi: 0.0005 * tv with tv = 1
    diversity: float = 0.0  # weight of the Gram-similarity penalty between a target's images
    images_per_target: int = 1
    transforms: TransformOptions = field(default_factory=TransformOptions)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule {self.schedule!r}: choose one of {SCHEDULES}")
        if self.param not in PARAMS:
            raise ValueError(f"param {self.param!r}: choose one of {PARAMS}")
        if self.images_per_target < 1:
            raise ValueError(f"images_per_target must be >= 1, got {self.images_per_target}")

    def to_dict(self) -> dict[str, object]:
        """JSON-ready (tuples as lists), so a resumed run compares equal to its meta.json."""
        return json.loads(json.dumps(asdict(self)))

    def lr_factor(self, iteration: int) -> float:
        """Multiplier of ``lr`` at ``iteration`` (closed-form cosine annealing to 0)."""
        if self.schedule == "constant":
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * iteration / self.iterations))


@dataclass
class Visualizations:
    """Optimised images of ``targets`` in the given order."""

    targets: list[Target]
    images: torch.Tensor  # (K, images_per_target, 3, H, W) in [0, 1], float32 on the CPU
    history: torch.Tensor  # (K, iterations): mean augmented activation per iteration


@contextlib.contextmanager
def frozen(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Eval mode and ``requires_grad=False`` on every parameter; both restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    training = model.training
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(training)


def _optimize_batch(
    model: BViT, targets: Sequence[Target], o: FeatvizOptions, early_stop: bool, amp: bool,
    on_iteration: Callable[[], object] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Optimise one batch of targets: (images (K, n, 3, H, W), history (K, iterations))."""
    ref = next(model.parameters())
    device, dtype = ref.device, ref.dtype
    cfg = model.config
    k, n, copies = len(targets), o.images_per_target, o.transforms.copies
    gens = [torch.Generator().manual_seed(t.seed(o.seed)) for t in targets]
    param = make_param(o.param, gens, n, cfg.img_size, device, dtype)
    augment = Augment(o.transforms, cfg.img_size)

    def per_element(values: list[int]) -> torch.Tensor:
        return torch.tensor(values, device=device).repeat_interleave(n * copies)

    layers = per_element([t.layer for t in targets])
    neurons = per_element([t.neuron for t in targets])
    patches = per_element([-1 if t.patch is None else t.patch for t in targets])
    opt = torch.optim.Adam(param.parameters(), lr=o.lr, betas=o.betas, eps=o.eps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, o.lr_factor)
    use_div = o.diversity > 0 and n > 1
    history = torch.empty(k, o.iterations, device=device)
    for i in range(o.iterations):
        if on_iteration is not None:
            on_iteration()
        opt.zero_grad(set_to_none=True)
        images = param()
        x = normalize(augment(images, augment.draw(gens, n, i, o.iterations)), cfg)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            acts, hidden = target_activations(model, x, layers, neurons, patches, early_stop, keep_hidden=use_div)
        per_image = acts.to(dtype).view(k * n, copies).mean(dim=1)
        loss = -per_image.sum() + o.tv_weight * total_variation(images).sum()
        if use_div:
            groups = hidden.view(k, n, copies, *hidden.shape[1:]).transpose(1, 2)  # type: ignore[union-attr]
            loss = loss + o.diversity * diversity(groups.to(dtype)).mean(dim=1).sum()
        loss.backward()
        opt.step()
        sched.step()
        param.project_()
        history[:, i] = per_image.detach().view(k, n).mean(dim=1)
    with torch.no_grad():
        final = param().detach().float().cpu()
    return final.view(k, n, 3, cfg.img_size, cfg.img_size), history.float().cpu()


def _patch_key(target: Target) -> int:
    """Sort key of a target's patch (the mean objective first)."""
    return -1 if target.patch is None else target.patch


def visualize(
    model: BViT,
    targets: Sequence[Target],
    options: FeatvizOptions = FeatvizOptions(),
    batch_size: int = 16,
    early_stop: bool = True,
    progress: bool = False,
    on_batch: Callable[[Visualizations], None] | None = None,
    amp: bool = False,
) -> Visualizations:
    """Optimise one image per target (``images_per_target`` with diversity), ``batch_size`` targets at a time.

    Targets are batched in order of step so that batches stop early; the result follows the
    input order. ``on_batch`` receives each finished batch (e.g. to write it for resuming).
    ``amp`` runs the model forward under bf16 autocast (CUDA speed; images and loss stay fp32).
    The model's parameters are frozen (and eval mode set) during, and restored after.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    targets = list(targets)
    if not targets:
        raise ValueError("no targets to visualize")
    for t in targets:
        t.check(model)
    order = sorted(range(len(targets)), key=lambda i: (targets[i].layer, targets[i].neuron, _patch_key(targets[i])))
    size = model.config.img_size
    images = torch.empty(len(targets), options.images_per_target, 3, size, size)
    history = torch.empty(len(targets), options.iterations)
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    bar = tqdm(total=len(chunks) * options.iterations, desc=f"featviz ({len(chunks)} batches)", unit="it",
               disable=not progress)
    with frozen(model), bar:
        for chunk in chunks:
            batch = [targets[i] for i in chunk]
            imgs, hist = _optimize_batch(model, batch, options, early_stop, amp, on_iteration=bar.update)
            images[chunk], history[chunk] = imgs, hist
            if on_batch is not None:
                on_batch(Visualizations(batch, imgs, hist))
    return Visualizations(targets, images, history)


@dataclass
class Rendered:
    """Optimised images of one composable objective."""

    objective: Objective
    images: torch.Tensor  # (images_per_target, 3, H, W) in [0, 1], float32 on the CPU
    history: torch.Tensor  # (iterations,): mean objective value (minus its loss) over the augmented images


def _optimize_objective(
    model: BViT, objective: Objective, o: FeatvizOptions, amp: bool, on_iteration: Callable[[], object] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The recipe of ``_optimize_batch`` for one objective: (images (n, 3, H, W), history (iterations,))."""
    ref = next(model.parameters())
    device, dtype = ref.device, ref.dtype
    cfg = model.config
    n, copies = o.images_per_target, o.transforms.copies
    gens = [torch.Generator().manual_seed(o.seed)]
    param = make_param(o.param, gens, n, cfg.img_size, device, dtype)
    augment = Augment(o.transforms, cfg.img_size)
    opt = torch.optim.Adam(param.parameters(), lr=o.lr, betas=o.betas, eps=o.eps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, o.lr_factor)
    history = torch.empty(o.iterations, device=device)
    for i in range(o.iterations):
        if on_iteration is not None:
            on_iteration()
        opt.zero_grad(set_to_none=True)
        images = param()
        x = normalize(augment(images, augment.draw(gens, n, i, o.iterations)), cfg)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            losses = evaluate(model, x, objective)
        per_image = losses.to(dtype).view(n, copies).mean(dim=1)
        loss = per_image.sum() + o.tv_weight * total_variation(images).sum()
        loss.backward()
        opt.step()
        sched.step()
        param.project_()
        history[i] = -per_image.detach().mean()
    with torch.no_grad():
        final = param().detach().float().cpu()
    return final, history.float().cpu()


def visualize_objective(
    model: BViT, objective: Objective, options: FeatvizOptions = FeatvizOptions(), amp: bool = False,
    progress: bool = False,
) -> Rendered:
    """Optimise ``images_per_target`` images for any composable objective (a head, a direction, a logit, sums...).

    A plain neuron objective takes the batched (neuron, step) path of ``visualize`` (same images
    and seeds); any other runs the same recipe with one generator seeded by ``options.seed``.
    Diversity is implemented on the batched neuron path only.
    """
    objective.check(model)
    if objective.target is not None:
        vis = visualize(model, [objective.target], options, progress=progress, amp=amp)
        return Rendered(objective, vis.images[0], vis.history[0])
    if options.diversity > 0 and options.images_per_target > 1:
        raise ValueError("diversity is implemented for neuron objectives only (the batched path)")
    bar = tqdm(total=options.iterations, desc=f"featviz {objective.name}", unit="it", disable=not progress)
    with frozen(model), bar:
        images, history = _optimize_objective(model, objective, options, amp, on_iteration=bar.update)
    return Rendered(objective, images, history)
