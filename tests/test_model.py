"""Model: parameter counts (paper Tables 1-2), timm equivalence, checkpoints and importers."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer

from bvit_interp import build_model, load_model, save_model
from bvit_interp.model import get_config, import_timm_vit, import_torchvision_vit
from bvit_interp.model.io import checkpoint_paths


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# Paper Table 1 and Table 2 (224 px, patch 16, 1000 classes), in millions.
PAPER_PARAMS = {
    "bvit_s": 2.5,
    "bvit_b": 8.6,
    "bvit_b_fl": 8.6,  # Table 6: the latent block shares the main block's weights
    "bvit_b_sc": 8.6,  # Table 6
    "bvit_l": 14.6,
    "vit_s": 22.0,
    "vit_l": 304.3,
    "vit_s_2b6s": 4.3,
    "vit_s_3b4s": 6.1,
    "vit_s_4b3s": 7.9,
    "vit_s_6b2s": 11.4,
}


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_parameter_counts_match_paper(name: str) -> None:
    with torch.device("meta"):
        model = build_model(name)
    assert round(n_params(model) / 1e6, 1) == PAPER_PARAMS[name]


def test_vit_b_parameter_count() -> None:
    """Paper's ViT-B 86.6M is the LayerNorm count; with bias-free RMSNorm it is 19,200 fewer."""
    with torch.device("meta"):
        ln = build_model("vit_b", norm="layernorm")
        rms = build_model("vit_b")
    assert round(n_params(ln) / 1e6, 1) == 86.6
    assert n_params(ln) - n_params(rms) == 25 * 768


def test_time_embedding_adds_steps_times_width() -> None:
    with torch.device("meta"):
        assert n_params(build_model("bvit_b_te")) - n_params(build_model("bvit_b")) == 12 * 768


def test_unknown_config_and_bad_override() -> None:
    with pytest.raises(KeyError, match="unknown model config"):
        build_model("bvit_xxl")
    with pytest.raises(TypeError, match="unknown config option"):
        build_model("bvit_micro", heads=3)
    with pytest.raises(ValueError, match="not divisible"):
        build_model("bvit_micro", num_heads=5)


def _tied_timm_vit(model, depth_multiplier_steps: int | None = None) -> VisionTransformer:
    """A timm VisionTransformer of depth blocks*steps whose block l holds block l % blocks."""
    cfg = model.config
    ref = VisionTransformer(
        img_size=cfg.img_size,
        patch_size=cfg.patch_size,
        num_classes=cfg.num_classes,
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        reg_tokens=cfg.reg_tokens,
        norm_layer=type(model.norm),
    ).eval()
    state = {}
    for k, v in model.state_dict().items():
        if k.startswith("blocks."):
            _, b, rest = k.split(".", 2)
            for layer in range(int(b), cfg.depth, cfg.blocks):
                state[f"blocks.{layer}.{rest}"] = v
        else:
            state[k] = v
    ref.load_state_dict(state, strict=True)
    return ref


@pytest.mark.parametrize("blocks,steps,regs", [(1, 4, 0), (2, 3, 2), (4, 1, 0), (3, 2, 4)])
def test_blocks_x_steps_equals_tied_timm_vit(blocks: int, steps: int, regs: int) -> None:
    torch.manual_seed(blocks * 10 + steps)
    model = build_model("bvit_micro", blocks=blocks, steps=steps, reg_tokens=regs).eval()
    ref = _tied_timm_vit(model)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("blocks,steps", [(1, 4), (2, 3), (4, 1)])
