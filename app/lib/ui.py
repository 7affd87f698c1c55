"""The skeleton every analysis page shares: run and model pickers, shared step / head, figures, tables."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from bvit_interp.registry import AnalysisSpec, get_analysis
from bvit_interp.runs.plan import ACTIVE, DemoPlan, PlanEntry

from . import data
from .config import AppConfig, get_config
from .runs import (
    RunInfo,
    UnreadableTableError,
    data_label,
    figures_for,
    int_values,
    runs_for,
    step_head_filter,
    to_csv_bytes,
)

MAX_ROWS_SHOWN = 2000


@dataclass
class PageContext:
    """What a page renders: the configuration, its analysis, the chosen run and model."""

    cfg: AppConfig
    spec: AnalysisSpec
    run: RunInfo
    model: str | None

    def table(self, name: str, per_model: bool = True) -> pd.DataFrame:
        """A table of the run (rows of the chosen model by default)."""
        return data.table(self.run, name, self.cfg, self.model if per_model else None)

    def has_table(self, name: str) -> bool:
        return name in self.run.tables


# --------------------------------------------------------------------------- guards and messages


@contextlib.contextmanager
def guard(what: str) -> Iterator[None]:
    """Show a short warning instead of a traceback when a section fails (``--debug`` re-raises)."""
    try:
        yield
    except UnreadableTableError as err:  # a broken file of the run: an error naming it
        if get_config().debug:
            raise
        st.error(f"Could not show {what}: {err}", icon=":material/error:")
    except Exception as err:  # noqa: BLE001 - the browser must never show a stack trace
        if get_config().debug:
            raise
        st.warning(f"Could not show {what}: {type(err).__name__}: {err}", icon=":material/warning:")


def command_for(spec: AnalysisSpec, cfg: AppConfig) -> str:
    """The command that makes a run of ``spec`` under this browser's runs root (``--out ROOT/<key>``)."""
    try:
        rel = cfg.runs.relative_to(Path.cwd().resolve())
        root = rel.as_posix() if rel.parts else "."
    except ValueError:
        root = str(cfg.runs)
    return " ".join(["bvit-interp", spec.command, *spec.example, "--out", f"{root}/{spec.key}"])


def about(spec: AnalysisSpec) -> str:
    """The page caption: the analysis' one-line description and paper reference."""
    text = spec.description[:1].upper() + spec.description[1:]
    return f"{text} ({spec.paper})" if spec.paper else text


def show_problems(run: RunInfo) -> None:
    """The run's problems as info / warning boxes."""
    for problem in run.problems:
        if problem.level == "info":
            st.info(problem.message, icon=":material/info:")
        else:
            st.warning(problem.message, icon=":material/warning:")


# --------------------------------------------------------------------------- shared state


def _sync(target: str, widget: str) -> None:
    st.session_state[target] = st.session_state[widget]


def shared_choice(label: str, key: str, options: Sequence[Any], kind: str = "select_slider",
                  help: str | None = None, format_func: Callable[[Any], str] = str) -> Any:
    """A sidebar picker whose value lives in ``st.session_state[key]`` and is shared by all pages."""
    options = list(options)
    if not options:
        return None
    current = st.session_state.get(key, options[0])
    if current not in options:
        numeric = all(isinstance(o, (int, float)) for o in options) and isinstance(current, (int, float))
        current = min(options, key=lambda o: abs(o - current)) if numeric else options[0]
    st.session_state[key] = current
    widget = f"_w_{key}"
    st.session_state[widget] = current
    if len(options) == 1:
        st.sidebar.caption(f"{label}: {format_func(current)} (the only one)")
        return current
    if kind == "select_slider":
        st.sidebar.select_slider(label, options=options, key=widget, on_change=_sync, args=(key, widget),
                                 help=help, format_func=format_func)
    else:
        st.sidebar.selectbox(label, options=options, key=widget, on_change=_sync, args=(key, widget),
                             help=help, format_func=format_func)
    return current


def step_picker(steps: Sequence[int]) -> int | None:
    """The shared step slider (1-based steps of the unrolled network)."""
    return shared_choice("Step", "step", sorted(steps), help="1-based step (a bViT's recurrent step, a ViT's block); "
                         "shared by every page")


def head_picker(heads: Sequence[int]) -> int | None:
    """The shared head picker."""
    return shared_choice("Head", "head", sorted(heads), kind="selectbox", help="attention head; shared by every page")


def set_step_head(step: int | None = None, head: int | None = None) -> None:
    """Change the shared step / head (e.g. from a chart click); the caller reruns."""
    if step is not None:
        st.session_state["step"] = int(step)
    if head is not None:
        st.session_state["head"] = int(head)


