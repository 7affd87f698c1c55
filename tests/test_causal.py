"""Causal analyses (issue 19): pairs and token groups, activation patching, DLA, attribution patching, probes, plots."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image
from torch import nn

from bvit_interp import build_model
from bvit_interp.analysis import causal_plots
from bvit_interp.analysis.causal import (
    ALL,
    KEYS,
    NO_CLASS,
    AttributionOptions,
    GroupPatch,
    PatchingOptions,
    activation_patching,
    attribution_patching,
    captum_attribution,
    counterfactual_pairs,
    direct_effects,
    direct_logit_attribution,
    file_pairs,
    fit_probes,
    frozen_scale,
    noise_pairs,
    pair_runs,
    patching_cost,
    rank_correlation,
    run_probes,
    summarise,
    token_groups,
)
from bvit_interp.analysis.causal.dla import decompose
from bvit_interp.analysis.causal.probes import colour_bin, control_labels, quadrant
from bvit_interp.analysis.sources import ShapesSource
from bvit_interp.data.shapes import ShapesConfig
from bvit_interp.model.patching import run_patched

SHAPES = ShapesConfig(img_size=16, supersample=2, num_val=40)
ATOL = 1e-8  # float64 models: "exactly" up to double rounding


def _micro(**overrides: object) -> nn.Module:
    """A 10-class float64 micro model (exact comparisons), its head scaled up to separate the two runs."""
    torch.manual_seed(0)
    model = build_model("bvit_micro", num_classes=10, **overrides).double().eval()
    with torch.no_grad():
        model.head.weight.mul_(40.0)
        if model.head_dist is not None:
            model.head_dist.weight.mul_(40.0)
    return model


@pytest.fixture(scope="module")
def micro():
    """1 block x 4 steps with a register and time embeddings."""
    return _micro(reg_tokens=1, time_embed=True)


@pytest.fixture(scope="module")
def hybrid():
    """2 blocks x 2 steps with time embeddings: layers differ from steps."""
    return _micro(blocks=2, steps=2, time_embed=True)


@pytest.fixture(scope="module")
def pairs(micro):
    return counterfactual_pairs(micro.config, range(4), "class", SHAPES)


def _model(request: pytest.FixtureRequest, which: str) -> nn.Module:
    return request.getfixturevalue(which)


# ----------------------------------------------------------------------------- pairs and groups
@pytest.mark.parametrize("kind", ["class", "none"])
def test_counterfactual_pairs_differ_only_inside_the_objects(micro, kind: str) -> None:
    p = counterfactual_pairs(micro.config, range(6), kind, SHAPES)
    changed = (p.clean != p.corrupted).any(1)
    assert changed.any()
    assert not (changed & ~p.region).any()
    assert p.clean_mask.any((1, 2)).all()
    if kind == "class":
        assert (p.corrupted_label != p.clean_label).all() and p.corrupted_mask.any((1, 2)).all()
    else:
        assert (p.corrupted_label == NO_CLASS).all() and not p.corrupted_mask.any()
    again = counterfactual_pairs(micro.config, range(6), kind, SHAPES)
    assert torch.equal(again.corrupted, p.corrupted)


def test_noise_corruption_changes_only_the_mask() -> None:
    model = _micro()
    source = ShapesSource(SHAPES)
    p = noise_pairs(source, range(5), model.config, "object", seed=3)
    diff = p.corrupted - p.clean
    assert torch.equal(diff * ~p.clean_mask[:, None], torch.zeros_like(diff))  # exactly nothing outside the mask
    assert ((diff != 0).any(1) == p.clean_mask).all()
    for i in range(len(p)):  # noise std = 3 x the image's std, on the masked values
        inside = diff[i][:, p.clean_mask[i]]
        assert 0.5 < float(inside.std() / (3 * p.clean[i].std())) < 1.6
    assert torch.equal(noise_pairs(source, range(5), model.config, "object", seed=3).corrupted, p.corrupted)
    assert not torch.equal(noise_pairs(source, range(5), model.config, "object", seed=4).corrupted, p.corrupted)
    whole = noise_pairs(source, range(2), model.config, "image", seed=3)
    assert whole.region.all() and (whole.corrupted != whole.clean).float().mean() > 0.99
    assert (p.corrupted_label == NO_CLASS).all()
    with pytest.raises(ValueError, match="noise region"):
        noise_pairs(source, range(2), model.config, "edges")


def test_file_pairs(tmp_path) -> None:
    model = _micro()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / f"{name}.png")
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[4:8, 4:8] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    good = pd.DataFrame({"clean": ["a.png"], "corrupted": ["b.png"], "clean_label": [2], "corrupted_label": ["n4"],
                         "clean_mask": ["m.png"]})
    good.to_csv(tmp_path / "pairs.csv", index=False)
    good.to_parquet(tmp_path / "pairs.parquet")
    names = [f"n{i}" for i in range(10)]
    for file in ("pairs.csv", "pairs.parquet"):
        p = file_pairs(tmp_path / file, model.config, categories=names)
        assert p.clean_label.tolist() == [2] and p.corrupted_label.tolist() == [4]
        assert int(p.clean_mask.sum()) == 16 and not p.corrupted_mask.any()
    bad = [
        (good.drop(columns="corrupted"), ValueError, "lacks column"),
        (good.assign(clean="missing.png"), FileNotFoundError, "missing.png"),
        (good.assign(clean_label=12), ValueError, r"0\.\.9"),
        (good.assign(corrupted_label="zebra"), ValueError, "not a class index"),
    ]
    for table, err, match in bad:
        table.to_csv(tmp_path / "bad.csv", index=False)
        with pytest.raises(err, match=match):
            file_pairs(tmp_path / "bad.csv", model.config, categories=names)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        file_pairs(tmp_path / "nope.csv", model.config)
    with pytest.raises(ValueError, match="csv or .parquet"):
        file_pairs(tmp_path / "a.png", model.config)


@pytest.mark.parametrize("overrides", [{"reg_tokens": 2}, {"dist_token": True, "reg_tokens": 1}, {}])
def test_token_groups_partition_the_tokens(overrides) -> None:
    cfg = build_model("bvit_micro", **overrides).config
    mask = torch.zeros(2, 16, 16, dtype=torch.bool)
    mask[0, 0:4, 0:4] = True  # patch 0 fully
    mask[0, 0:1, 4:7] = True  # patch 1: 3 of 16 pixels (< 0.25)
    mask[1, 0:2, 4:6] = True  # patch 1: 4 of 16 pixels (= 0.25)
    groups = token_groups(cfg, mask)
    n = cfg.num_prefix_tokens + cfg.num_patches
    assert torch.equal(sum(g.long() for g in groups.values()), torch.ones(2, n, dtype=torch.long))
    assert ("dist" in groups) == cfg.dist_token and ("registers" in groups) == bool(cfg.reg_tokens)
    npt = cfg.num_prefix_tokens
    assert groups["object"][0].nonzero().flatten().tolist() == [npt]
    assert groups["object"][1].nonzero().flatten().tolist() == [npt + 1]
    assert groups["cls"][:, 0].all() and int(groups["cls"].sum()) == 2


# ----------------------------------------------------------------------------- activation patching
@pytest.mark.parametrize("which", ["micro", "hybrid"])
def test_patching_end_points(request, which: str) -> None:
    """The whole residual stream from the clean run recovers 1; from the corrupted run 0; in both directions."""
    model = _model(request, which)
    p = counterfactual_pairs(model.config, range(4), "class", SHAPES)
    runs = pair_runs(model, p)
    assert (runs.gap.abs() > 1e-3).all()
    opts = PatchingOptions(sites=("resid_pre", "resid_post", "attn.z"), groups=(ALL, "cls", "object", "other"),
                           min_gap=0.0, n_boot=50)
    per_pair, summary = activation_patching(model, p, opts, runs)
    whole = per_pair[(per_pair["group"] == ALL) & (per_pair["site"] != "attn.z")]
    den, noi = whole[whole["direction"] == "denoising"], whole[whole["direction"] == "noising"]
    np.testing.assert_allclose(den["recovered"], 1.0, atol=ATOL)
    np.testing.assert_allclose(noi["recovered"], 0.0, atol=ATOL)
    # The groups partition the tokens: patching all of them at once is the whole-site patch.
    from bvit_interp.analysis.causal.activation import capture_runs, select_groups

    clean, corrupted = capture_runs(model, p, ("attn.z",))
    groups = select_groups(model, p, None, 0.25)
    with torch.no_grad():
        for layer in range(model.num_layers()):
            parts = [GroupPatch("attn.z", layer, clean["attn.z", layer], head=1, token_mask=m)
                     for g, m in groups.items() if g != ALL]
            logits = run_patched(model, corrupted["resid_pre", layer], [parts], start=layer)[0]
            whole_head = per_pair.query("direction == 'denoising' and site == 'attn.z' and head == 1 "
                                        f"and group == '{ALL}' and step == {layer + 1}")["ld"].to_numpy()
            ld = (logits.gather(1, runs.right[:, None]) - logits.gather(1, runs.wrong[:, None]))[:, 0]
            np.testing.assert_allclose(ld.numpy(), whole_head, atol=ATOL)
    assert set(summary.columns) >= {*KEYS, "mean", "ci_low", "ci_high", "pooled", "pooled_low", "pooled_high", "pairs"}
    ends = summary[(summary["group"] == ALL) & (summary["site"] == "resid_pre")]
    np.testing.assert_allclose(ends["pooled"], np.where(ends["direction"] == "denoising", 1.0, 0.0), atol=ATOL)
    assert (ends["ci_low"] <= ends["mean"] + 1e-9).all() and (ends["mean"] <= ends["ci_high"] + 1e-9).all()


@pytest.mark.parametrize("which", ["micro", "hybrid"])
def test_resumed_patch_equals_full_forward_with_the_same_hook(request, which: str) -> None:
    model = _model(request, which)
    p = counterfactual_pairs(model.config, range(3), "class", SHAPES)
    opts = PatchingOptions(sites=("attn.z", "mlp_out"), groups=(ALL, "object", "cls"), min_gap=0.0, n_boot=10)
    resumed, _ = activation_patching(model, p, opts)
    full, _ = activation_patching(model, p, PatchingOptions(**{**opts.to_dict(), "resume": False, "max_batch": 3}))
    np.testing.assert_allclose(resumed["ld"], full["ld"], atol=ATOL)
    # An independently written hook on a full forward: object tokens of head 2, per pair.
    runs = pair_runs(model, p)
    obj = token_groups(model.config, p.object_mask)["object"]
    clean_x, corrupted_x = p.clean.double(), p.corrupted.double()
    with torch.no_grad(), model.capture("attn.z") as clean:
        model(clean_x)
    for direction, x in (("denoising", corrupted_x), ("noising", clean_x)):
        if direction == "noising":
            with torch.no_grad(), model.capture("attn.z") as source:
                model(corrupted_x)
        else:
            source = clean
        for layer in range(model.num_layers()):
            src = source["attn.z", layer]

            def edit(z: torch.Tensor, src: torch.Tensor = src) -> torch.Tensor:
                z = z.clone()
                for i in range(len(z)):
                    z[i, 2, obj[i]] = src[i, 2, obj[i]]
                return z

            with torch.no_grad(), model.patch({model.hook_name("attn.z", layer): edit}):
                logits = model(x)
            ld = (logits.gather(1, runs.right[:, None]) - logits.gather(1, runs.wrong[:, None]))[:, 0].numpy()
            got = resumed.query(f"direction == '{direction}' and site == 'attn.z' and head == 2 "
                                f"and group == 'object' and step == {layer + 1}")["ld"].to_numpy()
            np.testing.assert_allclose(got, ld, atol=ATOL)


def test_summary_bootstrap_and_min_gap(micro, pairs) -> None:
    runs = pair_runs(micro, pairs)
    table = pd.DataFrame({"direction": "denoising", "site": "x", "step": 1, "head": -1, "group": ALL,
                          "pair": np.arange(4), "recovered": [0.0, 1.0, 2.0, np.nan], "ld": runs.clean_ld.numpy()})
    s = summarise(table, KEYS, runs, n_boot=500, seed=1)
    assert s["mean"].iloc[0] == pytest.approx(1.0) and s["pairs"].iloc[0] == 3
    assert 0.0 <= s["ci_low"].iloc[0] <= 1.0 <= s["ci_high"].iloc[0] <= 2.0
    assert s["pooled"].iloc[0] == pytest.approx(1.0)
    assert summarise(table, KEYS, runs, n_boot=500, seed=1).equals(s)


def test_patching_cost_and_validation(micro, pairs) -> None:
    cost = patching_cost(micro, pairs, repeats=1, warmup=False)
    assert cost["cells"] == micro.num_layers() * 4 and cost["naive_s"] > 0 and cost["resumed_s"] > 0
    assert cost["resumed_layer_applications"] == 4 * 4 * 5 / 2
    with pytest.raises(ValueError, match="directions"):
        PatchingOptions(directions=("sideways",))
    with pytest.raises(ValueError, match="token groups"):
        activation_patching(_micro(), pairs, PatchingOptions(groups=("registers",)))
    with pytest.raises(ValueError, match="steps must lie"):
        activation_patching(micro, pairs, PatchingOptions(steps=(9,)))
    with pytest.raises(ValueError, match="class indices"):
        pair_runs(build_model("bvit_micro").eval(), pairs)


# ----------------------------------------------------------------------------- DLA
@pytest.mark.parametrize("overrides", [{"reg_tokens": 1, "time_embed": True}, {"norm": "layernorm"},
                                       {"dist_token": True}, {"blocks": 2, "steps": 2, "time_embed": True}])
def test_dla_terms_sum_to_the_logit_difference(overrides) -> None:
    model = _micro(**overrides)
    p = counterfactual_pairs(model.config, range(3), "class", SHAPES)
    terms, totals = direct_logit_attribution(model, p)
    # Exact with the scale frozen at the same (clean) run: float64 rounding only (1e-9 in float32 terms: 1e-4).
    np.testing.assert_allclose(totals["total"], totals["ld"], rtol=0, atol=1e-9)
    heads = terms[terms["term"] == "head"]
    assert len(heads) == 3 * model.num_layers() * model.config.num_heads
    # The frozen scale is the norm's own: norm(x) = s * centre(x) * w + b on the clean run.
    parts = decompose(model, p.clean.double())
    x = parts["final"]
    s = frozen_scale(model, x)
    centred = x - x.mean(-1, keepdim=True) if overrides.get("norm") == "layernorm" else x
    bias = model.norm.bias if overrides.get("norm") == "layernorm" else 0.0
    torch.testing.assert_close(model.norm(x), s * centred * model.norm.weight + bias, atol=1e-12, rtol=1e-12)
    # On the corrupted run the clean scale is an approximation: the error is reported, not zero.
    _, corrupted = direct_logit_attribution(model, p, run="corrupted")
    assert corrupted["error"].abs().max() > 0


def test_direct_effects(hybrid) -> None:
    p = counterfactual_pairs(hybrid.config, range(3), "class", SHAPES)
    eff = direct_effects(hybrid, p, "denoising", min_gap=0.0)
    np.testing.assert_allclose(eff["indirect"], eff["total"] - eff["direct"], atol=1e-12)
    per_pair, _ = activation_patching(hybrid, p, PatchingOptions(sites=("attn.z",), groups=(ALL,),
                                                                 directions=("denoising",), min_gap=0.0, n_boot=10))
    merged = eff.merge(per_pair, on=["step", "head", "pair"])
    np.testing.assert_allclose(merged["ld_total"], merged["ld"], atol=ATOL)
    # With an identity final norm the readout is linear: path patching = the frozen-scale DLA version.
    linear = _micro(blocks=2, steps=2)
    linear.norm = nn.Identity()
    eff = direct_effects(linear, counterfactual_pairs(linear.config, range(3), "class", SHAPES), "noising", min_gap=0.0)
    np.testing.assert_allclose(eff["direct"], eff["direct_linear"], atol=1e-6)


# ----------------------------------------------------------------------------- attribution patching
def test_attribution_patching_is_exact_on_a_linear_readout() -> None:
    """Final norm = Identity: the logit difference is linear in the last layer's resid_post and mlp_out."""
    model = _micro(reg_tokens=1)
    model.norm = nn.Identity()
    p = counterfactual_pairs(model.config, range(4), "class", SHAPES)
    last = model.num_layers()
    opts = AttributionOptions(sites=("resid_post", "mlp_out"), steps=(last,), min_gap=0.0)
    approx = attribution_patching(model, p, opts)
    exact, exact_summary = activation_patching(model, p, opts.patching(n_boot=20))
    merged = approx.merge(exact, on=[*KEYS, "pair"], suffixes=("_approx", "_exact"))
    assert len(merged) == len(exact) == len(approx)
    np.testing.assert_allclose(merged["ld_approx"], merged["ld_exact"], atol=ATOL)
    np.testing.assert_allclose(merged["recovered_approx"], merged["recovered_exact"], atol=1e-6)
    runs = pair_runs(model, p)
    corr = rank_correlation(exact_summary, summarise(approx, KEYS, runs, n_boot=20))
    assert corr["rho"].iloc[-1] > 0.99
    ig = captum_attribution(model, p, "resid_post", "ig", "denoising", steps=[last], groups=(ALL,), n_steps=4,
                            min_gap=0.0)
    ex = exact.query(f"direction == 'denoising' and site == 'resid_post' and group == '{ALL}'")
    np.testing.assert_allclose(ig["ld"], ex["ld"], atol=ATOL)


