"""Step-masked pruning: masked layers, mask files, magnitude strategy, metrics, RTL rounds and resume."""

from __future__ import annotations

import copy
import itertools
import math
import shutil

import numpy as np
import pytest
import torch

from bvit_interp import build_model, load_model, save_model
from bvit_interp.analysis.pruning import ALL, mask_metrics, poisson_binomial
from bvit_interp.pruning import (
    StepMaskedLinear,
    StepMasks,
    attach_masks,
    attached_masks,
    grafted,
    make_graft,
    maskable_layers,
    masked_layers,
    prune_step_masks,
    step_masked,
)
from bvit_interp.pruning.masked import masks_path
from bvit_interp.pruning.rtl import PruneConfig, fit
from bvit_interp.runs import Run
from bvit_interp.runs.pruning import PruningRun


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Micro models gain nothing from intra-op threads, and on a busy 2-core machine two threads stall."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_masks(model: torch.nn.Module, steps: int, density: float, seed: int = 0) -> StepMasks:
    g = torch.Generator().manual_seed(seed)
    layers = maskable_layers(model)
    return StepMasks({k: torch.rand(steps, *m.weight.shape, generator=g) < density for k, m in layers.items()})


def unrolled_reference(model, masks: StepMasks, x: torch.Tensor) -> torch.Tensor:
    """Logits computed by hand: at step t a copy of the block with weights W * M_t, timm's Block.forward."""
    h = model.embed(x)
    for t in range(model.config.steps):
        block = copy.deepcopy(model.blocks[0])
        for name, mask in masks.items():
            layer = block.get_submodule(name.removeprefix("blocks.0."))
            layer.weight.data.mul_(mask[t])
        h = block(h)
        if model.time_embed is not None:
            h = h + model.time_embed[t]
    return model.forward_head(model.norm(h))


# ---------------------------------------------------------------------- masked layers
def test_all_ones_masks_equal_unmasked_model(micro_bvit, micro_images) -> None:
    ref = micro_bvit(micro_images)
    with step_masked(micro_bvit, StepMasks.ones(micro_bvit, micro_bvit.config.steps)) as model:
        assert isinstance(model.blocks[0].attn.qkv, StepMaskedLinear)
        out = model(micro_images)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    assert type(micro_bvit.blocks[0].attn.qkv) is torch.nn.Linear
    assert not micro_bvit.hooks
    assert set(micro_bvit.state_dict()) == set(build_model("bvit_micro", reg_tokens=2, time_embed=True).state_dict())


def test_step_masks_switch_by_step(micro_bvit, micro_images) -> None:
    masks = random_masks(micro_bvit, micro_bvit.config.steps, 0.6)
    with torch.no_grad(), step_masked(micro_bvit, masks):
        out = micro_bvit(micro_images)
        with micro_bvit.capture("resid_post") as cache:  # other hooks coexist with the masks
            assert torch.equal(micro_bvit(micro_images), out)
        assert len(cache.layers("resid_post")) == micro_bvit.config.steps
    with torch.no_grad():
        ref = unrolled_reference(micro_bvit, masks, micro_images)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, micro_bvit(micro_images), atol=1e-3)


def test_masked_layer_outside_a_step_fails_loudly(micro_bvit) -> None:
    attach_masks(micro_bvit, StepMasks.ones(micro_bvit, micro_bvit.config.steps))
    with pytest.raises(RuntimeError, match="no step set"):
        micro_bvit.blocks[0](torch.zeros(1, 3, 32))


