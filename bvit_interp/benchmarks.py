"""Side-by-side speed measurements (``bvit-interp bench ...``): ratios measured in one run, never asserted in tests."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
from PIL import Image

from .analysis.pointing import PointingOptions, score_model
from .analysis.sources import PointingItem
from .data.transforms import CropGeometry
from .model import BViT


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(variants: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds per call of each variant, measured round-robin so load changes hit all alike."""
    for fn in variants.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, float]]:
    """Peak accelerator memory (MiB) inside the block; on CPU reports NaN (use captured bytes)."""
    out = {"peak_mib": float("nan")}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    yield out
    if device.type == "cuda":
        out["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20


def bench_hooks(model: BViT, batch: int, repeats: int, device: torch.device) -> list[dict[str, object]]:
    """Images/s of the plain forward vs capturing CLS rows + resid_post vs capturing full patterns, every step."""
    model.eval().to(device)
    x = torch.randn(batch, 3, model.config.img_size, model.config.img_size, device=device)
    captured: dict[str, int] = {}

    def run(sites: list[str] | None, key: str) -> Callable[[], None]:
        @torch.no_grad()
        def fn() -> None:
            if sites is None:
                model(x)
                return
            with model.capture(sites) as cache:
                model(x)
            captured[key] = sum(cache[k].numel() * cache[k].element_size() for k in cache.keys())

        return fn

    variants = {
        "plain forward": run(None, "plain"),
        "capture attn.cls_pattern + resid_post": run(["attn.cls_pattern", "resid_post"], "cls"),
        "capture full attn.pattern": run(["attn.pattern"], "full"),
    }
    times = time_interleaved(variants, repeats, device)
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


def bench_train(model: BViT, batch: int, iters: int, device: torch.device) -> dict[str, float]:
    """Training images/s (forward + backward + AdamW step) on random data."""
    model.train().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, model.config.img_size, model.config.img_size, device=device)
    y = torch.randint(0, model.config.num_classes, (batch,), device=device)

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    t = time_interleaved({"train": step}, iters, device)["train"]
    return {"images_per_s": batch / t, "seconds_per_iteration": t}