def test_captum_matches_attribution_patching_and_ig_completeness(micro, pairs) -> None:
    opts = AttributionOptions(sites=("attn.z",), directions=("noising",), groups=(ALL, "object"), min_gap=0.0)
    mine = attribution_patching(micro, pairs, opts)
    diff = captum_attribution(micro, pairs, "attn.z", "grad_x_diff", "noising", groups=(ALL, "object"), min_gap=0.0)
    merged = mine.merge(diff, on=[*KEYS, "pair"], suffixes=("", "_captum"))
    np.testing.assert_allclose(merged["delta"], merged["delta_captum"], atol=1e-10, rtol=1e-8)
    gxa = captum_attribution(micro, pairs, "attn.z", "grad_x_act", "noising", steps=[2], groups=(ALL,))
    assert gxa["ld"].isna().all() and np.isfinite(gxa["delta"]).all()
    # IG over the whole site (all heads summed) = the exact patch of the site, by completeness.
    ig = captum_attribution(micro, pairs, "attn.z", "ig", "noising", steps=[2], groups=(ALL,), n_steps=24, min_gap=0.0)
    exact, _ = activation_patching(micro, pairs, PatchingOptions(sites=("attn.z",), directions=("noising",),
                                                                 groups=(ALL,), per_head=False, steps=(2,),
                                                                 min_gap=0.0, n_boot=10))
    total = ig.groupby("pair")["delta"].sum().to_numpy()
    change = exact["ld"].to_numpy() - pair_runs(micro, pairs).clean_ld.numpy()
    np.testing.assert_allclose(total, change, atol=0.02 * float(np.abs(change).max()) + 1e-4)


