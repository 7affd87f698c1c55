"""Rank analysis: measures against numpy on known spectra, exact full-rank truncation, restoration, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from bvit_interp import build_model, save_model
from bvit_interp.analysis.rank import (
    PAPER_RANKS,
    WEIGHT_MATRICES,
    cls_ranks,
    default_ranks,
    energy_rank,
    entropy_rank,
    low_rank,
    matrix_refs,
    singular_values,
    stable_rank,
    svd_factors,
    truncation_sweep,
    weight_ranks,
)
from bvit_interp.cli import main


def _with_spectrum(s: np.ndarray, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """A rows x cols matrix whose singular values are exactly ``s`` (random orthonormal bases)."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((rows, len(s))))
    v, _ = np.linalg.qr(rng.standard_normal((cols, len(s))))
    return (u * s) @ v.T


def _np_measures(a: np.ndarray, threshold: float) -> tuple[int, float, float]:
    """Independent numpy reference: (energy rank, stable rank, entropy rank)."""
    s = np.linalg.svd(a, compute_uv=False)
    e = s**2
    k = next(i + 1 for i in range(len(e)) if e[: i + 1].sum() >= threshold * e.sum() - 1e-9 * e.sum())
    p = s[s > 1e-12 * s[0]] / s.sum()
    return k, float(e.sum() / e[0]), float(np.exp(-(p * np.log(p)).sum()))


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), f"{k} changed"


@pytest.fixture
def loader(micro_bvit) -> DataLoader:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(24, 3, 16, 16, generator=g)
    return DataLoader(TensorDataset(x, micro_bvit(x).argmax(-1).detach()), batch_size=8)


def test_measures_on_known_spectra() -> None:
    """Uniform spectrum of k: all three ranks are k (energy: ceil(0.95 k)); a decaying one matches numpy."""
    flat = _with_spectrum(np.ones(10), 30, 20)
    s = singular_values(flat)
    assert s.shape == (20,) and np.allclose(s[:10], 1) and np.allclose(s[10:], 0, atol=1e-12)
    assert energy_rank(s) == math.ceil(0.95 * 10)
    assert energy_rank(s, threshold=1.0) == 10
    assert stable_rank(s) == pytest.approx(10)
    assert entropy_rank(s[:10]) == pytest.approx(10)

    spectrum = np.array([10.0, 5.0, 3.0, 2.0, 1.0, 0.5, 0.1])
    a = _with_spectrum(spectrum, 12, 9, seed=3)
    s = singular_values(torch.as_tensor(a, dtype=torch.float32))
    for threshold in (0.5, 0.8, 0.95, 0.99, 1.0):
        assert energy_rank(s, threshold) == _np_measures(a, threshold)[0]
    # 95%: cumulative energy 100, 125, 134, 138, 139, 139.25 of 139.26 -> rank 3.
    assert energy_rank(spectrum) == 3
    _, sr, er = _np_measures(a, 0.95)
    assert stable_rank(s) == pytest.approx(sr, rel=1e-5)
    assert entropy_rank(s) == pytest.approx(er, rel=1e-5)
    assert (energy_rank(np.zeros(4)), stable_rank(np.zeros(4)), entropy_rank(np.zeros(4))) == (0, 0.0, 0.0)
    with pytest.raises(ValueError, match="threshold"):
        energy_rank(spectrum, threshold=0.0)


