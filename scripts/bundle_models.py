"""Copy trained runs into models/ (compact checkpoints, training logs) and measure their validation accuracy.

Usage: python scripts/bundle_models.py runs/train/bvit_tiny runs/train/vit_tiny ...
Each run's final model becomes models/<name>.safetensors + .json (fp16 storage when that keeps
the file small), its metrics.jsonl / result.json / log go to models/training/<name>/, and the
json records the accuracy on the full shapes validation set and on the first 500 images
(the subset the test suite recomputes).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bvit_interp.data.shapes import ShapesConfig, ShapesDataset, shapes_for_model  # noqa: E402
from bvit_interp.data.transforms import eval_transform  # noqa: E402
from bvit_interp.evaluation import evaluate_accuracy  # noqa: E402
from bvit_interp.model import load_model, save_model  # noqa: E402

SUBSET = 500


def accuracy(model, n: int | None) -> float:
    ds = ShapesDataset("val", shapes_for_model(model.config), transform=eval_transform(model.config))
    if n is not None:
        ds = Subset(ds, range(n))
    return evaluate_accuracy(model, DataLoader(ds, batch_size=250))[0]


def bundle(run: Path, out_dir: Path, name: str | None = None) -> dict:
    name = name or run.name
    src = load_model(run / "model")
    info = json.loads((run / "model.json").read_text())
    trained_on = (info["metadata"].get("training") or {}).get("shapes")
    if trained_on and "shapes" not in src.config.extra:  # runs started before configs recorded their data
        shapes = ShapesConfig.from_dict(trained_on)
        src.config = src.config.replace(extra={**src.config.extra,
                                               "shapes": {"version": shapes.version, "classes": shapes.classes}})
    dtype = torch.float16 if sum(p.numel() for p in src.parameters()) > 1_000_000 else None
    save_model(src, out_dir / name, metadata=info["metadata"], dtype=dtype)
    model = load_model(out_dir / name)  # measure what is shipped
    full, subset = accuracy(model, None), accuracy(model, SUBSET)
    doc = json.loads((out_dir / f"{name}.json").read_text())
    doc["metadata"]["bundled_accuracy"] = {"val_full": full, f"val_first_{SUBSET}": subset}
    (out_dir / f"{name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    logs = out_dir / "training" / name
    logs.mkdir(parents=True, exist_ok=True)
    for f in ("metrics.jsonl", "result.json"):
        shutil.copy(run / f, logs / f)
    log = run.parent / f"{name}.log"
    if log.exists():  # keep the JSON lines of the log (per-epoch records), not the progress bars
        lines = [ln for ln in log.read_text().replace("\r", "\n").splitlines() if ln.startswith("{") or "resum" in ln]
        (logs / "train.log").write_text("\n".join(lines) + "\n")
    print(f"{name}: val acc {full:.4f} (first {SUBSET}: {subset:.4f}), {(out_dir / f'{name}.safetensors').stat().st_size / 1e6:.1f} MB")
    return doc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("runs", nargs="+", type=Path, help="training run directories (runs/train/<name>)")
    parser.add_argument("--out", type=Path, default=ROOT / "models", help="models directory")
    parser.add_argument("--name", action="append", help="bundled name of each run (default: the run's folder name)")
    args = parser.parse_args()
    names = args.name or [None] * len(args.runs)
    if len(names) != len(args.runs):
        parser.error("give one --name per run")
    for run, name in zip(args.runs, names, strict=True):
        bundle(run, args.out, name)


if __name__ == "__main__":
    main()
