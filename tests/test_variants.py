"""Paper App. C (distillation token) and App. D (bViT-fl, bViT-sc) variants, against hand-written forwards."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bvit_interp import build_model, load_model, save_model
from bvit_interp.model import MODEL_CONFIGS, get_config, hook_layer, hook_name
from bvit_interp.model.flops import block_applications, model_flops
from bvit_interp.model.patching import patch_resid
from bvit_interp.train_losses import distillation_loss

X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _micro(name: str = "bvit_micro", **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, **overrides).eval()


# ----------------------------------------------------------------------------- configs
def test_every_config_has_a_dist_variant() -> None:
    plain = [n for n in MODEL_CONFIGS if not n.endswith("_dist")]
    for name in plain:
        dist = get_config(f"{name}_dist")
        assert dist.dist_token and dist.num_prefix_tokens == get_config(name).num_prefix_tokens + 1
        assert dist.replace(dist_token=False, name=name) == get_config(name)
    for name in ("bvit_tiny_dist", "bvit_b_dist", "vit_b_dist", "bvit_b_fl_dist", "bvit_b_sc_dist"):
        assert name in MODEL_CONFIGS


def test_config_validation_and_dict_round_trip() -> None:
    with pytest.raises(ValueError, match="not both"):
        get_config("bvit_micro", latent_steps=2, memory_every=2)
    with pytest.raises(ValueError, match="blocks must be 1"):
        get_config("vit_b", latent_steps=2)
    with pytest.raises(ValueError, match="latent_grad"):
        get_config("bvit_micro_fl", latent_grad="sometimes")
    plain = get_config("bvit_micro").to_dict()
    assert not {"dist_token", "latent_steps", "memory_every"} & set(plain)  # plain models' dicts unchanged
    for name in ("bvit_micro_fl_dist", "bvit_micro_sc"):
        cfg = get_config(name, latent_block="independent", memory_block="independent", memory_grad="truncated")
        assert type(cfg).from_dict(cfg.to_dict()) == cfg


# ----------------------------------------------------------------------------- distillation token
def test_dist_token_layout_in_hooks() -> None:
    """Captured tokens are [cls, dist, reg..., patches]: N = patches + 2 without registers, dist at index 1."""
    for regs in (0, 2):
        model = _micro("bvit_micro_dist", reg_tokens=regs)
        with torch.no_grad(), model.capture(["embed", "resid_pre", "resid_post", "attn.cls_pattern"]) as cache:
            model(X)
        n = 16 + 2 + regs
        assert model.num_prefix_tokens == model.config.num_prefix_tokens == 2 + regs
        assert cache["resid_post", 3].shape == (2, n, 32) and cache["attn.cls_pattern", 0].shape == (2, 4, n)
        embed = cache["embed"]
        torch.testing.assert_close(embed[:, 1], (model.dist_token + model.pos_embed[:, 1])[0].expand(2, -1))
        torch.testing.assert_close(embed[:, 0], (model.cls_token + model.pos_embed[:, 0])[0].expand(2, -1))
        if regs:
            torch.testing.assert_close(embed[:, 2:4], (model.reg_token + model.pos_embed[:, 2:4])[0].expand(2, -1, -1))
        torch.testing.assert_close(cache["resid_pre", 0], embed)
        with torch.no_grad():
            _, inter = model.forward_intermediates(X, return_prefix_tokens=True, output_fmt="NLC")
        patches, prefix = inter[-1]
        assert prefix.shape == (2, 2 + regs, 32) and patches.shape == (2, 16, 32)


def test_dist_heads_train_and_eval_outputs() -> None:
    model = _micro("bvit_micro_dist")
    with torch.no_grad():
        tokens = model.forward_features(X)
        cls, dist = model.head(tokens[:, 0]), model.head_dist(tokens[:, 1])
        torch.testing.assert_close(model(X), (cls + dist) / 2)
        model.train()
        torch.testing.assert_close(model(X), (cls + dist) / 2)  # timm: tuple only in distilled training
        model.set_distilled_training(True)
        out = model(X)
        assert isinstance(out, tuple)
        torch.testing.assert_close(out[0], cls)
        torch.testing.assert_close(out[1], dist)
        model.eval()
        torch.testing.assert_close(model(X), (cls + dist) / 2)
    with pytest.raises(ValueError, match="no distillation token"):
        _micro().set_distilled_training(True)
    model.reset_classifier(3)
    assert model.head.out_features == 3 and model.head_dist.out_features == 3


def test_dist_token_patch_changes_only_through_it() -> None:
    """Patching the distillation token's stream moves the dist head; a CLS-only readout is untouched."""
    model = _micro("bvit_micro_dist")

    def zero_dist(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[:, 1] = 0
        return x

    with torch.no_grad():
        base = model.forward_features(X)
        with model.patch({"steps.3.resid_post": zero_dist}):
            patched = model.forward_features(X)
    torch.testing.assert_close(patched[:, 0], base[:, 0])  # the last step: only the dist token's state changes
    assert not torch.allclose(patched[:, 1], base[:, 1])


def test_timm_deit_import_and_dist_checkpoint_round_trip(tmp_path) -> None:
    from timm.models.deit import VisionTransformerDistilled

    torch.manual_seed(0)
    ref = VisionTransformerDistilled(img_size=16, patch_size=4, num_classes=6, embed_dim=48, depth=2,
                                     num_heads=3).eval()
    from bvit_interp.model import import_timm_vit

    model = import_timm_vit(ref.state_dict(), num_heads=3)
    assert model.config.dist_token and model.config.blocks == 2
    with torch.no_grad():
        torch.testing.assert_close(model(X), ref(X), rtol=1e-5, atol=1e-6)
    save_model(model, tmp_path / "d")
    loaded = load_model(tmp_path / "d")
    assert loaded.config == model.config
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), model(X))