def test_dist_blocks_x_steps_equals_tied_timm_deit(blocks: int, steps: int) -> None:
    """A -dist model (App. C) equals timm's VisionTransformerDistilled of depth blocks*steps, both head modes."""
    from timm.models.deit import VisionTransformerDistilled

    torch.manual_seed(blocks * 10 + steps)
    model = build_model("bvit_micro_dist", blocks=blocks, steps=steps).eval()
    cfg = model.config
    ref = VisionTransformerDistilled(
        img_size=cfg.img_size, patch_size=cfg.patch_size, num_classes=cfg.num_classes, embed_dim=cfg.embed_dim,
        depth=cfg.depth, num_heads=cfg.num_heads, norm_layer=type(model.norm),
    ).eval()
    state = {}
    for k, v in model.state_dict().items():
        if k.startswith("blocks."):
            _, b, rest = k.split(".", 2)
            for layer in range(int(b), cfg.depth, cfg.blocks):
                state[f"blocks.{layer}.{rest}"] = v
        else:
            state[k] = v
    ref.load_state_dict(state, strict=True)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-6)
        model.train().set_distilled_training(True)
        ref.train().set_distilled_training(True)
        for ours, theirs in zip(model(x), ref(x), strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_steps_argument_runs_any_number_of_steps(micro_bvit, micro_images) -> None:
    """Running k steps equals applying the block k times by hand (beyond the horizon too)."""
    m = micro_bvit
    with torch.no_grad():
        for k in (1, 3, 4, 7):
            x = m.embed(micro_images)
            for t in range(k):
                x = m.blocks[0](x) + m.time_embed[min(t, m.config.steps - 1)]
            manual = m.forward_head(m.norm(x))
            torch.testing.assert_close(m(micro_images, steps=k), manual)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        m(micro_images, steps=0)


def test_save_load_round_trip(tmp_path, micro_bvit, micro_images) -> None:
    weights = save_model(micro_bvit, tmp_path / "m", metadata={"note": "x"})
    assert weights.name == "m.safetensors" and (tmp_path / "m.json").exists()
    loaded = load_model(tmp_path / "m")
    assert loaded.config == micro_bvit.config
    assert loaded.checkpoint_sha256 and len(loaded.checkpoint_sha256) == 64
    with torch.no_grad():
        torch.testing.assert_close(loaded(micro_images), micro_bvit(micro_images), rtol=1e-5, atol=0)
    doc = json.loads((tmp_path / "m.json").read_text())
    assert doc["metadata"] == {"note": "x"} and doc["weights_sha256"] == loaded.checkpoint_sha256


def test_load_mismatched_checkpoint_names_keys(tmp_path, micro_bvit) -> None:
    from safetensors.torch import load_file, save_file

    save_model(micro_bvit, tmp_path / "m")
    weights, _ = checkpoint_paths(tmp_path / "m")
    state = load_file(str(weights))
    del state["time_embed"]
    state["head.weight"] = torch.zeros(7, 32)
    state["blocks.1.norm1.weight"] = torch.ones(32)
    save_file(state, str(weights))
    doc_path = tmp_path / "m.json"  # a hand-edited checkpoint: no recorded hash to fail first
    doc_path.write_text(json.dumps({k: v for k, v in json.loads(doc_path.read_text()).items() if k != "weights_sha256"}))
    with pytest.raises(ValueError) as err:
        load_model(tmp_path / "m")
    msg = str(err.value)
    assert "time_embed" in msg and "blocks.1.norm1.weight" in msg and "head.weight" in msg


def test_load_missing_files(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        load_model(tmp_path / "nothing")


def test_timm_create_model_and_import() -> None:
    torch.manual_seed(0)
    model = timm.create_model("bvit_micro", num_classes=3)
    assert model.config.num_classes == 3 and model.config.steps == 4
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("bvit_micro", pretrained=True)

    ref = VisionTransformer(img_size=16, patch_size=4, num_classes=6, embed_dim=48, depth=3, num_heads=3, reg_tokens=1).eval()
    imported = import_timm_vit(ref.state_dict(), num_heads=3)
    assert imported.config.blocks == 3 and imported.config.steps == 1 and imported.config.reg_tokens == 1
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(imported(x), ref(x), rtol=1e-5, atol=1e-6)


def test_torchvision_import() -> None:
    from torchvision.models import VisionTransformer as TVViT

    torch.manual_seed(0)
    tv = TVViT(image_size=16, patch_size=4, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=128, num_classes=5).eval()
    model = import_torchvision_vit(tv.state_dict(), num_heads=2)
    assert model.config.norm == "layernorm" and model.config.blocks == 2
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), tv(x), rtol=1e-5, atol=1e-5)
    bad = dict(tv.state_dict(), extra_key=torch.zeros(1))
    with pytest.raises(ValueError, match="extra_key"):
        import_torchvision_vit(bad, num_heads=2)


def test_forward_intermediates_per_step(micro_bvit, micro_images) -> None:
    with torch.no_grad():
        final, inter = micro_bvit.forward_intermediates(micro_images)
        assert len(inter) == 4 and inter[0].shape == (3, 32, 4, 4)
        only = micro_bvit.forward_intermediates(micro_images, indices=[1], output_fmt="NLC", intermediates_only=True)
        torch.testing.assert_close(only[0], inter[1].flatten(2).transpose(1, 2))
        torch.testing.assert_close(micro_bvit.forward_head(final), micro_bvit(micro_images))


def test_forward_intermediates_include_the_time_embedding(micro_bvit, micro_images) -> None:
    """-TE: each intermediate is the state the next step receives (resid_post + time embedding), as cls_states."""
    from bvit_interp.analysis.states import cls_states

    with torch.no_grad():
        micro_bvit.time_embed.copy_(3 * torch.randn_like(micro_bvit.time_embed))
        inter = micro_bvit.forward_intermediates(micro_images, output_fmt="NLC", return_prefix_tokens=True,
                                                 intermediates_only=True)
        cls = cls_states(micro_bvit, micro_images)
        with micro_bvit.capture("resid_post") as cache:
            micro_bvit(micro_images)
    npt = micro_bvit.num_prefix_tokens
    for t, (patches, prefix) in enumerate(inter):
        expected = cache["resid_post", t] + micro_bvit.time_embed[t]
        torch.testing.assert_close(patches, expected[:, npt:])
        torch.testing.assert_close(prefix[:, 0], cls[t])


def test_config_dict_round_trip() -> None:
    cfg = get_config("bvit_tiny_reg")
    assert type(cfg).from_dict(cfg.to_dict()) == cfg
    assert get_config("bvit_micro", depth=6).blocks == 6


def test_half_precision_storage_round_trip(tmp_path, micro_bvit, micro_images) -> None:
    save_model(micro_bvit, tmp_path / "h", dtype=torch.float16)
    loaded = load_model(tmp_path / "h")
    assert loaded.blocks[0].attn.qkv.weight.dtype == torch.float32
    ref = micro_bvit.state_dict()
    for k, v in loaded.state_dict().items():
        torch.testing.assert_close(v, ref[k].half().float())
