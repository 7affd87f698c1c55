"""Side-by-side speed measurements (``bvit-interp bench ...``): ratios measured in one run, never asserted in tests."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader, Dataset

from .analysis.featviz.objectives import Target
from .analysis.pointing import PointingOptions, score_model
from .analysis.sources import PointingItem, PointingSource
from .data.imagenet_s import SampleError, encode_mask
from .data.transforms import CropGeometry
from .model import BViT, BViTConfig


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_rounds(
    variants: dict[str, Callable[[], object]],
    repeats: int,
    device: torch.device,
    budget_s: float | None = None,
    warmups: dict[str, Callable[[], object]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, list[float]]:
    """Seconds of every timed call per variant, round-robin; at least one round, fewer than ``repeats`` when
    the next round would end past ``budget_s`` (counted from the start, warm-up included).

    ``progress`` receives a line after the warm-up and after every round.
    """
    say = progress or (lambda _line: None)
    start = time.perf_counter()
    for name, fn in variants.items():  # warm-up (a cheaper stand-in where ``warmups`` names one)
        (warmups or {}).get(name, fn)()
    _sync(device)
    say(f"warm-up {time.perf_counter() - start:.1f} s; timing round-robin: {' | '.join(variants)}")
    times: dict[str, list[float]] = {k: [] for k in variants}
    rounds = max(1, repeats)
    for r in range(rounds):
        round_start = time.perf_counter()
        for name, fn in variants.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
        now = time.perf_counter()
        say(f"round {r + 1}/{rounds}: " + ", ".join(f"{v[-1]:.4g}" for v in times.values()) + " s")
        if budget_s is not None and r + 1 < rounds and (now - start) + (now - round_start) > budget_s:
            say(f"time budget {budget_s:.0f} s reached after {r + 1} rounds")
            break
    return times


def time_interleaved(
    variants: dict[str, Callable[[], object]],
    repeats: int,
    device: torch.device,
    budget_s: float | None = None,
    warmups: dict[str, Callable[[], object]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """Median seconds per call of each variant, measured round-robin so load changes hit all alike."""
    rounds = time_rounds(variants, repeats, device, budget_s, warmups, progress)
    return {k: float(np.median(v)) for k, v in rounds.items()}


def _autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager[object]:
    """bf16 autocast on ``device`` when ``amp`` (a no-op context otherwise)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp)


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, float]]:
    """Peak accelerator memory (MiB) inside the block; on CPU reports NaN (use captured bytes)."""
    out = {"peak_mib": float("nan")}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    yield out
    if device.type == "cuda":
        out["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20


def bench_hooks(
    model: BViT, batch: int, repeats: int, device: torch.device, amp: bool = False, budget_s: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, object]]:
    """Images/s of the plain forward vs capturing CLS rows + resid_post vs capturing full patterns, every step.

    ``amp`` runs every variant under bf16 autocast; peak memory (CUDA) is taken in one extra call per variant.
    """
    model.eval().to(device)
    x = torch.randn(batch, 3, model.config.img_size, model.config.img_size, device=device)
    captured: dict[str, int] = {}

    def run(sites: list[str] | None, key: str) -> Callable[[], None]:
        @torch.no_grad()
        def fn() -> None:
            if sites is None:
                with _autocast(device, amp):
                    model(x)
                return
            with model.capture(sites) as cache, _autocast(device, amp):
                model(x)
            captured[key] = sum(cache[k].numel() * cache[k].element_size() for k in cache.keys())

        return fn

    variants = {
        "plain forward": run(None, "plain"),
        "capture attn.cls_pattern + resid_post": run(["attn.cls_pattern", "resid_post"], "cls"),
        "capture full attn.pattern": run(["attn.pattern"], "full"),
    }
    rounds = time_rounds(variants, repeats, device, budget_s, progress=progress)
    times = {k: float(np.median(v)) for k, v in rounds.items()}
    rows = []
    base = times["plain forward"]
    for (name, t), key in zip(times.items(), ("plain", "cls", "full"), strict=True):
        with peak_memory(device) as mem:
            variants[name]()
        rows.append({
            "variant": name,
            "images_per_s": batch / t,
            "time_ratio_vs_plain": t / base,
            "captured_mib_per_batch": captured.get(key, 0) / 2**20,
            "peak_mib": mem["peak_mib"],
            "seconds_per_batch": t,
            "repeats": len(rounds[name]),
        })
    return rows


