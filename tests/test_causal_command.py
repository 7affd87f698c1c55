"""``bvit-interp causal`` end to end on micro models: tables, figures, resume per model, the app page, bad input."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bvit_interp import build_model, save_model
from bvit_interp.cli import main
from bvit_interp.data.export import export_shapes
from bvit_interp.data.shapes import ShapesConfig

APP = Path(__file__).resolve().parents[1] / "app" / "main.py"
ARGS = ["--limit", "4", "--probe-limit", "24", "--ig-steps", "2", "--device", "cpu"]
TABLES = ("pairs", "patching_pairs", "patching", "attribution_pairs", "attribution", "agreement", "dla", "dla_totals",
          "effects_pairs", "effects", "probes", "probe_targets", "skipped", "timings")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A micro bViT (1 x 4) and a micro ViT (4 x 1), 10 classes, random weights."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    save_model(build_model("bvit_micro", num_classes=10), root / "bvit_m")
    save_model(build_model("bvit_micro", num_classes=10, blocks=4, steps=1), root / "vit_m")
    return {"bvit_m": root / "bvit_m", "vit_m": root / "vit_m"}


def model_args(models: dict[str, Path]) -> list[str]:
    return [a for p in models.values() for a in ("--model", str(p))]


@pytest.fixture(scope="module")
def run_dir(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete causal run of both micro models."""
    out = tmp_path_factory.mktemp("runs") / "causal"
    assert main(["causal", *model_args(models), *ARGS, "--out", str(out)]) == 0
    return out


def test_run_writes_every_table_and_figure(run_dir: Path) -> None:
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["analysis"] == "causal" and meta["status"] == "complete"
    assert meta["options"]["pairs"] == "class" and meta["options"]["limit"] == 4
    assert meta["data"]["kind"] == "shapes"
    assert set(meta["summary"]) == {"bvit_m", "vit_m"}
    tables = {name: pd.read_parquet(run_dir / f"{name}.parquet") for name in TABLES}
    for name, table in tables.items():
        assert table.columns[0] == "model", name
        if name != "skipped":
            assert set(table["model"]) == {"bvit_m", "vit_m"}, name
    patching = tables["patching"]
    assert set(patching["direction"]) == {"denoising", "noising"}
    assert set(patching["site"]) == {"resid_pre", "attn_out", "mlp_out", "attn.z"}
    assert sorted(patching["step"].unique()) == [1, 2, 3, 4]
    # the whole residual stream entering step 1 is the source run itself: pooled 1 (denoising), 0 (noising)
    first = patching[(patching["site"] == "resid_pre") & (patching["step"] == 1) & (patching["group"] == "all")]
    pooled = first.set_index(["model", "direction"])["pooled"]
    assert np.allclose(pooled.xs("denoising", level="direction"), 1.0, atol=1e-5)
    assert np.allclose(pooled.xs("noising", level="direction"), 0.0, atol=1e-5)
    assert len(tables["patching_pairs"]) == 4 * len(patching)
    assert {"ci_low", "ci_high", "pooled_low", "pooled_high"} <= set(patching.columns)
    # attribution: the same cells, plus IG on attn.z; agreement per (method, direction, site) and overall
    attribution = tables["attribution"]
    assert set(attribution["method"]) == {"attribution", "ig"}
    assert set(attribution[attribution["method"] == "ig"]["site"]) == {"attn.z"}
    agreement = tables["agreement"]
    overall = agreement[(agreement["method"] == "attribution") & (agreement["direction"] == "all")]
    assert len(overall) == 2 and (overall["speedup"] > 0).all() and overall["rho"].between(-1, 1).all()
    # DLA: the clean run's terms sum to its logit difference
    totals = tables["dla_totals"]
    assert totals[totals["run"] == "clean"]["error"].abs().max() < 1e-4
    assert set(tables["effects"]["effect"]) == {"total", "direct", "direct_linear", "indirect"}
    probes = tables["probes"]
    assert set(probes["task"]) == {"class", "quadrant", "colour"} and set(probes["representation"]) == {"cls", "object"}
    assert np.allclose(probes["selectivity"], probes["accuracy"] - probes["control_accuracy"])
    assert set(tables["timings"]["part"]) == {"exact", "attribution", "ig", "dla", "probes"}
    figures = {p.stem for p in run_dir.glob("*.png")}
    for model in ("bvit_m", "vit_m"):
        for name in ("maps_denoising_attn_z", "maps_noising_attn_z", "sites_denoising", "agreement", "dla",
                     "effects_noising", "probes"):
            assert f"{name}_{model}" in figures


