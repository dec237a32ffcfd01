"""``wflo-otel report --html FILE``: the overview and the executions as one self-contained file.

The same ``queries`` and ``render`` as the served pages, without links to a server: CSS
inline, charts inline SVG, nothing to fetch. For sharing or as a CI artifact.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Mapping

from ..exporters.store import create_engine
from . import queries, render


async def html_report(url: str, params: Mapping[str, str] | None = None) -> str:
    """The report's HTML for the window ``params`` names (7 days by default)."""
    params = dict(params or {})
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            window = queries.window_from(params)
            ov = await queries.overview(conn, window, params.get("by") or "model")
            flt = queries.ExecutionFilter(window=window, sort="cost")
            rows, _ = await queries.executions(conn, flt)
    finally:
        await engine.dispose()
    made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = (
        render.overview_body(ov, params, links=False)
        + "<h2>Dearest executions</h2>"
        + render.executions_body(rows, False, flt, [], links=False)
        + f"<p class=muted>wflo-otel report, made {render.e(made)}</p>"
    )
    return render.page("Report", body)