def test_weight_ranks_split_matrices_and_heads(micro_bvit) -> None:
    """Rows per block: q, k, v, proj, fc1, fc2 and H heads of q, k, v, o, each matching numpy on its slice."""
    df = weight_ranks(micro_bvit, threshold=0.9)
    cfg = micro_bvit.config
    assert len(df) == cfg.blocks * (len(WEIGHT_MATRICES) + 4 * cfg.num_heads)
    d, dh = cfg.embed_dim, cfg.head_dim
    qkv = micro_bvit.blocks[0].attn.qkv.weight.detach().numpy()
    proj = micro_bvit.blocks[0].attn.proj.weight.detach().numpy()
    fc2 = micro_bvit.blocks[0].mlp.fc2.weight.detach().numpy()
    expected = {
        ("k", None): qkv[d : 2 * d],
        ("fc2", None): fc2,
        ("v", 2): qkv[2 * d + 2 * dh : 2 * d + 3 * dh],
        ("o", 1): proj[:, dh : 2 * dh],
    }
    for (matrix, head), a in expected.items():
        row = df[(df["matrix"] == matrix) & (df["head"].isna() if head is None else df["head"] == head)]
        assert len(row) == 1
        k, sr, er = _np_measures(a, 0.9)
        assert row["energy_rank"].item() == k and row["full_rank"].item() == min(a.shape)
        assert row["stable_rank"].item() == pytest.approx(sr, rel=1e-5)
        assert row["entropy_rank"].item() == pytest.approx(er, rel=1e-5)


def test_cls_ranks_match_numpy_per_step() -> None:
    """CLS ranks from the streamed Gram equal numpy's on the stacked CLS states, with unrolled step numbers."""
    torch.manual_seed(0)
    model = build_model("bvit_micro", blocks=2, steps=2).eval()
    x = torch.randn(40, 3, 16, 16)
    df = cls_ranks(model, DataLoader(TensorDataset(x, torch.zeros(40, dtype=torch.long)), batch_size=16))
    assert sorted(df["step"].unique()) == [1, 2, 3, 4]
    with torch.no_grad(), model.capture("resid_post", tokens="cls") as cache:
        model(x)
    for step in (1, 4):
        states = cache["resid_post", step - 1][:, 0].double().numpy()
        for centred, a in ((False, states), (True, states - states.mean(0))):
            row = df[(df["step"] == step) & (df["centred"] == centred)]
            k, sr, er = _np_measures(a, 0.95)
            assert row["energy_rank"].item() == k
            assert row["stable_rank"].item() == pytest.approx(sr, rel=1e-4)
            assert row["entropy_rank"].item() == pytest.approx(er, rel=1e-3)


def test_cls_ranks_read_the_state_after_the_time_embedding() -> None:
    """-TE: the CLS state of a step is what the next step receives (resid_post + time embedding), as states.cls_states."""
    from bvit_interp.analysis.states import cls_states

    torch.manual_seed(0)
    model = build_model("bvit_micro", time_embed=True).eval()
    with torch.no_grad():
        model.time_embed.copy_(3 * torch.randn_like(model.time_embed))
    x = torch.randn(40, 3, 16, 16)
    df = cls_ranks(model, DataLoader(TensorDataset(x, torch.zeros(40, dtype=torch.long)), batch_size=16))
    with torch.no_grad(), model.capture("resid_post", tokens="cls") as cache:
        model(x)
    with torch.no_grad():
        states = cls_states(model, x)
    for step in range(1, 5):
        post_te = cache["resid_post", step - 1][:, 0] + model.time_embed[step - 1]
        torch.testing.assert_close(states[step - 1], post_te.detach())
        a = states[step - 1].double().numpy()
        for centred, m in ((False, a), (True, a - a.mean(0))):
            row = df[(df["step"] == step) & (df["centred"] == centred)]
            k, sr, er = _np_measures(m, 0.95)
            assert row["energy_rank"].item() == k
            assert row["stable_rank"].item() == pytest.approx(sr, rel=1e-4)
            assert row["entropy_rank"].item() == pytest.approx(er, rel=1e-3)


def test_default_ranks_scale_the_paper() -> None:
    assert default_ranks(768) == list(PAPER_RANKS)
    small = default_ranks(32)
    assert small == sorted(set(small)) and small[0] >= 1 and small[-1] == 32


