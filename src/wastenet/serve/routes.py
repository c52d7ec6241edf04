"""The service's JSON endpoints, as module functions over ``request.app.state.service``.

::

    app.include_router(router)         # create_app does this

Every client mistake raises :class:`~wastenet.serve.service.ApiError` (4xx), which the app turns
into ``{"error": "..."}``; the review endpoints check the token (and, for relabelling, JSON and
a same-origin ``Origin``) through :mod:`wastenet.serve.guard` before anything else.
"""

from __future__ import annotations

import os
import re
from typing import Any

from fastapi import APIRouter, File, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile as StarletteUploadFile

from wastenet.audit import ESTIMATE_NOTE, site_stats
from wastenet.decision import check_threshold
from wastenet.errors import ConfigError
from wastenet.serve.decision_log import image_media_type
from wastenet.serve.guard import review_refusal, token_refusal
from wastenet.serve.service import ApiError, Service

__all__ = ["router", "MAX_PHOTOS_PER_ITEM"]

router = APIRouter()

#: Photos of one item in one request (each within the upload limit): enough for a bin's cameras.
MAX_PHOTOS_PER_ITEM = 8
_SOURCE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")


def _service(request: Request) -> Service:
    return request.app.state.service


def _parse_threshold(raw: str | None, default: float) -> float:
    if raw is None or raw == "":
        return default
    try:
        return check_threshold(raw)
    except ConfigError as exc:  # a client's mistake: 400, not a configuration error
        raise ApiError(400, str(exc)) from None


def _upload_name(filename: str | None) -> str:
    name = os.path.basename((filename or "").replace("\\", "/")).strip()
    return (name or "upload")[:200]


def _need_token(request: Request) -> None:
    refused = token_refusal(request.headers, _service(request).review_token)
    if refused is not None:
        raise ApiError(*refused)


@router.get("/api/health")
def health(request: Request) -> dict[str, Any]:
    """Service status and the model it serves."""
    s = _service(request)
    return {
        "status": "ok",
        "model": s.arch,
        "classes": s.classes,
        "bins": s.bins,
        "threshold": s.threshold,
        "backend": s.backend,
        "taxonomy": getattr(s.taxonomy, "name", None),
        "class_bins": s.class_bins,
        "max_upload_bytes": s.settings.max_upload_bytes,
        "explain": s.backend == "torch",
        "batching": s.batcher.stats(),
        "decoding": s.decoding.stats(),
        "search": s.settings.search,
        "audit_rate": s.settings.audit_rate,
        "model_path": s.model_path,
        "model_id": s.model_id,
        "model_version": s.version,
        "adaptation": s.adaptation.status(),
        "log": s.log.storage_status(),
    }


@router.post("/api/predict")
async def predict(
    request: Request,
    file: list[UploadFile] | None = File(None, description="an image (JPEG, PNG, WebP, BMP, TIFF, GIF); "
                                                          "several parts: photos of one item"),
    threshold: str | None = None,
    explain: bool = False,
    source: str = "api",
    log: bool = True,
) -> JSONResponse:
    """Classify one photo, or several photos of one item, and decide its bin."""
    s = _service(request)
    thr = _parse_threshold(threshold, s.threshold)
    files = [f for f in (file or []) if isinstance(f, StarletteUploadFile)]
    if not files:
        raise ApiError(422, "missing multipart file field 'file' (one image)")
    if len(files) > MAX_PHOTOS_PER_ITEM:
        raise ApiError(422, f"at most {MAX_PHOTOS_PER_ITEM} photos of one item, got {len(files)}")
    limit = s.settings.max_upload_bytes
    blobs = []
    for f in files:
        data = await f.read(limit + 1)
        await f.close()
        if len(data) > limit:
            raise ApiError(413, f"upload too large: the limit is {limit / 2**20:g} MB")
        blobs.append(data)
    tag = source if _SOURCE_RE.match(source or "") else "api"
    result = await run_in_threadpool(s.predict, blobs, _upload_name(files[0].filename), thr, tag, log, explain)
    return JSONResponse(result)