def test_distillation_loss_is_deit_hard() -> None:
    g = torch.Generator().manual_seed(0)
    cls, dist, teacher = (torch.randn(4, 5, generator=g) for _ in range(3))
    labels = torch.tensor([0, 1, 2, 3])
    ce = torch.nn.CrossEntropyLoss()
    expected = 0.5 * ce(cls, labels) + 0.5 * ce(dist, teacher.argmax(-1))
    torch.testing.assert_close(distillation_loss(cls, dist, labels, teacher, ce), expected)
    torch.testing.assert_close(distillation_loss(cls, None, labels, teacher, ce),
                               0.5 * ce(cls, labels) + 0.5 * ce(cls, teacher.argmax(-1)))


def _write_imagenet_s(root, class_index: int, mask: np.ndarray) -> None:
    """A one-image ImageNet-S root (16 x 16, class ``class_index + 1``)."""
    from bvit_interp.data.imagenet_s import encode_mask

    wnids = [f"n{i:08d}" for i in range(919)]
    (root / "validation" / wnids[class_index]).mkdir(parents=True)
    (root / "validation-segmentation" / wnids[class_index]).mkdir(parents=True)
    (root / "ImageNetS_categories_im919.txt").write_text("\n".join(wnids) + "\n")
    image = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(image).save(root / "validation" / wnids[class_index] / "a.JPEG", quality=95)
    Image.fromarray(encode_mask(mask)).save(root / "validation-segmentation" / wnids[class_index] / "a.png")


def test_pointing_excludes_the_dist_token_and_records_its_mass(tmp_path) -> None:
    """CLS attention peaks on the distillation token: the point still lands on the best patch."""
    from bvit_interp.analysis.pointing import PointingOptions, score_model
    from bvit_interp.analysis.sources import ImageNetSSource

    mask = np.zeros((16, 16), np.int32)
    mask[0:4, 12:16] = 1  # patch 3 (row 0, column 3)
    _write_imagenet_s(tmp_path, 0, mask)
    model = _micro("bvit_micro_dist", steps=2, reg_tokens=1, num_classes=919)
    npt, target = 3, 3

    def peak(pattern: torch.Tensor) -> torch.Tensor:
        out = pattern.clone()
        row = torch.full((pattern.shape[-1],), 0.1 / (pattern.shape[-1] - 2))
        row[1], row[npt + target] = 0.6, 0.3  # most mass on the distillation token, then the target patch
        out[:, :, 0] = row
        return out

    with model.patch({"attn.pattern": peak}):
        points, _, skipped = score_model(model, ImageNetSSource(str(tmp_path)), PointingOptions(), progress=False)
    assert skipped.empty and len(points) == 2 * 4
    assert points["hit"].all()
    assert points["x"].tolist() == pytest.approx([(target % 4 + 0.5) * 4] * 8)
    assert points["dist_mass"].tolist() == pytest.approx([0.6] * 8)
    assert points["prefix_mass"].tolist() == pytest.approx([0.6 + 2 * 0.1 / 17] * 8)  # CLS and register: 0.1 / 17 each
    plain = _micro(steps=1, num_classes=919)
    p, _, _ = score_model(plain, ImageNetSSource(str(tmp_path)), PointingOptions(), progress=False)
    assert p["dist_mass"].isna().all()


