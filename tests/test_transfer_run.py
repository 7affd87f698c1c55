"""``bvit-interp transfer`` end to end on tiny models and an ImageFolder target: tables, resume, app page, bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from bvit_interp import build_model, save_model
from bvit_interp.cli import main
from bvit_interp.registry import analyses, get_analysis
from bvit_interp.transfer import prepare, trainable_parameters
from bvit_interp.transfer.report import format_accuracy, format_count, parse_methods, table4
from bvit_interp.transfer.targets import describe_target, target_name

APP = Path(__file__).resolve().parents[1] / "app" / "main.py"
CLASSES = ("red", "green", "blue")
TINY = ["--train-limit", "12", "--val-limit", "6", "--epochs", "1", "--batch-size", "6", "--no-progress"]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiny checkpoints (a bViT with time embeddings, a 2-block ViT) and a 3-class ImageFolder target."""
    base = tmp_path_factory.mktemp("transfer")
    torch.manual_seed(0)
    save_model(build_model("bvit_micro", time_embed=True, name="bvit_te"), base / "models" / "bvit_te")
    save_model(build_model("bvit_micro", blocks=2, steps=1, name="vit_m"), base / "models" / "vit_m")
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 3)):
        for c, name in enumerate(CLASSES):
            (base / "target" / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 60, (16, 16, 3), dtype=np.uint8)
                pixels[..., c] += 180
                Image.fromarray(pixels).save(base / "target" / split / name / f"{i}.png")
    return base


