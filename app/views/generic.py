"""Any analysis without a dedicated view: the run's status, its figures (PNG) and its tables (parquet)."""

from __future__ import annotations

from lib.ui import (
    analysis_page,
    current_page,
    generic_sections,
    head_picker,
    page_footer,
    step_picker,
    steps_and_heads,
)

page = analysis_page(current_page())
if page is not None:
    steps, heads = steps_and_heads(page, page.run.tables)
    generic_sections(page, step_picker(steps), head_picker(heads))
    page_footer(page)
