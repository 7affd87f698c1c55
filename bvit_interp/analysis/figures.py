"""Figures outside pyplot's registry, so plotting never changes or fills the caller's backend.

A figure made here is not shown twice in Jupyter (once by the inline backend, once as the
cell's value), is not kept alive by pyplot after a command writes it, and renders the same in
notebooks, Streamlit and the CLI.
"""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure

_FIGURE_KWARGS = ("figsize", "dpi", "layout", "constrained_layout", "facecolor")


def subplots(nrows: int = 1, ncols: int = 1, **kwargs: Any) -> tuple[Figure, Any]:
    """``plt.subplots`` with the same arguments, returning a Figure that pyplot does not manage."""
    fig = Figure(**{k: kwargs.pop(k) for k in _FIGURE_KWARGS if k in kwargs})
    return fig, fig.subplots(nrows, ncols, **kwargs)
