"""Overview: the model card, what each run holds, and what to run to fill a missing analysis."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st
from lib import data
from lib.config import get_config
from lib.runs import data_label, markdown_parts, model_card, runs_for
from lib.ui import LIVE_REFRESH_S, about, command_for, guard

from bvit_interp.registry import analyses
from bvit_interp.runs.plan import ACTIVE, DemoPlan

cfg = get_config()
st.title("bvit-interp results")
st.caption(f"Runs root `{cfg.runs}` · models directory `{cfg.models}`")


@st.fragment(run_every=LIVE_REFRESH_S)
def demo_plan() -> None:
    """The demo's plan with live states and times (refreshes itself while analyses are queued or running)."""
    plan = DemoPlan.load(cfg.runs)
    if plan is None:
        return
    st.header("Demo")
    active = [e for e in plan.entries if e.state in ACTIVE]
    done = sum(e.state in ("done", "kept") for e in plan.entries)
    st.caption(f"`bvit-interp demo` ({plan.profile} profile): {done} of {len(plan.entries)} analyses finished"
               + (f"; running now: {', '.join(e.title for e in active if e.state == 'running')}" if active else ""))
    st.dataframe(pd.DataFrame(plan.table()), hide_index=True,
                 column_config={"progress": st.column_config.ProgressColumn("progress", min_value=0, max_value=100)})


demo_plan()

st.header("Models")
with guard("the model card"):
    card, models = model_card(cfg.models)
    if models.empty and card is None:
        st.info(f"No bundled models in `{cfg.models}` yet. Train one with `bvit-interp train --model bvit_tiny "
                "--out runs/train/bvit_tiny` or start the browser with `-- --models DIR`.", icon=":material/info:")
    else:
        if not models.empty:
            st.dataframe(models, hide_index=True)
        if card is not None:
            with st.expander("Model card (MODEL_CARD.md)", expanded=models.empty):
                for kind, value, alt in markdown_parts(card, cfg.models, cfg.roots):
                    if kind == "image":
                        st.image(data.file_bytes(Path(value), cfg), caption=alt or None)
                    else:
                        st.markdown(value)

st.header("Runs")
runs = []
with guard("the runs"):
    if not cfg.runs.is_dir():
        st.info(f"The runs root `{cfg.runs}` does not exist yet. Every analysis writes a run with the commands "
                "below; or start the browser on another root with `streamlit run app/main.py -- --runs DIR`.",
                icon=":material/info:")
    else:
        runs = data.list_runs(str(cfg.runs))
        if not runs:
            st.info(f"No runs under `{cfg.runs}` yet: make them with the commands below.", icon=":material/info:")
    if runs:
        rows = []
        for r in runs:
            rows.append({
                "run": r.name,
                "analysis": r.analysis or "?",
                "page": r.spec.title if r.spec else "(none)",
                "status": r.status,
                "format": r.meta.get("format"),
                "models": ", ".join(r.model_names),
                "data": data_label(r.meta.get("data")),
                "tables": ", ".join(r.tables),
                "figures": ", ".join(r.figures),
                "finished": r.meta.get("finished_at", ""),
                "notes": " ".join(p.message for p in r.problems),
            })
        st.dataframe(pd.DataFrame(rows), hide_index=True)
        for r in runs:
            for p in r.problems:
                if p.level != "info":
                    st.warning(f"`{r.name}`: {p.message}", icon=":material/warning:")

st.header("Coverage")
with guard("the coverage"):
    rows, todo = [], []
    for spec in analyses():
        mine = runs_for(runs, spec)
        done = [r for r in mine if r.complete and r.readable]
        rows.append({"analysis": spec.title, "runs": len(mine), "complete": len(done),
                     "about": about(spec), "command": command_for(spec, cfg)})
        if not done:
            todo.append(command_for(spec, cfg))
    st.dataframe(pd.DataFrame(rows), hide_index=True)
    if todo:
        st.markdown(f"**{len(todo)} analyses have no complete run.** To fill them:")
        st.code("\n".join(todo), language="bash")
    else:
        st.success("Every analysis has a complete run.", icon=":material/check_circle:")