class RandomSource:
    """Random images with a random rectangular target mask (for timing only)."""

    description = "random images"

    def __init__(self, n: int, size: int, seed: int = 0) -> None:
        self.n, self.size, self.seed = n, size, seed
        self.categories = ["n00000000"]

    def __len__(self) -> int:
        return self.n

    def name(self, index: int) -> str:
        return f"random_{index}"

    def load(self, index: int) -> PointingItem:
        rng = np.random.default_rng([self.seed, index])
        img = rng.integers(0, 255, (self.size, self.size, 3), dtype=np.uint8)
        mask = np.zeros((self.size, self.size), np.int32)
        a, b = sorted(rng.integers(0, self.size, 2))
        mask[a : b + 1, a : b + 1] = 1
        return PointingItem(Image.fromarray(img), mask, 1, 0, "n00000000", self.name(index))


def bench_pointing(model: BViT, source, n_images: int, batch: int, repeats: int, device: torch.device, workers: int = 0) -> list[dict[str, object]]:
    """Images/s of the plain forward (tensors ready), the same forward with image loading and preprocessing,
    the full scoring pipeline (loading, masks and scoring included) and explicit full attention."""
    model.eval().to(device)
    cfg = model.config
    indices = list(range(n_images))
    from .analysis.pointing import prepare_image

    opts = PointingOptions()
    tensors = torch.stack([prepare_image(i, source, model.config, opts).tensor for i in indices]).to(device)

    @torch.no_grad()
    def plain() -> None:
        for s in range(0, n_images, batch):
            model.forward_features(tensors[s : s + batch])

    def pipeline() -> None:
        score_model(model, source, opts, indices, batch, workers, device, progress=False)

    @torch.no_grad()
    def loading_and_forward() -> None:
        """Plain inference over the same source: read + resize/crop/normalise each image, then forward."""
        for s in range(0, n_images, batch):
            xs = []
            for i in indices[s : s + batch]:
                image = source.load(i).image
                xs.append(CropGeometry(*image.size, cfg.img_size, cfg.crop_pct).apply(image, cfg.mean, cfg.std))
            model.forward_features(torch.stack(xs).to(device))

    @torch.no_grad()
    def explicit() -> None:
        for s in range(0, n_images, batch):
            with model.capture("attn.pattern", tokens=slice(0, 1)) as cache:
                model.forward_features(tensors[s : s + batch])
            for layer in cache.layers("attn.pattern"):
                cache["attn.pattern", layer][:, :, 0].argmax(-1)

    times = time_interleaved({"plain forward": plain, "plain forward + loading": loading_and_forward,
                              "scoring pipeline": pipeline, "explicit full attention": explicit}, repeats, device)
    base, loaded = times["plain forward"], times["plain forward + loading"]
    return [{"variant": k, "images_per_s": n_images / t, "time_ratio_vs_plain": t / base,
             "time_ratio_vs_loading": t / loaded} for k, t in times.items()]


def bench_train(
    model: BViT, batch: int, iters: int, device: torch.device, amp: bool = False, budget_s: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """Training images/s (forward + backward + AdamW step) on random data; ``amp``: bf16 autocast forward."""
    model.train().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, model.config.img_size, model.config.img_size, device=device)
    y = torch.randint(0, model.config.num_classes, (batch,), device=device)

    def step() -> None:
        with _autocast(device, amp):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    with peak_memory(device) as mem:
        rounds = time_rounds({"train": step}, iters, device, budget_s, progress=progress)["train"]
    t = float(np.median(rounds))
    return {"images_per_s": batch / t, "seconds_per_iteration": t, "peak_mib": mem["peak_mib"], "iterations": len(rounds)}