def test_graft_replaces_only_its_step(micro_bvit, micro_images) -> None:
    masks = random_masks(micro_bvit, micro_bvit.config.steps, 0.7, seed=3)
    attach_masks(micro_bvit, masks)
    ref = micro_bvit(micro_images)
    graft = make_graft(micro_bvit, 2)
    with grafted(micro_bvit, graft, 2):
        torch.testing.assert_close(micro_bvit(micro_images), ref, rtol=0, atol=1e-6)  # an untrained graft = main block
    with torch.no_grad():
        graft[0].mlp.fc2.weight.mul_(3.0)
    micro_bvit.requires_grad_(False)
    with grafted(micro_bvit, graft, 2):
        out = micro_bvit(micro_images)
        out.sum().backward()
    with torch.no_grad():
        blocks = micro_bvit.blocks
        h = micro_bvit.embed(micro_images)
        for t in range(4):
            for layer in masked_layers(micro_bvit).values():
                layer.step = t
            h = (graft if t == 2 else blocks)[0](h) + micro_bvit.time_embed[t]
        expected = micro_bvit.forward_head(micro_bvit.norm(h))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert graft[0].mlp.fc2.weight.grad is not None
    assert all(p.grad is None for p in micro_bvit.parameters())
    assert masks.equal(attached_masks(micro_bvit))  # grafting leaves the main masks alone


def test_pruned_weights_stay_exactly_zero_under_adamw(micro_bvit) -> None:
    masks = random_masks(micro_bvit, 4, 0.4, seed=1)  # ~13% of weights unused by every step
    attach_masks(micro_bvit, masks)
    tcfg = PruneConfig(model="bvit_micro", epochs=1, weight_decay=0.5, lr=0.05, clip_grad=0.0, batch_size=8).train_config()
    data = torch.utils.data.TensorDataset(torch.randn(32, 3, 16, 16), torch.randint(0, 5, (32,)))
    fit(micro_bvit, micro_bvit.train(), data, tcfg, seed=0, device=torch.device("cpu"), amp=False)
    graft = make_graft(micro_bvit, 1)
    micro_bvit.requires_grad_(False)
    with grafted(micro_bvit, graft, 1):
        fit(micro_bvit, graft, data, tcfg, seed=1, device=torch.device("cpu"), amp=False)
    for name, mask in masks.items():
        layer = micro_bvit.get_submodule(name)
        unused = ~mask.any(0)
        assert unused.any() and torch.count_nonzero(layer.weight[unused]) == 0
        for t in range(4):
            assert torch.count_nonzero(layer.effective_weight(t)[~mask[t]]) == 0
        trained = graft.get_submodule(name.removeprefix("blocks."))
        assert torch.count_nonzero(trained.weight[~mask[1]]) == 0
        assert torch.count_nonzero(trained.weight[mask[1]]) == int(mask[1].sum())


# ---------------------------------------------------------------------- mask files
def test_masks_file_round_trip(tmp_path) -> None:
    g = torch.Generator().manual_seed(0)
    masks = StepMasks({"blocks.0.attn.qkv": torch.rand(3, 7, 5, generator=g) < 0.3,
                       "blocks.1.mlp.fc2": torch.rand(3, 5, 11, generator=g) < 0.9}, round=4, meta={"rate": 0.2})
    path = masks.save(tmp_path / "m.npz")
    back = StepMasks.load(path)
    assert back.equal(masks) and back.round == 4 and back.meta == {"rate": 0.2}
    with np.load(path) as raw:  # bit-packed: one bit per entry
        assert raw["blocks.0.attn.qkv"].nbytes == math.ceil(3 * 7 * 5 / 8)
    with pytest.raises(ValueError, match="not a bvit-interp"):
        np.savez(tmp_path / "x.npz", a=np.zeros(3))
        StepMasks.load(tmp_path / "x.npz")


