"""benchmarks/gpu.sh --tiny: every section runs on a CPU, without captum / pacmap / streamlit, and reports finite numbers."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SECTIONS = ("hooks", "pointing", "featviz", "train")
BLOCKED = ("captum", "pacmap", "streamlit")
# numbers every row of a section must hold, finite (peak memory is CUDA-only: null on a CPU)
REQUIRED = {
    "hooks": ("images_per_s", "time_ratio_vs_plain", "captured_mib_per_batch"),
    "pointing": ("images_per_s", "time_ratio_vs_plain_inference", "projected_imagenet_s919_s"),
    "featviz": ("seconds_per_target", "speedup_per_target_vs_smallest_k"),
    "train": ("images_per_s", "seconds_per_iteration"),
}


def _blocking_env(tmp_path: Path) -> dict[str, str]:
    """Environment whose Python cannot import captum, pacmap or streamlit (as on the GPU image)."""
    site = tmp_path / "block"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in BLOCKED)
    )
    return {**os.environ, "PYTHONPATH": str(site), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}


def test_gpu_bench_tiny_runs_every_section(tmp_path: Path) -> None:
    env = _blocking_env(tmp_path)
    probe = subprocess.run([sys.executable, "-c", "import captum"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "ModuleNotFoundError" in probe.stderr  # the block is in force

    out = tmp_path / "out"
    proc = subprocess.run(
        ["bash", "benchmarks/gpu.sh", "--tiny", "--device", "cpu", "--amp", "on",
         "--out", str(out), "--data-dir", str(tmp_path / "data")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_bench.json").read_text())
    table = (out / "gpu_bench.md").read_text()

    assert report["environment"]["mode"] == "tiny"
    assert report["optional_modules_imported"] == []
    assert list(report["sections"]) == list(SECTIONS)
    for name, keys in REQUIRED.items():
        section = report["sections"][name]
        assert section["status"] == "ok", section
        assert section["rows"], name
        for row in section["rows"]:
            for key in keys:
                assert isinstance(row[key], float | int) and math.isfinite(row[key]), (name, key, row)
        for g in section["goals"]:
            assert math.isfinite(g["value"]) and isinstance(g["met"], bool), g
        assert f"| {name} |" in table
    assert len(report["sections"]["hooks"]["rows"]) == 3
    assert len(report["sections"]["pointing"]["rows"]) == 4
    assert [r["K"] for r in report["sections"]["featviz"]["rows"]] == [1, 4, 16]
    assert len(report["sections"]["train"]["rows"]) == 3
    assert {g["goal"].split(" ")[0] for s in report["sections"].values() for g in s["goals"]} >= {"CLS-row", "scorer"}
    # the pointing section read a real ImageNet-S-layout root: non-square JPEGs with PNG masks
    data = tmp_path / "data"
    jpegs = sorted((data / "validation").rglob("*.JPEG"))
    assert len(jpegs) == report["sections"]["pointing"]["config"]["images"] == 24
    assert all((data / "validation-segmentation" / j.parent.name / f"{j.stem}.png").is_file() for j in jpegs)
    assert "# GPU benchmark" in proc.stdout and "pointing: round 1/" in proc.stdout  # progress lines


def test_gpu_bench_help_names_every_option(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("gpu_bench", REPO / "benchmarks" / "gpu_bench.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_bench", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as exit_info:
        module.parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--out", "--tiny", "--device", "--sections", "--amp", "--workers", "--pointing-images",
                   "--data-dir", "--budget"):
        assert option in text
    assert "$OUT" in text and "captum" in text
