"""The model versions of the site loop: list them, adapt now, activate one (a promotion or a rollback).

::

    GET  /api/models                  [{id, file, created_at, active, parent, inputs, scores, promoted, reason}]
    POST /api/models/adapt            start an adaptation now (review token; 202, or 409 with why not)
    POST /api/models/{id}/activate    serve that version from now on (review token)

The two POSTs change what the bin does, so they need what relabelling needs: the review token, JSON,
and no foreign ``Origin`` (:func:`wastenet.serve.guard.review_refusal`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from wastenet.serve.guard import review_refusal
from wastenet.serve.service import ApiError, Service

__all__ = ["router"]

router = APIRouter()


def _service(request: Request) -> Service:
    return request.app.state.service


def _refuse_unless_reviewer(request: Request, s: Service) -> None:
    refused = review_refusal(request.headers, s.review_token, s.guard)
    if refused is not None:
        raise ApiError(*refused)


@router.get("/api/models")
def list_models(request: Request) -> dict[str, Any]:
    """Every version beside the decision log, oldest first, and which one sorts now."""
    s = _service(request)
    versions = s.adaptation.store().list() if s.adaptation.refusal is None else []
    return {"active": s.version, "model_id": s.model_id, "versions": versions,
            "adaptation": s.adaptation.status()}


@router.post("/api/models/adapt")
async def adapt_now(request: Request) -> JSONResponse:
    """Start one adaptation now (one at a time)."""
    s = _service(request)
    _refuse_unless_reviewer(request, s)
    try:
        status = await run_in_threadpool(s.adaptation.start, "api")
    except RuntimeError as exc:
        raise ApiError(409, str(exc)) from None
    return JSONResponse(status, status_code=202)


@router.post("/api/models/{version_id}/activate")
async def activate(version_id: int, request: Request) -> dict[str, Any]:
    """Serve version ``version_id`` from now on; it stays active across restarts."""
    s = _service(request)
    _refuse_unless_reviewer(request, s)
    if s.adaptation.refusal is not None:
        raise ApiError(409, s.adaptation.refusal)
    store = s.adaptation.store()
    try:
        version = store.get(version_id)
    except KeyError:
        raise ApiError(404, f"no model version {version_id}") from None

    def swap() -> None:
        s.use_model(version["file"], version_id)
        store.activate(version_id)

    try:
        await run_in_threadpool(swap)
    except KeyError:
        raise ApiError(404, f"model version {version_id} has no file") from None
    return {"active": s.version, "model_id": s.model_id, "file": version["file"]}