def test_resume_keeps_finished_models(run_dir: Path, models: dict[str, Path], tmp_path: Path) -> None:
    """An interrupted run (the second model unfinished) resumes: the first model's parts are read back, not recomputed."""
    out = tmp_path / "causal"
    shutil.copytree(run_dir, out)
    meta = json.loads((out / "meta.json").read_text())
    meta["status"] = "running"
    (out / "meta.json").write_text(json.dumps(meta))
    for path in out.glob("*.p*"):
        path.unlink()
    shutil.rmtree(out / "parts" / "vit_m" / "probes")
    (out / "parts" / "vit_m" / "dla" / "done.json").unlink()  # stopped while writing its tables
    kept = {p: p.stat().st_mtime_ns for p in (out / "parts" / "bvit_m").rglob("*")}
    assert main(["causal", *model_args(models), *ARGS, "--out", str(out)]) == 0
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    assert (out / "parts" / "vit_m" / "probes" / "done.json").exists()
    for name in ("patching", "dla", "probes"):
        pd.testing.assert_frame_equal(pd.read_parquet(out / f"{name}.parquet"), pd.read_parquet(run_dir / f"{name}.parquet"))
    # other options are refused on resume, a finished run needs --force
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "complete"
    code = main(["causal", *model_args(models), *ARGS, "--out", str(out)])
    assert code == 2


def test_app_page_renders_the_run(run_dir: Path, monkeypatch: pytest.MonkeyPatch, models: dict[str, Path]) -> None:
    from streamlit.testing.v1 import AppTest

    if str(APP.parent) not in sys.path:
        sys.path.insert(0, str(APP.parent))
    monkeypatch.setenv("BVIT_APP_RUNS", str(run_dir.parent))
    monkeypatch.setenv("BVIT_APP_MODELS", str(next(iter(models.values())).parent))
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    at.switch_page("views/causal.py").run()

    def clean() -> None:
        assert not at.exception, [e.value for e in at.exception]
        assert not at.error, [e.value for e in at.error]
        assert not at.warning, [e.value for e in at.warning]

    clean()
    subheaders = [s.value for s in at.subheader]
    for heading in ("Denoising: attn.z, tokens all", "Direct logit attribution", "Direct vs indirect effects (denoising)",
                    "Probes per step", "Tables"):
        assert heading in subheaders, subheaders
    assert [m.label for m in at.metric][:3] == ["Pairs", "Mean logit-difference gap", "Attribution vs exact (Spearman rho)"]
    assert at.metric[0].value == "4"
    assert at.get("download_button")
    at.sidebar.selectbox(key="causal_direction").set_value("noising").run()
    at.sidebar.selectbox(key="causal_site").set_value("resid_pre").run()
    at.sidebar.selectbox(key="causal_group").set_value("object").run()
    at.sidebar.radio(key="causal_value").set_value("mean").run()
    at.sidebar.selectbox(key="_w_model").set_value("vit_m").run()
    at.radio(key="causal_probe_task").set_value("colour").run()
    at.radio(key="causal_dla_run").set_value("corrupted").run()
    clean()
    subheaders = [s.value for s in at.subheader]
    assert "Noising: resid_pre, tokens object" in subheaders and "Direct vs indirect effects (noising)" in subheaders
    assert any("model **vit_m**" in c.value for c in at.caption)


# --------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 20-image shapes export as an ImageFolder root (no masks)."""
    return export_shapes(tmp_path_factory.mktemp("if") / "root", "imagefolder", ShapesConfig(num_val=20), progress=False)


def _bad_cases(folder: Path, tmp: Path) -> list[tuple[list[str], str]]:
    bad_csv = tmp / "pairs.csv"
    bad_csv.write_text("clean,corrupted\na.png,b.png\n")
    return [
        (["--pairs", "bogus"], "--pairs"),
        (["--pairs", "file:"], "--pairs"),
        (["--pairs", f"file:{tmp / 'missing.csv'}"], "missing.csv"),
        (["--pairs", f"file:{bad_csv}"], "clean_label"),
        (["--limit", "0"], "--limit"),
        (["--probe-limit", "0"], "--probe-limit"),
        (["--probe-limit", "3"], "--probe-limit"),
        (["--ig-steps", "-1"], "--ig-steps"),
        (["--ig-steps", "4", "--sites", "resid_pre"], "--ig-steps"),
        (["--sites", "nonsense"], "--sites"),
        (["--sites", "attn.cls_pattern"], "--sites"),
        (["--directions", "sideways"], "--directions"),
        (["--data", "/nonexistent/root"], "/nonexistent/root"),
        (["--data", str(folder)], "--pairs class"),
        (["--data", str(folder), "--pairs", "noise-mask"], "noise-mask"),
        (["--device", "cuda:7"], "cuda:7"),
    ]


BAD_IDS = ["pairs-kind", "pairs-empty-file", "pairs-missing-file", "pairs-columns", "limit-0", "probe-limit-0",
           "probe-limit-3", "ig-negative", "ig-without-attn-z", "unknown-site", "read-only-site", "direction",
           "missing-root", "counterfactual-on-folder", "noise-mask-on-folder", "device"]


