"""Streamlit results browser: every page on a real pointing run and minimal runs of the other analyses.

The pointing run is made by the real command on a 2-step bvit_tiny; the other analyses get
small runs written through ``Run`` with the tables their commands write (same names and
columns), so the pages are checked against the run format without running the slow analyses.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

from bvit_interp import build_model, save_model  # noqa: E402
from bvit_interp.registry import analyses, find_analysis  # noqa: E402
from bvit_interp.results import RESULTS_FORMAT, Run  # noqa: E402

APP = Path(__file__).resolve().parents[1] / "app" / "main.py"
if str(APP.parent) not in sys.path:  # the app's own modules (app/lib), as `streamlit run` sees them
    sys.path.insert(0, str(APP.parent))
from lib.runs import (  # noqa: E402
    check_meta,
    data_label,
    figures_for,
    find_checkpoint,
    find_runs,
    is_within,
    open_data,
    step_head_filter,
)

STEPS, HEADS = 2, 4
TITLES = {a.key: a.title for a in analyses()}


@dataclass
class Roots:
    """Directories the tests browse."""

    runs: Path  # a real pointing run + minimal runs of every other analysis
    models: Path  # the checkpoint the pointing run used, with a model card
    empty: Path  # an existing, empty runs root
    broken: Path  # a half-written pointing run, an old-format run, an unreadable meta.json


def _figure(title: str):
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([1, 2], [0.2, 0.4])
    ax.set_title(title)
    return fig


def _run(root: Path, name: str, analysis: str, model: str = "bvit_t", steps: int = STEPS) -> Run:
    meta = {"analysis": analysis, "models": [{"name": model, "path": str(root / "nowhere" / model),
                                              "config": {"steps": steps, "num_heads": HEADS}}],
            "data": "shapes", "options": {"limit": 16}, "seed": 0}
    return Run.create(root / name, meta)


def make_minimal_runs(root: Path) -> None:
    """One small complete run per non-pointing analysis, with the tables and figures its command writes."""
    rng = np.random.default_rng(0)
    steps, heads = np.arange(1, STEPS + 1), np.arange(HEADS)

    run = _run(root, "rank", "svd")  # an old run: meta value "svd", now an alias of rank, opens on the rank page
    run.write_table("weight_ranks", pd.DataFrame(
        [{"model": "bvit_t", "block": 0, "matrix": m, "head": pd.NA, "rows": 128, "cols": 128, "full_rank": 128,
          "energy_rank": 100 + i, "stable_rank": 10.0, "entropy_rank": 90.0} for i, m in enumerate(("q", "k", "v", "fc1"))]
        + [{"model": "bvit_t", "block": 0, "matrix": m, "head": int(h), "rows": 32, "cols": 128, "full_rank": 32,
            "energy_rank": 20 + int(h), "stable_rank": 3.0, "entropy_rank": 25.0} for m in ("q", "k", "v", "o") for h in heads]
    ).astype({"head": "Int64"}))
    run.write_table("cls_ranks", pd.DataFrame(
        [{"model": "bvit_t", "step": int(s), "centred": c, "images": 16, "width": 128, "full_rank": 16 - int(c),
          "energy_rank": float(3 + s + c), "stable_rank": 1.5, "entropy_rank": 4.0} for s in steps for c in (False, True)]))
    run.write_table("sweep", pd.DataFrame({"model": "bvit_t", "rank": [16, 32, 64], "accuracy": [0.1, 0.2, 0.25],
                                           "baseline_accuracy": 0.3, "matrices": "fc1,fc2"}))
    run.write_figure("fig6_rank", _figure("fig6"))
    run.complete()

    run = _run(root, "ablation", "ablation")
    run.write_table("head_ablation", pd.DataFrame(
        [{"model": "bvit_t", "step": int(s), "head": int(h), "mode": mode, "accuracy": 0.3 - 0.01 * h * s,
          "drop": 0.01 * h * s, "ce": 2.0, "ce_increase": 0.02 * h, "images": 16}
         for s in steps for h in heads for mode in ("zero", "mean")]))
    run.write_table("step_ablation", pd.DataFrame({"model": "bvit_t", "step": steps, "accuracy": 0.2, "drop": 0.1,
                                                   "ce": 2.1, "ce_increase": 0.1, "images": 16}))
    run.write_figure("ablation_bvit_t", _figure("ablation"))
    run.complete()

    run = _run(root, "lens", "lens")
    run.write_table("lens", pd.DataFrame({"model": "bvit_t", "step": np.arange(1, 2 * STEPS + 1),
                                          "accuracy": [0.1, 0.3, 0.25, 0.2], "confidence": 0.4, "p_label": 0.2,
                                          "images": 16, "flip_rate": [np.nan, 0.2, 0.1, 0.1],
                                          "beyond_horizon": [False, False, True, True], "recurrent_step": [1, 2, 3, 4]}))
    run.write_table("predictions", pd.DataFrame({"model": "bvit_t", "image": np.tile(np.arange(16), 4),
                                                 "step": np.repeat(np.arange(1, 5), 16), "label": 1, "pred": 1,
                                                 "confidence": 0.5, "p_label": 0.5, "correct": True}))
    run.write_figure("lens", _figure("lens"))
    run.complete()

    run = _run(root, "early_exit", "early_exit")
    taus = [0.5, 0.9, np.nan]
    run.write_table("sweep", pd.DataFrame({"model": "bvit_t", "threshold": taus, "no_exit": [False, False, True],
                                           "accuracy": [0.2, 0.25, 0.3], "mean_steps": [1.2, 1.6, 2.0],
                                           "exited_fraction": [0.8, 0.4, 0.0], "gflops": [0.1, 0.15, 0.2],
                                           "ms_per_image": 1.0, "images": 16}))
    run.write_table("exits", pd.DataFrame({"model": "bvit_t", "step": [1], "accuracy": [0.2], "lens_accuracy": [0.1],
                                           "confidence": [0.5], "auroc": [0.6]}))
    run.write_table("distribution", pd.DataFrame({"model": "bvit_t", "threshold": [0.5, 0.5, 0.9, 0.9],
                                                  "step": [1, 2, 1, 2], "fraction": [0.8, 0.2, 0.4, 0.6]}))
    run.write_figure("tradeoff", _figure("tradeoff"))
    run.complete()

    run = _run(root, "trajectories", "trajectories")
    pts = pd.DataFrame({"model": "bvit_t", "image": np.tile(np.arange(12), STEPS), "class": np.tile(["a", "b", "c"], 4 * STEPS),
                        "label": np.tile([0, 1, 2], 4 * STEPS), "step": np.repeat(steps, 12),
                        "x": rng.normal(size=12 * STEPS), "y": rng.normal(size=12 * STEPS), "knn_kept": 0.5})
    run.write_table("points", pts)
    run.write_table("centroids", pts.groupby(["model", "label", "class", "step"], as_index=False)[["x", "y"]].mean()
                    .assign(spread=1.0))
    run.write_table("step_stats", pd.DataFrame({"model": "bvit_t", "step": steps, "mean_norm": 3.0,
                                                "cos_prev": [np.nan, 0.9], "rel_change": [np.nan, 0.3]}))
    run.write_figure("classes_bvit_t", _figure("classes"))
    run.complete()

    run = _run(root, "pruning", "pruning")
    rounds = [0, 1]
    run.write_table("summary", pd.DataFrame(
        [{"round": r, "layer_type": k, "n_weights": 100, "mask_sparsity": 0.5 * r, "weight_sparsity": 0.4 * r,
          "weight_sparsity_random": 0.1 * r, "jaccard": 1 - 0.1 * r, "jaccard_random": 1 - 0.5 * r,
          "specialization": 0.1 * r, "specialization_random": 0.05 * r, "empty_steps": 0}
         for r in rounds for k in ("all", "qkv")]))
    run.write_table("steps", pd.DataFrame(
        [{"round": r, "layer_type": k, "step": int(s), "density": 1 - 0.4 * r, "active": 60, "exclusive": 5,
          "specialization": 0.1, "specialization_random": 0.05, "empty": False}
         for r in rounds for k in ("all", "qkv") for s in steps]))
    run.write_table("pairs", pd.DataFrame({"round": rounds, "layer_type": "all", "step_i": 1, "step_j": 2,
                                           "jaccard": [1.0, 0.8], "jaccard_random": [1.0, 0.5]}))
    run.write_table("rounds", pd.DataFrame({"round": rounds, "train_acc": [0.2, 0.3], "val_acc": [0.2, 0.25],
                                            "val_acc_random": [None, None]}))
    run.write_figure("fig14_pruning", _figure("pruning"))
    run.complete()

    run = _run(root, "featviz", "featviz")
    neurons = [3, 7]
    targets = [(n, int(s)) for n in neurons for s in steps]
    run.write_table("targets", pd.DataFrame(
        [{"neuron": n, "step": s, "patch": -1, "image": 0, "activation": 2.0 + s, "best_real": 1.5,
          "ratio": (2.0 + s) / 1.5, "hf_energy": 0.1, "spectral_slope": -2.0, "png_bpp": 3.0} for n, s in targets]))
    run.write_table("cross_steps", pd.DataFrame(
        [{"neuron": n, "step": s, "image": 0, "eval_step": int(e), "activation": 1.0 + e, "best_real": 1.5,
          "ratio": (1.0 + e) / 1.5} for n, s in targets for e in steps]))
    run.write_table("exemplars", pd.DataFrame(
        [{"neuron": n, "step": s, "rank": k, "image_index": k, "value": 1.5 - 0.1 * k, "patch": 5}
         for n, s in targets for k in range(3)]))
    run.write_arrays("featviz", images=rng.random((len(targets), 1, 3, 32, 32), dtype=np.float32),
                     neurons=np.array([n for n, _ in targets]), steps=np.array([s for _, s in targets]),
                     exemplar_images=rng.random((len(targets), 3, 3, 32, 32), dtype=np.float32))
    run.write_figure("grid", _figure("grid"))
    run.complete()

    run = _run(root, "transfer", "transfer")
    methods = ["linear_probe", "full_finetune", "lora_qv", "lora_ffn"]
    results = pd.DataFrame([{"model": "bvit_t", "dataset": "shapes-b", "method": m, "label": m, "seed": seed,
                             "trainable_params": 1000 * i, "accuracy": 0.3 + 0.05 * i + 0.01 * seed}
                            for i, m in enumerate(methods) for seed in (0, 1)])
    from bvit_interp.transfer import summarize_transfer
    from bvit_interp.transfer.report import table4

    summary = summarize_transfer(results)
    run.write_table("results", results)
    run.write_table("summary", summary)
    run.write_table("table4", table4(summary))
    run.write_table("history", pd.DataFrame(
        [{"model": "bvit_t", "dataset": "shapes-b", "method": m, "seed": seed, "epoch": e, "lr": 1e-3,
          "train_loss": 1.0 / e, "train_accuracy": 0.2 * e, "val_accuracy": 0.15 * e, "seconds": float(e)}
         for m in methods for seed in (0, 1) for e in (1, 2)]))
    run.write_figure("accuracy_vs_params", _figure("transfer"))
    run.complete()


def build_roots(base: Path) -> Roots:
    """A real pointing run, minimal runs of the other analyses, and the empty / broken cases."""
    from bvit_interp.cli import main as cli

    models = base / "models"
    save_model(build_model("bvit_tiny", steps=STEPS), models / "bvit_t", metadata={"training": {"val_acc": 0.125}})
    (models / "figures").mkdir()
    _figure("learning curves").savefig(models / "figures" / "curves.png")
    (base / "elsewhere").mkdir()
    _figure("outside").savefig(base / "elsewhere" / "outside.png")  # in no root the browser may read
    (models / "MODEL_CARD.md").write_text("# Test models\n\nbvit_t: a 2-step bvit_tiny with random weights.\n\n"
                                          "![learning curves](figures/curves.png)\n![outside](../elsewhere/outside.png)\n")
    runs = base / "runs"
    assert cli(["pointing", "--model", str(models / "bvit_t"), "--limit", "16", "--batch-size", "16",
                "--overlays", "2", "--out", str(runs / "pointing")]) == 0
    make_minimal_runs(runs)
    assert cli(["causal", "--model", str(models / "bvit_t"), "--limit", "4", "--probe-limit", "16", "--device", "cpu",
                "--out", str(runs / "causal")]) == 0  # the real command: a 2-step model takes seconds
    (runs / "train" / "bvit_t").mkdir(parents=True)  # a folder without meta.json is not a run

    empty = base / "empty"
    empty.mkdir()
    broken = base / "broken"
    half = Run.create(broken / "pointing_half", {"analysis": "pointing", "models": [{"name": "bvit_t"}],
                                                 "data": "shapes:val (img_size=32, seed=0)", "options": {}})
    half.write_table("parts/bvit_t/00000000_points", pd.DataFrame({"image_index": [0], "step": [1], "head": [0]}))
    old = broken / "lens_old"
    old.mkdir()
    (old / "meta.json").write_text(json.dumps({"analysis": "lens", "status": "complete", "models": []}))
    pd.DataFrame({"step": [1], "accuracy": [0.5]}).to_parquet(old / "lens.parquet")
    bad = broken / "unreadable"
    bad.mkdir()
    (bad / "meta.json").write_text('{"analysis": "svd", "status": ')
    return Roots(runs, models, empty, broken)


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> Roots:
    return build_roots(tmp_path_factory.mktemp("app"))


def open_app(monkeypatch: pytest.MonkeyPatch, runs: Path, models: Path, page: str | None = None) -> AppTest:
    """The app on ``runs`` / ``models``, on the overview or on ``page`` (an analysis key)."""
    monkeypatch.setenv("BVIT_APP_RUNS", str(runs))
    monkeypatch.setenv("BVIT_APP_MODELS", str(models))
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    if page is not None:
        at.switch_page(f"views/{page}.py").run()
    return at


def texts(elements) -> list[str]:
    return [str(e.value) for e in elements]


def assert_clean(at: AppTest) -> None:
    assert not at.exception, texts(at.exception)
    assert not at.error, texts(at.error)


# --------------------------------------------------------------------------- support module


def test_find_runs_and_problems(roots: Roots) -> None:
    runs = {r.name: r for r in find_runs(roots.runs)}
    assert set(runs) == {"pointing", "rank", "ablation", "lens", "early_exit", "trajectories", "pruning", "featviz",
                         "causal", "transfer"}
    assert {name: r.spec.key for name, r in runs.items()} == {name: name for name in runs}  # "svd" -> rank
    assert all(r.readable and r.complete and not r.problems for r in runs.values())
    assert {"hit_rates", "summary", "points"} <= set(runs["pointing"].tables)
    assert "parts" not in " ".join(runs["pointing"].tables)
    broken = {r.name: r for r in find_runs(roots.broken)}
    assert broken["pointing_half"].readable and not broken["pointing_half"].complete
    assert not broken["lens_old"].readable and "older version" in broken["lens_old"].problems[0].message
    assert not broken["unreadable"].readable and "not valid JSON" in broken["unreadable"].problems[0].message
    assert find_runs(roots.empty) == [] and find_runs(roots.empty / "missing") == []


def test_meta_checks_and_paths(roots: Roots, tmp_path: Path) -> None:
    newer = check_meta({"format": RESULTS_FORMAT + 1, "status": "complete", "analysis": "svd"})
    assert [p.level for p in newer] == ["error"] and "newer version" in newer[0].message
    assert [p.level for p in check_meta({"format": RESULTS_FORMAT, "status": "complete", "analysis": "x"})] == ["info"]
    assert is_within(roots.runs / "pointing" / "meta.json", [roots.runs])
    assert not is_within(roots.runs / ".." / "models", [roots.runs])
    (roots.runs / "link").symlink_to(roots.models)
    try:
        assert not is_within(roots.runs / "link" / "bvit_t.json", [roots.runs])
    finally:
        (roots.runs / "link").unlink()
    entry = find_runs(roots.runs)[[r.name for r in find_runs(roots.runs)].index("pointing")].models[0]
    stem, _ = find_checkpoint(entry, [roots.runs, roots.models], roots.models)
    assert stem == roots.models / "bvit_t"
    stem, message = find_checkpoint(entry, [roots.runs, tmp_path], tmp_path)
    assert stem is None and "outside" in message
    source = open_data("shapes:val (img_size=32, seed=0)", [])  # an old run's display string
    assert len(source) > 0 and source.load(0).mask.shape == (32, 32)
    meta_data = {r.name: r for r in find_runs(roots.runs)}["pointing"].meta["data"]  # structured: a dict
    assert meta_data["kind"] == "shapes" and data_label(meta_data) == "shapes:val (img_size=32, seed=0)"
    assert open_data(meta_data, []).load(1500).name == source.load(1500).name == "shape_001500"
    assert find_analysis("svd").key == "rank" and find_analysis("prune").key == "pruning"
    assert find_analysis("ablate").key == "ablation" and find_analysis("pointing-game").key == "pointing"
    with pytest.raises(ValueError, match="outside"):
        open_data("imagenet-s:/somewhere/else (validation)", [roots.runs])
    assert figures_for(["curves", "heatmap_a", "heatmap_b_a"], ["a", "b_a"], "b_a") == ["curves", "heatmap_b_a"]
    assert figures_for(["curves", "heatmap_a", "heatmap_b_a"], ["a", "b_a"], "a") == ["curves", "heatmap_a"]
    df = pd.DataFrame({"step": [1, 1, 2], "head": pd.array([0, pd.NA, 0], dtype="Int64")})
    assert len(step_head_filter(df, 1, 0)) == 2


# --------------------------------------------------------------------------- pages


def test_every_page_renders(roots: Roots, monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_app(monkeypatch, roots.runs, roots.models)
    assert_clean(at)
    assert texts(at.title) == ["bvit-interp results"]
    assert not at.warning, texts(at.warning)
    frames = [e.value for e in at.dataframe]
    assert any("run" in f.columns and set(f["run"]) >= {"pointing", "rank"} for f in frames)
    card = next(f for f in frames if "model" in f.columns and "bvit_t" in set(f["model"]))
    assert card["training.val_acc"].tolist() == [0.125] and card["parameters"].iloc[0] > 0
    assert len(at.get("image")) == 1, "the model card's figure inside the models directory, not the one outside"
    assert any("Every analysis has a complete run" in s for s in texts(at.success))
    for spec in analyses():
        at.switch_page(f"views/{spec.key}.py").run()
        assert_clean(at)
        assert texts(at.title) == [spec.title]
        assert not at.warning, (spec.key, texts(at.warning))
        assert not at.info, (spec.key, texts(at.info))
        assert "Tables" in texts(at.subheader), spec.key
        assert at.get("download_button"), f"{spec.key}: every table has download buttons"


def _pointing_state(at: AppTest) -> tuple[list[str], list[str]]:
    return texts(at.subheader), [m.label for m in at.metric]


def test_step_and_head_change_what_is_shown(roots: Roots, monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_app(monkeypatch, roots.runs, roots.models, "pointing")
    assert "Attention maps at step 1, head 0" in texts(at.subheader)
    at.sidebar.select_slider(key="_w_step").set_value(2).run()
    at.sidebar.selectbox(key="_w_head").set_value(3).run()
    assert_clean(at)
    subheaders, labels = _pointing_state(at)
    assert "Attention maps at step 2, head 3" in subheaders
    assert "Hit rate, step 2 head 3" in labels
    hr = pd.read_parquet(roots.runs / "pointing" / "hit_rates.parquet")
    rate = hr[(hr["step"] == 2) & (hr["head"] == 3)]["rate"].iloc[0]
    assert at.metric[0].value == f"{rate:.3f}"
    shown = [e.value for e in at.dataframe if {"step", "head"} <= set(e.value.columns)]
    assert shown and all(((df["step"] == 2) & (df["head"] == 3)).all() for df in shown)
    # the choice is shared: the ablation page opens at the same step and head
    at.switch_page("views/ablation.py").run()
    assert_clean(at)
    assert at.sidebar.select_slider(key="_w_step").value == 2
    assert any(m.label == "Accuracy drop, step 2 head 3" for m in at.metric)


def test_image_picker_runs_the_model(roots: Roots, monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_app(monkeypatch, roots.runs, roots.models, "pointing")
    at.number_input(key="pointing_image").set_value(1500).run()
    assert_clean(at)
    assert any("shape_001500" in c for c in texts(at.caption))


def test_featviz_neuron_and_step(roots: Roots, monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_app(monkeypatch, roots.runs, roots.models, "featviz")
    assert "Neuron 3 across steps" in texts(at.subheader)
    at.sidebar.selectbox(key="_w_neuron").set_value(7).run()
    assert_clean(at)
    assert "Neuron 7 across steps" in texts(at.subheader)
    assert any("neuron 7 at step 1" in m for m in texts(at.markdown))


def test_model_outside_the_allowed_roots(roots: Roots, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    at = open_app(monkeypatch, roots.runs, tmp_path, "pointing")
    assert_clean(at)
    assert any("outside the runs root" in t for t in texts(at.info)), texts(at.info)
    assert "Attention maps at step 1, head 0" in texts(at.subheader)  # recorded points are still shown


@pytest.mark.parametrize("missing", [False, True], ids=["empty", "missing"])
def test_empty_and_missing_roots(roots: Roots, monkeypatch: pytest.MonkeyPatch, missing: bool) -> None:
    runs, phrase = (roots.empty / "missing", "does not exist") if missing else (roots.empty, "No ")
    at = open_app(monkeypatch, runs, roots.models)
    assert_clean(at)
    assert any(phrase in t for t in texts(at.info)), texts(at.info)
    assert any("bvit-interp pointing --out" in c for c in texts(at.code))
    for spec in analyses():
        at.switch_page(f"views/{spec.key}.py").run()
        assert_clean(at)
        assert any(phrase in t for t in texts(at.info)), (spec.key, texts(at.info))
        assert any(c.startswith("bvit-interp") for c in texts(at.code)), spec.key


def test_half_written_old_and_unreadable_runs(roots: Roots, monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_app(monkeypatch, roots.broken, roots.models)
    assert_clean(at)
    warnings = " ".join(texts(at.warning))
    assert "not finished" in warnings and "older version" in warnings and "not valid JSON" in warnings
    at.switch_page("views/pointing.py").run()
    assert_clean(at)
    assert any("not finished" in w for w in texts(at.warning))
    assert any("hit_rates" in i for i in texts(at.info))
    at.switch_page("views/lens.py").run()
    assert_clean(at)
    assert any("older version" in w for w in texts(at.warning))
    assert not at.get("download_button")


@pytest.mark.parametrize(("page", "table"), [("pointing", "hit_rates"), ("pointing", "summary"), ("lens", "lens")])
def test_truncated_table_shows_an_error_naming_the_file(roots: Roots, monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path, page: str, table: str) -> None:
    """A half-written parquet table is an error box naming the file, never a traceback; the page still renders."""
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(roots.runs / page, runs / page)
    path = runs / page / f"{table}.parquet"
    path.write_bytes(path.read_bytes()[:100])
    at = open_app(monkeypatch, runs, roots.models, page)
    assert not at.exception, texts(at.exception)
    errors = texts(at.error)
    assert errors and all(f"{table}.parquet" in e for e in errors), errors
    assert texts(at.title) == [TITLES[page]] and "Tables" in texts(at.subheader)


# --------------------------------------------------------------------------- live demo state (issue 17)

def test_page_moves_from_running_to_done_and_a_failure_shows_its_reason(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, roots: Roots) -> None:
    """A page whose analysis the demo is running shows the progress, then the run once it completes;
    a failed analysis shows its error on its own page while the others render."""
    import time

    from bvit_interp.runs.plan import DemoPlan, PlanEntry

    runs = tmp_path / "runs"
    runs.mkdir()
    plan = DemoPlan("laptop", entries=[
        PlanEntry("lens", "Readout (lens)", ["lens"], state="running", progress=0.4, detail="readout 120/300",
                  started_at=time.time() - 5),
        PlanEntry("ablation", "Ablation", ["ablation"], state="failed", error="bvit-interp ablation: error: boom"),
        PlanEntry("rank", "Rank (SVD)", ["rank"], state="queued", estimate_s=42.0),
    ])
    plan.save(runs)
    at = open_app(monkeypatch, runs, roots.models, "lens")
    assert not at.exception, texts(at.exception)
    assert texts(at.title) == ["Readout (lens)"]
    bars = at.get("progress")
    assert bars and "readout 120/300" in str(bars[0].proto.text) and "Running" in str(bars[0].proto.text)
    assert not at.dataframe, "no run to show yet"

    at.switch_page("views/rank.py").run()
    assert any("Queued" in t and "42 s" in t for t in texts(at.info)), texts(at.info)

    at.switch_page("views/ablation.py").run()
    assert any("Failed" in t and "error: boom" in t for t in texts(at.error)), texts(at.error)

    # the demo finishes the lens run: the same page now shows it
    source = roots.runs / "lens"
    import shutil

    shutil.copytree(source, runs / "lens")
    plan.entries[0].state, plan.entries[0].finished_at = "done", time.time()
    plan.save(runs)
    from lib import data as app_data

    app_data.list_runs.clear()  # what the page's refresh fragment does when it sees the state change
    at.switch_page("views/lens.py").run()
    assert not at.exception, texts(at.exception)
    assert not at.get("progress")
    assert at.get("arrow_vega_lite_chart") or at.dataframe, "the finished run's results are shown"

    at.switch_page("views/overview.py").run()
    frames = [e.value for e in at.dataframe]
    demo = next(f for f in frames if "state" in f.columns and "order" in f.columns)
    assert demo["state"].tolist() == ["done", "failed", "queued"]