@router.get("/api/review")
def review_list(request: Request, limit: int = 50) -> dict[str, Any]:
    """Manual-sort items and audits that wait for a person's label, newest first (needs the review token)."""
    _need_token(request)  # the queue and its photos are the reviewers' only
    s = _service(request)
    limit = max(1, min(int(limit), 500))
    items = [{
        "id": it["id"], "created_at": it["created_at"], "label": it["label"],
        "confidence": it["confidence"], "bin": it["bin"],
        "bin_confidence": it["bin_confidence"], "threshold": it["threshold"], "reason": it["reason"],
        "model": it["model"], "source": it["source"], "image_name": it["image_name"], "kind": it["kind"],
        "image_url": f"/api/review/{it['id']}/image",
    } for it in s.log.pending_reviews(limit)]
    kinds = [{"label": k, "bin": v["bin"], "reviewed": v["reviewed"]} for k, v in s.log.new_kinds().items()]
    return {"items": items, "pending": s.log.pending_count(), "classes": s.classes, "class_bins": s.class_bins,
            "bins": s.bins, "new_kinds": kinds, "new_class_min": s.settings.new_class_min,
            "allow_new_bins": s.settings.allow_new_bins, "retention": s.log.retention_note()}


@router.get("/api/stats")
def stats(request: Request, since: str | None = None) -> dict[str, Any]:
    """Live figures per model version and bin (needs the review token): contamination estimated from
    labelled audits with 95% Wilson intervals (:func:`wastenet.audit.site_stats`); ``?since=ISO``."""
    _need_token(request)  # the figures describe reviewed items: the reviewers' (and operator's) view
    s = _service(request)
    try:
        rows = s.log.stats_rows(since)
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    return {"since": since, "audit_rate": s.settings.audit_rate, "model_id": s.model_id,
            **site_stats(rows), "note": ESTIMATE_NOTE}


@router.get("/api/review/{decision_id}/image")
def review_image(decision_id: int, request: Request) -> Response:
    """The photo stored with a manual-sort decision (needs the review token)."""
    _need_token(request)
    data = _service(request).log.image(decision_id)
    if data is None:
        raise ApiError(404, f"no stored image for decision {decision_id}")
    # nosniff + a sandboxing CSP: stored bytes are shown as an image, never run as a page
    return Response(data, media_type=image_media_type(data),
                    headers={"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff",
                             "Content-Security-Policy": "default-src 'none'; sandbox"})


@router.post("/api/review/{decision_id}")
async def review_set(decision_id: int, request: Request) -> dict[str, Any]:
    """Record a person's label: JSON ``{"label": "<class>"}``, or a new kind with its bin
    (``{"label": "food_waste", "bin": "compostable"}``), with the review token."""
    s = _service(request)
    refused = review_refusal(request.headers, s.review_token, s.guard)
    if refused is not None:
        raise ApiError(*refused)
    try:
        body = await request.json()
    except Exception:  # noqa: BLE001 - any unparsable body is the client's mistake
        raise ApiError(400, 'expected a JSON body like {"label": "<class>"}') from None
    if not isinstance(body, dict):
        raise ApiError(400, 'expected a JSON body like {"label": "<class>"}')
    try:  # the rule reads the log's new kinds: off the event loop
        label, bin_name = await run_in_threadpool(lambda: s.label_rule().check(body.get("label"), body.get("bin")))
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    try:
        who = f"web:{request.client.host if request.client else 'unknown'}"
        item = await run_in_threadpool(s.log.review, decision_id, label, who, bin_name)
    except KeyError:
        raise ApiError(404, f"no decision with id {decision_id}") from None
    await run_in_threadpool(s.adaptation.after_review)  # --adapt-every N
    return {"id": item["id"], "label": item["label"], "reviewed_label": item["reviewed_label"],
            "reviewed_bin": item["reviewed_bin"],
            "reviewed_at": item["reviewed_at"], "history": s.log.history(item["id"])}