def _bare_train_rate(model: BViT, shapes, iters: int, batch: int, start: int) -> float:
    """Images/s of a minimal loop over fresh shapes images: render, normalise, forward, CE, backward, clip, AdamW."""
    from .data.shapes import render_sample

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=7e-4, weight_decay=0.05)
    mean = torch.tensor(model.config.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.config.std).view(1, 3, 1, 1)
    t0 = time.perf_counter()
    for it in range(iters):
        samples = [render_sample(shapes, "train", start + it * batch + i) for i in range(batch)]
        x = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).float().div_(255.0)
        y = torch.tensor([s.label for s in samples])
        loss = torch.nn.functional.cross_entropy(model((x - mean) / std), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return iters * batch / (time.perf_counter() - t0)


def bench_train_loop(
    model: str = "bvit_tiny", overrides: dict[str, object] | None = None, shapes_version: int = 0,
    batch: int = 64, iters: int = 20, rounds: int = 3,
) -> list[dict[str, object]]:
    """The project's ``train()`` (shapes recipe: transforms, EMA, label smoothing, clipping, schedule) vs a bare
    loop on the same fresh shapes stream, alternating rounds so that load changes hit both; training part only."""
    import io
    import tempfile

    from .data.shapes import ShapesConfig
    from .model import build_model
    from .model.config import get_config
    from .train import TrainConfig, train

    overrides = {"num_classes": 10, **(overrides or {})}
    shapes = ShapesConfig.preset(shapes_version, img_size=get_config(model, **overrides).img_size)
    rates: dict[str, list[float]] = {"project train()": [], "bare loop": []}
    for r in range(rounds):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = TrainConfig(model=model, out=tmp, force=True, epochs=1, batch_size=batch, shapes_train_size=iters * batch,
                              shapes_version=shapes_version, shapes_img_size=shapes.img_size, val_limit=batch, seed=r,
                              model_overrides=overrides)
            with contextlib.redirect_stderr(io.StringIO()):
                train(cfg)
            history = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
        rates["project train()"].append(history[-1]["images_per_s"])
        torch.manual_seed(r)
        rates["bare loop"].append(_bare_train_rate(build_model(model, **overrides), shapes, iters, batch, r * iters * batch))
    bare = float(np.median(rates["bare loop"]))
    return [{"variant": k, "images_per_s": float(np.median(v)), "time_ratio_vs_bare": bare / float(np.median(v)),
             "rounds": len(v)} for k, v in rates.items()]


# ----------------------------------------------------------------------------- feature visualization
def spread_targets(model: BViT, k: int, seed: int = 0) -> list[Target]:
    """K (neuron, step) targets with steps evenly spread over 1..T and distinct random neurons (seeded)."""
    hidden = model.blocks[0].mlp.fc1.out_features
    steps = np.linspace(1, model.num_layers(), k).round().astype(int)
    neurons = np.random.default_rng(seed).choice(hidden, size=k, replace=False)
    return [Target(int(n), int(s)) for n, s in zip(neurons, steps, strict=True)]


def bench_featviz_batching(
    model: BViT,
    ks: Sequence[int],
    iterations: int,
    copies: int,
    repeats: int,
    device: torch.device,
    amp: bool = False,
    singles: int = 4,
    budget_s: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, object]]:
    """Seconds per (neuron, step) target when K targets share one batch, for each K in ``ks``.

    K = 1 optimises ``singles`` targets (steps spread over 1..T) one after the other; K > 1
    optimises K spread targets in one batch (early stopping at the batch's largest step, as
    ``visualize`` does by default). The speed-up is per target against K = 1 (or the smallest K).
    """
    from .analysis.featviz import FeatvizOptions, TransformOptions, visualize

    model.eval().to(device)
    transforms = TransformOptions(copies=copies)
    options = FeatvizOptions(iterations=iterations, transforms=transforms)
    warm = FeatvizOptions(iterations=1, transforms=transforms)
    counts = {k: singles if k == 1 else k for k in ks}
    targets = {k: spread_targets(model, counts[k]) for k in ks}

    def run(k: int, opts: FeatvizOptions) -> Callable[[], None]:
        def fn() -> None:
            for chunk in [targets[k]] if k > 1 else [[t] for t in targets[k]]:
                visualize(model, chunk, opts, batch_size=len(chunk), amp=amp)

        return fn

    names = {k: f"K={k}" for k in ks}
    variants = {names[k]: run(k, options) for k in ks}
    warmups = {names[k]: run(k, warm) for k in ks}
    rounds = time_rounds(variants, repeats, device, budget_s, warmups, progress)
    per_target = {k: float(np.median(rounds[names[k]])) / counts[k] for k in ks}
    base = per_target[min(ks)]
    rows = []
    for k in ks:
        with peak_memory(device) as mem:
            run(k, warm)()
        rows.append({
            "variant": names[k], "K": k, "targets_timed": counts[k], "iterations": iterations, "copies": copies,
            "seconds_per_target": per_target[k], "seconds_per_target_iteration": per_target[k] / iterations,
            "speedup_per_target_vs_smallest_k": base / per_target[k],
            "mean_step": float(np.mean([t.step for t in targets[k]])),
            "peak_mib_one_iteration": mem["peak_mib"], "repeats": len(rounds[names[k]]),
        })
    return rows


