"""Learning curves and validation confusion matrices of the bundled models (figures for MODEL_CARD.md).

Usage: python scripts/model_report.py [--out models/figures]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bvit_interp.data.shapes import SHAPE_CLASSES, ShapesDataset  # noqa: E402
from bvit_interp.data.transforms import eval_transform  # noqa: E402
from bvit_interp.defaults import BUNDLED, MODELS_DIR, resolve_model  # noqa: E402


@torch.no_grad()
def confusion(name: str) -> np.ndarray:
    model = resolve_model(name)
    loader = DataLoader(ShapesDataset("val", transform=eval_transform(model.config)), batch_size=250)
    mat = np.zeros((10, 10), int)
    for x, y in loader:
        np.add.at(mat, (y.numpy(), model(x).argmax(-1).numpy()), 1)
    return mat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=MODELS_DIR / "figures")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    names = [n for n in BUNDLED if (MODELS_DIR / f"{n}.safetensors").exists()]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name in names:
        hist = [json.loads(line) for line in (MODELS_DIR / "training" / name / "metrics.jsonl").read_text().splitlines()]
        ax.plot([h["samples_seen"] / 1000 for h in hist], [h["val_acc"] for h in hist], "o-", label=name)
    ax.axhline(0.1, color="k", ls=":", lw=1, label="chance")
    ax.set_xlabel("training images seen (thousands)")
    ax.set_ylabel("shapes validation accuracy")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out / "learning_curves.png", dpi=120)
    fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 4.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        mat = confusion(name)
        ax.imshow(mat / mat.sum(1, keepdims=True), cmap="Blues", vmin=0, vmax=1)
        for (i, j), v in np.ndenumerate(mat):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=6)
        ax.set_xticks(range(10), SHAPE_CLASSES, rotation=60, fontsize=7)
        ax.set_yticks(range(10), SHAPE_CLASSES, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{name}: accuracy {np.trace(mat) / mat.sum():.3f}")
        per_class = {c: round(float(mat[i, i] / mat[i].sum()), 3) for i, c in enumerate(SHAPE_CLASSES)}
        print(name, per_class)
    fig.tight_layout()
    fig.savefig(args.out / "confusion.png", dpi=120)


if __name__ == "__main__":
    main()
