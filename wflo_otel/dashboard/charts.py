"""Charts drawn on the server as inline SVG: no JavaScript, no asset from anywhere.

Every label that comes from data (a model, a workflow, a tenant) is escaped.
"""

from __future__ import annotations

from datetime import datetime
from html import escape

PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac")


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def stacked_bars(buckets: list[datetime], series: dict[str, list[float]], *, hourly: bool, width: int = 960, height: int = 240) -> str:
    """Cost per bucket, one stacked bar per bucket, one colour per key; a legend under it."""
    if not buckets:
        return ""
    totals = [sum(values[i] for values in series.values()) for i in range(len(buckets))]
    top = max(totals) if totals and max(totals) > 0 else 1.0
    left, bottom = 70, 24
    plot_w, plot_h = width - left - 10, height - bottom - 10
    slot = plot_w / len(buckets)
    bar = max(1.0, slot * 0.8)
    parts = [
        f'<svg class="chart" role="img" aria-label="cost over time" viewBox="0 0 {width} {height}" width="100%" '
        f'xmlns="http://www.w3.org/2000/svg">',
        f'<line x1="{left}" y1="{10 + plot_h}" x2="{width - 10}" y2="{10 + plot_h}" stroke="#999"/>',
        f'<text x="{left - 6}" y="16" text-anchor="end" font-size="11">${top:,.4g}</text>',
        f'<text x="{left - 6}" y="{10 + plot_h}" text-anchor="end" font-size="11">$0</text>',
    ]
    label_every = max(1, len(buckets) // 12)
    for i, when in enumerate(buckets):
        x = left + i * slot + (slot - bar) / 2
        y = 10 + plot_h
        for k, (name, values) in enumerate(series.items()):
            value = values[i]
            if value <= 0:
                continue
            h = value / top * plot_h
            y -= h
            tip = escape(f"{name}: ${value:,.6f} ({_label(when, hourly)})")
            parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" fill="{color(k)}"><title>{tip}</title></rect>')
        if i % label_every == 0:
            parts.append(
                f'<text x="{x + bar / 2:.1f}" y="{height - 6}" text-anchor="middle" font-size="10">{escape(_label(when, hourly))}</text>'
            )
    parts.append("</svg>")
    legend = "".join(
        f'<span class="key"><i style="background:{color(k)}"></i>{escape(name)}</span>' for k, name in enumerate(series)
    )
    return "".join(parts) + f'<div class="legend">{legend}</div>'


def _label(when: datetime, hourly: bool) -> str:
    return when.strftime("%H:00") if hourly else when.strftime("%m-%d")


def meter(value: float, limit: float | None) -> str:
    """A bar of ``value`` against ``limit`` (red when over)."""
    if not limit or limit <= 0:
        return ""
    share = value / limit
    over = " over" if share > 1 else ""
    return (
        f'<div class="meter{over}" title="{escape(f"${value:,.6f} of ${limit:,.6f}")}">'
        f'<div style="width:{min(share, 1.0) * 100:.1f}%"></div></div>'
    )