# ----------------------------------------------------------------------------- synthetic ImageNet-S
SYNTHETIC_MARKER = "synthetic_imagenet_s.json"


def _synthetic_sample(job: tuple[str, int, int, int, int, int]) -> None:
    """Write one non-square JPEG (smooth background, texture noise, an ellipse) and its PNG mask."""
    root, index, class_id, seed, min_side, max_side = job
    rng = np.random.default_rng([seed, index])
    long_side = int(rng.integers(min_side, max_side + 1))
    short_side = max(2, int(round(long_side * rng.uniform(0.6, 0.85))))
    w, h = (long_side, short_side) if rng.random() < 0.7 else (short_side, long_side)
    background = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((w, h), Image.BILINEAR)
    pixels = np.asarray(background, dtype=np.float32) + rng.normal(0.0, 10.0, (h, w, 3)).astype(np.float32)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    # the object's centre lies in the central half, so part of it is inside any centre crop
    cx, cy = rng.uniform(0.35, 0.65) * w, rng.uniform(0.35, 0.65) * h
    rx, ry = rng.uniform(0.12, 0.35) * w, rng.uniform(0.12, 0.35) * h
    box = (cx - rx, cy - ry, cx + rx, cy + ry)
    ImageDraw.Draw(image).ellipse(box, fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    ids = Image.new("L", (w, h), 0)
    ImageDraw.Draw(ids).ellipse(box, fill=1)
    mask = np.asarray(ids, dtype=np.int32) * class_id
    wnid = synthetic_wnid(class_id - 1)
    name = f"ILSVRC2012_val_{index + 1:08d}"
    image.save(Path(root) / "validation" / wnid / f"{name}.JPEG", format="JPEG", quality=90)
    Image.fromarray(encode_mask(mask)).save(Path(root) / "validation-segmentation" / wnid / f"{name}.png", format="PNG")


def synthetic_wnid(label: int) -> str:
    """A made-up wnid for class ``label`` (sorted like the labels)."""
    return f"n9{label:07d}"


def make_synthetic_imagenet_s(
    root: str | Path, n_images: int, n_classes: int = 50, sides: tuple[int, int] = (333, 500), seed: int = 0,
    workers: int = 0,
) -> tuple[Path, bool]:
    """Write (or reuse) an ImageNet-S-layout root of ``n_images`` synthetic non-square JPEGs with PNG masks.

    Longer sides are drawn from ``sides`` (ImageNet validation images are mostly 500 x 333..375).
    Returns (root, reused): a root whose marker file records the same parameters is reused as is.
    """
    root = Path(root)
    params = {"n_images": n_images, "n_classes": n_classes, "sides": list(sides), "seed": seed, "version": 1}
    marker = root / SYNTHETIC_MARKER
    if marker.is_file() and json.loads(marker.read_text()) == params:
        return root, True
    if marker.is_file():
        marker.unlink()
    for folder in ("validation", "validation-segmentation"):
        shutil.rmtree(root / folder, ignore_errors=True)
        for label in range(n_classes):
            (root / folder / synthetic_wnid(label)).mkdir(parents=True, exist_ok=True)
    (root / f"ImageNetS_categories_im{n_classes}.txt").write_text(
        "\n".join(synthetic_wnid(label) for label in range(n_classes)) + "\n"
    )
    jobs = [(str(root), i, i % n_classes + 1, seed, sides[0], sides[1]) for i in range(n_images)]
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            list(pool.map(_synthetic_sample, jobs, chunksize=max(1, n_images // (8 * workers))))
    else:
        for job in jobs:
            _synthetic_sample(job)
    marker.write_text(json.dumps(params))
    return root, False


# ----------------------------------------------------------------------------- pointing game over a loader
def _as_list(batch: list[object]) -> list[object]:
    """Collate to a plain list (the scorer's collate: tensors are stacked in the main process)."""
    return batch


class _ImageOnly(Dataset):
    """Plain inference's loader: decode the image, resize + centre crop + normalise (no mask)."""

    def __init__(self, source: PointingSource, indices: Sequence[int], config: BViTConfig) -> None:
        self.source, self.indices, self.config = source, list(indices), config

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> torch.Tensor:
        index, cfg = self.indices[i], self.config
        samples = getattr(getattr(self.source, "dataset", None), "samples", None)
        if samples is not None:  # an ImageNet-S root: read the JPEG alone
            with Image.open(samples[index].image_path) as im:
                image = im.convert("RGB")
        else:
            image = self.source.load(index).image
        return CropGeometry(*image.size, cfg.img_size, cfg.crop_pct).apply(image, cfg.mean, cfg.std)


class _PreparedOnly(Dataset):
    """The scorer's per-image work (image, mask, distance map) without the scoring: its input tensor."""

    def __init__(self, source: PointingSource, indices: Sequence[int], config: BViTConfig, options: PointingOptions) -> None:
        self.source, self.indices, self.config, self.options = source, list(indices), config, options

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> torch.Tensor | None:
        from .analysis.pointing import prepare_image

        try:
            return prepare_image(self.indices[i], self.source, self.config, self.options).tensor
        except SampleError:
            return None


def bench_pointing_loader(
    model: BViT,
    source: PointingSource,
    n_images: int,
    batch: int,
    workers: int,
    repeats: int,
    device: torch.device,
    amp: bool = False,
    budget_s: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, object]]:
    """Images/s of the whole scorer (``score_model``) vs plain inference over a loader of the same images.

    Every loader variant uses the scorer's loader settings (``workers`` processes, ``batch`` images,
    list collate, stacking and a blocking copy to ``device`` in the main process) and its autocast
    (``amp``); plain inference fetches each batch's predicted classes like an accuracy pass. Also
    times the forward alone on a resident random batch (the accelerator's ceiling). Warm-up passes
    cover two batches; every timed pass starts its own loader workers, as each scorer call does.
    """
    model.eval().to(device)
    cfg = model.config
    indices = list(range(n_images))
    warm_indices = indices[: min(n_images, 2 * batch)]
    opts = PointingOptions()

    @torch.no_grad()
    def infer(dataset: Dataset) -> None:
        loader = DataLoader(dataset, batch_size=batch, num_workers=workers, collate_fn=_as_list)
        for items in loader:
            tensors = [t for t in items if t is not None]
            if not tensors:
                continue
            x = torch.stack(tensors).to(device)
            with torch.autocast(device_type=device.type, enabled=amp):
                logits = model.forward_head(model.forward_features(x))
            logits.argmax(dim=-1).cpu()

    x_resident = torch.randn(batch, 3, cfg.img_size, cfg.img_size, device=device)

    @torch.no_grad()
    def forward_only(count: int) -> None:
        for s in range(0, count, batch):
            with torch.autocast(device_type=device.type, enabled=amp):
                logits = model.forward_head(model.forward_features(x_resident[: min(batch, count - s)]))
            logits.argmax(dim=-1).cpu()

    def scorer(idx: list[int]) -> None:
        score_model(model, source, opts, idx, batch, workers, device, amp=amp, progress=False)

    names = {
        "forward": "forward only (resident random batch, no loading)",
        "image": "plain inference (image loader)",
        "prepared": "plain inference (scorer's per-image work: image + mask + distance map)",
        "scorer": "scoring pipeline (score_model)",
    }
    variants = {
        names["forward"]: lambda: forward_only(n_images),
        names["image"]: lambda: infer(_ImageOnly(source, indices, cfg)),
        names["prepared"]: lambda: infer(_PreparedOnly(source, indices, cfg, opts)),
        names["scorer"]: lambda: scorer(indices),
    }
    warmups = {
        names["forward"]: lambda: forward_only(len(warm_indices)),
        names["image"]: lambda: infer(_ImageOnly(source, warm_indices, cfg)),
        names["prepared"]: lambda: infer(_PreparedOnly(source, warm_indices, cfg, opts)),
        names["scorer"]: lambda: scorer(warm_indices),
    }
    rounds = time_rounds(variants, repeats, device, budget_s, warmups, progress)
    times = {k: float(np.median(v)) for k, v in rounds.items()}
    plain, prepared = times[names["image"]], times[names["prepared"]]
    return [{
        "variant": name, "images_per_s": n_images / t, "seconds_per_pass": t,
        "time_ratio_vs_plain_inference": t / plain, "time_ratio_vs_scorer_loader": t / prepared,
        "images": n_images, "batch": batch, "workers": workers, "repeats": len(rounds[name]),
    } for name, t in times.items()]
