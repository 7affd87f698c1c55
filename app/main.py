"""bvit-interp results browser: ``streamlit run app/main.py -- --runs DIR`` (default ``runs/``).

One page per registered analysis (``bvit_interp.registry``) plus an overview: ``views/<key>.py``,
or ``views/generic.py`` (the run's status, figures and tables) for an analysis without its own
view. Every page reads run directories written by the ``bvit-interp`` commands and never
recomputes an analysis (the pointing page runs the model on single images on demand).
Options after ``--``: ``--runs DIR``, ``--models DIR``, ``--data DIR`` (an image root the
browser may read), ``--debug``.
"""

from __future__ import annotations

import sys
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent
if str(APP_DIR) not in sys.path:  # `streamlit run` adds it; AppTest and other runners may not
    sys.path.insert(0, str(APP_DIR))

import matplotlib  # noqa: E402
import streamlit as st  # noqa: E402
from lib.config import get_config  # noqa: E402
from lib.ui import PAGE_KEY  # noqa: E402

from bvit_interp.registry import analyses  # noqa: E402

matplotlib.use("Agg")  # figures are rendered to images by the server, never shown in a window

LOCAL_ADDRESSES = ("127.0.0.1", "localhost", "::1")


def view_of(key: str) -> Path:
    """The page file of an analysis: its own view, or the generic one."""
    own = APP_DIR / "views" / f"{key}.py"
    return own if own.is_file() else APP_DIR / "views" / "generic.py"


def main() -> None:
    """Configure the page, build the navigation, run the chosen page."""
    st.set_page_config(page_title="bvit-interp results", page_icon=":material/visibility:", layout="wide")
    cfg = get_config()
    pages = {
        "Results": [st.Page(APP_DIR / "views" / "overview.py", title="Overview", icon=":material/home:",
                            default=True)],
        "Analyses": [st.Page(view_of(spec.key), title=spec.title, icon=spec.icon, url_path=spec.key)
                     for spec in analyses()],
    }
    nav = st.navigation(pages)
    st.session_state[PAGE_KEY] = nav.url_path
    st.sidebar.caption(f"Runs root: `{cfg.runs}`")
    address = st.get_option("server.address")
    if address and address not in LOCAL_ADDRESSES:
        st.sidebar.warning(f"Serving on {address}: anyone who can reach it can read these runs.")
    nav.run()


main()