def test_masks_survive_save_and_load_model(micro_bvit, micro_images, tmp_path) -> None:
    masks = random_masks(micro_bvit, 4, 0.5, seed=2)
    masks.round = 3
    attach_masks(micro_bvit, masks)
    ref = micro_bvit(micro_images)
    weights = save_model(micro_bvit, tmp_path / "pruned")
    assert masks_path(weights).exists()
    loaded = load_model(tmp_path / "pruned")
    assert attached_masks(loaded).equal(masks) and attached_masks(loaded).round == 3
    torch.testing.assert_close(loaded(micro_images), ref)
    save_model(build_model("bvit_micro"), tmp_path / "pruned")  # an unmasked model replaces the masks file
    assert not masks_path(weights).exists() and attached_masks(load_model(tmp_path / "pruned")) is None
    other = save_model(build_model("bvit_micro", reg_tokens=2, time_embed=True), tmp_path / "other")
    shutil.copy(masks_path(save_model(micro_bvit, tmp_path / "pruned")), masks_path(other))
    with pytest.raises(ValueError, match="other weights"):
        load_model(tmp_path / "other")


# ---------------------------------------------------------------------- strategy
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_magnitude_pruning_removes_smallest_active(scope: str) -> None:
    g = torch.Generator().manual_seed(0)
    weights = {"a": torch.randn(6, 5, generator=g), "b": 3 * torch.randn(4, 9, generator=g)}
    masks = {"a": torch.rand(6, 5, generator=g) < 0.8, "b": torch.ones(4, 9, dtype=torch.bool)}
    new = prune_step_masks(weights, masks, 0.25, scope)
    for k in masks:
        assert not (new[k] & ~masks[k]).any()  # nested
    if scope == "layer":
        for k in masks:
            n = int(masks[k].sum())
            assert int(new[k].sum()) == n - int(0.25 * n + 0.5)
            kept, dropped = weights[k].abs()[new[k]], weights[k].abs()[masks[k] & ~new[k]]
            assert kept.min() >= dropped.max()
    else:
        n = sum(int(m.sum()) for m in masks.values())
        assert sum(int(m.sum()) for m in new.values()) == n - int(0.25 * n + 0.5)
        kept = torch.cat([weights[k].abs()[new[k]] for k in masks])
        dropped = torch.cat([weights[k].abs()[masks[k] & ~new[k]] for k in masks])
        assert kept.min() >= dropped.max()


# ---------------------------------------------------------------------- metrics
def brute_force(mask: np.ndarray) -> dict:
    """Eq. 11 / Eq. 12 / Table 7 / Fig. 5 by explicit loops over steps and weights."""
    T, n = mask.shape
    use = [sum(mask[t, i] for t in range(T)) for i in range(n)]
    jac = {}
    for i, j in itertools.combinations(range(T), 2):
        union = sum(mask[i, w] or mask[j, w] for w in range(n))
        jac[(i, j)] = sum(mask[i, w] and mask[j, w] for w in range(n)) / union if union else math.nan
    spec = []
    for t in range(T):
        active = [w for w in range(n) if mask[t, w]]
        alone = [w for w in active if not any(mask[s, w] for s in range(T) if s != t)]
        spec.append(len(alone) / len(active) if active else math.nan)
    return {"mask_sparsity": 1 - mask.sum() / mask.size, "weight_sparsity": use.count(0) / n,
            "jaccard": jac, "spec": spec, "hist": [use.count(k) for k in range(T + 1)]}