# ----------------------------------------------------------------------------- bViT-fl
def _fl_reference(model, x: torch.Tensor, steps: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """docs/variants.md, bViT-fl: z <- g(h + z) - h (n times), h <- f(h + z) + tau_t; z_0 = 0."""
    f = model.blocks[0]
    g = f if model.latent_blocks is None else model.latent_blocks[0]
    h = model.embed(x)
    z = torch.zeros_like(h)
    latents = []
    for t in range(steps):
        for _ in range(model.config.latent_steps):
            z = g(h + z) - h
            latents.append(h + z)
        h = f(h + z)
        if model.time_embed is not None:
            h = h + model.time_embed[min(t, model.config.steps - 1)]
    return model.forward_head(model.norm(h)), latents


@pytest.mark.parametrize("latent_block", ["shared", "independent"])
def test_fl_forward_and_inner_latent_sites(latent_block: str) -> None:
    model = _micro("bvit_micro_fl", latent_block=latent_block, time_embed=True)
    n = model.config.latent_steps
    sites = ["resid_post", "latent", *[f"latent.{i}.resid_post" for i in range(n)], "latent.1.attn.cls_pattern"]
    with torch.no_grad(), model.capture(sites) as cache:
        logits = model(X)
        ref, latents = _fl_reference(model, X, 4)
    torch.testing.assert_close(logits, ref, rtol=1e-5, atol=1e-6)
    expected = [f"steps.{t}.{s}" for t in range(4) for s in
                [*[f"latent.{i}.resid_post" for i in range(n)], "latent.1.attn.cls_pattern", "latent", "resid_post"]]
    assert sorted(cache.keys()) == sorted(expected)
    for t in range(4):
        for i in range(n):
            torch.testing.assert_close(cache[f"latent.{i}.resid_post", t], latents[t * n + i])
        assert cache["latent.1.attn.cls_pattern", t].shape == (2, 4, 17)
    assert cache.stack("latent.2.resid_post").shape == (4, 2, 17, 32)
    assert hook_name("latent.2.resid_post", 3, 1) == "steps.3.latent.2.resid_post"
    assert hook_layer("steps.3.latent.2.attn.z", 1) == ("latent.2.attn.z", 3)
    assert model.hook_layer(model.hook_name("latent", 1)) == ("latent", 1)


def test_fl_latent_ablation_is_the_plain_bvit() -> None:
    """Zeroing the latent at every step leaves f applied to h alone: the plain bViT with the same weights."""
    model = _micro("bvit_micro_fl")
    plain = build_model("bvit_micro").eval()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad(), model.patch({"latent": 0.0}):
        torch.testing.assert_close(model(X), plain(X))
    assert n_params(model) == n_params(plain)


def test_fl_gradient_modes() -> None:
    """full: gradients through every inner update and across steps; truncated: the latent is cut at step
    boundaries; frozen: no gradient through the latent (an independent latent block gets none)."""

    def grads(grad_mode: str, manual_detach: bool = False) -> dict[str, torch.Tensor | None]:
        model = _micro("bvit_micro_fl", latent_block="independent", latent_grad=grad_mode, steps=3)
        if manual_detach:  # hand-written truncated forward on a full-gradient model
            model = _micro("bvit_micro_fl", latent_block="independent", steps=3)
            f, g, h = model.blocks[0], model.latent_blocks[0], model.embed(X)
            z = torch.zeros_like(h)
            for _ in range(3):
                z = z.detach()
                for _ in range(3):
                    z = g(h + z) - h
                h = f(h + z)
            loss = model.forward_head(model.norm(h)).square().sum()
        else:
            loss = model(X).square().sum()
        loss.backward()
        return {k: p.grad for k, p in model.named_parameters()}

    full, trunc, frozen = grads("full"), grads("truncated"), grads("frozen")
    manual = grads("full", manual_detach=True)
    key = "latent_blocks.0.mlp.fc2.weight"
    assert full[key] is not None and trunc[key] is not None and frozen[key] is None
    assert not torch.allclose(full[key], trunc[key])
    for k in full:
        torch.testing.assert_close(trunc[k], manual[k])
    assert frozen["blocks.0.mlp.fc2.weight"] is not None


def test_variant_sites_are_checked_and_layer_resume_refused() -> None:
    fl, sc = _micro("bvit_micro_fl"), _micro("bvit_micro_sc")
    with pytest.raises(KeyError, match="inner latent updates"), fl.capture("latent.3.resid_post"):
        pass
    with pytest.raises(KeyError, match="no memory state"), fl.capture("memory"):
        pass
    with pytest.raises(KeyError, match="no fast latent"), _micro().capture("latent"):
        pass
    with pytest.raises(KeyError, match="independent"), sc.capture("memory.resid_post"):
        pass
    with pytest.raises(KeyError, match="unknown hook site"), fl.capture("latent.0.nope"):
        pass
    with pytest.raises(ValueError, match="carries a latent state"):
        fl.forward_from(fl.embed(X), 1)
    # Patching sweeps fall back to full forwards on a variant: same numbers as resume=False.
    metric = lambda logits: logits[:, 0].mean()  # noqa: E731
    with torch.no_grad():
        auto = patch_resid(fl, X, 0.0, metric, layers=[1, 2])
        ref = patch_resid(fl, X, 0.0, metric, layers=[1, 2], resume=False)
    torch.testing.assert_close(auto, ref)


# ----------------------------------------------------------------------------- bViT-sc
def _sc_reference(model, x: torch.Tensor, steps: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """docs/variants.md, bViT-sc: h <- f(h + m) + tau_t; after step t with (t+1) % k == 0, m <- g(h + m)."""
    f = model.blocks[0]
    g = f if model.memory_blocks is None else model.memory_blocks[0]
    k = model.config.memory_every
    h = model.embed(x)
    m = torch.zeros_like(h)
    memories = []
    for t in range(steps):
        memories.append(m)
        u = h + m
        h = f(u)
        if (t + 1) % k == 0 and t + 1 < steps:
            m = g(u)
        if model.time_embed is not None:
            h = h + model.time_embed[min(t, model.config.steps - 1)]
    return model.forward_head(model.norm(h)), memories


@pytest.mark.parametrize("memory_block", ["shared", "independent"])
def test_sc_forward_and_memory_sites(memory_block: str) -> None:
    model = _micro("bvit_micro_sc", memory_block=memory_block, time_embed=True)
    sites = ["memory", "resid_post"] + (["memory.resid_post"] if memory_block == "independent" else [])
    with torch.no_grad(), model.capture(sites) as cache:
        logits = model(X)
        ref, memories = _sc_reference(model, X, 4)
    torch.testing.assert_close(logits, ref, rtol=1e-5, atol=1e-6)
    for t in range(4):
        torch.testing.assert_close(cache["memory", t], memories[t])
    assert not memories[1].any() and memories[2].abs().sum() > 0  # k = 2: updated after step 2 only
    if memory_block == "independent":
        assert cache.layers("memory.resid_post") == [1]  # the update after step 2 (0-based step 1)
        torch.testing.assert_close(cache["memory.resid_post", 1], memories[2])
    with torch.no_grad():
        longer, _ = _sc_reference(model, X, 7)
        torch.testing.assert_close(model(X, steps=7), longer, rtol=1e-5, atol=1e-6)


def test_sc_memory_ablation_and_truncated_gradient() -> None:
    model = _micro("bvit_micro_sc")
    plain = build_model("bvit_micro").eval()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad(), model.patch({"memory": 0.0}):
        torch.testing.assert_close(model(X), plain(X))
    for block in ("shared", "independent"):
        grads = {}
        for mode in ("full", "truncated", "manual"):
            m = _micro("bvit_micro_sc", memory_grad="full" if mode == "manual" else mode, memory_block=block)
            if mode == "manual":  # truncated by hand: the memory's input is detached where it is written
                f = m.blocks[0]
                g = f if m.memory_blocks is None else m.memory_blocks[0]
                h = m.embed(X)
                mem = torch.zeros_like(h)
                for t in range(4):
                    u = h + mem
                    h = f(u)
                    if t == 1:
                        mem = g(u.detach())
                m.forward_head(m.norm(h)).square().sum().backward()
            else:
                m(X).square().sum().backward()
            grads[mode] = {k: p.grad for k, p in m.named_parameters()}
        for k, grad in grads["truncated"].items():
            torch.testing.assert_close(grad, grads["manual"][k])
        key = "blocks.0.mlp.fc2.weight" if block == "shared" else "memory_blocks.0.mlp.fc2.weight"
        assert grads["truncated"][key].abs().sum() > 0  # the memory block still learns from the reads
        assert not torch.allclose(grads["full"]["patch_embed.proj.weight"], grads["truncated"]["patch_embed.proj.weight"])


# ----------------------------------------------------------------------------- FLOPs and parameters
def _count_block_applications(model, steps: int | None = None) -> int:
    fired: list[str] = []
    cfg = model.config
    sites = ["resid_pre", *[f"latent.{i}.resid_pre" for i in range(cfg.latent_steps)]]
    if cfg.memory_every and cfg.memory_block == "independent":
        sites.append("memory.resid_pre")
    with torch.no_grad(), model.hooked([(s, lambda _t, name: fired.append(name)) for s in sites]):
        model(X, steps=steps)
    return len(fired)


@pytest.mark.parametrize("name,overrides", [
    ("bvit_micro", {}), ("bvit_micro_fl", {}), ("bvit_micro_fl", {"latent_block": "independent"}),
    ("bvit_micro_sc", {}), ("bvit_micro_sc", {"memory_block": "independent"}), ("bvit_micro_dist", {"blocks": 2}),
])
def test_analytic_block_applications_match_the_forward(name: str, overrides: dict) -> None:
    model = _micro(name, **overrides)
    for steps in (None, 7):
        assert _count_block_applications(model, steps) == block_applications(model.config, steps)


def test_flops_and_parameters_at_bvit_b_size_match_table_6() -> None:
    """Paper Table 6 (bViT-B size): bViT 8.6M / 33.7G, bViT-fl 8.6M / 134.1G, bViT-sc 8.6M / 33.7G."""
    from bvit_interp.analysis.early_exit import flops_per_image

    gflops = {name: model_flops(get_config(name)) / 1e9 for name in ("bvit_b", "bvit_b_fl", "bvit_b_sc", "vit_b")}
    assert model_flops(get_config("bvit_b")) == flops_per_image(get_config("bvit_b"))  # one convention
    assert round(gflops["bvit_b"], 1) == round(gflops["vit_b"], 1) == 33.7
    assert round(gflops["bvit_b_fl"], 1) == 134.1 and round(gflops["bvit_b_sc"], 1) == 33.7
    assert gflops["bvit_b_fl"] / gflops["bvit_b"] == pytest.approx(134.1 / 33.7, rel=2e-3)
    with torch.device("meta"):
        counts = {name: n_params(build_model(name)) for name in ("bvit_b", "bvit_b_fl", "bvit_b_sc", "bvit_b_dist")}
        block = n_params(build_model("bvit_b").blocks[0])
        independent = n_params(build_model("bvit_b_fl", latent_block="independent"))
        deit_b = n_params(build_model("vit_b_dist", norm="layernorm"))
    assert counts["bvit_b_fl"] == counts["bvit_b_sc"] == counts["bvit_b"]
    assert round(counts["bvit_b_fl"] / 1e6, 1) == 8.6
    assert independent == counts["bvit_b"] + block
    assert counts["bvit_b_dist"] - counts["bvit_b"] == 768 + 768 + 768 * 1000 + 1000  # token, position, head
    assert round(deit_b / 1e6, 1) == 87.3  # timm's deit_base_distilled_patch16_224
