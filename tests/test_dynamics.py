"""Recurrent dynamics: PaCMAP trajectories, per-step readout (lens), early exit, step x head ablation, CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from bvit_interp import build_model, get_config, save_model
from bvit_interp.analysis import ablation as abl
from bvit_interp.analysis.early_exit import (
    ExitHeads,
    ce_auroc_loss,
    early_exit_forward,
    flops_per_image,
    threshold_sweep,
)
from bvit_interp.analysis.lens import lens_logits
from bvit_interp.analysis.states import cls_states
from bvit_interp.analysis.trajectories import knn_preservation, pacmap_embed
from bvit_interp.cli import main


@pytest.fixture(autouse=True)
def one_thread():
    """Micro models run fastest on one thread (and do not stall when other processes hold the cores).

    Per test, because importing numba / pacmap resets the OpenMP thread count torch shares.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def hybrid():
    """2 blocks x 2 steps with time embeddings: layers differ from steps."""
    torch.manual_seed(2)
    return build_model("bvit_micro", blocks=2, steps=2, time_embed=True).eval()


def manual_logits(model, x: torch.Tensor, steps: int, skip_layer: int | None = None) -> torch.Tensor:
    """Independent unrolled forward with timm blocks: block l % B, then the time embedding after each step."""
    cfg = model.config
    h = model._pos_embed(model.patch_embed(x))
    for t in range(steps):
        for b in range(cfg.blocks):
            if t * cfg.blocks + b != skip_layer:
                h = model.blocks[b](h)
        if model.time_embed is not None:
            h = h + model.time_embed[min(t, cfg.steps - 1)]
    return model.head(model.norm(h)[:, 0])


# ----------------------------------------------------------------------------- trajectories
def test_pacmap_reproducible_for_a_seed() -> None:
    """Same seed -> identical embedding, whatever numba's thread count or other estimators in between."""
    import numba
    import pacmap

    x = np.random.default_rng(0).normal(size=(150, 24)).astype(np.float32)
    a = pacmap_embed(x, seed=3)
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        pacmap.PaCMAP(random_state=99)  # moves pacmap's module-global seed
        np.random.seed(123)
        before = np.random.get_state()[1].copy()
        torch_threads = torch.get_num_threads()
        b = pacmap_embed(x, seed=3)
        assert np.array_equal(np.random.get_state()[1], before), "global NumPy RNG must be restored"
        assert torch.get_num_threads() == torch_threads, "torch's OpenMP threads must be restored"
    finally:
        numba.set_num_threads(threads)
    c = pacmap_embed(x, seed=4)
    assert a.shape == (150, 2)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_knn_preservation_bounds() -> None:
    x = np.random.default_rng(1).normal(size=(60, 5))
    assert knn_preservation(x, x, k=5).min() == 1.0
    shuffled = x[np.random.default_rng(2).permutation(60)]
    assert knn_preservation(x, shuffled, k=5).mean() < 0.4


# ----------------------------------------------------------------------------- lens
def test_readout_matches_model_for_every_step(micro_bvit, micro_images, hybrid) -> None:
    """Readout of layer l = model(x, steps=...) for every step up to 2T; the step-T readout = the logits."""
    with torch.no_grad():
        for model in (micro_bvit, hybrid):
            t, blocks = model.config.steps, model.config.blocks
            logits = lens_logits(model, micro_images, 2 * t)
            assert logits.shape[0] == 2 * t * blocks
            torch.testing.assert_close(logits[t * blocks - 1], model(micro_images), rtol=0, atol=1e-6)
            for k in range(1, 2 * t + 1):
                torch.testing.assert_close(logits[k * blocks - 1], model(micro_images, steps=k), rtol=0, atol=1e-6)


def test_steps_beyond_horizon_match_manual_block(micro_bvit, micro_images, hybrid) -> None:
    """model(x, steps=T+k) = applying the block k more times by hand (last time embedding reused)."""
    with torch.no_grad():
        for model in (micro_bvit, hybrid):
            t = model.config.steps
            for k in (0, 1, 3):
                torch.testing.assert_close(
                    model(micro_images, steps=t + k), manual_logits(model, micro_images, t + k), rtol=1e-5, atol=1e-5
                )
                states = cls_states(model, micro_images, t + k)
                assert states.shape == (model.num_layers(t + k), len(micro_images), model.config.embed_dim)


# ----------------------------------------------------------------------------- ablation
def test_ablation_of_nothing_changes_nothing(micro_bvit, micro_images) -> None:
    with torch.no_grad(), micro_bvit.capture("resid_pre") as cache:
        clean = micro_bvit(micro_images)
    for layer in range(micro_bvit.num_layers()):
        out = abl.resume_ablated(micro_bvit, cache["resid_pre", layer], layer, [("none", 0)])
        torch.testing.assert_close(out[0], clean, rtol=0, atol=1e-5)
    loader = [(micro_images, torch.tensor([0, 1, 2]))]
    heads, steps, summary = abl.ablate(micro_bvit, loader, abl.AblationOptions(modes=("none",), skip_steps=False))
    assert len(steps) == 0 and len(heads) == 4 * 4
    assert heads["drop"].abs().max() == 0
    assert heads["ce_increase"].abs().max() < 1e-5


