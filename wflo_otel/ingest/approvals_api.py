"""The approval routes of ``wflo-otel serve``, behind the ingest service's bearer token.

- ``GET  /v1/approvals?status=pending&execution=ID&limit=N`` → ``{"approvals": [...]}``
- ``GET  /v1/approvals/{id}`` → the request (404 if unknown)
- ``POST /v1/approvals/{id}/approve`` ``{"by": "...", "comment": "..."}``
- ``POST /v1/approvals/{id}/reject`` ``{"by": "...", "reason": "..."}``

A decision answers 200 with the decided request; 404 for an unknown id; 409 with the
first decision (``{"error": ..., "approval": {...}}``) when the request was decided
already or has expired — never a silent overwrite; 400 for a body without ``by`` (or a
rejection without ``reason``); 401 without the token (when the service has one); 503
when the database does not answer.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable

from aiohttp import web

from ..controls.decisions import check_decision
from ..controls.errors import ApprovalConflict, ApprovalNotFound
from ..controls.records import APPROVAL_STATUSES
from .limits import SMALL_BODY_BYTES

_log = logging.getLogger(__name__)
MAX_LIMIT = 1000
MAX_BODY_BYTES = SMALL_BODY_BYTES


class ApprovalRoutes:
    """Handlers over one ``ControlStore``; ``authorized(request)`` is the service's token check."""

    def __init__(self, database_url: str, authorized: Callable[[web.Request], bool]) -> None:
        from ..controls.store import ControlStore

        self.store = ControlStore(database_url, migrate=False)  # the service migrates the schema
        self._authorized = authorized

    def add_to(self, app: web.Application) -> None:
        app.router.add_get("/v1/approvals", self._list)
        app.router.add_get("/v1/approvals/{id}", self._show)
        app.router.add_post("/v1/approvals/{id}/approve", self._approve)
        app.router.add_post("/v1/approvals/{id}/reject", self._reject)

    def close(self) -> None:
        self.store.close()

    async def _list(self, request: web.Request) -> web.Response:
        self._check(request)
        status = request.query.get("status", "pending").upper()
        if status != "ALL" and status not in APPROVAL_STATUSES:
            raise _bad(400, f"status must be one of {', '.join(s.lower() for s in APPROVAL_STATUSES)} or all")
        try:
            limit = min(max(int(request.query.get("limit", "100")), 1), MAX_LIMIT)
        except ValueError:
            raise _bad(400, "limit must be a number") from None
        execution = request.query.get("execution")
        found = await self._run(lambda s: s.approvals(None if status == "ALL" else status, execution_id=execution, limit=limit))
        return web.json_response({"approvals": [a.to_json() for a in found]})

    async def _show(self, request: web.Request) -> web.Response:
        self._check(request)
        approval_id = request.match_info["id"]
        approval = await self._run(lambda s: s.approval(approval_id))
        if approval is None:
            raise _bad(404, str(ApprovalNotFound(approval_id)))
        return web.json_response(approval.to_json())

    async def _approve(self, request: web.Request) -> web.Response:
        return await self._decide(request, approved=True)

    async def _reject(self, request: web.Request) -> web.Response:
        return await self._decide(request, approved=False)

    async def _decide(self, request: web.Request, *, approved: bool) -> web.Response:
        self._check(request)
        body = await _json_body(request)
        try:  # the CLI's and the store's checks, so every way of deciding accepts the same decisions
            by, reason = check_decision(body.get("by"), body.get("comment") if approved else body.get("reason"), approved=approved)
        except ValueError as exc:
            raise _bad(400, f'{exc}: {{"by": "name", "{"comment" if approved else "reason"}": "..."}}') from None
        approval_id = request.match_info["id"]
        try:
            decided = await self._run(lambda s: s.decide(approval_id, approved=approved, by=by, reason=reason))
        except ApprovalNotFound as exc:
            raise _bad(404, str(exc)) from None
        except ApprovalConflict as exc:
            return web.json_response({"error": str(exc), "approval": exc.approval.to_json()}, status=409)
        return web.json_response(decided.to_json())

    def _check(self, request: web.Request) -> None:
        if not self._authorized(request):
            raise _bad(401, "missing or wrong bearer token")

    async def _run(self, fn: Callable[[Any], Any]) -> Any:
        try:
            return await self.store.arun(lambda: fn(self.store))
        except (ApprovalNotFound, ApprovalConflict):
            raise
        except Exception as exc:
            _log.warning("wflo-otel serve: approvals: the database did not answer: %s", exc)
            raise _bad(503, "the database did not answer; try again") from None


async def _json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()  # read already, within the body timeout and bound (limits.bounded_app)
    if len(raw) > MAX_BODY_BYTES:
        raise _bad(413, "body too large")
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, RecursionError):  # a body nested 60,000 deep is bad input, not a server error
        raise _bad(400, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise _bad(400, "the body must be a JSON object")
    return body


_ERRORS = {
    400: web.HTTPBadRequest,
    401: web.HTTPUnauthorized,
    404: web.HTTPNotFound,
    413: lambda **kw: web.HTTPRequestEntityTooLarge(MAX_BODY_BYTES, MAX_BODY_BYTES + 1, **kw),
    503: web.HTTPServiceUnavailable,
}


def _bad(status: int, message: str) -> web.HTTPException:
    return _ERRORS[status](text=json.dumps({"error": message}), content_type="application/json")