def test_metrics_match_brute_force() -> None:
    g = torch.Generator().manual_seed(5)
    m_qkv = torch.rand(4, 3, 4, generator=g) < torch.tensor([0.7, 0.5, 0.3, 0.9])[:, None, None]
    m_fc1 = torch.rand(4, 4, 5, generator=g) < 0.4
    m_fc1[2] = False  # an empty step: specialization undefined, Jaccard of pairs with it defined
    masks = StepMasks({"blocks.0.attn.qkv": m_qkv, "blocks.0.mlp.fc1": m_fc1}, round=2)
    tables = mask_metrics(masks)
    s = tables["summary"].set_index("layer_type")
    steps = tables["steps"].set_index(["layer_type", "step"])
    pairs = tables["pairs"].set_index(["layer_type", "step_i", "step_j"])
    util = tables["utilization"].set_index(["layer_type", "utilization"])
    means = {}
    for kind, m in (("qkv", m_qkv), ("fc1", m_fc1), (ALL, None)):
        flat = (torch.cat([m_qkv.reshape(4, -1), m_fc1.reshape(4, -1)], 1) if m is None else m.reshape(4, -1)).numpy()
        bf = brute_force(flat)
        assert s.loc[kind, "mask_sparsity"] == pytest.approx(bf["mask_sparsity"])
        assert s.loc[kind, "weight_sparsity"] == pytest.approx(bf["weight_sparsity"])
        for t in range(4):
            np.testing.assert_allclose(steps.loc[(kind, t + 1), "specialization"], bf["spec"][t])
        assert list(util.loc[kind, "count"]) == bf["hist"]
        if kind != ALL:
            for (i, j), v in bf["jaccard"].items():
                np.testing.assert_allclose(pairs.loc[(kind, i + 1, j + 1), "jaccard"], v)
            means[kind] = np.nanmean(list(bf["jaccard"].values()))
            assert s.loc[kind, "jaccard"] == pytest.approx(means[kind])
    # G.4: the overall Jaccard is the size-weighted average over layer types.
    assert s.loc[ALL, "jaccard"] == pytest.approx((12 * means["qkv"] + 20 * means["fc1"]) / 32)
    assert steps.loc[("fc1", 3), "empty"] and s.loc["fc1", "empty_steps"] == 1


def test_random_baselines_match_simulation() -> None:
    g = torch.Generator().manual_seed(0)
    masks = StepMasks({"blocks.0.attn.proj": torch.rand(5, 20, 30, generator=g) < torch.linspace(0.2, 0.8, 5)[:, None, None]})
    s = mask_metrics(masks)["summary"].set_index("layer_type").loc["proj"]
    steps = mask_metrics(masks)["steps"].query("layer_type == 'proj'")
    draws = [mask_metrics(masks.random_like(g)) for _ in range(60)]
    sim = {c: np.mean([d["summary"].set_index("layer_type").loc["proj", c] for d in draws])
           for c in ("weight_sparsity", "jaccard", "specialization", "mask_sparsity")}
    assert sim["mask_sparsity"] == pytest.approx(s["mask_sparsity"])
    assert s["weight_sparsity_random"] == pytest.approx(sim["weight_sparsity"], abs=0.01)
    assert s["jaccard_random"] == pytest.approx(sim["jaccard"], abs=0.01)
    assert s["specialization_random"] == pytest.approx(sim["specialization"], abs=0.01)
    sim_steps = np.mean([d["steps"].query("layer_type == 'proj'")["specialization"].to_numpy() for d in draws], 0)
    np.testing.assert_allclose(steps["specialization_random"].to_numpy(), sim_steps, atol=0.015)


def test_poisson_binomial_matches_enumeration() -> None:
    p = np.array([0.1, 0.5, 0.7, 0.95])
    exact = np.zeros(5)
    for bits in itertools.product([0, 1], repeat=4):
        exact[sum(bits)] += np.prod([pi if b else 1 - pi for pi, b in zip(p, bits, strict=True)])
    np.testing.assert_allclose(poisson_binomial(p), exact)


# ---------------------------------------------------------------------- RTL rounds
TINY = dict(model="bvit_micro", rounds=3, rate=0.2, epochs=1.0, graft_epochs=0.5, batch_size=16,
            shapes_train_size=32, val_limit=16, train_eval_limit=16, random_control=False, seed=3)


def run_pruning(path, progress=None, **overrides) -> PruningRun:
    cfg = PruneConfig(**{**TINY, **overrides})
    with Run.create(path, {"analysis": "prune", "options": cfg.to_dict()}) as run:  # released if interrupted
        pruner = PruningRun(cfg, run, "cpu", progress=progress)
        pruner.run_all()
    return pruner


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> PruningRun:
    return run_pruning(tmp_path_factory.mktemp("prune") / "run")