def test_fast_ablation_equals_naive(micro_bvit, micro_images, hybrid) -> None:
    """Resumed, batched variants = one full forward per variant, for every layer and variant."""
    torch.manual_seed(0)
    x = torch.randn(6, 3, 16, 16)
    loader = [(x[:4], torch.tensor([0, 1, 2, 3])), (x[4:], torch.tensor([4, 0]))]
    options = abl.AblationOptions(modes=("zero", "mean"), max_batch=12)
    for model in (micro_bvit, hybrid):
        fast_heads, fast_steps, fast_sum = abl.ablate(model, loader, options)
        slow_heads, slow_steps, slow_sum = abl.ablate(model, loader, options, naive=True)
        pd.testing.assert_frame_equal(fast_heads.drop(columns=["ce", "ce_increase"]),
                                      slow_heads.drop(columns=["ce", "ce_increase"]))
        np.testing.assert_allclose(fast_heads["ce"], slow_heads["ce"], atol=1e-5)
        np.testing.assert_allclose(fast_steps["ce"], slow_steps["ce"], atol=1e-5)
        assert fast_heads.shape[0] == model.num_layers() * 4 * 2
        # Logits level, including an independent check of the skip against a hand-written forward.
        means = abl.head_means(model, loader)
        with torch.no_grad(), model.capture("resid_pre") as cache:
            model(x)
        variants = abl.variants_for(4, options)
        for layer in range(model.num_layers()):
            fast = abl.resume_ablated(model, cache["resid_pre", layer], layer, variants, means[layer])
            for v, variant in enumerate(variants):
                torch.testing.assert_close(fast[v], abl.naive_ablated(model, x, layer, variant, means[layer]),
                                           rtol=0, atol=1e-5)
            with torch.no_grad():
                skipped = manual_logits(model, x, model.config.steps, skip_layer=layer)
            torch.testing.assert_close(fast[-1], skipped, rtol=1e-5, atol=1e-5)


def test_skipping_any_step_of_one_shared_block_is_running_one_step_less(micro_images) -> None:
    """Without time embeddings, a 1-block bViT with step t skipped applies the same block T-1 times, for every t."""
    torch.manual_seed(0)
    model = build_model("bvit_micro", reg_tokens=2, time_embed=False).eval()
    with torch.no_grad():
        with model.capture("resid_pre") as cache:
            model(micro_images)
        shorter = model(micro_images, steps=model.config.steps - 1)
    for layer in range(model.num_layers()):
        skipped = abl.resume_ablated(model, cache["resid_pre", layer], layer, [("skip", 0)])[0]
        torch.testing.assert_close(skipped, shorter, rtol=1e-5, atol=1e-5)


def test_zero_ablation_removes_the_heads_contribution(micro_bvit, micro_images) -> None:
    """Zeroing head h of attn.z = zeroing that head's input columns of attn.proj at that step."""
    layer, head, dh = 2, 1, micro_bvit.config.head_dim
    with torch.no_grad(), micro_bvit.capture("resid_pre") as cache:
        micro_bvit(micro_images)
    out = abl.resume_ablated(micro_bvit, cache["resid_pre", layer], layer, [("zero", head)])[0]
    proj = micro_bvit.blocks[0].attn.proj
    weight = proj.weight.detach().clone()
    cut = weight.clone()
    cut[:, head * dh : (head + 1) * dh] = 0
    with torch.no_grad():
        h = cache["resid_pre", layer]
        proj.weight.copy_(cut)
        h = micro_bvit.layer(h, layer)
        proj.weight.copy_(weight)
        for t in range(layer + 1, micro_bvit.num_layers()):
            h = micro_bvit.layer(h, t)
        ref = micro_bvit.forward_head(micro_bvit.norm(h))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- early exit
def test_early_exit_threshold_one_is_the_full_model(micro_bvit, micro_images, hybrid) -> None:
    for model in (micro_bvit, hybrid):
        heads = ExitHeads(model, [0, 1, 2])
        with torch.no_grad():
            for p in heads.parameters():  # exit heads that differ from the final head
                p.add_(0.3 * torch.randn_like(p))
            logits, step = early_exit_forward(model, heads, micro_images, 1.0)
            torch.testing.assert_close(logits, model(micro_images), rtol=0, atol=1e-6)
            assert (step == model.num_layers()).all()
            # threshold 0: everything leaves at the first exit with that exit's logits
            logits0, step0 = early_exit_forward(model, heads, micro_images, 0.0)
            assert (step0 == 1).all()
            torch.testing.assert_close(logits0, heads(cls_states(model, micro_images)[0], 0))
        loader = [(micro_images, torch.tensor([0, 1, 2]))]
        sweep, dist = threshold_sweep(model, heads, loader, (0.0, 1.0))
        full, never = sweep[sweep["no_exit"]].iloc[0], sweep[sweep["threshold"] == 1.0].iloc[0]
        assert never["accuracy"] == full["accuracy"] and never["mean_steps"] == model.num_layers()
        assert sweep[sweep["threshold"] == 0.0]["mean_steps"].iloc[0] == 1


