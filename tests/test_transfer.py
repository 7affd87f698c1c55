"""Transfer methods (Table 4 / App. H): trainable sets, LoRA against dense references, parameter counts."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from bvit_interp import build_model
from bvit_interp.transfer import (
    PAPER_TRAINABLE_PARAMS,
    FusedQKVLoRA,
    TransferSchedule,
    fit_transfer,
    lora_layers,
    merge_lora,
    prepare,
    summarize_transfer,
    trainable_parameters,
)

NUM_CLASSES = 3
QUICK = TransferSchedule(epochs=2, warmup_epochs=1, lr=5e-2, min_lr=1e-3, weight_decay=0.0)


def _loader(seed: int, n: int = 24) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 16, 16, generator=g)
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    return DataLoader(TensorDataset(images, labels), batch_size=8, shuffle=True)


@pytest.fixture(scope="module")
def loaders() -> tuple[DataLoader, DataLoader]:
    return _loader(0), _loader(1, n=16)


def _micro(time_embed: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("bvit_micro", time_embed=time_embed).eval()


def _fit(model: torch.nn.Module, method: str, loaders: tuple[DataLoader, DataLoader], seed: int = 0):
    return fit_transfer(model, method, loaders[0], loaders[1], QUICK, seed=seed, num_classes=NUM_CLASSES)


def _initial_head(model: torch.nn.Module, method: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """The new head fit_transfer starts from (same seed, same RNG order)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = prepare(copy.deepcopy(model), method, NUM_CLASSES)
    return {k: v.clone() for k, v in net.head.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


def _dense_reference(original: torch.nn.Module, tuned: torch.nn.Module) -> torch.nn.Module:
    """A plain model: the original backbone with W + scaling * B A added by hand, and the tuned head."""
    dense = build_model(original.config.replace(num_classes=NUM_CLASSES)).eval()
    state = {k: v.clone() for k, v in original.state_dict().items() if not k.startswith("head.")}
    state.update({f"head.{k}": v for k, v in tuned.head.state_dict().items()})
    for name, module in lora_layers(tuned).items():
        weight = state[f"{name}.weight"]
        if isinstance(module, FusedQKVLoRA):
            d = weight.shape[0] // 3
            rows = {"q": slice(0, d), "k": slice(d, 2 * d), "v": slice(2 * d, 3 * d)}
            for target in module.targets:
                a, b = module.lora_A[target].detach(), module.lora_B[target].detach()
                weight[rows[target]] += module.scaling * (b @ a)
        else:  # peft lora.Linear
            a = module.lora_A["default"].weight.detach()
            b = module.lora_B["default"].weight.detach()
            weight += module.scaling["default"] * (b @ a)
    dense.load_state_dict(state)
    return dense


# --------------------------------------------------------------------------- LoRA wrapper
def test_fused_qkv_lora_matches_dense_reference():
    torch.manual_seed(0)
    d, r = 8, 2
    base = torch.nn.Linear(d, 3 * d)
    lora = FusedQKVLoRA(base, ("q", "v"), rank=r, alpha=4.0)
    for t in ("q", "v"):
        torch.nn.init.normal_(lora.lora_B[t])
    w = base.weight.detach().clone()
    w[:d] += 2.0 * lora.lora_B["q"].detach() @ lora.lora_A["q"].detach()
    w[2 * d :] += 2.0 * lora.lora_B["v"].detach() @ lora.lora_A["v"].detach()
    x = torch.randn(5, 7, d)
    torch.testing.assert_close(lora(x), F.linear(x, w, base.bias), atol=1e-6, rtol=1e-6)
    assert torch.count_nonzero(lora.delta_weight()[d : 2 * d]) == 0  # k rows untouched
    assert sum(p.numel() for p in lora.parameters() if p.requires_grad) == 2 * 2 * r * d + 3 * d * d + 3 * d


@pytest.mark.parametrize("method", ["lora_qv", "lora_ffn"])
@pytest.mark.parametrize("time_embed", [False, True])
def test_lora_at_init_equals_dense(method, time_embed):
    model = _micro(time_embed)
    tuned = prepare(copy.deepcopy(model), method, NUM_CLASSES).eval()
    assert all(torch.count_nonzero(p) == 0 for n, p in tuned.named_parameters() if "lora_B" in n)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(tuned.forward_features(x), model.forward_features(x))
        torch.testing.assert_close(tuned(x), _dense_reference(model, tuned)(x), atol=0, rtol=0)


@pytest.mark.parametrize("method", ["lora_qv", "lora_ffn"])
def test_lora_after_training_equals_merged_dense(method, loaders):
    model = _micro(time_embed=True)
    tuned = _fit(model, method, loaders).model
    lora_b = [p for n, p in tuned.named_parameters() if "lora_B" in n]
    assert lora_b and all(torch.count_nonzero(p) > 0 for p in lora_b)  # the adapters did train
    dense = _dense_reference(model, tuned)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        expected = dense(x)
        assert (tuned.forward_features(x) - model.forward_features(x)).abs().max() > 1e-3  # not a no-op
        torch.testing.assert_close(tuned(x), expected, atol=1e-5, rtol=0)
        # the hooked path goes through the adapters too
        with tuned.capture("attn.v") as got, dense.capture("attn.v") as ref:
            tuned(x), dense(x)
        torch.testing.assert_close(got["attn.v", 2], ref["attn.v", 2], atol=1e-5, rtol=0)
        merged = merge_lora(copy.deepcopy(tuned))
        assert not lora_layers(merged) and not hasattr(merged, "peft_config")
        assert set(merged.state_dict()) == set(dense.state_dict())
        torch.testing.assert_close(merged(x), expected, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- what trains
def test_linear_probe_leaves_backbone_bit_identical(loaders):
    model = _micro(time_embed=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = _fit(model, "linear_probe", loaders)
    after = result.model.state_dict()
    backbone = [k for k in before if not k.startswith("head.")]
    assert all(torch.equal(before[k], after[k]) for k in backbone)
    assert _changed(_initial_head(model, "linear_probe"), result.model.head.state_dict()) == {"weight", "bias"}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # input model untouched
    assert result.row["trainable_params"] == 0


def test_time_embedding_tuning_changes_only_time_embeddings_and_head(loaders):
    model = _micro(time_embed=True)
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("head.")}
    result = _fit(model, "time_embedding_tuning", loaders)
    assert _changed(before, result.model.state_dict()) == {"time_embed"}
    assert _changed(_initial_head(model, "time_embedding_tuning"), result.model.head.state_dict()) == {"weight", "bias"}
    assert result.row["trainable_params"] == model.config.steps * model.config.embed_dim


def test_time_embedding_tuning_needs_time_embeddings():
    with pytest.raises(ValueError, match="time embeddings"):
        prepare(_micro(time_embed=False), "time_embedding_tuning")


def test_full_finetune_changes_time_embeddings_too(loaders):
    model = _micro(time_embed=True)
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("head.")}
    result = _fit(model, "full_finetune", loaders)
    changed = _changed(before, result.model.state_dict())
    assert {"time_embed", "cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight",
            "blocks.0.mlp.fc2.weight", "norm.weight"} <= changed


def test_prepare_twice_and_unknown_method_are_refused():
    model = prepare(_micro(), "lora_qv", NUM_CLASSES)
    with pytest.raises(ValueError, match="already carries LoRA"):
        prepare(model, "lora_ffn")
    with pytest.raises(ValueError, match="unknown transfer method"):
        prepare(_micro(), "prompt_tuning")


# --------------------------------------------------------------------------- loop and schedule
def test_fit_transfer_row_history_and_seed(loaders):
    model = _micro()
    one, two = _fit(model, "lora_qv", loaders, seed=3), _fit(model, "lora_qv", loaders, seed=3)
    row = one.row
    assert row["method"] == "lora_qv" and row["seed"] == 3 and row["epochs"] == 2 and row["steps"] == 6
    assert row["trainable_params"] == 2 * 2 * 8 * 32  # q and v: A (8 x 32) + B (32 x 8) each, one block
    assert row["head_params"] == (32 + 1) * NUM_CLASSES and 0.0 <= row["accuracy"] <= 1.0
    assert list(one.history["epoch"]) == [1, 2] and one.history["val_accuracy"].notna().all()
    assert one.row["accuracy"] == two.row["accuracy"]
    assert all(torch.equal(a, b) for a, b in zip(one.model.state_dict().values(), two.model.state_dict().values(), strict=True))
    table = summarize_transfer(one.frame())
    assert table.loc[0, "label"] == "LoRA, QV" and table.loc[0, "seeds"] == 1


def test_schedule_warmup_cosine_and_defaults():
    s = TransferSchedule(epochs=4, warmup_epochs=1).resolved("full_finetune")
    assert (s.lr, s.min_lr, s.weight_decay) == (1e-4, 1e-6, 0.05)
    assert s.lr_at(0, 10) == pytest.approx(1e-5) and s.lr_at(9, 10) == pytest.approx(1e-4)
    assert s.lr_at(10, 10) == pytest.approx(1e-4) and s.lr_at(40, 10) == pytest.approx(1e-6)
    assert TransferSchedule().scaled(8).warmup_epochs == 1 and TransferSchedule().scaled(1).warmup_epochs == 0
    assert TransferSchedule(lr=3e-3).resolved("lora_ffn").lr == 3e-3
    with pytest.raises(ValueError, match="warmup_epochs"):
        TransferSchedule(epochs=3)


# --------------------------------------------------------------------------- paper parameter counts
# Exact counts (d = 768, r = 8, FFN hidden 3072, heads excluded). QV: 2 x r(d + d) per block;
# FFN: r(d + 4d) + r(4d + d) per block; fine-tuning: every backbone parameter (RMSNorm, qkv bias).
EXACT = {
    ("bvit_b", "lora_qv"): 24_576,
    ("bvit_b", "lora_ffn"): 61_440,
    ("bvit_b", "full_finetune"): 7_829_760,
    ("bvit_b", "linear_probe"): 0,
    ("bvit_b_te", "time_embedding_tuning"): 9_216,
    ("bvit_b_te", "full_finetune"): 7_838_976,
    ("vit_b", "lora_qv"): 294_912,
    ("vit_b", "lora_ffn"): 737_280,
    ("vit_b", "full_finetune"): 85_779_456,
}


def _as_printed(n: int, paper: int) -> int:
    """``n`` rounded the way Table 4 prints ``paper``: nearest 0.1M for millions, nearest 1K otherwise."""
    unit = 100_000 if paper >= 1_000_000 else 1_000
    return round(n / unit) * unit


@pytest.fixture(scope="module")
def paper_counts() -> dict[tuple[str, str], int]:
    counts = {}
    for name in ("bvit_b", "bvit_b_te", "vit_b"):
        base = build_model(name)
        assert base.config.num_classes == 1000
        for model_name, method in EXACT:
            if model_name == name:
                counts[name, method] = trainable_parameters(prepare(copy.deepcopy(base), method), exclude_head=True)
        del base
    return counts


def test_paper_size_counts_exact(paper_counts):
    assert paper_counts == EXACT
    # one shared block: LoRA on a bViT is 12x smaller than on a ViT of the same width
    assert paper_counts["vit_b", "lora_qv"] == 12 * paper_counts["bvit_b", "lora_qv"]


def test_paper_size_counts_against_table_4(paper_counts):
    matched = {"bvit_b": ("lora_qv", "full_finetune"), "bvit_b_te": ("time_embedding_tuning",), "vit_b": ("full_finetune",)}
    for (model_name, method), paper in PAPER_TRAINABLE_PARAMS.items():
        ours = paper_counts[model_name, method]
        if method in matched.get(model_name, ()):
            assert _as_printed(ours, paper) == paper, (model_name, method)
        else:
            # Three LoRA figures (bViT FFN 62K, ViT QV 296K, ViT FFN 738K) sit 0.06K-1.2K above the exact
            # adapter counts (61.4K, 294.9K, 737.3K); one extra trainable d-vector (768: e.g. the CLS
            # token) reproduces all four LoRA figures. See docs/transfer.md.
            assert 0 < paper - ours < 1_500, (model_name, method)
        if method.startswith("lora"):
            assert _as_printed(ours + 768, paper) == paper, (model_name, method)
