"""The dashboard's HTTP side (aiohttp): pages, the JSON API, sign-in.

Mounted at ``/`` by ``wflo-otel serve`` beside ``/v1/traces``, or alone by ``wflo-otel ui``.

Security. With a token (the ingest service's, ``WFLO_INGEST_TOKEN``) every page and API
call needs it: an ``Authorization: Bearer`` header, or the session cookie a browser gets
by signing in once (``HttpOnly``, ``SameSite=Strict``; its value is an HMAC of the token,
so changing the token signs everyone out and the cookie never holds the token). Every
form that changes state (sign in, sign out, approve / reject) carries a CSRF token that must equal the
``wflo_csrf`` cookie (double submit). Without a token the dashboard is open, which is why
both commands bind to loopback by default. Pages send a Content-Security-Policy that
allows no script at all: the dashboard has none, so an escaping slip could not run one.

Deciding an approval is the only write, and only when the dashboard is given the controls'
store (``decider``: ``serve`` always, ``ui --allow-approvals``): it goes through
``ControlStore.decide``, the conditional update the CLI and ``/v1/approvals`` use, so a
second decision finds the first one (shown as a conflict) and never overwrites it.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import logging
import secrets
import time
import unicodedata
from datetime import date, datetime
from typing import Any, Awaitable, Callable

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from ..ingest.limits import bounded_app
from ..ingest.options import IngestLimits
from . import queries, render

_log = logging.getLogger("wflo_otel.dashboard")
SESSION_COOKIE = "wflo_session"
CSRF_COOKIE = "wflo_csrf"
SIGNIN_MAX_BYTES = 4096  # a token, a CSRF token and a path: anything larger is not our form
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

_CSRF_KEY: Any = web.RequestKey("wflo_csrf", str) if hasattr(web, "RequestKey") else "wflo_csrf"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def session_value(token: bytes) -> str:
    """The session cookie's value for ``token``: proves the token was given, without holding it."""
    return hmac.new(token, b"wflo-otel dashboard session", hashlib.sha256).hexdigest()


