"""Regenerate the README's figures and tables from a `bvit-interp demo` run.

Runs ``bvit-interp demo --profile full --out RUNS`` first (finished analyses are kept, so a second call is
cheap), then copies the figures the README shows into ``docs/figures/`` and writes the
README's measured tables to ``docs/figures/tables.md``. Nothing here computes a result: every
number comes from the run directories the commands wrote.

    python scripts/readme_figures.py [--runs runs/demo-full] [--out docs/figures] [--no-demo]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bvit_interp.cli import main as cli_main  # noqa: E402
from bvit_interp.runs import Run  # noqa: E402

# (run subdirectory, file in the run, name in docs/figures)
FIGURES = [
    ("pointing", "curves.png", "pointing_curves.png"),
    ("pointing", "overlay_bvit_tiny.png", "pointing_overlay_bvit_tiny.png"),
    ("pointing", "heatmap_bvit_tiny.png", "pointing_heatmap_bvit_tiny.png"),
    ("pointing", "heatmap_bvit_tiny_reg.png", "pointing_heatmap_bvit_tiny_reg.png"),
    ("rank", "fig6_rank.png", "svd_fig6_rank.png"),
    ("rank", "fig7_truncation.png", "svd_fig7_truncation.png"),
    ("lens", "lens.png", "lens_fig8.png"),
    ("ablation", "ablation_bvit_tiny.png", "ablation_bvit_tiny.png"),
    ("ablation", "ablation_vit_tiny.png", "ablation_vit_tiny.png"),
    ("trajectories", "classes_bvit_tiny.png", "trajectories_classes_bvit_tiny.png"),
    ("trajectories", "centroids_bvit_tiny.png", "trajectories_centroids_bvit_tiny.png"),
    ("trajectories", "centroids_vit_tiny.png", "trajectories_centroids_vit_tiny.png"),
    ("early_exit", "tradeoff.png", "early_exit_tradeoff.png"),
    ("featviz", "grid.png", "featviz_grid.png"),
    ("featviz", "exemplar_grid.png", "featviz_exemplars.png"),
    ("featviz", "complexity.png", "featviz_complexity.png"),
    ("pruning", "fig14_pruning.png", "prune_fig14.png"),
    ("pruning", "fig5_utilization.png", "prune_fig5_utilization.png"),
]


def markdown(df: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub markdown table (no tabulate dependency)."""
    def cell(v: object) -> str:
        return f"{v:.{digits}f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def pointing_table(run: Run) -> pd.DataFrame:
    """Per step and model: the best head, its rate with the 95% interval, the mean over heads; then the baselines."""
    s = run.read_table("summary")
    s = s.assign(best=[f"{r:.3f} [{lo:.3f}, {hi:.3f}] h{h}" for r, lo, hi, h in
                       zip(s["best_rate"], s["best_ci_low"], s["best_ci_high"], s["best_head"], strict=True)])
    wide = s.pivot(index="step", columns="model", values=["best", "mean_over_heads"])
    wide.columns = [f"{m} {'best head [95% CI]' if k == 'best' else 'mean'}" for k, m in wide.columns]
    base = s.groupby("model")[["chance", "centre"]].first()
    rows = [{"step": name, **{f"{m} best head [95% CI]": f"{v:.3f}" for m, v in base[name].items()}}
            for name in ("chance", "centre")]
    return pd.concat([wide.reset_index(), pd.DataFrame(rows)], ignore_index=True).fillna("")


def svd_table(run: Run) -> pd.DataFrame:
    s = run.read_table("sweep")
    wide = s.pivot(index="rank", columns="model", values="accuracy").reset_index()
    base = s.groupby("model")["baseline_accuracy"].first()
    return pd.concat([wide, pd.DataFrame([{"rank": "full model", **base.to_dict()}])], ignore_index=True)


def lens_table(run: Run) -> pd.DataFrame:
    s = run.read_table("lens")
    return s.pivot(index="step", columns="model", values="accuracy").reset_index()


def early_exit_table(run: Run) -> pd.DataFrame:
    return run.read_table("sweep")[["model", "threshold", "accuracy", "mean_steps", "gflops", "ms_per_image"]]


def featviz_table(run: Run) -> pd.DataFrame:
    return run.read_table("complexity")[["step", "ratio_mean", "hf_energy_mean", "spectral_slope_mean", "png_bpp_mean", "n"]]


def prune_table(run: Run) -> pd.DataFrame:
    s = run.read_table("summary")
    s = s[s["layer_type"] == "all"][["round", "mask_sparsity", "weight_sparsity", "jaccard", "jaccard_random",
                                      "specialization", "specialization_random"]]
    r = run.read_table("rounds")[["round", "val_acc", "time_train_s", "time_grafts_s", "time_prune_s", "time_eval_s"]]
    return s.merge(r, on="round")


def ablation_table(run: Run) -> pd.DataFrame:
    heads = run.read_table("head_ablation")
    late = heads["step"] > 3
    return (heads.assign(steps=late.map({False: "1-3", True: "4+"}))
            .groupby(["model", "mode", "steps"])["drop"].agg(["max", "mean"]).reset_index())


TABLES: list[tuple[str, str, Callable[[Run], pd.DataFrame]]] = [
    ("pointing", "Pointing game: best head per step (rate, 95% interval, head) and mean over heads; chance and centre point", pointing_table),
    ("featviz", "Feature visualization: activation ratio and image complexity per step", featviz_table),
    ("rank", "Zero-shot truncated SVD of fc1, fc2: accuracy per rank", svd_table),
    ("pruning", "Step-masked pruning per round (all layer types)", prune_table),
    ("lens", "Readout accuracy after each step", lens_table),
    ("early_exit", "Early-exit threshold sweep", early_exit_table),
    ("ablation", "Head ablation: accuracy drop at steps 1-3 vs later", ablation_table),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="runs/demo-full", help="root of the full demo run")
    parser.add_argument("--out", default="docs/figures", help="where the README's figures and tables.md go")
    parser.add_argument("--no-demo", action="store_true", help="do not run `bvit-interp demo`; use the runs as they are")
    args = parser.parse_args()
    runs, out = Path(args.runs), Path(args.out)
    if not args.no_demo and cli_main(["demo", "--profile", "full", "--out", str(runs)]) != 0:
        print("warning: some demo analyses failed; copying what exists", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    missing = []
    for sub, name, target in FIGURES:
        src = runs / sub / name
        if src.exists():
            shutil.copyfile(src, out / target)
        else:
            missing.append(str(src))
    sections = []
    for sub, title, make in TABLES:
        if (runs / sub / "meta.json").exists():
            sections.append(f"### {title} (`{runs / sub}`)\n\n{markdown(make(Run(runs / sub)))}\n")
        else:
            missing.append(str(runs / sub))
    (out / "tables.md").write_text("# Tables of the README, as measured\n\n" + "\n".join(sections))
    print(f"{len(FIGURES) - sum(m.endswith('.png') for m in missing)} figures and {len(sections)} tables written to {out}")
    for m in missing:
        print(f"missing: {m}", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