# ----------------------------------------------------------------------------- probes
def test_probe_targets_and_controls() -> None:
    assert [colour_bin(c) for c in ((1, 0, 0), (1, 1, 0), (0, 1, 0), (0, 1, 1), (0, 0, 1), (1, 0, 1), (0.5, 0.5, 0.5))] \
        == [0, 1, 2, 3, 4, 5, 6]
    m = np.zeros((8, 8), dtype=bool)
    m[0:2, 5:7] = True
    assert quadrant(m) == 1 and quadrant(m[::-1]) == 3
    rng = np.random.default_rng(0)
    targets = pd.DataFrame({"class": rng.integers(0, 10, 300), "quadrant": rng.integers(0, 4, 300),
                            "colour": rng.integers(0, 7, 300)})
    ctrl = control_labels(targets, "class", seed=0)
    types = list(zip(targets["quadrant"], targets["colour"], strict=True))
    assert all(len({c for c, t2 in zip(ctrl, types, strict=True) if t2 == t}) == 1 for t in set(types))
    assert set(ctrl) <= set(targets["class"])
    assert np.array_equal(ctrl, control_labels(targets, "class", seed=0))


def test_probes_control_near_chance_on_random_features() -> None:
    rng = np.random.default_rng(0)
    n = 600
    targets = pd.DataFrame({"class": rng.integers(0, 4, n), "quadrant": rng.integers(0, 4, n),
                            "colour": rng.integers(0, 3, n)})
    noise = rng.standard_normal((2, n, 12)).astype(np.float32)
    informative = noise.copy()
    informative[1, :, :4] += 4.0 * np.eye(4)[targets["class"]]  # step 2 encodes the class, nothing else
    table = fit_probes({"cls": noise, "object": informative}, targets)
    assert len(table) == 2 * 3 * 2
    rand = table[table["representation"] == "cls"]
    assert (rand["control_accuracy"] < rand["control_majority"] + 0.1).all()
    assert (rand["accuracy"] < rand["majority"] + 0.1).all()
    hit = table.query("representation == 'object' and task == 'class' and step == 2").iloc[0]
    assert hit["accuracy"] > 0.95 and hit["control_accuracy"] < hit["control_majority"] + 0.1
    assert hit["selectivity"] > 0.5