@pytest.mark.parametrize("case", range(len(BAD_IDS)), ids=BAD_IDS)
def test_bad_input_exits_2_and_creates_nothing(case: int, models: dict[str, Path], folder: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    extra, named = _bad_cases(folder, tmp_path)[case]
    if extra[:2] == ["--device", "cuda:7"] and torch.cuda.device_count() > 7:
        pytest.skip("a machine with 8 GPUs")
    out = tmp_path / "out"
    try:
        code = main(["causal", "--model", str(models["bvit_m"]), "--limit", "4", *extra, "--out", str(out)])
    except SystemExit as err:
        code = int(err.code or 0)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and named in lines[0], err
    assert not out.exists()


def test_noise_image_pairs_on_a_folder_without_probes(models: dict[str, Path], folder: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "noise"
    assert main(["causal", "--model", str(models["bvit_m"]), "--data", str(folder), "--pairs", "noise-image",
                 "--limit", "3", "--sites", "resid_pre", "--directions", "denoising", "--no-attribution",
                 "--out", str(out)]) == 0
    assert "no probes" in capsys.readouterr().err
    assert not (out / "probes.parquet").exists() and (out / "dla.parquet").exists()
    pairs = pd.read_parquet(out / "pairs.parquet")
    assert len(pairs) == 3 and (pairs["kind"] == "noise_image").all() and (pairs["corrupted_label"] == -1).all()
    assert set(pd.read_parquet(out / "patching.parquet")["direction"]) == {"denoising"}


@pytest.fixture(scope="module")
def ims(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 20-image shapes export as an ImageNet-S root (images + segmentation masks)."""
    return export_shapes(tmp_path_factory.mktemp("ims") / "root", "imagenet-s", ShapesConfig(num_val=20), progress=False)


def _pairs_file(tmp: Path) -> Path:
    """A CSV of two pairs (shapes renders and their counterfactuals, with masks), labels by index and by wnid."""
    from PIL import Image

    from bvit_interp.data.shapes import class_wnids, render_counterfactual

    config = ShapesConfig()
    rows = []
    for i in range(2):
        pair = render_counterfactual(config, "val", i, "class")
        for side, sample in (("clean", pair.clean), ("corrupted", pair.counterfactual)):
            Image.fromarray(sample.image).save(tmp / f"{side}{i}.png")
            Image.fromarray(sample.mask.astype(np.uint8) * 255).save(tmp / f"{side}{i}_mask.png")
        rows.append({"clean": f"clean{i}.png", "corrupted": f"corrupted{i}.png",
                     "clean_label": pair.clean.label if i == 0 else class_wnids(config)[pair.clean.label],
                     "corrupted_label": pair.counterfactual.label,
                     "clean_mask": f"clean{i}_mask.png", "corrupted_mask": f"corrupted{i}_mask.png"})
    pd.DataFrame(rows).to_csv(tmp / "pairs.csv", index=False)
    return tmp / "pairs.csv"


@pytest.mark.parametrize("kind", ["none", "noise-mask", "file", "imagenet-s"])
def test_other_pair_kinds(kind: str, models: dict[str, Path], ims: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    pairs = {"none": ["--pairs", "none"], "noise-mask": ["--pairs", "noise-mask"],
             "file": ["--pairs", f"file:{_pairs_file(tmp_path)}"],
             "imagenet-s": ["--data", str(ims), "--pairs", "noise-mask", "--probe-limit", "16"]}[kind]
    probes = [] if kind == "imagenet-s" else ["--no-probes"]
    assert main(["causal", "--model", str(models["bvit_m"]), "--limit", "3", "--sites", "resid_pre", "--directions",
                 "denoising", "--no-attribution", "--no-dla", *probes, *pairs, "--out", str(out)]) == 0
    table = pd.read_parquet(out / "pairs.parquet")
    expected = {"none": "counterfactual_none", "noise-mask": "noise_object", "file": "file",
                "imagenet-s": "noise_object"}[kind]
    assert (table["kind"] == expected).all() and len(table) == (2 if kind == "file" else 3)
    if kind == "file":
        assert table["clean_label"].tolist() == [int(v) for v in pd.read_csv(tmp_path / "pairs.csv")["clean_label"]
                                                 .map(lambda v: v if str(v).isdigit() else _wnid_index(v))]
    if kind == "imagenet-s":
        assert json.loads((out / "meta.json").read_text())["data"]["kind"] == "imagenet-s"
        assert (out / "probes.parquet").exists()
    else:
        assert not (out / "probes.parquet").exists()


def _wnid_index(wnid: str) -> int:
    from bvit_interp.data.shapes import class_wnids

    return list(class_wnids(ShapesConfig())).index(wnid)


def test_a_model_with_state_beside_the_stream_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save_model(build_model("bvit_micro_fl", num_classes=10), tmp_path / "fl")
    out = tmp_path / "out"
    assert main(["causal", "--model", str(tmp_path / "fl"), "--limit", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--model bvit_micro_fl" in err and "error:" in err and not out.exists()