def test_ce_auroc_loss_matches_hand_computation() -> None:
    logits = torch.tensor([[3.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.5, 0.0]])
    labels = torch.tensor([0, 1, 1, 1])  # correct: 0, 1; wrong: 2, 3
    conf = logits.softmax(-1).max(-1).values
    pairs = torch.sigmoid(2.0 * (conf[[2, 3]][None, :] - conf[[0, 1]][:, None])).mean()
    expected = torch.nn.functional.cross_entropy(logits, labels) + 0.5 * pairs
    torch.testing.assert_close(ce_auroc_loss(logits, labels, 0.5, 2.0), expected)
    all_right = torch.tensor([0, 1, 0, 0])
    torch.testing.assert_close(ce_auroc_loss(logits, all_right), torch.nn.functional.cross_entropy(logits, all_right))


def test_flops_reproduce_paper_table5() -> None:
    """Linear layers only, 2 FLOPs per MAC: ViT-B/16 at 224 px is the 33.70 GFLOPs of Table 5."""
    cfg = get_config("vit_b")
    assert round(flops_per_image(cfg, include_attention=False) / 1e9, 2) == 33.70
    assert flops_per_image(cfg) == flops_per_image(cfg, include_attention=False)  # the paper's convention by default
    assert round(flops_per_image(cfg, include_attention=True) / 1e9, 1) == 35.1
    assert flops_per_image(get_config("bvit_b"), include_attention=False) == flops_per_image(cfg, include_attention=False)


def test_early_exit_defaults_are_the_papers() -> None:
    """50 epochs of exit-head training (App. B) and GFLOPs without the attention matmuls (Table 5), in the API and CLI."""
    import argparse

    from bvit_interp.analysis.early_exit import EarlyExitOptions, layer_flops
    from bvit_interp.commands.early_exit import add_parser

    options = EarlyExitOptions()
    assert options.epochs == 50 and options.include_attention is False
    cfg = get_config("vit_b")
    assert layer_flops(cfg) == layer_flops(cfg, include_attention=False)
    parser = argparse.ArgumentParser()
    add_parser(parser)
    args = parser.parse_args([])
    assert args.epochs == 50 and args.include_attention is False
    assert parser.parse_args(["--include-attention"]).include_attention is True


# ----------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A micro bViT (time embeddings) and a micro ViT, 10 classes for the shapes data."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    save_model(build_model("bvit_micro", num_classes=10, time_embed=True), root / "bvit_m")
    save_model(build_model("bvit_micro", num_classes=10, blocks=4, steps=1, name="vit_m"), root / "vit_m")
    return [str(root / "bvit_m"), str(root / "vit_m")]


@pytest.mark.parametrize(("command", "extra", "tables", "figures"), [
    ("lens", [], ["lens", "predictions"], ["lens"]),
    ("trajectories", [], ["points", "centroids", "step_stats"], ["classes_bvit_m", "centroids_vit_m"]),
    ("ablate", ["--modes", "zero,mean"], ["head_ablation", "step_ablation"], ["ablation_bvit_m"]),
    ("early-exit", ["--train-limit", "24", "--epochs", "2", "--thresholds", "0.5,1.0"],
     ["sweep", "exits", "distribution", "history"], ["tradeoff", "exits_vit_m"]),
])
def test_cli_end_to_end(tmp_path, checkpoints, capsys, command, extra, tables, figures) -> None:
    out = tmp_path / command
    argv = [command, "--model", checkpoints[0], "--model", checkpoints[1], "--limit", "12", "--batch-size", "8",
            "--device", "cpu", "--out", str(out), *extra]
    assert main(argv) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "complete" and [m["name"] for m in meta["models"]] == ["bvit_m", "vit_m"]
    for name in tables:
        df = pd.read_parquet(out / f"{name}.parquet")
        assert set(df["model"]) == {"bvit_m", "vit_m"}
    for name in figures:
        assert (out / f"{name}.png").stat().st_size > 0
    assert str(out) in capsys.readouterr().out
    if command == "lens":
        lens = pd.read_parquet(out / "lens.parquet")
        assert lens.groupby("model")["step"].max().to_dict() == {"bvit_m": 8, "vit_m": 4}
        assert main(argv) == 2  # a finished run is not overwritten without --force
