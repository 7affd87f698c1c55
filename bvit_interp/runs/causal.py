"""The causal analysis of several models into a run directory, resumable per model and stage.

Each (model, stage) writes its tables under ``parts/<model>/<stage>/`` and then a ``done.json``
(the table names and the stage's wall seconds); a resumed run reads finished stages back and
computes only the rest, so finished models are kept. ``write_outputs`` concatenates the models'
tables (with a ``model`` column) into the run's tables and draws the figures.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import pandas as pd
from tqdm import tqdm

from ..analysis import causal_plots
from ..analysis.causal.metric import PairRuns, pair_runs
from ..analysis.causal.pairs import ALL, MaskedImages, PairBatch
from ..analysis.causal.stages import (
    CausalOptions,
    agreement,
    attribution_stage,
    dla_stage,
    effects_wide,
    head_sites,
    pair_table,
    patching_stage,
    probe_stage,
    skipped_table,
)
from ..model import BViT
from .run import Run

Tables = dict[str, pd.DataFrame]


@dataclass
class CausalInputs:
    """One model's inputs: the model, its pairs and (None: no probes) its probe images."""

    model: BViT
    pairs: PairBatch
    probe_data: MaskedImages | None = None
    runs: PairRuns | None = field(default=None, repr=False)  # both unpatched runs, computed once


def stage_tables(run: Run, prefix: str, compute: Callable[[], Tables]) -> tuple[Tables, float]:
    """(tables, seconds) of one stage: read back from ``prefix`` when finished, else computed and written."""
    done = f"{prefix}/done.json"
    if run.has(done):
        info = run.read_json(done)
        return {name: run.read_table(f"{prefix}/{name}") for name in info["tables"]}, float(info["seconds"])
    t0 = time.perf_counter()
    tables = compute()
    seconds = time.perf_counter() - t0
    for name, table in tables.items():
        run.write_table(f"{prefix}/{name}", table)
    run.write_json(done, {"tables": list(tables), "seconds": seconds})  # last: the stage is complete
    return tables, seconds


def causal_model(run: Run, label: str, inputs: CausalInputs, options: CausalOptions, max_batch: int = 1024,
                 batch_size: int = 256, progress: bool = True) -> Tables:
    """Every stage of one model (finished ones read back); tables by name, plus ``seconds`` per stage."""
    model = inputs.model
    runs = inputs.runs or pair_runs(model, inputs.pairs)
    units = options.ticks(model, with_probes=inputs.probe_data is not None)
    bar = tqdm(total=sum(units.values()), desc=f"causal {label}", unit="part", disable=not progress)
    prefix = f"parts/{label}"
    tick = bar.update

    def stage(name: str, compute: Callable[[], Tables]) -> tuple[Tables, float]:
        was_done = run.has(f"{prefix}/{name}/done.json")
        tables, seconds = stage_tables(run, f"{prefix}/{name}", compute)
        if was_done:
            bar.update(units[name])
        return tables, seconds

    out: Tables = {"pairs": pair_table(inputs.pairs, runs)}
    skipped = [skipped_table(inputs.pairs.skipped, "pairs")]
    seconds: dict[str, float] = {}
    tables, seconds["exact"] = stage("patching", lambda: patching_stage(model, inputs.pairs, runs, options, max_batch, tick))
    out.update(tables)
    if options.attribution:
        tables, _ = stage("attribution", lambda: attribution_stage(model, inputs.pairs, runs, options, tick))
        out.update(tables)
        seconds.update({str(r.method): float(r.seconds) for r in tables["attribution_seconds"].itertuples()})
        out["agreement"] = agreement(out["patching"], out["attribution"], seconds)
    if options.dla:
        tables, seconds["dla"] = stage("dla", lambda: dla_stage(model, inputs.pairs, runs, options, tick))
        out.update(tables)
    if options.probes and inputs.probe_data is not None:
        data = inputs.probe_data
        tables, seconds["probes"] = stage("probes", lambda: probe_stage(model, data, options, batch_size, tick))
        out.update(tables)
        skipped.append(skipped_table(data.skipped, "probes"))
    bar.close()
    out.pop("attribution_seconds", None)
    out["skipped"] = pd.concat(skipped, ignore_index=True)
    out["timings"] = pd.DataFrame({"part": list(seconds), "seconds": list(seconds.values())})
    return out


def causal_run(run: Run, inputs: Mapping[str, CausalInputs], options: CausalOptions, max_batch: int = 1024,
               batch_size: int = 256, progress: bool = True) -> dict[str, Tables]:
    """``causal_model`` for every model (by label), in order."""
    return {label: causal_model(run, label, i, options, max_batch, batch_size, progress) for label, i in inputs.items()}


