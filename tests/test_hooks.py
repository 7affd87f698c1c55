"""Hook semantics: one entry per (site, step), CLS row = full pattern row, patch locality, cleanup."""

from __future__ import annotations

import pytest
import torch

from bvit_interp import build_model
from bvit_interp.model import BLOCK_SITES


def test_plain_forward_equals_hooked_forward(micro_bvit, micro_images) -> None:
    """Capturing every site (forcing the decomposed path) does not change the logits."""
    with torch.no_grad():
        plain = micro_bvit(micro_images)
        with micro_bvit.capture(list(BLOCK_SITES) + ["embed", "final"]) as cache:
            hooked = micro_bvit(micro_images)
    torch.testing.assert_close(hooked, plain, rtol=1e-5, atol=1e-6)
    assert len(cache) == 4 * len(BLOCK_SITES) + 2


def test_one_entry_per_step_and_distinct(micro_bvit, micro_images) -> None:
    with torch.no_grad(), micro_bvit.capture("resid_post") as cache:
        micro_bvit(micro_images)
    assert cache.layers("resid_post") == [0, 1, 2, 3]
    stacked = cache.stack("resid_post")
    assert stacked.shape == (4, 3, 1 + 2 + 16, 32)
    assert not torch.allclose(stacked[0], stacked[3])
    # Next step's resid_pre = this step's resid_post + time embedding.
    with torch.no_grad(), micro_bvit.capture(["resid_pre", "resid_post"]) as cache2:
        micro_bvit(micro_images)
    te = micro_bvit.time_embed
    torch.testing.assert_close(cache2["resid_pre", 2], cache2["resid_post", 1] + te[1])
    assert cache2["steps.2.resid_pre"] is cache2["resid_pre", 2]