def test_run_probes_on_a_model(micro) -> None:
    p = counterfactual_pairs(micro.config, range(24), "class", SHAPES)
    table, targets = run_probes(micro, p.clean, p.clean_mask, p.clean_label)
    assert len(targets) == 24 and set(targets.columns) == {"class", "quadrant", "colour"}
    assert len(table) == 2 * 3 * micro.num_layers()
    assert table["accuracy"].between(0, 1).all()
    np.testing.assert_allclose(table["selectivity"], table["accuracy"] - table["control_accuracy"])


# ----------------------------------------------------------------------------- plots
def test_plots_return_figures(micro, pairs) -> None:
    opts = PatchingOptions(sites=("attn.z", "mlp_out"), groups=(ALL, "object"), min_gap=0.0, n_boot=10)
    _, exact = activation_patching(micro, pairs, opts)
    runs = pair_runs(micro, pairs)
    approx = summarise(attribution_patching(micro, pairs, AttributionOptions(sites=opts.sites, groups=opts.groups,
                                                                             min_gap=0.0)), KEYS, runs, n_boot=10)
    terms, _ = direct_logit_attribution(micro, pairs)
    effects = direct_effects(micro, pairs, min_gap=0.0)
    rng = np.random.default_rng(0)
    targets = pd.DataFrame({"class": rng.integers(0, 3, 80), "quadrant": rng.integers(0, 4, 80),
                            "colour": rng.integers(0, 3, 80)})
    probes = fit_probes({"cls": rng.standard_normal((2, 80, 4)), "object": rng.standard_normal((2, 80, 4))}, targets)
    figs = [
        causal_plots.plot_step_head_maps({"patching": exact, "attribution": approx}),
        causal_plots.plot_site_map(exact, "noising"),
        causal_plots.plot_dla(terms),
        causal_plots.plot_direct_indirect(effects),
        causal_plots.plot_agreement(exact, approx),
        causal_plots.plot_probe_curves(probes),
    ]
    assert all(isinstance(f, Figure) for f in figs)
    assert len(figs[0].axes) == 3  # two maps and the colour bar