def _models(root: Path) -> list[str]:
    return ["--model", str(root / "models" / "bvit_te"), "--model", str(root / "models" / "vit_m")]


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr); argparse's own exit counts as a code too."""
    try:
        code = main(argv)
    except SystemExit as err:
        code = int(err.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def finished(root: Path) -> Path:
    """One complete run: both models, every method that applies, two seeds."""
    out = root / "runs" / "transfer"
    assert main(["transfer", *_models(root), "--data", str(root / "target"), "--seeds", "2", *TINY,
                 "--out", str(out)]) == 0
    return out


def test_run_writes_table4_histories_and_figures(root: Path, finished: Path) -> None:
    meta = json.loads((finished / "meta.json").read_text())
    assert meta["analysis"] == "transfer" and meta["status"] == "complete"
    assert meta["data"]["kind"] == "imagefolder" and meta["options"]["seeds"] == [0, 1]
    assert meta["options"]["schedule"]["epochs"] == 1 and meta["options"]["schedule"]["warmup_epochs"] == 0
    results = pd.read_parquet(finished / "results.parquet")
    # TE tuning only on the -TE bViT; 4 + 5 methods x 2 seeds
    pairs = set(zip(results["model"], results["method"], strict=True))
    assert pairs == {(m, k) for m in ("bvit_te", "vit_m") for k in ("linear_probe", "full_finetune", "lora_qv", "lora_ffn")} | {
        ("bvit_te", "time_embedding_tuning")}
    assert len(results) == 18 and set(results["dataset"]) == {"target"} and set(results["seed"]) == {0, 1}
    assert (results["num_classes"] == 3).all() and (results["val_images"] == 6).all()
    # trainable counts (heads excluded) equal an independent preparation of each model
    for model in ("bvit_te", "vit_m"):
        for method in set(results.loc[results["model"] == model, "method"]):
            net = prepare(build_model("bvit_micro", **({"time_embed": True} if model == "bvit_te" else
                                                         {"blocks": 2, "steps": 1})), method, 3)
            got = results.loc[(results["model"] == model) & (results["method"] == method), "trainable_params"]
            assert set(got) == {trainable_parameters(net)}, (model, method)
    assert results.loc[results["method"] == "linear_probe", "trainable_params"].eq(0).all()
    # summary: mean / std over the two seeds of the results
    summary = pd.read_parquet(finished / "summary.parquet")
    one = results[(results["model"] == "vit_m") & (results["method"] == "full_finetune")]["accuracy"]
    row = summary[(summary["model"] == "vit_m") & (summary["method"] == "full_finetune")].iloc[0]
    assert row["seeds"] == 2 and row["accuracy_mean"] == pytest.approx(one.mean())
    assert row["accuracy_std"] == pytest.approx(one.std(ddof=0))
    t4 = pd.read_parquet(finished / "table4.parquet")
    assert list(t4.columns) == ["model", "method", "trainable_params", "trainable", "target"] and len(t4) == 9
    assert (finished / "table4.csv").is_file()
    history = pd.read_parquet(finished / "history.parquet")
    assert len(history) == 18 and {"model", "dataset", "method", "seed", "epoch", "val_accuracy"} <= set(history.columns)
    skipped = pd.read_parquet(finished / "skipped.parquet")
    assert skipped[["model", "method"]].values.tolist() == [["vit_m", "time_embedding_tuning"]]
    for figure in ("accuracy_vs_params", "histories"):
        assert (finished / f"{figure}.png").stat().st_size > 0


def test_resume_keeps_finished_cells(root: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import bvit_interp.runs.transfer as driver

    out = root / "elsewhere" / "resume"  # not under the runs root the app test browses
    argv = ["transfer", "--model", str(root / "models" / "vit_m"), "--data", str(root / "target"),
            "--methods", "lp,ft", "--seeds", "2", *TINY, "--out", str(out)]
    real, calls = driver.fit_transfer, []

    def failing(*args, **kwargs):
        calls.append((args[1], kwargs["seed"]))
        if len(calls) == 3:
            raise RuntimeError("interrupted")
        return real(*args, **kwargs)

    monkeypatch.setattr(driver, "fit_transfer", failing)
    with pytest.raises(RuntimeError, match="interrupted"):
        main(argv)
    assert json.loads((out / "meta.json").read_text())["status"] == "running"
    done = sorted(p.relative_to(out).as_posix() for p in out.glob("cells/**/*_row.parquet"))
    assert done == ["cells/vit_m/target/linear_probe/seed0_row.parquet", "cells/vit_m/target/linear_probe/seed1_row.parquet"]
    kept = {p: (out / p).read_bytes() for p in done}
    # a resume with another budget is refused before any work, naming the option
    calls.clear()
    code, _, err = run_cli([*argv, "--epochs", "2"], capsys)
    assert code == 2 and "epochs" in err and not calls
    # the same command resumes: only the unfinished cells are trained, the finished ones are kept as they were
    assert run_cli(argv, capsys)[0] == 0
    assert calls == [("full_finetune", 0), ("full_finetune", 1)]
    assert all((out / p).read_bytes() == data for p, data in kept.items())
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "complete" and meta["summary"]["kept"] == 2 and meta["summary"]["trained"] == 2
    assert len(pd.read_parquet(out / "results.parquet")) == 4


def _assert_user_error(code: int, err: str, *names: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    for name in names:
        assert name in lines[0], (name, lines[0])


@pytest.mark.parametrize("extra,names", [
    (["--methods", "lora_qkv"], ["--methods", "lora_qkv"]),
    (["--methods", "te", "--model", "VIT"], ["--methods", "time_embedding_tuning"]),
    (["--epochs", "2", "--warmup-epochs", "2"], ["--warmup-epochs", "--epochs"]),
    (["--epochs", "0"], ["--epochs"]),
    (["--seeds", "0"], ["--seeds"]),
    (["--train-limit", "-3"], ["--train-limit"]),
    (["--data", "NOWHERE"], ["NOWHERE"]),
    (["--data", "VALONLY"], ["train"]),
    (["--model", "MISSING"], ["MISSING"]),
    (["--num-heads", "2"], ["--num-heads"]),
    (["--model", "timm:MISSING.pth"], ["MISSING.pth"]),
    (["--device", "foo"], ["foo"]),
], ids=["method", "te-without-te", "warmup", "epochs", "seeds", "limit", "data", "no-train", "model", "num-heads",
        "timm-missing", "device"])
def test_bad_input_exits_2_creating_nothing(root: Path, tmp_path: Path, capsys, extra: list[str], names: list[str]) -> None:
    valonly = tmp_path / "valonly"
    (valonly / "val" / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(valonly / "val" / "a" / "0.png")
    subs = {"VIT": str(root / "models" / "vit_m"), "VALONLY": str(valonly), "NOWHERE": str(tmp_path / "nowhere"),
            "MISSING": str(tmp_path / "missing"), "timm:MISSING.pth": f"timm:{tmp_path / 'MISSING.pth'}"}
    extra = [subs.get(a, a) for a in extra]
    names = [subs.get(n, n) for n in names]
    model = [] if "--model" in extra else ["--model", str(root / "models" / "vit_m")]
    data = [] if "--data" in extra else ["--data", str(root / "target")]
    out = tmp_path / "out"
    code, _, err = run_cli(["transfer", *model, *data, "--no-progress", *extra, "--out", str(out)], capsys)
    _assert_user_error(code, err, *names)
    assert not out.exists()


def test_imported_timm_vit(root: Path, tmp_path: Path, capsys) -> None:
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4, embed_dim=32,
                            depth=2, num_heads=2, num_classes=7)
    torch.save(vit.state_dict(), tmp_path / "my_vit.pth")
    out = tmp_path / "run"
    code, stdout, err = run_cli(["transfer", "--model", f"timm:{tmp_path / 'my_vit.pth'}", "--num-heads", "2",
                                 "--data", str(root / "target"), "--methods", "lp", "lora_qv", "--seeds", "1", *TINY,
                                 "--out", str(out)], capsys)
    assert code == 0, err
    results = pd.read_parquet(out / "results.parquet")
    assert set(results["model"]) == {"my_vit"} and results["trainable_params"].tolist() == [0, 2 * 2 * 8 * (32 + 32)]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["models"][0]["path"].endswith("my_vit.pth") and len(meta["models"][0]["sha256"]) == 64
    assert "| my_vit | LoRA, QV |" in stdout


def test_app_page_renders(root: Path, finished: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("BVIT_APP_RUNS", str(finished.parent))
    monkeypatch.setenv("BVIT_APP_MODELS", str(root / "models"))
    if str(APP.parent) not in sys.path:
        sys.path.insert(0, str(APP.parent))
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    at.switch_page("views/transfer.py").run()
    assert not at.exception and not at.error, [e.value for e in at.exception]
    assert [t.value for t in at.title] == ["Transfer"]
    assert "Table 4: accuracy per method and dataset" in [s.value for s in at.subheader]
    frames = [e.value for e in at.dataframe]
    t4 = next(f for f in frames if "trainable" in f.columns and "target" in f.columns)
    assert len(t4) == 9 and t4["target"].str.contains("±").all()
    assert any("Skipped: Time embedding tuning on vit_m" in c.value for c in at.caption)
    # histories of one (model, method, seed): the method picker changes the shown rows
    at.selectbox(key="transfer_history_method").set_value("full_finetune").run()
    assert not at.exception
    shown = next(f for f in (e.value for e in at.dataframe) if "train_loss" in f.columns and "lr" in f.columns)
    assert set(shown["method"]) == {"full_finetune"} and len(shown) == 1
    assert len(at.get("image")) == 2, "the run's two figures"


def test_helpers() -> None:
    assert [format_count(n) for n in (0, 4_096, 24_576, 61_440, 7_829_760, 85_779_456)] == [
        "0", "4K", "25K", "61K", "7.8M", "85.8M"]
    assert format_accuracy(0.51234, 0.0123, 3) == "51.2 ± 1.2" and format_accuracy(0.5, 0.0, 1) == "50.0"
    assert parse_methods(["lp,ft", "lora-qv", "te", "lp"]) == ["linear_probe", "full_finetune", "lora_qv",
                                                                "time_embedding_tuning"]
    with pytest.raises(ValueError, match="--methods foo"):
        parse_methods(["foo"])
    summary = pd.DataFrame({"model": ["b", "b"], "dataset": ["d", "d"], "method": ["lora_qv", "linear_probe"],
                            "trainable_params": [4096, 0], "accuracy_mean": [0.5, 0.25], "accuracy_std": [0.01, 0.0],
                            "seeds": [3, 3]})
    assert table4(summary)[["method", "trainable", "d"]].values.tolist() == [
        ["Linear probing", "0", "25.0 ± 0.0"], ["LoRA, QV", "4K", "50.0 ± 1.0"]]
    assert target_name("shapes-b") == "shapes-b" and target_name("cifar100:/data/c") == "cifar100"
    assert target_name("/data/My Flowers/") == "My_Flowers"
    from bvit_interp.data.datasets import build_datasets

    data = describe_target("shapes-b", build_datasets("shapes-b", None, None).val)
    assert data["kind"] == "shapes" and data["config"]["classes"] == "b" and data["display"].startswith("shapes-b:val")


def test_distilled_model_trains_both_heads() -> None:
    net = prepare(build_model("bvit_micro_dist"), "linear_probe", 3)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {"head.weight", "head.bias", "head_dist.weight", "head_dist.bias"}
    assert trainable_parameters(net) == 0


def test_demo_arguments() -> None:
    spec = get_analysis("transfer")
    quick = spec.demo_args(Path("runs/demo"), ["bvit_tiny", "bvit_tiny_te", "vit_tiny"], quick=True)
    assert quick[:5] == ["transfer", "--model", "bvit_tiny", "--model", "vit_tiny"] and "--seeds" in quick
    assert quick[quick.index("--seeds") + 1] == "1" and quick[-2:] == ["--out", "runs/demo/transfer"]
    full = spec.demo_args(Path("r"), ["bvit_tiny", "bvit_tiny_te", "vit_tiny"], quick=False)
    assert "bvit_tiny_te" in full and full[full.index("--seeds") + 1] == "3"
    assert spec.cost == max(s.cost for s in analyses()), "the most expensive analysis: the demo runs it last"


def test_several_targets(root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "two"
    code, stdout, err = run_cli(["transfer", "--model", str(root / "models" / "vit_m"), "--data", "shapes-b",
                                 "--data", str(root / "target"), "--methods", "lp", "--seeds", "1", *TINY,
                                 "--out", str(out)], capsys)
    assert code == 0, err
    meta = json.loads((out / "meta.json").read_text())
    assert meta["data"]["kind"] == "targets" and [t["spec"] for t in meta["data"]["targets"]] == [
        "shapes-b", str(root / "target")]
    results = pd.read_parquet(out / "results.parquet")
    assert results[["dataset", "num_classes"]].values.tolist() == [["shapes-b", 6], ["target", 3]]
    assert list(pd.read_parquet(out / "table4.parquet").columns)[-2:] == ["shapes-b", "target"]
    assert "| vit_m | Linear probing | 0 |" in stdout