def test_cls_pattern_equals_row_of_full_pattern(micro_bvit, micro_images) -> None:
    with torch.no_grad(), micro_bvit.capture("attn.cls_pattern") as fused:
        micro_bvit(micro_images)
    with torch.no_grad(), micro_bvit.capture(["attn.pattern", "attn.cls_pattern"]) as full:
        micro_bvit(micro_images)
    for t in range(4):
        row = full["attn.pattern", t][:, :, 0]
        torch.testing.assert_close(fused["attn.cls_pattern", t], row, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(full["attn.cls_pattern", t], row)
        torch.testing.assert_close(row.sum(-1), torch.ones_like(row.sum(-1)))


def test_cls_pattern_does_not_force_explicit_attention(micro_bvit, micro_images, monkeypatch) -> None:
    """With only the CLS row requested, attention itself still goes through SDPA."""
    import torch.nn.functional as F

    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad(), micro_bvit.capture("attn.cls_pattern"):
        micro_bvit(micro_images)
    assert len(calls) == 4
    calls.clear()
    with torch.no_grad(), micro_bvit.capture("attn.pattern"):
        micro_bvit(micro_images)
    assert calls == []


def test_capture_filters_steps_tokens_dtype(micro_bvit, micro_images) -> None:
    with torch.no_grad(), micro_bvit.capture("mlp.post", steps=[1, 3], tokens="patches", dtype=torch.float16) as cache:
        micro_bvit(micro_images)
        micro_bvit(micro_images)  # two forwards concatenate along the batch
    assert cache.keys() == ["steps.1.mlp.post", "steps.3.mlp.post"]
    assert cache["mlp.post", 1].shape == (6, 16, 128) and cache["mlp.post", 1].dtype == torch.float16
    with torch.no_grad(), micro_bvit.capture("resid_post", tokens="cls") as cls:
        micro_bvit(micro_images)
    assert cls["resid_post", 0].shape == (3, 1, 32)
    with pytest.raises(KeyError, match="not captured"):
        cache["mlp.post", 0]


def test_patch_changes_only_what_follows(micro_bvit, micro_images) -> None:
    sites = ["resid_pre", "attn_out", "resid_post"]
    with torch.no_grad(), micro_bvit.capture(sites) as clean:
        micro_bvit(micro_images)
    with torch.no_grad(), micro_bvit.patch({"steps.2.attn.z": 0.0}), micro_bvit.capture(sites) as patched:
        micro_bvit(micro_images)
    for t in range(3):  # everything before the patched site is unchanged
        torch.testing.assert_close(patched["resid_pre", t], clean["resid_pre", t])
    for t in range(2):
        torch.testing.assert_close(patched["resid_post", t], clean["resid_post", t])
    # z = 0 -> attention output is just the projection bias
    bias = micro_bvit.blocks[0].attn.proj.bias
    torch.testing.assert_close(patched["attn_out", 2], bias.expand_as(patched["attn_out", 2]))
    for t in (2, 3):
        assert not torch.allclose(patched["resid_post", t], clean["resid_post", t])


def test_patch_with_function_and_mean_ablation(micro_bvit, micro_images) -> None:
    def ablate_head1(z: torch.Tensor) -> torch.Tensor:
        z = z.clone()
        z[:, 1] = z[:, 1].mean(dim=(0, 1), keepdim=True)[:, 0]
        return z

    with torch.no_grad():
        clean = micro_bvit(micro_images)
        with micro_bvit.patch({"attn.z": lambda z: z}):
            same = micro_bvit(micro_images)
        with micro_bvit.patch({"attn.z": ablate_head1}, steps=[0]):
            changed = micro_bvit(micro_images)
    torch.testing.assert_close(same, clean, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(changed, clean)


def test_hooks_removed_on_exception(micro_bvit, micro_images) -> None:
    def boom(_t, _n):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"), micro_bvit.hooked([("steps.1.resid_post", boom)]):
        micro_bvit(micro_images)
    assert not micro_bvit.hooks
    with pytest.raises(RuntimeError, match="inside"), micro_bvit.capture("attn.z"):
        raise RuntimeError("inside")
    assert not micro_bvit.hooks


def test_bad_site_names_and_read_only(micro_bvit) -> None:
    with pytest.raises(KeyError, match="unknown hook site"), micro_bvit.capture("attn.zz"):
        pass
    with pytest.raises(ValueError, match="read-out"), micro_bvit.patch({"attn.cls_pattern": 0.0}):
        pass
    with pytest.raises(ValueError, match="returned shape"), micro_bvit.hooked([("resid_post", lambda t, n: t[:, :1])]):
        micro_bvit(torch.randn(1, 3, 16, 16))


def test_multi_block_names() -> None:
    torch.manual_seed(0)
    model = build_model("bvit_micro", blocks=2, steps=2).eval()
    with torch.no_grad(), model.capture("resid_post") as cache:
        model(torch.randn(2, 3, 16, 16))
    assert cache.keys() == [f"steps.{t}.blocks.{b}.resid_post" for t in range(2) for b in range(2)]
    assert cache["resid_post", 3] is cache["steps.1.blocks.1.resid_post"]


def test_gradients_flow_through_capture_without_detach(micro_bvit, micro_images) -> None:
    x = micro_images.clone().requires_grad_(True)
    with micro_bvit.capture("steps.1.mlp.post", detach=False) as cache:
        micro_bvit(x, steps=2)
    cache["mlp.post", 1][..., 5].mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize(("blocks", "steps"), [(1, 12), (12, 1), (2, 6)])
def test_hook_name_round_trip(blocks: int, steps: int) -> None:
    """hook_name(site, layer) and hook_layer(name) are inverse, and name the hooks a forward fires."""
    from bvit_interp.model.hooks import BLOCK_SITES as SITES
    from bvit_interp.model.hooks import hook_layer, hook_name, layer_position

    torch.manual_seed(0)
    model = build_model("bvit_micro", blocks=blocks, steps=steps).eval()
    layers = range(blocks * steps)
    for site in SITES:
        for layer in layers:
            name = hook_name(site, layer, blocks)
            assert hook_layer(name, blocks) == (site, layer)
            assert model.hook_name(site, layer) == name and model.hook_layer(name) == (site, layer)
            step, block = layer_position(layer, blocks)
            assert name == (f"steps.{step}.{site}" if blocks == 1 else f"steps.{step}.blocks.{block}.{site}")
    assert hook_name("embed", None, blocks) == "embed" and hook_layer("final", blocks) == ("final", None)
    fired: list[str] = []
    with torch.no_grad(), model.hooked([("resid_post", lambda _t, name: fired.append(name))]):
        model(torch.randn(1, 3, 16, 16))
    assert fired == [hook_name("resid_post", layer, blocks) for layer in layers]
    with pytest.raises(KeyError, match="not per step"):
        hook_name("embed", 0, blocks)
    with pytest.raises(KeyError, match="unknown hook site"):
        hook_name("attn.zz", 0, blocks)
    if blocks > 1:
        with pytest.raises(ValueError, match="not one layer"):
            hook_layer("steps.0.resid_post", blocks)


def test_variant_sub_block_names_round_trip() -> None:
    """bViT-fl / -sc sites (docs/variants.md): prefixed sites go through hook_name / hook_layer like any site."""
    from bvit_interp.model.hooks import (
        hook_layer,
        hook_name,
        latent_site,
        memory_site,
        site_info,
        split_site,
    )

    assert latent_site("attn.z", 2) == "latent.2.attn.z" and memory_site("mlp.post") == "memory.mlp.post"
    assert split_site("latent.2.attn.z") == ("latent.2.", "attn.z") and split_site("resid_post") == ("", "resid_post")
    assert site_info("latent.0.attn.cls_pattern") == ("B H Nk", None) and site_info("memory") == ("B N D", 1)
    for site in ("latent.0.resid_post", "latent.11.mlp.post", "memory.attn.z", "latent", "memory"):
        for layer in (0, 5):
            name = hook_name(site, layer, 1)
            assert name == f"steps.{layer}.{site}" and hook_layer(name, 1) == (site, layer)
    with pytest.raises(KeyError, match="unknown hook site"):
        hook_name("latent.x.resid_post", 0, 1)
    with pytest.raises(ValueError, match="names no step"):
        hook_layer("latent.0.resid_post", 1)