def test_full_rank_truncation_reproduces_logits(micro_bvit, micro_images) -> None:
    """Rank = min(shape) of every matrix gives the model's logits; a low rank changes them; weights restored."""
    before = _state(micro_bvit)
    with torch.no_grad():
        plain = micro_bvit(micro_images)
        factors = svd_factors(micro_bvit, matrix_refs(micro_bvit.config, WEIGHT_MATRICES))
        with low_rank(micro_bvit, micro_bvit.config.embed_dim, factors):
            full = micro_bvit(micro_images)
        with low_rank(micro_bvit, 2, factors):
            low = micro_bvit(micro_images)
            w = micro_bvit.blocks[0].mlp.fc1.weight
            assert torch.linalg.matrix_rank(w).item() == 2
    torch.testing.assert_close(full, plain, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(low, plain, atol=1e-3)
    _assert_same_state(micro_bvit, before)


def test_sweep_leaves_model_unchanged(micro_bvit, loader) -> None:
    before = _state(micro_bvit)
    df = truncation_sweep(micro_bvit, loader, ranks=[32, 2, 8])
    assert df["rank"].tolist() == [2, 8, 32]
    assert df["baseline_accuracy"].eq(1.0).all() and df["accuracy"].iloc[-1] == 1.0
    assert df["kept_energy"].is_monotonic_increasing and df["kept_energy"].iloc[-1] == pytest.approx(1.0)
    assert (df["num_matrices"] == 2).all() and (df["images"] == 24).all()
    _assert_same_state(micro_bvit, before)


def test_sweep_restores_model_after_error(micro_bvit, loader) -> None:
    """An exception in the middle of a truncated evaluation still restores every weight."""

    class Failing:
        """Yields the loader's batches; the third pass (rank 2) fails after one batch."""

        passes = 0

        def __iter__(self):
            Failing.passes += 1
            for i, batch in enumerate(loader):
                if Failing.passes == 3 and i == 1:
                    raise RuntimeError("boom")
                yield batch

    before = _state(micro_bvit)
    with pytest.raises(RuntimeError, match="boom"):
        truncation_sweep(micro_bvit, Failing(), ranks=[1, 2, 3], matrices=["q", "fc1"])
    assert Failing.passes == 3
    _assert_same_state(micro_bvit, before)


def test_cli_end_to_end(tmp_path, capsys) -> None:
    """Two checkpoints -> one run: three tables with a model column, two figures, meta; no silent overwrite."""
    torch.manual_seed(0)
    paths = []
    for name, overrides in (("bvit_m", {}), ("vit_m", {"blocks": 4, "steps": 1})):
        paths.append(str(tmp_path / name))
        save_model(build_model("bvit_micro", num_classes=10, **overrides), paths[-1])
    out = tmp_path / "run"
    argv = ["svd", "--model", paths[0], "--model", paths[1], "--limit", "4", "--ranks", "4,32",
            "--batch-size", "4", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "bvit_m" in printed and "vit_m" in printed
    for name in ("meta.json", "weight_ranks.parquet", "cls_ranks.parquet", "sweep.parquet",
                 "fig6_rank.png", "fig7_truncation.png"):
        assert (out / name).stat().st_size > 0, name
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "complete" and [m["name"] for m in meta["models"]] == ["bvit_m", "vit_m"]
    sweep = pd.read_parquet(out / "sweep.parquet")
    assert sorted(sweep["model"].unique()) == ["bvit_m", "vit_m"] and set(sweep["rank"]) == {4, 32}
    assert (sweep["images"] == 4).all()
    cls = pd.read_parquet(out / "cls_ranks.parquet")
    assert cls.groupby("model")["step"].max().to_dict() == {"bvit_m": 4, "vit_m": 4}
    weights = pd.read_parquet(out / "weight_ranks.parquet")
    assert weights.groupby("model")["block"].nunique().to_dict() == {"bvit_m": 1, "vit_m": 4}

    assert main(argv) == 2
    assert "--force" in capsys.readouterr().err