def test_rounds_nested_with_geometric_sparsity(finished: PruningRun) -> None:
    rounds = [finished.masks_of(r) for r in range(4)]
    for r, masks in enumerate(rounds):
        assert masks.round == r
        assert masks.sparsity() == pytest.approx(1 - 0.8**r, abs=0.005)
        if r:
            assert masks.is_subset_of(rounds[r - 1])
            for name, m in masks.items():  # exact per layer and step
                before = rounds[r - 1][name].reshape(4, -1).sum(1)
                assert torch.equal(m.reshape(4, -1).sum(1), before - (0.2 * before + 0.5).long())
    summary = finished.run.read_table("summary")
    assert sorted(summary["round"].unique()) == [0, 1, 2, 3]
    assert len(finished.run.read_table("rounds")) == 4
    model = load_model(finished.run.file("model"))
    assert attached_masks(model).equal(rounds[3])


def test_resume_after_interrupted_round_matches_uninterrupted(finished: PruningRun, tmp_path) -> None:
    class Interrupt(Exception):
        pass

    def stop_in_round_1(event: str, info: dict) -> None:
        if event == "graft" and info["round"] == 1 and info["step"] == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_pruning(tmp_path / "run", progress=stop_in_round_1)
    assert not (tmp_path / "run" / "masks" / "round_002.npz").exists()
    resumed = run_pruning(tmp_path / "run")
    for r in range(1, 4):
        assert resumed.masks_of(r).equal(finished.masks_of(r))
    cols = ["round", "train_loss", "train_acc", "val_acc", "mask_sparsity"]
    a, b = resumed.run.read_table("rounds")[cols], finished.run.read_table("rounds")[cols]
    assert a.equals(b)
    assert resumed.history[2]["graft_loss"] == finished.history[2]["graft_loss"]


def test_cli_one_round_writes_figures(tmp_path, capsys) -> None:
    from bvit_interp.cli import main

    out = tmp_path / "cli"
    args = ["prune", "--model-config", "bvit_micro", "--rounds", "1", "--epochs", "1", "--graft-epochs", "0.5",
            "--batch-size", "16", "--shapes-train-size", "32", "--val-limit", "16", "--train-eval-limit", "16",
            "--no-random-control", "--scope", "global", "--layers", "qkv,fc2", "--device", "cpu", "--out", str(out)]
    assert main(args) == 0
    for name in ("fig5_utilization.png", "fig14_pruning.png", "masks/round_001.npz", "model.masks.npz", "summary.parquet"):
        assert (out / name).exists(), name
    assert Run(out).is_complete and "mask sparsity" in capsys.readouterr().out
    assert main(args) == 2  # finished: refused without --force


def test_readme_paper_prune_example_runs_on_the_g1_model(tmp_path) -> None:
    """The README's `--preset paper --model-config bvit_prune_g1 --data shapes` line runs (shrunk) and builds App. G.1's model."""
    import json
    import shlex
    from pathlib import Path

    from bvit_interp.cli import main

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    line = next(ln for ln in readme.splitlines()
                if ln.startswith(("bvit-interp pruning --preset paper", "bvit-interp prune --preset paper"))
                and "--data shapes" in ln)
    argv = shlex.split(line.split("#")[0])[1:]
    out = tmp_path / "g1"
    tiny = ["--rounds", "0", "--epochs", "0.25", "--batch-size", "16", "--shapes-train-size", "64", "--val-limit", "8",
            "--train-eval-limit", "8", "--no-random-control", "--device", "cpu", "--out", str(out)]
    assert main([*argv, *tiny]) == 0
    config = json.loads((out / "meta.json").read_text())["models"][0]["config"]
    assert {k: config[k] for k in ("img_size", "patch_size", "embed_dim", "num_heads", "mlp_ratio", "blocks", "steps",
                                   "num_classes")} == {"img_size": 32, "patch_size": 4, "embed_dim": 256, "num_heads": 8,
                                                       "mlp_ratio": 4.0, "blocks": 1, "steps": 12, "num_classes": 10}
