"""The analysis registry: a toy analysis added at runtime (one module + one registry entry) is a command,
part of the demo's plan and a page of the app; old command names stay working aliases."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from bvit_interp import build_model, save_model
from bvit_interp.cli import main
from bvit_interp.commands.demo import plan
from bvit_interp.registry import (
    AnalysisSpec,
    analyses,
    find_analysis,
    register_analysis,
    unregister_analysis,
)

APP = Path(__file__).resolve().parents[1] / "app" / "main.py"

# The whole toy analysis: a pure compute function (tensors in, a table out, no files) and its command.
TOY_MODULE = '''
"""A toy analysis: the norm of the CLS state after every step."""

from __future__ import annotations

import argparse

import matplotlib.pyplot as plt
import pandas as pd
import torch

from bvit_interp.commands.common import add_common_args, create_run, load_models, resolve_device, val_loader
from bvit_interp.registry import analysis_key


def step_norms(model, x: torch.Tensor) -> pd.DataFrame:
    """Mean L2 norm of the CLS state after each step (1-based ``step``)."""
    with torch.no_grad(), model.capture("resid_post", tokens="cls") as cache:
        model(x)
    layers = cache.layers("resid_post")
    return pd.DataFrame({"step": [layer + 1 for layer in layers],
                         "norm": [float(cache["resid_post", layer].norm(dim=-1).mean()) for layer in layers]})


def add_parser(p: argparse.ArgumentParser) -> None:
    add_common_args(p, "runs/toy_norms", default_limit=8)


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    models = load_models(args, device)
    loaders = [val_loader(args, m.model.config)[0] for m in models]
    out = create_run(args, analysis_key(__name__), models)
    parts = []
    for m, loader in zip(models, loaders):
        x, _ = next(iter(loader))
        parts.append(step_norms(m.model, x.to(device)).assign(model=m.label))
    table = pd.concat(parts, ignore_index=True)
    out.write_table("norms", table)
    fig, ax = plt.subplots(figsize=(3, 2))
    for label, g in table.groupby("model"):
        ax.plot(g["step"], g["norm"], label=label)
    out.write_figure("norms", fig)
    out.complete()
    return 0
'''


@pytest.fixture
def toy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The toy analysis registered as ``toy_norms`` (old name ``toy``), its module importable; removed afterwards."""
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "bvit_toy_norms.py").write_text(textwrap.dedent(TOY_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    spec = register_analysis(AnalysisSpec(
        "toy_norms", "Toy norms", "", "norm of the CLS state after every step (a test's toy analysis)",
        "bvit_toy_norms", quick=lambda root, models: ["--model", models[0], "--limit", "8"],
        full=["--limit", "16"], cost=0.5, aliases=("toy",)))
    yield spec
    unregister_analysis("toy_norms")
    sys.modules.pop("bvit_toy_norms", None)


def test_toy_analysis_is_a_command_a_demo_step_and_a_page(toy: AnalysisSpec, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    # --help lists it, by its command name (the key with _ -> -)
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "toy-norms" in capsys.readouterr().out
    # the demo plans it first (cheapest), writing <root>/<key>
    steps = plan(tmp_path / "demo", ["bvit_tiny"], quick=True)
    assert steps[0] == (toy, ["toy-norms", "--model", "bvit_tiny", "--limit", "8", "--out", str(tmp_path / "demo" / "toy_norms")])
    assert [s.key for s, _ in steps] == [s.key for s in analyses()] and toy in analyses()
    assert plan(tmp_path, ["bvit_tiny"], quick=False)[0][1][:3] == ["toy-norms", "--limit", "16"]
    # running it writes a run whose meta names the key, with structured data
    ckpt = tmp_path / "models" / "micro"
    save_model(build_model("bvit_micro", num_classes=10), ckpt)
    runs = tmp_path / "runs"
    assert main(["toy-norms", "--model", str(ckpt), "--out", str(runs / "toy_norms")]) == 0
    meta = json.loads((runs / "toy_norms" / "meta.json").read_text())
    assert meta["analysis"] == "toy_norms" and meta["status"] == "complete"
    assert meta["data"]["kind"] == "shapes" and meta["data"]["display"].startswith("shapes:val")
    norms = pd.read_parquet(runs / "toy_norms" / "norms.parquet")
    assert norms["step"].tolist() == list(range(1, 5)) and (norms["norm"] > 0).all()
    # the old name works the same, with a one-line deprecation note
    capsys.readouterr()
    assert main(["toy", "--model", str(ckpt), "--out", str(runs / "old_name")]) == 0
    err = capsys.readouterr().err
    assert "bvit-interp toy: deprecated name, use `bvit-interp toy-norms`" in err
    assert pd.read_parquet(runs / "old_name" / "norms.parquet").equals(norms)
    # the app gives it the generic page: status, figures and tables
    monkeypatch.setenv("BVIT_APP_RUNS", str(runs))
    monkeypatch.setenv("BVIT_APP_MODELS", str(ckpt.parent))
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    overview = next(e.value for e in at.dataframe if "run" in e.value.columns)
    assert set(overview["page"]) == {"Toy norms"}
    at.switch_page("views/generic.py").run()
    assert not at.exception and not at.error, [e.value for e in at.exception]
    assert [t.value for t in at.title] == ["Toy norms"]
    assert any("status **complete**" in c.value for c in at.caption)
    assert "Tables" in [s.value for s in at.subheader] and "Figures written by the command" in [s.value for s in at.subheader]
    assert any(e.label.startswith("norms") for e in at.expander)
    assert any("norm" in e.value.columns for e in at.dataframe)
    assert len(at.get("image")) == 1, "the run's one figure"


def test_old_command_names_are_hidden_aliases(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    listing = capsys.readouterr().out
    for spec in analyses():
        assert spec.command in listing
        for alias in spec.aliases:
            assert f"\n    {alias} " not in listing, alias
    with pytest.raises(SystemExit) as exit_:
        main(["svd", "--help"])
    assert exit_.value.code == 0 and "--ranks" in capsys.readouterr().out
    for old, key in (("svd", "rank"), ("prune", "pruning"), ("ablate", "ablation"), ("pointing-game", "pointing"),
                     ("early-exit", "early_exit")):
        assert find_analysis(old).key == key


def test_names_must_be_unique() -> None:
    with pytest.raises(ValueError, match="already belong to 'rank'"):
        register_analysis(AnalysisSpec("ranks", "x", "", "x", "x", aliases=("svd",)))
    with pytest.raises(ValueError, match="key"):
        AnalysisSpec("Bad-Key", "x", "", "x", "x")
    assert find_analysis("ranks") is None
