"""Resumable RTL pruning runs: theta_0, each round's masks, the trained model, tables and ``state.json`` on disk.

A round counts as finished once ``state.json`` lists it (written last), so a run interrupted
mid-round redoes that round from its masks; every phase's randomness comes from (seed, round,
phase, step), so the resumed run reproduces an uninterrupted one.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..analysis.pruning import metrics_over_rounds
from ..analysis.pruning_plots import pruning_figure, utilization_figure
from ..model import BViT, load_model
from ..pruning.masks import StepMasks
from ..pruning.rtl import Progress, PruneConfig, PruneData, RTLPruner, rounds_table
from .run import Run

STATE_FILE = "state.json"


class PruningRun:
    """Runs (or resumes) the rounds of one pruning run (``RTLPruner``) in a run directory."""

    def __init__(
        self, cfg: PruneConfig, run: Run, device: str | torch.device = "cpu", amp: bool = True,
        progress: Progress | None = None, workers: int = 0,
    ) -> None:
        self.cfg = cfg
        self.run = run
        self.progress = progress or (lambda event, info: None)
        self.pruner = RTLPruner(cfg, device, amp, self.progress, workers)
        self._initial_weights()
        self.history: list[dict[str, Any]] = run.read_json(STATE_FILE)["rounds"] if run.has(STATE_FILE) else []

    @property
    def model(self) -> BViT:
        return self.pruner.model

    @property
    def data(self) -> PruneData:
        return self.pruner.data

    def _initial_weights(self) -> None:
        """theta_0, saved on the first start and reloaded on resume (so rewinding survives restarts)."""
        if self.run.has("init.safetensors"):
            init = load_model(self.run.file("init"), map_location=self.pruner.device)
            self.pruner.set_initial_weights(init.state_dict(), str(self.run.file("init")))
        else:
            self.run.write_model("init", self.pruner.model, metadata={"role": "theta_0 of a pruning run"})

    def masks_file(self, round_: int) -> Path:
        return self.run.file(f"masks/round_{round_:03d}.npz")

    def masks_of(self, round_: int) -> StepMasks:
        """The masks of round ``round_`` (round 0: all ones)."""
        return self.pruner.initial_masks() if round_ == 0 else StepMasks.load(self.masks_file(round_))

    def run_round(self, round_: int) -> dict[str, Any]:
        """Train, evaluate and (before the last round) graft-prune round ``round_``; checkpoint it."""
        record, new = self.pruner.run_round(round_, self.masks_of(round_))
        if new is not None:
            t0 = time.perf_counter()
            new.save(self.masks_file(round_ + 1))
            record["time_prune_s"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        self.run.write_model("model", self.model, metadata={"pruning_round": round_, "val_acc": record["val_acc"]})
        for name, df in metrics_over_rounds([self.masks_of(r) for r in range(round_ + 1)]).items():
            self.run.write_table(name, df)
        record["time_checkpoint_s"] = time.perf_counter() - t0
        self.history = [*self.history[:round_], record]
        self.run.write_table("rounds", rounds_table(self.history))
        # Written last: a round counts as finished only once everything above is on disk.
        self.run.write_json(STATE_FILE, {"rounds": self.history})
        self.progress("round_done", {**record, "rounds": self.cfg.rounds})
        return record

    def run_all(self) -> list[dict[str, Any]]:
        """Run every round not yet finished (resuming after the last finished one)."""
        if self.history:
            self.progress("resume", {"round": len(self.history), "rounds": self.cfg.rounds})
        for round_ in range(len(self.history), self.cfg.rounds + 1):
            self.run_round(round_)
        return self.history


def write_figures(run: Run) -> None:
    """Fig. 5 and Fig. 14 A-F from the run's tables."""
    summary, steps, util, rounds = (run.read_table(n) for n in ("summary", "steps", "utilization", "rounds"))
    run.write_figure("fig5_utilization", utilization_figure(util, summary))
    run.write_figure("fig14_pruning", pruning_figure(steps, summary, rounds))


def print_progress(event: str, info: dict[str, Any]) -> None:
    """One stderr line per round, training, graft and finished round (a ``progress`` callback)."""
    if event == "resume":
        line = f"resuming: rounds 0-{info['round'] - 1} of 0-{info['rounds']} already finished"
    elif event == "round":
        line = f"round {info['round']}/{info['rounds']}: mask sparsity {100 * info['sparsity']:.1f}%"
    elif event == "trained":
        ctrl = f", random masks {info['val_acc_random']:.3f}" if info.get("val_acc_random") is not None else ""
        line = (f"  full training {info['time_train_s']:.0f}s: loss {info['train_loss']:.3f}, "
                f"train acc {info['train_acc']:.3f}, val acc {info['val_acc']:.3f}{ctrl}")
    elif event == "graft":
        line = f"  graft step {info['step']}/{info['steps']}: loss {info['loss']:.3f} ({info['seconds']:.1f}s)"
    elif event == "round_done":
        line = (f"  round {info['round']} done: train {info['time_train_s']:.0f}s, grafts {info['time_grafts_s']:.0f}s, "
                f"prune {info['time_prune_s']:.1f}s, eval {info['time_eval_s']:.0f}s, control {info['time_control_s']:.0f}s")
    else:
        return
    print(line, file=sys.stderr, flush=True)