def apply_selection(event: Any, name: str, key: str) -> None:
    """Move the shared step / head to a clicked chart cell (once per new click), then rerun."""
    try:
        points = event.selection[name]
    except (AttributeError, KeyError, TypeError):
        return
    cell = points[0] if points else None
    last = st.session_state.get(key)
    if cell is None or cell == last:
        return
    st.session_state[key] = cell
    set_step_head(cell.get("step"), cell.get("head"))
    st.rerun()


# --------------------------------------------------------------------------- the page skeleton


PAGE_KEY = "_analysis_page"  # session state: the analysis key of the page being run (set by main.py)


def current_page() -> str:
    """The analysis key of the page being run (the generic view serves several analyses)."""
    return str(st.session_state.get(PAGE_KEY, ""))


# --------------------------------------------------------------------------- live demo state

LIVE_REFRESH_S = 2.0  # how often a page whose analysis is queued or running looks for news


def demo_entry(cfg: AppConfig, key: str) -> tuple[DemoPlan | None, PlanEntry | None]:
    """The demo plan under the runs root and this analysis's entry in it (None when no demo wrote one)."""
    plan = DemoPlan.load(cfg.runs)
    return plan, plan.entry(key) if plan else None


def live_state(cfg: AppConfig, spec: AnalysisSpec) -> PlanEntry | None:
    """Show this analysis's state in the demo (queued / running / failed) and refresh the page when it changes."""
    plan, entry = demo_entry(cfg, spec.key)
    if plan is None or entry is None:
        return None
    if entry.state == "queued":
        ahead = [e.title for e in plan.entries[: plan.entries.index(entry)] if e.state in ACTIVE]
        when = f" (about {entry.estimate_s:.0f} s last time)" if entry.estimate_s else ""
        st.info(f"**Queued** in the demo{when}: it runs after {', '.join(ahead) or 'nothing'}. "
                "This page fills in by itself when the run finishes.", icon=":material/schedule:")
    elif entry.state == "failed":
        st.error(f"**Failed** in the demo: {entry.error or 'no reason recorded'}"
                 + (f" (full output: `{entry.log}`)" if entry.log else ""), icon=":material/error:")
    elif entry.state == "interrupted":
        st.warning("**Interrupted**: run `make demo` (or `bvit-interp demo --serve`) again to resume it.",
                   icon=":material/pause_circle:")
    if entry.state in ACTIVE:
        _watch(str(cfg.runs), spec.key, entry.state)
    return entry


@st.fragment(run_every=LIVE_REFRESH_S)
def _watch(runs_root: str, key: str, shown_state: str) -> None:
    """Progress of a running analysis; reruns the whole page once its state moves on."""
    plan = DemoPlan.load(runs_root)
    entry = plan.entry(key) if plan else None
    if entry is None or entry.state != shown_state:
        data.list_runs.clear()  # the finished run must show at once, not after the listing's cache expires
        st.rerun(scope="app")
    if entry.state == "running":
        secs = f"{entry.seconds:.0f} s" if entry.seconds is not None else ""
        text = f"**Running** in the demo for {secs}" + (f": {entry.detail}" if entry.detail else "")
        st.progress(min(1.0, max(0.0, entry.progress or 0.0)), text=text)


def analysis_page(key: str) -> PageContext | None:
    """Title, run picker, problems and model picker of an analysis page; None when there is nothing to show."""
    spec = get_analysis(key)
    cfg = get_config()
    st.title(spec.title)
    st.caption(about(spec))
    entry = live_state(cfg, spec)
    if entry is not None and entry.state in ACTIVE and not _has_complete_run(cfg, spec):
        return None  # nothing finished to show yet; the state above refreshes the page
    with guard("the runs root"):
        if not cfg.runs.is_dir():
            st.info(f"The runs root `{cfg.runs}` does not exist yet. Make a {spec.title.lower()} run with the "
                    "command below, or start the browser on another root with `streamlit run app/main.py -- "
                    "--runs DIR`.", icon=":material/info:")
            st.code(command_for(spec, cfg), language="bash")
            return None
        runs = runs_for(data.list_runs(str(cfg.runs)), spec)
        if not runs:
            st.info(f"No {spec.title.lower()} run under `{cfg.runs}` yet. Make one with:", icon=":material/info:")
            st.code(command_for(spec, cfg), language="bash")
            return None
        names = [r.name for r in runs]
        choice = st.sidebar.selectbox("Run", names, key=f"run_{key}", help=f"runs of this analysis under {cfg.runs}")
        run = runs[names.index(choice)] if choice in names else runs[0]
        show_problems(run)
        if not run.readable:
            return None
        model = None
        if len(run.model_names) > 1:
            model = shared_choice("Model", "model", run.model_names, kind="selectbox", help="the run holds several models")
        elif run.model_names:
            model = run.model_names[0]
        _run_caption(run, model)
        return PageContext(cfg, spec, run, model)
    return None


def _has_complete_run(cfg: AppConfig, spec: AnalysisSpec) -> bool:
    """Whether the runs root already holds a finished run of this analysis."""
    if not cfg.runs.is_dir():
        return False
    return any(r.complete for r in runs_for(data.list_runs(str(cfg.runs)), spec))