class Dashboard:
    """The dashboard routes over ``engine``; ``token`` (bytes) when one is required."""

    # The navigation names the optional pages whose tables exist; looked up at most this often.
    OPTIONAL_PAGES_TTL_S = 30.0

    def __init__(
        self, engine: AsyncEngine, token: bytes | None = None, *, decider: Any = None, approver: str | None = None
    ) -> None:
        """``decider``: a ``ControlStore`` when approvals may be decided here; ``approver``: the name
        every decision here is made as (else the person types theirs in the form)."""
        self.engine = engine
        self.token = token
        self.decider = decider
        self.approver = approver
        self._optional: tuple[float, dict[str, list[str]]] | None = None

    async def optional_pages(self) -> dict[str, list[str]]:
        now = time.monotonic()
        if self._optional is None or now - self._optional[0] > self.OPTIONAL_PAGES_TTL_S:
            async with self.engine.connect() as conn:
                self._optional = (now, await queries.optional_pages(conn))
        return self._optional[1]

    def add_routes(self, app: web.Application) -> None:
        guard = self._guard
        app.router.add_get("/", guard(self.overview_page))
        app.router.add_get("/executions", guard(self.executions_page))
        app.router.add_get("/executions/{id}", guard(self.execution_page))
        app.router.add_get("/limits", guard(self.limits_page))
        app.router.add_get("/approvals", guard(self.approvals_page))
        app.router.add_post("/approvals/{id}/decide", guard(self.decide))
        app.router.add_get("/api/overview", guard(self.overview_api, api=True))
        app.router.add_get("/api/executions", guard(self.executions_api, api=True))
        app.router.add_get("/api/executions/{id}", guard(self.execution_api, api=True))
        app.router.add_get("/signin", self.signin_page)
        app.router.add_post("/signin", self.signin)
        app.router.add_post("/signout", self.signout)

    # -- access ------------------------------------------------------------------

    def signed_in(self, request: web.Request) -> bool:
        if self.token is None:
            return True
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode("utf-8", "replace"), self.token):
            return True
        cookie = request.cookies.get(SESSION_COOKIE, "")
        return hmac.compare_digest(cookie.encode("utf-8", "replace"), session_value(self.token).encode())

    def _guard(self, handler: Handler, *, api: bool = False) -> Handler:
        @functools.wraps(handler)
        async def guarded(request: web.Request) -> web.StreamResponse:
            if not self.signed_in(request):
                if api:
                    return _json({"error": "unauthorized: a bearer token is required"}, status=401)
                raise web.HTTPSeeOther("/signin?" + _query({"next": request.path_qs}))
            try:
                return await handler(request)
            except queries.BadRequest as exc:
                if api:
                    return _json({"error": str(exc)}, status=400)
                return await self._html(request, "error", render.error_body(str(exc)), status=400)

        return guarded

    # -- pages -------------------------------------------------------------------

    async def overview_page(self, request: web.Request) -> web.StreamResponse:
        params = dict(request.query)
        async with self.engine.connect() as conn:
            ov = await queries.overview(conn, queries.window_from(params), params.get("by") or "model")
        return await self._html(request, "overview", render.overview_body(ov, params))

    async def executions_page(self, request: web.Request) -> web.StreamResponse:
        flt = queries.execution_filter(request.query)
        async with self.engine.connect() as conn:
            rows, has_next = await queries.executions(conn, flt)
            workflows = await queries.workflow_names(conn)
        return await self._html(request, "executions", render.executions_body(rows, has_next, flt, workflows))

    async def execution_page(self, request: web.Request) -> web.StreamResponse:
        async with self.engine.connect() as conn:
            ex = await queries.execution(conn, request.match_info["id"])
        if ex is None:
            return await self._html(request, "executions", render.error_body("no such execution"), status=404)
        return await self._html(request, "executions", render.execution_body(ex))

    async def limits_page(self, request: web.Request) -> web.StreamResponse:
        if "limits" not in await self.optional_pages():
            raise web.HTTPNotFound(text="Spend limits: not set up in this database")
        async with self.engine.connect() as conn:
            periods, total = await queries.current_limit_periods(conn)
        return await self._html(request, "limits", render.limits_body(periods, total))

    async def approvals_page(
        self, request: web.Request, *, conflict: Any = None, notice: str = "", status: int = 200
    ) -> web.StreamResponse:
        if "approvals" not in await self.optional_pages():
            raise web.HTTPNotFound(text="Approvals: not set up in this database")
        async with self.engine.connect() as conn:
            pending = await queries.approvals(conn, pending=True)
            decided = await queries.approvals(conn, pending=False, limit=queries.DECIDED_SHOWN)
        decided_id = request.query.get("decided")
        if decided_id and not notice:
            mine = next((a for a in decided if a.id == decided_id), None)
            if mine is not None:
                notice = f"{mine.status.lower()} by {mine.decided_by}: {mine.name}"
        body = render.approvals_body(
            pending, decided, csrf=_csrf(request), can_decide=self.decider is not None,
            approver=self.approver, notice=notice, conflict=conflict,
        )
        return await self._html(request, "approvals", body, status=status)

    async def decide(self, request: web.Request) -> web.StreamResponse:
        """Approve or reject through the controls' store (its conditional update); 409 shows the first decision."""
        from ..controls.decisions import check_decision
        from ..controls.errors import ApprovalConflict, ApprovalNotFound

        form = await request.post()
        if not _csrf_ok(request, form):
            return await self._html(request, "approvals", render.error_body("the form expired: reload the page and try again"), status=403)
        if self.decider is None:
            return await self._html(
                request, "approvals", render.error_body("this dashboard is read-only: start it with --allow-approvals"), status=403
            )
        choice = form.get("decision")
        by = (self.approver or str(form.get("by") or "")).strip()[:200]
        reason = str(form.get("comment") or "").strip()[:2000] or None
        if choice not in ("approve", "reject"):
            return await self.approvals_page(request, notice="choose approve or reject", status=400)
        try:  # the check of the CLI and the HTTP routes: a zero-width name is no name
            by, reason = check_decision(by, reason, approved=choice == "approve")
        except ValueError as exc:
            return await self.approvals_page(request, notice=str(exc), status=400)
        store, approval_id = self.decider, request.match_info["id"]
        try:
            await store.arun(lambda: store.decide(approval_id, approved=choice == "approve", by=by, reason=reason))
        except ApprovalNotFound:
            return await self.approvals_page(request, notice="no such approval request", status=404)
        except ApprovalConflict as exc:
            return await self.approvals_page(request, conflict=exc.approval, status=409)
        except Exception as exc:  # the database did not answer: nothing was decided, say so
            _log.warning("wflo-otel dashboard: deciding %s failed: %s", approval_id, exc)
            return await self._html(request, "approvals", render.error_body("the database did not answer; try again"), status=503)
        raise web.HTTPSeeOther("/approvals?" + _query({"decided": approval_id}))

    # -- JSON --------------------------------------------------------------------

    async def overview_api(self, request: web.Request) -> web.StreamResponse:
        params = request.query
        async with self.engine.connect() as conn:
            ov = await queries.overview(conn, queries.window_from(params), params.get("by") or "model")
        return _json(ov.as_json())

    async def executions_api(self, request: web.Request) -> web.StreamResponse:
        flt = queries.execution_filter(request.query)
        async with self.engine.connect() as conn:
            rows, has_next = await queries.executions(conn, flt)
        return _json({"executions": rows, "page": flt.page, "has_next": has_next})

    async def execution_api(self, request: web.Request) -> web.StreamResponse:
        async with self.engine.connect() as conn:
            ex = await queries.execution(conn, request.match_info["id"])
        if ex is None:
            return _json({"error": "no such execution"}, status=404)
        return _json(ex)

    # -- sign in -----------------------------------------------------------------

    async def signin_page(self, request: web.Request) -> web.StreamResponse:
        if self.token is None:
            raise web.HTTPSeeOther("/")
        body = render.signin_body(_csrf(request), next_path=_safe_next(request.query.get("next")))
        return await self._html(request, "signin", body, nav=False)

    async def signin(self, request: web.Request) -> web.StreamResponse:
        if len(await request.read()) > SIGNIN_MAX_BYTES:  # read within the body timeout (bounded_app)
            return await self._html(request, "signin", render.error_body("the form is too large"), status=413, nav=False)
        form = await request.post()
        if not _csrf_ok(request, form):
            return await self._html(request, "signin", render.error_body("the form expired: reload the page and try again"), status=403, nav=False)
        next_path = _safe_next(form.get("next"))
        given = str(form.get("token") or "").encode("utf-8", "replace")
        if self.token is None or not hmac.compare_digest(given, self.token):
            body = render.signin_body(_csrf(request), "wrong token", next_path)
            return await self._html(request, "signin", body, status=401, nav=False)
        response = web.HTTPSeeOther(next_path)
        response.set_cookie(
            SESSION_COOKIE, session_value(self.token), httponly=True, samesite="Strict", secure=request.secure, path="/"
        )
        raise response

    async def signout(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        if not _csrf_ok(request, form):
            return await self._html(request, "error", render.error_body("the form expired: reload the page"), status=403)
        response = web.HTTPSeeOther("/signin" if self.token is not None else "/")
        response.del_cookie(SESSION_COOKIE, path="/")
        raise response

    # -- helpers -----------------------------------------------------------------

    async def _html(self, request: web.Request, current: str, body: str, *, status: int = 200, nav: bool = True) -> web.Response:
        csrf = _csrf(request)
        links: list[tuple[str, str, str]] = []
        sign_out = ""
        if nav:
            links = [("overview", "/", "Overview"), ("executions", "/executions", "Executions")]
            optional = await self.optional_pages()
            if "limits" in optional:
                links.append(("limits", "/limits", "Limits"))
            if "approvals" in optional:
                links.append(("approvals", "/approvals", "Approvals"))
            if self.token is not None:
                sign_out = render.sign_out_form(csrf)
        text = render.page(current.capitalize(), body, current=current, nav=links, sign_out=sign_out)
        response = web.Response(text=text, content_type="text/html", status=status, headers=SECURITY_HEADERS)
        if request.cookies.get(CSRF_COOKIE) != csrf:
            response.set_cookie(CSRF_COOKIE, csrf, httponly=True, samesite="Strict", secure=request.secure, path="/")
        return response


def _csrf(request: web.Request) -> str:
    """The request's CSRF token: its cookie's, or a new one (set on the response by ``_html``)."""
    current = request.get(_CSRF_KEY) or request.cookies.get(CSRF_COOKIE)
    if not current or len(current) != 43:
        current = secrets.token_urlsafe(32)
    request[_CSRF_KEY] = current
    return current


def _csrf_ok(request: web.Request, form: Any) -> bool:
    cookie = request.cookies.get(CSRF_COOKIE, "")
    given = str(form.get("csrf") or "")
    return bool(cookie) and hmac.compare_digest(cookie.encode(), given.encode("utf-8", "replace"))


def _safe_next(path: Any) -> str:
    """Only a path on this site, else ``/``: a sign-in never redirects elsewhere.

    A single leading ``/`` and no whitespace, control character or backslash anywhere:
    ``//host``, ``/\\host`` and ``/<TAB>/host`` (URL parsers drop the tab, leaving
    ``//host``) would all send the browser off-site.
    """
    path = str(path or "/")
    unsafe = any(c.isspace() or c == "\\" or unicodedata.category(c)[0] == "C" for c in path)
    return path if path.startswith("/") and not path.startswith("//") and not unsafe else "/"


def _query(params: dict[str, str]) -> str:
    from urllib.parse import urlencode

    return urlencode(params)


def _default(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return str(value)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(data, default=_default), content_type="application/json", status=status, headers={"Cache-Control": "no-store"}
    )


def dashboard_app(engine: AsyncEngine, token: bytes | None, *, decider: Any = None, approver: str | None = None) -> web.Application:
    """An application serving the dashboard alone (``wflo-otel ui``); bodies bounded as on ``serve``."""
    app = bounded_app(IngestLimits().body_timeout_s)
    Dashboard(engine, token, decider=decider, approver=approver).add_routes(app)
    return app
