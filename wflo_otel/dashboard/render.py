"""HTML of the dashboard pages and of ``report --html``, rendered on the server.

Every value that comes from the database goes through ``e()`` (text) or ``attr()``
(attribute values): a span named ``<script>`` is shown as those characters. The pages
carry their CSS inline and load nothing; numbers shown are the values of ``queries.py``,
and the totals also carry that value exactly in ``data-value``.
"""

from __future__ import annotations

import json
from datetime import datetime
from html import escape
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import urlencode

from . import charts
from .queries import DIMENSIONS, PAGE_SIZE, SORTS, STATUSES, WINDOWS, ExecutionFilter, Overview

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
nav{background:#1f2937;padding:8px 16px;display:flex;gap:16px;align-items:center}
nav a,nav button{color:#e5e7eb;text-decoration:none;background:none;border:0;font:inherit;cursor:pointer}
nav a.on{color:#fff;font-weight:600} nav form{margin-left:auto}
main{padding:16px;max-width:1200px;margin:auto} h1{font-size:20px} h2{font-size:16px;margin-top:24px}
.cards{display:flex;flex-wrap:wrap;gap:12px}.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px 14px;min-width:130px}
.card b{display:block;font-size:20px}.card span{color:#666;font-size:12px}
table{border-collapse:collapse;width:100%;background:#fff}th,td{border-bottom:1px solid #eee;padding:4px 8px;text-align:left;vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
form.filters{display:flex;flex-wrap:wrap;gap:8px;align-items:end;margin:8px 0}form.filters label{display:flex;flex-direction:column;font-size:12px;color:#555}
.legend{display:flex;flex-wrap:wrap;gap:12px;font-size:12px}.key i{display:inline-block;width:10px;height:10px;margin-right:4px}
.meter{background:#e5e7eb;height:10px;border-radius:5px;min-width:120px;overflow:hidden}.meter div{background:#59a14f;height:100%}
.meter.over div{background:#e15759}.lane{position:relative;height:14px;background:#f3f4f6;min-width:300px}
.lane div{position:absolute;top:2px;height:10px;border-radius:2px;min-width:2px}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(400px,1fr));gap:16px}.grid>div{min-width:0;overflow-x:auto}td{white-space:nowrap}
form.decide{display:flex;flex-wrap:wrap;gap:4px;align-items:center;min-width:260px}form.decide input{width:9em}
.error{color:#b91c1c}.muted{color:#777}.status-FAILED,.status-BUDGET_EXCEEDED,.status-ERROR{color:#b91c1c;font-weight:600}
"""

KIND_COLORS = {"workflow": "#9ca3af", "llm": "#4e79a7", "tool": "#f28e2b", "step": "#59a14f"}


def e(value: Any) -> str:
    """Text content, escaped; ``None`` is empty."""
    return "" if value is None else escape(str(value), quote=False)


def attr(value: Any) -> str:
    return "" if value is None else escape(str(value), quote=True)


def usd(value: float | None) -> str:
    return "" if value is None else f"${value:,.6f}"


def num(value: int | float | None) -> str:
    return "" if value is None else f"{value:,}"


def when(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def ms(value: float | None) -> str:
    return "" if value is None else f"{value:,.0f} ms"


def href(path: str, params: Mapping[str, Any] | None = None) -> str:
    return attr(path + ("?" + urlencode({k: v for k, v in params.items() if v}) if params else ""))


def page(title: str, body: str, *, current: str = "", nav: Sequence[tuple[str, str, str]] = (), sign_out: str = "") -> str:
    """A whole page: ``nav`` is (key, path, label) links, ``sign_out`` the sign-out form's HTML."""
    links = "".join(f'<a href="{attr(path)}"{" class=on" if key == current else ""}>{e(label)}</a>' for key, path, label in nav)
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width,initial-scale=1"><link rel=icon href="data:,">'
        f"<title>{e(title)} · wflo-otel</title><style>{CSS}</style></head><body>"
        f"<nav><strong style=color:#fff>wflo-otel</strong>{links}{sign_out}</nav><main>{body}</main></body></html>"
    )


def table(columns: Sequence[str], rows: Iterable[Sequence[str]], numeric: Iterable[int] = (), *, id: str = "") -> str:
    """A table of already-rendered cells (each cell is HTML: escape before)."""
    numeric = set(numeric)
    head = "".join(f'<th{" class=n" if i in numeric else ""}>{e(c)}</th>' for i, c in enumerate(columns))
    body = "".join(
        "<tr>" + "".join(f'<td{" class=n" if i in numeric else ""}>{cell}</td>' for i, cell in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f'<table{f" id={attr(id)}" if id else ""}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _card(label: str, text: str, value: Any, id: str) -> str:
    return f'<div class=card><b id="{attr(id)}" data-value="{attr(value)}">{e(text)}</b><span>{e(label)}</span></div>'


def window_form(action: str, params: Mapping[str, str], extra: str = "") -> str:
    """The window picker (today, 7 days, 30 days, custom dates) as a GET form."""
    chosen = params.get("window") or "7d"
    options = "".join(
        f'<option value="{w}"{" selected" if w == chosen else ""}>{label}</option>'
        for w, label in (*((w, {"today": "today", "7d": "7 days", "30d": "30 days"}[w]) for w in WINDOWS), ("custom", "custom"))
    )
    return (
        f'<form class=filters method=get action="{attr(action)}"><label>window<select name=window id=window>{options}</select></label>'
        f'<label>from<input type=date name=from value="{attr(params.get("from"))}"></label>'
        f'<label>to<input type=date name=to value="{attr(params.get("to"))}"></label>{extra}'
        "<button type=submit id=apply>apply</button></form>"
    )


def overview_body(ov: Overview, params: Mapping[str, str], *, links: bool = True) -> str:
    t = ov.totals
    by_options = "".join(f'<option value="{d}"{" selected" if d == ov.by else ""}>{d}</option>' for d in DIMENSIONS)
    form = window_form("/", params, f"<label>stack by<select name=by id=by>{by_options}</select></label>") if links else ""
    cards = "".join(
        (
            _card("spend", usd(t.cost_usd), t.cost_usd, "total-cost"),
            _card("LLM calls", num(t.calls), t.calls, "total-calls"),
            _card("input tokens", num(t.input_tokens), t.input_tokens, "total-input-tokens"),
            _card("output tokens", num(t.output_tokens), t.output_tokens, "total-output-tokens"),
            _card("budget refusals", num(t.refusals), t.refusals, "total-refusals"),
            _card("errors", num(t.errors), t.errors, "total-errors"),
        )
    )
    chart = charts.stacked_bars(ov.buckets, ov.series, hourly=ov.bucket == "hour")
    tops = "".join(
        f"<div><h2>Top {label}</h2>{_top_table(rows, kind, ov, links)}</div>"
        for label, kind, rows in (
            ("workflows", "workflow", ov.top_workflows),
            ("models", "model", ov.top_models),
            ("tenants", "tenant", ov.top_tenants),
        )
    )
    limits = ""
    if ov.limits:
        more = f'<a href="/limits" id=all-limits>all {ov.limits_total:,} on the Limits page</a>' if links else f"{ov.limits_total:,} in all"
        limits = (
            f"<h2>Spend limits <span class=muted>the {len(ov.limits)} current periods nearest their limit ({more}); "
            "the window's spend is above</span></h2>" + limits_table(ov.limits, compact=True)
        )
    return (
        f"<h1>Overview <span class=muted>{e(ov.window.label)} (UTC)</span></h1>{form}"
        f"<div class=cards>{cards}</div>{limits}<h2>Cost by {e(ov.by)} per {e(ov.bucket)}</h2>{chart}<div class=grid>{tops}</div>"
    )


def limits_table(periods: Sequence[Mapping[str, Any]], *, compact: bool = False) -> str:
    """Each limit's current period per key: spent against the limit as a bar, leased, remaining, resets at."""
    rows = []
    for i, p in enumerate(periods):
        spent = f'<span id="limit-spent-{i}" data-value="{attr(p["spent_usd"])}">{e(usd(p["spent_usd"]))}</span>'
        row = [e(p["limit_name"]), e(p["limit_key"]), e(p["per"]), spent, e(usd(p["limit_usd"])), charts.meter(p["spent_usd"], p["limit_usd"])]
        if not compact:
            row += [e(usd(p["leased_usd"])), e(usd(p["remaining_usd"])), e(_threshold(p["alerted_threshold"]))]
        row.append(e(when(p["period_end"])))
        rows.append(row)
    columns = ["limit", "key", "per", "spent", "limit", ""]
    if not compact:
        columns += ["leased", "remaining", "alerted at"]
    columns.append("resets at (UTC)")
    numeric = (3, 4) if compact else (3, 4, 6, 7, 8)
    return table(columns, rows, numeric=numeric, id="limits") if rows else "<p class=muted id=limits>no limit has a current period</p>"


def _threshold(value: float | None) -> str:
    return "" if value is None else f"{value:.0%}"


def limits_body(periods: Sequence[Mapping[str, Any]], total: int) -> str:
    shown = f"{total:,} current periods" + (f", the first {len(periods):,} by limit and key" if total > len(periods) else "")
    return (
        f"<h1>Spend limits <span class=muted>{e(shown)}</span></h1>"
        "<p class=muted>Spent is what the processes reported; leased is held by running processes and not spent yet; "
        "remaining is the limit less spent. What <code>wflo-otel limits</code> shows, from the view <code>spend_per_limit</code>.</p>"
        + limits_table(periods)
    )


def approvals_body(
    pending: Sequence[Any],
    decided: Sequence[Any],
    *,
    csrf: str,
    can_decide: bool,
    approver: str | None = None,
    notice: str = "",
    conflict: Any = None,
) -> str:
    """Pending requests (with approve / reject forms when deciding is enabled) and the decided ones."""
    head = "<h1>Approvals</h1>"
    if notice:
        head += f"<p id=notice>{e(notice)}</p>"
    if conflict is not None:
        head += (
            f'<p class=error id=conflict>Already decided: {e(conflict.status)} by {e(conflict.decided_by or "(nobody: it expired)")}'
            f' at {e(when(conflict.decided_at))} UTC{" — " + e(conflict.reason) if conflict.reason else ""}. Your decision was not recorded.</p>'
        )
    if not can_decide:
        head += (
            "<p class=muted id=read-only>Read-only: start <code>wflo-otel ui --allow-approvals</code> (or use "
            "<code>wflo-otel serve</code>, <code>wflo-otel approvals approve</code>) to decide here.</p>"
        )
    rows = []
    for a in pending:
        row = [e(a.name), _execution_link(a), e(a.message), e(_context(a.context)), e(usd(a.requested_usd)),
               e(when(a.created_at)), e(when(a.expires_at))]
        if can_decide:
            row.append(_decision_form(a, csrf, approver))
        rows.append(row)
    columns = ["request", "execution", "message", "context", "requested", "since (UTC)", "expires (UTC)"] + (["decision"] if can_decide else [])
    pending_html = table(columns, rows, numeric=(4,), id="pending") if rows else "<p class=muted id=pending>nothing is waiting</p>"
    decided_rows = [
        (e(a.name), _execution_link(a), f'<span class="status-{attr(a.status)}">{e(a.status)}</span>', e(a.decided_by),
         e(when(a.decided_at)), e(a.reason), e(a.message))
        for a in decided
    ]
    decided_html = (
        table(("request", "execution", "decision", "by", "at (UTC)", "comment / reason", "message"), decided_rows, id="decided")
        if decided_rows
        else "<p class=muted id=decided>none yet</p>"
    )
    return f"{head}<h2>Pending</h2>{pending_html}<h2>Decided</h2>{decided_html}"


def _execution_link(a: Any) -> str:
    return f'<a href="{href("/executions/" + a.execution_id)}">{e(a.workflow or a.execution_id[:16])}</a>'


def _context(value: Any) -> str:
    if value is None:
        return ""
    text = json.dumps(value, default=str, sort_keys=True)
    return text if len(text) <= 200 else text[:199] + "…"


def _decision_form(a: Any, csrf: str, approver: str | None) -> str:
    """One form, two submit buttons (``decision=approve|reject``); the CSRF token rides along."""
    who = (
        f'<input type=hidden name=by value="{attr(approver)}"><span class=muted>as {e(approver)}</span>'
        if approver
        else f'<input name=by id="by-{attr(a.id)}" placeholder="your name" required maxlength=200>'
    )
    return (
        f'<form method=post action="{href("/approvals/" + a.id + "/decide")}" class=decide>'
        f'<input type=hidden name=csrf value="{attr(csrf)}">{who}'
        f'<input name=comment id="comment-{attr(a.id)}" placeholder="comment / reason" maxlength=2000>'
        f'<button name=decision value=approve id="approve-{attr(a.id)}">approve</button>'
        f'<button name=decision value=reject id="reject-{attr(a.id)}">reject</button></form>'
    )


def _top_table(rows: list[dict[str, Any]], kind: str, ov: Overview, links: bool) -> str:
    def name(row: dict[str, Any]) -> str:
        label = row["name"] or "(none)"
        if links and kind == "workflow":
            return f'<a href="{href("/executions", {**ov.window.params(), "workflow": row["name"]})}">{e(label)}</a>'
        return e(label)

    return table(
        (kind, "cost", "calls", "tokens", "refusals", "errors"),
        ((name(r), e(usd(r["cost_usd"])), e(num(r["calls"])), e(num(r["tokens"])), e(num(r["refusals"])), e(num(r["errors"])))
         for r in rows),
        numeric=(1, 2, 3, 4, 5),
        id=f"top-{kind}s",
    )


def executions_body(rows: list[dict[str, Any]], has_next: bool, flt: ExecutionFilter, workflows: Sequence[str], *, links: bool = True) -> str:
    params = flt.params()
    wf_options = '<option value="">all</option>' + "".join(
        f'<option value="{attr(w)}"{" selected" if w == flt.workflow else ""}>{e(w)}</option>' for w in workflows
    )
    st_options = '<option value="">all</option>' + "".join(
        f'<option value="{s}"{" selected" if s == flt.status else ""}>{s}</option>' for s in STATUSES
    )
    extra = (
        f"<label>workflow<select name=workflow id=workflow>{wf_options}</select></label>"
        f"<label>status<select name=status id=status>{st_options}</select></label>"
        f'<label>attribute<input name=attr id=attr size=24 placeholder="tenant.id=acme" value="{attr(params.get("attr", ""))}"></label>'
        f'<input type=hidden name=sort value="{attr(flt.sort)}"><input type=hidden name=order value="{"desc" if flt.descending else "asc"}">'
    )
    form = window_form("/executions", params, extra) if links else ""

    sorts = " · ".join(
        f'<a id="sort-{s}" href="{href("/executions", flt.params(sort=s, order="asc" if (flt.sort == s and flt.descending) else "desc", page=1))}">{s}</a>'
        for s in SORTS
    ) if links else ""
    body_rows = []
    for r in rows:
        ident = f'<a href="{href("/executions/" + r["id"])}">{e(r["id"][:16])}</a>' if links else e(r["id"])
        body_rows.append(
            (
                ident,
                e(r["workflow_id"]),
                f'<span class="status-{attr(r["status"])}">{e(r["status"])}</span>',
                e(usd(r["cost_total_usd"])),
                e(usd(r["budget_usd"])),
                charts.meter(r["cost_total_usd"], r["budget_usd"]),
                e(num(r["llm_calls"])),
                e(num((r["input_tokens"] or 0) + (r["output_tokens"] or 0))),
                e(ms(r["duration_ms"])),
                e(when(r["started_at"])),
            )
        )
    pager = ""
    if links:
        prev = f'<a id=prev href="{href("/executions", flt.params(page=flt.page - 1))}">previous</a>' if flt.page > 1 else ""
        nxt = f'<a id=next href="{href("/executions", flt.params(page=flt.page + 1))}">next</a>' if has_next else ""
        pager = f"<p>page {flt.page} {prev} {nxt} <span class=muted>({PAGE_SIZE} a page)</span></p>"
    return (
        f"<h1>Executions <span class=muted>{e(flt.window.label)} (UTC)</span></h1>{form}"
        + (f"<p>sort by: {sorts} <span class=muted>(now {e(flt.sort)} {'desc' if flt.descending else 'asc'})</span></p>" if links else "")
        + table(
            ("execution", "workflow", "status", "cost", "budget", "", "calls", "tokens", "duration", "started"),
            body_rows,
            numeric=(3, 4, 6, 7, 8),
            id="executions",
        )
        + pager
    )


def execution_body(ex: dict[str, Any]) -> str:
    steps = ex["steps"]
    t0 = min((s["started_at"] for s in steps if s["started_at"]), default=None)
    t1 = max((s["ended_at"] or s["started_at"] for s in steps if s["started_at"]), default=None)
    span = (t1 - t0).total_seconds() if t0 and t1 and t1 > t0 else 0.0
    rows = []
    for s in steps:
        lane = ""
        if span and s["started_at"]:
            left = (s["started_at"] - t0).total_seconds() / span * 100
            width = max(((s["ended_at"] or s["started_at"]) - s["started_at"]).total_seconds() / span * 100, 0.3)
            lane = (
                f'<div class=lane><div style="left:{left:.2f}%;width:{min(width, 100 - left):.2f}%;'
                f'background:{KIND_COLORS.get(s["kind"], "#b07aa1")}" title="{attr(s["name"])}"></div></div>'
            )
        model = s["response_model"] or s["request_model"]
        rows.append(
            (
                e(s["name"]),
                e(s["kind"]),
                f'<span class="status-{attr(s["status"])}">{e(s["status"])}</span>' + (f" {e(s['error_type'])}" if s["error_type"] else ""),
                e(model),
                e(num(s["input_tokens"])),
                e(num(s["output_tokens"])),
                e(usd(s["cost_usd"])),
                e(ms(s["duration_ms"])),
                lane,
            )
        )
    controls = "".join(
        f"<h2>{e(name.replace('_', ' '))}</h2>" + _generic_table(list(items[0]) if items else [], [tuple(i.values()) for i in items])
        for name, items in ex.get("controls", {}).items()
    )
    budget = ex["budget_usd"]
    return (
        f'<h1>Execution <span id=execution-id>{e(ex["id"])}</span></h1>'
        f'<div class=cards>{_card("workflow", e(ex["workflow_id"]), ex["workflow_id"], "workflow")}'
        f'{_card("status", ex["status"], ex["status"], "status")}'
        f'{_card("cost", usd(ex["cost_total_usd"]), ex["cost_total_usd"], "execution-cost")}'
        f'{_card("budget", usd(budget) if budget is not None else "none", budget, "budget")}'
        f'{_card("LLM calls", num(ex["llm_calls"]), ex["llm_calls"], "calls")}'
        f'{_card("duration", ms(ex["duration_ms"]), ex["duration_ms"], "duration")}</div>'
        + (f"<h2>Budget</h2>{charts.meter(ex['cost_total_usd'], budget)}" if budget else "")
        + (f'<p class=error>{e(ex["error"])}</p>' if ex["error"] else "")
        + "<h2>Steps</h2>"
        + table(("step", "kind", "status", "model", "input", "output", "cost", "duration", "timeline"), rows, numeric=(4, 5, 6, 7), id="steps")
        + controls
    )


def _generic_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    return table(columns, ([e(v) for v in row] for row in rows)) if columns else "<p class=muted>none</p>"


def signin_body(csrf: str, error: str = "", next_path: str = "/") -> str:
    return (
        "<h1>Sign in</h1><p>This dashboard needs the token of the ingest service (<code>WFLO_INGEST_TOKEN</code>).</p>"
        + (f"<p class=error id=signin-error>{e(error)}</p>" if error else "")
        + '<form method=post action="/signin" id=signin>'
        f'<input type=hidden name=csrf value="{attr(csrf)}"><input type=hidden name=next value="{attr(next_path)}">'
        '<label>token <input type=password name=token id=token autocomplete=current-password></label> '
        "<button type=submit id=signin-submit>sign in</button></form>"
    )


def sign_out_form(csrf: str) -> str:
    return f'<form method=post action="/signout"><input type=hidden name=csrf value="{attr(csrf)}"><button id=signout>sign out</button></form>'


def error_body(message: str) -> str:
    return f"<h1>Cannot show this</h1><p class=error id=error>{e(message)}</p>"