def _run_caption(run: RunInfo, model: str | None) -> None:
    meta = run.meta
    bits = [f"run `{run.name}`", f"status **{run.status}**"]
    if model:
        bits.append(f"model **{model}**")
    if meta.get("data"):
        bits.append(f"data `{data_label(meta['data'])}`")
    if meta.get("finished_at") or meta.get("created_at"):
        bits.append(str(meta.get("finished_at") or meta.get("created_at")))
    st.caption(" · ".join(bits))


def steps_and_heads(ctx: PageContext, names: Sequence[str]) -> tuple[list[int], list[int]]:
    """Union of the step and head values of the named tables (those the run holds)."""
    steps: set[int] = set()
    heads: set[int] = set()
    for name in names:
        if ctx.has_table(name):
            with guard(f"table {name}"):
                df = ctx.table(name)
                steps.update(int_values(df, "step"))
                heads.update(int_values(df, "head"))
    return sorted(steps), sorted(heads)


def missing(ctx: PageContext, *names: str) -> bool:
    """True (with a message) when the run lacks one of the tables a view needs."""
    absent = [n for n in names if not ctx.has_table(n)]
    if absent:
        state = "is not finished" if not ctx.run.complete else "does not hold them"
        st.info(f"This view needs table(s) {', '.join(absent)}; the run {state}.", icon=":material/info:")
    return bool(absent)


def show_figures(ctx: PageContext, names: Sequence[str] | None = None, columns: int = 2,
                 header: str = "Figures written by the command") -> None:
    """The run's PNG figures (``names`` or all), in a grid."""
    figures = [f for f in (names if names is not None else ctx.run.figures) if f in ctx.run.figures]
    figures = figures_for(figures, ctx.run.model_names, ctx.model)
    st.subheader(header)
    if not figures:
        st.info("This run holds no figures yet.", icon=":material/info:")
        return
    cols = st.columns(min(columns, len(figures)))
    for i, name in enumerate(figures):
        with cols[i % len(cols)], guard(f"figure {name}"):
            st.image(data.file_bytes(ctx.run.file(f"{name}.png"), ctx.cfg), caption=name)


def show_tables(ctx: PageContext, step: int | None, head: int | None) -> None:
    """Every table of the run: the rows at the chosen (step, head) where it has those columns, downloads."""
    st.subheader("Tables")
    if not ctx.run.tables:
        st.info("This run holds no tables yet.", icon=":material/info:")
        return
    for name in ctx.run.tables:
        with guard(f"table {name}"):
            full = ctx.table(name, per_model=False)
            df = ctx.table(name)
            with st.expander(f"{name}  ({len(full)} rows, {len(full.columns)} columns)"):
                axes = [c for c, v in (("step", step), ("head", head)) if c in df.columns and v is not None]
                view = df
                if axes:
                    label = ", ".join(f"{c} {step if c == 'step' else head}" for c in axes)
                    if st.toggle(f"Only rows at {label}", value=True, key=f"only_{ctx.spec.key}_{name}"):
                        view = step_head_filter(df, step, head)
                shown = f"{min(len(view), MAX_ROWS_SHOWN)} of {len(view)} rows" if len(view) > MAX_ROWS_SHOWN else f"{len(view)} rows"
                st.caption(shown + (f" (model {ctx.model})" if ctx.model and "model" in df.columns else ""))
                st.dataframe(view.head(MAX_ROWS_SHOWN), hide_index=True)
                _downloads(ctx, name, full)


def _downloads(ctx: PageContext, name: str, full: pd.DataFrame) -> None:
    c1, c2, _ = st.columns([1, 1, 3])
    with c1:
        st.download_button(f"Download {name}.csv", data=lambda: to_csv_bytes(full), file_name=f"{name}.csv",
                           mime="text/csv", key=f"csv_{ctx.spec.key}_{name}", on_click="ignore",
                           icon=":material/download:")
    with c2:
        path = ctx.run.file(f"{name}.parquet")
        cfg = ctx.cfg
        st.download_button(f"Download {name}.parquet", data=lambda: data.file_bytes(path, cfg),
                           file_name=f"{name}.parquet", mime="application/octet-stream",
                           key=f"pq_{ctx.spec.key}_{name}", on_click="ignore", icon=":material/download:")


def generic_sections(ctx: PageContext, step: int | None, head: int | None, figures: Sequence[str] | None = None) -> None:
    """The figures and tables every analysis page ends with."""
    with guard("the figures"):
        show_figures(ctx, figures)
    with guard("the tables"):
        show_tables(ctx, step, head)


def page_footer(ctx: PageContext) -> None:
    """Run options as a collapsed JSON block."""
    with st.expander("meta.json of this run"):
        st.json(ctx.run.meta, expanded=1)
