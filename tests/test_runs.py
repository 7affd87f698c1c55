"""The run layer's guarantees (issue 15): options checked on resume, --force only on runs and only swapped in
on success, one writer per run directory, nothing created for rejected input."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from bvit_interp import build_model, save_model
from bvit_interp.cli import main
from bvit_interp.results import Run

META = {"analysis": "toy", "models": [{"name": "m", "sha256": "abc"}], "data": "shapes", "seed": 0,
        "options": {"chunk_size": 16, "limit": None}}


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """(exit code, stderr) of the command line."""
    try:
        code = main(argv)
    except SystemExit as err:
        code = int(err.code or 0)
    return code, capsys.readouterr().err


def release(run: Run) -> None:
    """Let go of a run without finishing it (as an interrupted process would)."""
    close = getattr(run, "close", None)
    if close is not None:
        close()
    del run
    gc.collect()


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    """A bvit_micro checkpoint stem (10 classes, random weights)."""
    torch.manual_seed(0)
    save_model(build_model("bvit_micro", num_classes=10), tmp_path / "m")
    return tmp_path / "m"


# --------------------------------------------------------------------------- a. options checked on resume


def test_pointing_resume_with_another_chunk_size_is_refused(ckpt: Path, tmp_path: Path, capsys) -> None:
    """Resuming with another --chunk-size used to reuse parts of the old layout and drop images silently."""
    out = tmp_path / "run"
    base = ["pointing", "--model", str(ckpt), "--limit", "24", "--overlays", "0", "--batch-size", "8",
            "--device", "cpu", "--out", str(out)]
    assert main([*base, "--chunk-size", "8"]) == 0
    first = pd.read_parquet(out / "hit_rates.parquet")
    assert first["n"].iloc[0] == 24
    meta = json.loads((out / "meta.json").read_text())
    meta["status"] = "running"  # interrupted before its last part
    (out / "meta.json").write_text(json.dumps(meta))
    (out / "parts" / "m" / "00000016_points.parquet").unlink()
    code, err = run_cli([*base, "--chunk-size", "16"], capsys)
    assert code == 2 and "chunk" in err and "16" in err, err
    assert main([*base, "--chunk-size", "8"]) == 0  # the same options resume it
    pd.testing.assert_frame_equal(pd.read_parquet(out / "hit_rates.parquet"), first)


def test_chunked_parts_refuse_another_chunk_size(tmp_path: Path) -> None:
    """The chunk layer checks its layout itself, for callers that do not record the chunk size as an option."""
    from bvit_interp.runs import ChunkedTables

    run = Run.create(tmp_path / "run", META)
    items = list(range(10))
    chunks = ChunkedTables(run, "parts/m", items, 4, ("t",))
    assert [c.items for c in chunks] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    first = next(iter(chunks))
    assert chunks.get(first, lambda xs: [pd.DataFrame({"i": xs})])[0]["i"].tolist() == [0, 1, 2, 3]
    assert chunks.done(first) and chunks.get(first, lambda xs: 1 / 0)[0]["i"].tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="chunk size 4"):
        ChunkedTables(run, "parts/m", items, 8, ("t",))
    with pytest.raises(ValueError, match="another item list"):
        ChunkedTables(run, "parts/m", items[:5], 4, ("t",))
    run.close()


def test_resume_error_names_the_differing_option(tmp_path: Path) -> None:
    run = Run.create(tmp_path / "run", META)
    run.write_table("part", pd.DataFrame({"a": [1]}))
    release(run)
    other = {**META, "options": {**META["options"], "chunk_size": 32}}
    with pytest.raises(FileExistsError, match="chunk_size.*16.*32"):
        Run.create(tmp_path / "run", other)


# --------------------------------------------------------------------------- b. --force only replaces runs


def test_force_refuses_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "ideas.txt").write_text("my notes")
    (notes / "meta.json").write_text('{"author": "me"}')  # a meta.json, but not ours
    with pytest.raises(FileExistsError, match="not a bvit-interp run"):
        Run.create(notes, META, force=True)
    assert sorted(p.name for p in notes.iterdir()) == ["ideas.txt", "meta.json"]
    assert (notes / "ideas.txt").read_text() == "my notes"


def test_cli_force_on_a_folder_with_notes_deletes_nothing(ckpt: Path, tmp_path: Path, capsys) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "ideas.txt").write_text("my notes")
    code, err = run_cli(["lens", "--model", str(ckpt), "--limit", "4", "--device", "cpu", "--force",
                         "--out", str(notes)], capsys)
    assert code == 2 and "not a bvit-interp run" in err, err
    assert [p.name for p in notes.iterdir()] == ["ideas.txt"]


# --------------------------------------------------------------------------- c. --force swaps in on success


def test_failed_force_rerun_keeps_the_old_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    old = Run.create(out, META)
    old.write_table("result", pd.DataFrame({"v": [1.0]}))
    old.complete()
    new = Run.create(out, {**META, "seed": 1}, force=True)
    new.write_table("result", pd.DataFrame({"v": [2.0]}))  # then the rerun fails
    release(new)
    assert Run(out).is_complete and Run(out).meta["seed"] == 0
    assert Run(out).read_table("result")["v"].tolist() == [1.0]
    again = Run.create(out, {**META, "seed": 1}, force=True)  # a successful rerun replaces it at completion
    again.write_table("result", pd.DataFrame({"v": [3.0]}))
    assert Run(out).read_table("result")["v"].tolist() == [1.0]
    again.complete()
    assert Run(out).is_complete and Run(out).meta["seed"] == 1
    assert Run(out).read_table("result")["v"].tolist() == [3.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no staging directory left beside it


def test_cli_interrupted_force_rerun_keeps_the_old_run_then_resumes(ckpt: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from bvit_interp.runs import pointing as driver

    out = tmp_path / "run"
    base = ["pointing", "--model", str(ckpt), "--limit", "24", "--chunk-size", "8", "--overlays", "0",
            "--device", "cpu", "--out", str(out)]
    assert main(base) == 0
    first = pd.read_parquet(out / "hit_rates.parquet")
    real, calls = driver.score_model, []

    def fail_on_second_chunk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(driver, "score_model", fail_on_second_chunk)
    rerun = [*base, "--tolerance", "3", "--force"]
    assert main(rerun) == 130  # interrupted
    assert Run(out).is_complete and Run(out).meta["options"]["tolerance"] == 0
    pd.testing.assert_frame_equal(pd.read_parquet(out / "hit_rates.parquet"), first)
    monkeypatch.setattr(driver, "score_model", real)
    assert main(rerun) == 0  # resumes the interrupted rerun (its first chunk is kept), then swaps it in
    assert Run(out).is_complete and Run(out).meta["options"]["tolerance"] == 3
    assert "resumed_at" in Run(out).meta and sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.safetensors", "run"]


# --------------------------------------------------------------------------- d. one writer per run


def test_second_writer_in_the_same_process_is_refused(tmp_path: Path) -> None:
    first = Run.create(tmp_path / "run", META)
    with pytest.raises(FileExistsError, match=rf"in use.*pid {os.getpid()}"):
        Run.create(tmp_path / "run", META)
    with pytest.raises(FileExistsError, match="in use"):
        Run.create(tmp_path / "run", META, force=True)
    release(first)
    Run.create(tmp_path / "run", META).complete()  # free again once the first one let go


HOLDER = """
import sys
from bvit_interp.results import Run
run = Run.create(sys.argv[1], {"analysis": "toy", "options": {}})
print("ready", flush=True)
sys.stdin.readline()
"""


def test_second_writer_in_another_process_is_refused_naming_the_holder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=env)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        with pytest.raises(FileExistsError) as err:
            Run.create(out, {"analysis": "toy", "options": {}})
        message = str(err.value)
        assert f"pid {holder.pid}" in message and "started" in message and "-c" in message, message
    finally:
        holder.communicate("\n", timeout=60)
    Run.create(out, {"analysis": "toy", "options": {}}).complete()


# --------------------------------------------------------------------------- e. nothing created for rejected input


def test_meta_that_cannot_be_recorded_creates_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises((TypeError, ValueError)):
        Run.create(out, {**META, "options": {"fn": object()}})
    assert not out.exists()


def test_stub_of_a_rejected_run_does_not_block_the_corrected_rerun(tmp_path: Path) -> None:
    """A run that holds nothing yet (only its meta.json) is restarted with the new options, not refused."""
    out = tmp_path / "run"
    release(Run.create(out, META))
    run = Run.create(out, {**META, "options": {**META["options"], "limit": 10}})
    assert run.meta["options"]["limit"] == 10
    run.complete()


# --------------------------------------------------------------------------- --steps / --max-steps, shared options


def parse(argv: list[str]):
    from bvit_interp.cli import build_parser

    return build_parser().parse_args(argv)


def test_steps_selects_steps_and_max_steps_counts_them(capsys) -> None:
    """--steps is *which* steps everywhere; --max-steps N is how many; the old --steps N still works, with a warning."""
    assert parse(["featviz", "--steps", "1", "3"]).steps == [1, 3] == parse(["featviz", "--steps", "1,3"]).steps
    assert parse(["ablation", "--steps", "1,6", "12"]).steps == [1, 6, 12]
    for command in ("pointing", "trajectories"):
        assert parse([command, "--max-steps", "5"]).max_steps == 5
        assert capsys.readouterr().err == ""
        assert parse([command, "--steps", "5"]).max_steps == 5
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--steps" in err[0] and "deprecated" in err[0] and "--max-steps" in err[0], err
    assert parse(["lens", "--max-steps", "5"]).max_steps == 5
    with pytest.raises(SystemExit):
        parse(["featviz", "--steps", "0"])


def test_shared_options_keep_each_commands_defaults() -> None:
    pointing, prune, train = parse(["pointing"]), parse(["pruning"]), parse(["train"])
    assert (pointing.batch_size, prune.batch_size, train.batch_size) == (64, 128, None)
    assert train.model == "bvit_tiny" and prune.data == train.data == pointing.data == "shapes"
    for args in (pointing, prune, train):
        assert args.device == "auto" and args.seed == 0 and args.force is False and args.workers == 0
