"""Activation patching: clean/corrupted end points, resumed = full forward, sweeps' shapes, validation."""

from __future__ import annotations

import pytest
import torch

from bvit_interp import build_model
from bvit_interp.model.patching import (
    Patch,
    logit_diff,
    patch_activations,
    patch_head_z,
    patch_resid,
    recovered,
    run_patched,
)


@pytest.fixture
def hybrid():
    """2 blocks x 2 steps with time embeddings: layers differ from steps."""
    torch.manual_seed(2)
    return build_model("bvit_micro", blocks=2, steps=2, time_embed=True).eval()


def _runs(model, n: int = 3):
    """Clean and corrupted images, their logits and caches of every block site needed here."""
    g = torch.Generator().manual_seed(5)
    clean_x, corrupt_x = torch.randn(2, n, 3, 16, 16, generator=g)
    sites = ["resid_pre", "resid_mid", "resid_post", "attn.z"]
    with torch.no_grad():
        with model.capture(sites) as clean:
            clean_logits = model(clean_x)
        with model.capture(sites) as corrupt:
            corrupt_logits = model(corrupt_x)
    return clean_x, corrupt_x, clean, corrupt, clean_logits, corrupt_logits


@pytest.mark.parametrize("which", ["micro", "hybrid"])
def test_clean_source_recovers_clean_and_corrupted_source_changes_nothing(micro_bvit, hybrid, which) -> None:
    model = micro_bvit if which == "micro" else hybrid
    _, corrupt_x, clean, corrupt, clean_logits, corrupt_logits = _runs(model)
    labels = clean_logits.argmax(-1)
    wrong = corrupt_logits.argmax(-1)
    metric = recovered(logit_diff(labels, torch.where(wrong == labels, (labels + 1) % model.config.num_classes, wrong)),
                       clean_logits, corrupt_logits)
    for site in ("resid_pre", "resid_mid", "resid_post"):
        for resume in (True, False):
            got = patch_resid(model, corrupt_x, clean, metric, site=site, resume=resume)
            torch.testing.assert_close(got, torch.ones(model.num_layers()), rtol=0, atol=1e-4)
            got = patch_resid(model, corrupt_x, corrupt, metric, site=site, resume=resume)
            torch.testing.assert_close(got, torch.zeros(model.num_layers()), rtol=0, atol=1e-4)
    # Logits level: the whole residual stream from the clean run gives the clean logits exactly.
    with torch.no_grad():
        for layer in range(model.num_layers()):
            patch = Patch("resid_pre", layer, clean["resid_pre", layer])
            full = run_patched(model, corrupt_x, [patch])[0]
            resumed = run_patched(model, corrupt["resid_pre", layer], [patch], start=layer)[0]
            torch.testing.assert_close(full, clean_logits, rtol=0, atol=1e-5)
            torch.testing.assert_close(resumed, clean_logits, rtol=0, atol=1e-5)
    # Every head patched with the corrupted run's own output: the corrupted logits, per head.
    same = patch_head_z(model, corrupt_x, corrupt, lambda logits: logits)
    assert same.shape == (model.num_layers(), 4, 3, model.config.num_classes)
    torch.testing.assert_close(same, corrupt_logits.expand_as(same), rtol=0, atol=1e-5)


@pytest.mark.parametrize("which", ["micro", "hybrid"])
def test_resumed_patch_equals_full_forward_with_the_same_hook(micro_bvit, hybrid, which) -> None:
    """Resuming from the captured resid_pre = a full forward with an independently written hook."""
    model = micro_bvit if which == "micro" else hybrid
    _, corrupt_x, clean, corrupt, _, _ = _runs(model)
    identity = lambda logits: logits  # noqa: E731
    resumed = patch_head_z(model, corrupt_x, clean, identity, tokens=["cls", "patches", 5])
    full = patch_head_z(model, corrupt_x, clean, identity, tokens=["cls", "patches", 5], resume=False)
    assert resumed.shape == (model.num_layers(), 4, 3, 3, model.config.num_classes)
    torch.testing.assert_close(resumed, full, rtol=0, atol=1e-5)
    npt = model.num_prefix_tokens
    tokens = {0: slice(0, 1), 1: slice(npt, None), 2: 5}
    with torch.no_grad():
        for layer in range(model.num_layers()):
            source = clean["attn.z", layer]
            for head in range(4):
                for g, tok in tokens.items():
                    def edit(z: torch.Tensor, head: int = head, tok: object = tok, source=source) -> torch.Tensor:
                        z = z.clone()
                        z[:, head, tok] = source[:, head, tok]
                        return z

                    with model.patch({model.hook_name("attn.z", layer): edit}):
                        reference = model(corrupt_x)
                    torch.testing.assert_close(resumed[layer, head, g], reference, rtol=0, atol=1e-5)
    # A cache given as resume, a layer subset and small stacked forwards give the same numbers.
    subset = patch_head_z(model, corrupt_x, clean, identity, layers=[1, 3], heads=[2], resume=corrupt, max_batch=3)
    full_heads = patch_head_z(model, corrupt_x, clean, identity)
    torch.testing.assert_close(subset[:, 0], full_heads[[1, 3], 2], rtol=0, atol=1e-5)


def test_constant_and_per_layer_sources(micro_bvit, micro_images) -> None:
    """Zero ablation = patching with 0.0; a per-layer mapping is used at its layer."""
    identity = lambda logits: logits  # noqa: E731
    zero = patch_head_z(micro_bvit, micro_images, 0.0, identity, layers=[2], heads=[1])[0, 0]
    with torch.no_grad(), micro_bvit.patch({"steps.2.attn.z": lambda z: z.index_fill(1, torch.tensor([1]), 0.0)}):
        reference = micro_bvit(micro_images)
    torch.testing.assert_close(zero, reference, rtol=0, atol=1e-5)
    means = {layer: torch.full((4, 19, 8), 0.5) for layer in range(4)}
    by_map = patch_activations(micro_bvit, micro_images, means, "attn.z", identity, heads=[0])
    by_fn = patch_activations(micro_bvit, micro_images, lambda layer: means[layer], "attn.z", identity, heads=[0])
    torch.testing.assert_close(by_map, by_fn, rtol=0, atol=0)
    with torch.no_grad(), micro_bvit.patch({"steps.3.attn.z": lambda z: z.index_fill(1, torch.tensor([0]), 0.5)}):
        reference = micro_bvit(micro_images)
    torch.testing.assert_close(by_map[3, 0], reference, rtol=0, atol=1e-5)


def test_patch_validation(micro_bvit, micro_images) -> None:
    resid = torch.zeros(3, 19, 32)
    for patch, match in [
        (Patch("attn.cls_pattern", 0, 0.0), "read-out"),
        (Patch("embed", 0, 0.0), "per-step site"),
        (Patch("resid_post", 0, 0.0, head=1), "no head axis"),
        (Patch("attn.z", 0, 0.0, head=4), "head 4 out of range"),
        (Patch("attn.z", 4, 0.0), "layer 4 out of range"),
    ]:
        with pytest.raises(ValueError, match=match):
            run_patched(micro_bvit, micro_images, [patch])
    with pytest.raises(ValueError, match="before the resumed layer"):
        run_patched(micro_bvit, resid, [Patch("attn.z", 1, 0.0)], start=2)
    with pytest.raises(ValueError, match="resid_pre / resid_mid / resid_post"):
        patch_resid(micro_bvit, micro_images, 0.0, lambda x: x, site="attn.z")
    assert not micro_bvit.hooks