def summary(tables: Tables) -> dict[str, float | int]:
    """Headline numbers of one model: pairs, mean gap, clean accuracy on the pairs, rho and speed-up, DLA error."""
    pairs = tables["pairs"]
    out: dict[str, float | int] = {"pairs": len(pairs), "mean_gap": float(pairs["gap"].mean())}
    if "agreement" in tables:
        rows = tables["agreement"]
        overall = rows[(rows["method"] == "attribution") & (rows["direction"] == "all")]
        if len(overall):
            out["attribution_rho"] = float(overall["rho"].iloc[0])
            out["attribution_speedup"] = float(overall["speedup"].iloc[0])
        ig = rows[(rows["method"] == "ig") & (rows["direction"] == "all")]
        if len(ig):
            out["ig_rho"] = float(ig["rho"].iloc[0])
    if "dla_totals" in tables:
        clean = tables["dla_totals"][tables["dla_totals"]["run"] == "clean"]
        out["dla_max_error"] = float(clean["error"].abs().max())
    if "probes" in tables:
        best = tables["probes"].groupby(["representation", "task"])["selectivity"].max()
        if ("cls", "class") in best.index:
            out["cls_class_selectivity_max"] = float(best[("cls", "class")])
    return out


def write_outputs(run: Run, per_model: Mapping[str, Tables], options: CausalOptions) -> dict[str, dict[str, float | int]]:
    """The run's tables (every model's rows with a ``model`` column) and figures; returns the summaries."""
    names = list(dict.fromkeys(name for tables in per_model.values() for name in tables))
    for name in names:
        parts = [tables[name].assign(model=label) for label, tables in per_model.items() if name in tables]
        table = pd.concat(parts, ignore_index=True)
        run.write_table(name, table[["model", *[c for c in table.columns if c != "model"]]])
    for label, tables in per_model.items():
        write_figures(run, label, tables, options)
    return {label: summary(tables) for label, tables in per_model.items()}


def write_figures(run: Run, label: str, tables: Tables, options: CausalOptions) -> None:
    """The figures of one model: step x head maps (exact and attribution), site maps, DLA, effects, agreement, probes."""
    patching = tables["patching"]
    for direction in options.directions:
        for site in head_sites(options.sites):
            panels = {"exact patching": patching}
            if "attribution" in tables:
                for method, rows in tables["attribution"].groupby("method", sort=False):
                    if (rows["site"] == site).any():
                        panels[f"{method} (estimate)"] = rows.drop(columns="method")
            fig = causal_plots.plot_step_head_maps(panels, site, ALL, direction, value="pooled",
                                                   title=f"{label}, {direction}: {site} per head, all tokens")
            run.write_figure(f"maps_{direction}_{site.replace('.', '_')}_{label}", fig)
        if (patching["head"] == -1).any():
            fig = causal_plots.plot_site_map(patching, direction, value="pooled",
                                             title=f"{label}, {direction}: site / token group")
            run.write_figure(f"sites_{direction}_{label}", fig)
    if "agreement" in tables:
        exact = tables["patching"]
        approx = tables["attribution"]
        rho = tables["agreement"]
        overall = rho[(rho["method"] == "attribution") & (rho["direction"] == "all")]
        text = f" (Spearman rho {overall['rho'].iloc[0]:.2f})" if len(overall) else ""
        fig = causal_plots.plot_agreement(exact, approx[approx["method"] == "attribution"].drop(columns="method"),
                                          title=f"{label}: attribution vs exact patching{text}")
        run.write_figure(f"agreement_{label}", fig)
    if "dla" in tables:
        clean = tables["dla"][tables["dla"]["run"] == "clean"].drop(columns="run")
        run.write_figure(f"dla_{label}", causal_plots.plot_dla(clean, title=f"{label}: direct logit attribution (clean run)"))
        for direction in options.directions:
            wide = effects_wide(tables["effects"], direction)
            if len(wide):
                fig = causal_plots.plot_direct_indirect(wide, title=f"{label}, {direction}: total vs direct vs indirect "
                                                                    "(pooled)")
                run.write_figure(f"effects_{direction}_{label}", fig)
    if "probes" in tables:
        run.write_figure(f"probes_{label}", causal_plots.plot_probe_curves(tables["probes"], title=f"{label}: probes per step"))


__all__ = ["CausalInputs", "causal_model", "causal_run", "stage_tables", "summary", "write_figures", "write_outputs"]
