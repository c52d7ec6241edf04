"""The wastenet web service: one model, loaded once, behind a small JSON API and a web page.

::

    from wastenet.serve.app import create_app
    app = create_app("runs/x/best.pt", log_path="decisions.sqlite")   # or a .onnx file
    # uvicorn.run(app, host="127.0.0.1", port=8000)   (what `wastenet serve` does)

    curl -F file=@bottle.jpg 'http://127.0.0.1:8000/api/predict?threshold=0.8'

Endpoints
    GET  /api/health                  model, classes, bins, threshold, backend
    POST /api/predict                 multipart ``file`` (several ``file`` parts: photos of one
                                      item, one decision from them all); query ``threshold``, ``explain``,
                                      ``source`` (free tag for the log), ``log`` (false: do
                                      not log, for live camera frames)
    GET  /api/review                  manual-sort items waiting for a person, newest first
    GET  /api/review/{id}/image       the stored photo
    POST /api/review/{id}             JSON ``{"label": "<class>"}``
                                      (the three review endpoints need the review token,
                                      ``Authorization: Bearer TOKEN``, see ``serve/guard.py``)
    GET  /  and  /review              the pages (no external URLs); /static/... their assets
    GET  /docs                        OpenAPI (FastAPI's default, loads swagger-ui from a CDN)

Every client mistake is a 4xx with ``{"error": "..."}``; a 500 is a bug. A ``Host`` header
that does not name this server gets 403 (DNS rebinding), see :mod:`wastenet.serve.guard`.

Concurrency: requests decode and resize their image in the thread pool (Pillow releases
the GIL), then hand it to one model thread (:mod:`wastenet.serve.batcher`). Requests that arrive while the model is busy
share the next forward pass (micro-batching): under load the model runs fewer, larger
batches, which is where a CPU gains throughput. Only that thread (and Grad-CAM, under the
same lock) touches the model, so no backend has to be thread-safe. ``/api/health`` shows
the batching so far (``mean_batch``).
"""

from __future__ import annotations

import base64
import io
import logging
import math
import os
import re
import sqlite3
import threading
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Sequence

from fastapi import FastAPI, File, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile as StarletteUploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from wastenet.data.images import SERVICE_MAX_PIXELS, ImageDecodeError, load_image
from wastenet import __version__
from wastenet.decision import check_threshold
from wastenet.errors import ConfigError, WastenetError
from wastenet.serve.batcher import Batcher
from wastenet.serve.body_limit import MULTIPART_MARGIN, BodyLimitMiddleware
from wastenet.serve.body_limit import json_error as _error
from wastenet.serve.decision_log import REVIEW_MAX_SIDE, DecisionLog, default_log_path, image_media_type, review_copy
from wastenet.serve.guard import HostCheckMiddleware, HostGuard, new_review_token, review_refusal, token_refusal
from wastenet.serve.settings import DEFAULT_LOG_MAX_BYTES, DEFAULT_MAX_DECODES, DEFAULT_MAX_UPLOAD_BYTES, ServeSettings

__all__ = ["create_app", "DEFAULT_MAX_UPLOAD_BYTES", "DEFAULT_LOG_MAX_BYTES", "DEFAULT_MAX_DECODES"]

logger = logging.getLogger("wastenet.serve")

STATIC_DIR = Path(__file__).resolve().parent / "static"
# The page may only talk to this server: no CDN, no external fonts, no trackers.
_PAGE_CSP = ("default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob: mediastream:; "
             "connect-src 'self'; style-src 'self'; script-src 'self'; object-src 'none'; "
             "base-uri 'none'; frame-ancestors 'none'")
#: Photos of one item in one request (each within the upload limit): enough for a bin's cameras.
MAX_PHOTOS_PER_ITEM = 8
_SOURCE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")


class _ApiError(Exception):
    """An answer other than 200: ``{"error": message}`` with ``status`` (4xx, or 503)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message



def _plain(value: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python numbers, tuples to lists, NaN to None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _parse_threshold(raw: str | None, default: float) -> float:
    if raw is None or raw == "":
        return default
    try:
        return check_threshold(raw)
    except ConfigError as exc:  # a client's mistake: 400, not a configuration error
        raise _ApiError(400, str(exc)) from None


def _upload_name(filename: str | None) -> str:
    name = os.path.basename((filename or "").replace("\\", "/")).strip()
    return (name or "upload")[:200]


def _resize_for(image: Any, classifier: Any, search: bool = False) -> Any:
    prep = getattr(classifier, "preprocessing", None)
    if prep is None:
        return image
    from PIL import Image

    from wastenet.preprocessing import resize_exact, resize_shorter

    if search:  # windows are cut from the photo: keep enough pixels for the smallest one
        from wastenet.inference.search import searched_side

        side = searched_side(prep)
        return resize_shorter(image, side, prep.interpolation) if min(image.size) > side else image

    if getattr(prep, "input_width", None):  # aspect-preserving mode: the exact resize is the whole transform
        return Image.fromarray(resize_exact(image, prep.hw, prep.interpolation))
    # the exact first step of the eval transform, so the result is identical
    return resize_shorter(image, prep.resize_size, prep.interpolation)


def _png_data_url(img: Any) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# --------------------------------------------------------------------------- the app


def create_app(
    checkpoint_path_or_classifier: str | os.PathLike | Any,
    *,
    log_path: str | os.PathLike | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    threshold: float | None = None,
    max_batch: int = 8,
    torch_threads: int | None = None,
    channels_last: bool = False,
    onnx_spin: bool = False,
    review_token: str | None = None,
    host: str | None = None,
    allowed_hosts: Sequence[str] = (),
    log_max_bytes: int | None = DEFAULT_LOG_MAX_BYTES,
    max_pixels: int = SERVICE_MAX_PIXELS,
    max_decodes: int = DEFAULT_MAX_DECODES,
    search: bool = False,
) -> FastAPI:
    """Build the service around one classifier (a checkpoint/ONNX path or a ``Classifier``).

    ``log_path`` defaults to ``decisions.sqlite`` beside the model file (or the user data
    folder, see :func:`~wastenet.serve.decision_log.default_log_path`). ``threshold``
    overrides the model's default decision threshold. ``max_batch`` caps micro-batches
    (1 disables batching); ``torch_threads`` sets ``torch.set_num_threads`` for the
    PyTorch backend (default: leave PyTorch's choice, one thread per core);
    ``channels_last`` runs a ``.pt`` model in NHWC memory layout (often faster on CPU);
    ``onnx_spin`` lets an ``.onnx`` model's idle onnxruntime threads spin (see ServeSettings).
    ``review_token`` is the credential relabelling needs (None: a random one, in
    ``app.state.review_token``); ``host`` (the address the server binds) and ``allowed_hosts``
    (LAN names such as ``bin-3.local``) are the ``Host`` names accepted besides IP addresses
    and ``localhost``. ``log_max_bytes`` caps the decision log (None: no cap); ``max_pixels``
    (lower than offline ``predict``'s) and ``max_decodes`` (images decoded at once) bound the
    memory one upload, or many at once, can take. ``search`` looks at every photo through windows
    as ``predict --search`` does (~51 model calls a photo; uploads are kept at ``searched_side``).

    >>> from fastapi.testclient import TestClient        # doctest: +SKIP
    >>> client = TestClient(create_app("best.pt", log_path="d.sqlite"))
    >>> client.get("/api/health").json()["status"]
    'ok'
    """
    source = None
    if isinstance(checkpoint_path_or_classifier, (str, os.PathLike)):
        from wastenet.inference.predictor import Classifier  # torch only if the file needs it

        source = Path(checkpoint_path_or_classifier)
        if not source.is_file():
            raise ConfigError(f"model file not found: {source}")
        # onnxruntime threads that sleep between batches leave the CPU to request decoding:
        # +17% requests/s under 8 clients on 2 cores (BENCHMARKS.md); onnx_spin=True undoes it
        classifier = Classifier.load(source, channels_last=channels_last and source.suffix == ".pt",
                                     onnx_spin_wait=onnx_spin)
    else:
        classifier = checkpoint_path_or_classifier
        source = getattr(classifier, "source", None)

    if max_upload_bytes <= 0:
        raise ConfigError("max_upload_bytes must be positive")
    default_threshold = check_threshold(threshold if threshold is not None else classifier.threshold)

    backend = classifier.backend_name
    if backend == "torch" and torch_threads:
        import torch

        torch.set_num_threads(int(torch_threads))

    classes = [str(c) for c in classifier.classes]
    taxonomy = getattr(classifier, "taxonomy", None)
    bins = list(getattr(taxonomy, "bin_names", []) or [])
    arch = str(getattr(classifier, "arch", None) or "unknown")
    class_bins = {}
    for c in classes:  # for the page's colours; a class the taxonomy lacks just stays uncoloured
        try:
            class_bins[c] = taxonomy.bin_of(c)
        except Exception:  # noqa: BLE001
            pass

    if max_decodes < 1 or max_pixels < 1:
        raise ConfigError("max_decodes and max_pixels must be at least 1")
    if review_token is not None and not review_token.strip():
        raise ConfigError("the review token must not be empty")
    decision_log = DecisionLog(log_path if log_path is not None else default_log_path(source),
                               max_bytes=log_max_bytes)
    decision_log.set_classes(classes)
    model_lock = threading.Lock()  # the batcher's thread, Grad-CAM and multi-photo items take turns
    batcher = Batcher(classifier, model_lock, max_batch=max_batch, search=search)
    decode_slots = threading.BoundedSemaphore(max_decodes)
    # a JPEG is decoded at a reduced DCT scale, never below what the model or a reviewer needs
    prep = getattr(classifier, "preprocessing", None)
    draft_size = max(REVIEW_MAX_SIDE, int(getattr(prep, "resize_size", 0) or 0))
    if search and prep is not None:  # windows need more pixels than the model's input
        from wastenet.inference.search import searched_side

        draft_size = max(draft_size, searched_side(prep))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        logger.info("wastenet: %s (%s), %d classes, decision log %s", arch, backend, len(classes),
                    decision_log.path)
        yield
        batcher.close()
        decision_log.close()

    app = FastAPI(
        title="wastenet",
        summary="Which bin does this go in? Photo in, bin decision out.",
        version=__version__,
        lifespan=lifespan,
    )
    app.state.classifier = classifier
    app.state.decision_log = decision_log
    app.state.batcher = batcher
    app.state.threshold = default_threshold
    app.state.backend = backend
    app.state.decode_slots = decode_slots
    app.add_middleware(BodyLimitMiddleware, limit=max_upload_bytes + MULTIPART_MARGIN)
    guard = HostGuard(host, allowed_hosts)
    app.add_middleware(HostCheckMiddleware, guard=guard)  # added last: runs first, before any body is read
    app.state.review_token = review_token.strip() if review_token else new_review_token()

    # ------------------------------------------------------------ error handlers
    @app.exception_handler(_ApiError)
    async def _client_error(_request: Request, exc: _ApiError) -> JSONResponse:
        return _error(exc.status, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = " ".join(str(x) for x in err.get("loc", ()) if x not in ("body",)) or "request"
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
        return _error(422, "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(ImageDecodeError)
    async def _decode_error(_request: Request, exc: ImageDecodeError) -> JSONResponse:
        status = 415 if exc.reason == "not an image" else 422
        return _error(status, f"cannot read image: {exc.reason}")

    @app.exception_handler(WastenetError)
    async def _wastenet_error(_request: Request, exc: WastenetError) -> JSONResponse:
        return _error(422, str(exc))

    @app.exception_handler(Exception)
    async def _server_error(_request: Request, exc: Exception) -> JSONResponse:
        # last resort only: every client mistake has its own 4xx above
        logger.exception("internal error")
        return _error(500, f"internal server error ({type(exc).__name__})")

    # ------------------------------------------------------------------ API
    @app.get("/api/health")
    def health() -> dict[str, Any]:
        """Service status and the model it serves."""
        return {
            "status": "ok",
            "model": arch,
            "classes": classes,
            "bins": bins,
            "threshold": default_threshold,
            "backend": backend,
            "taxonomy": getattr(taxonomy, "name", None),
            "class_bins": class_bins,
            "max_upload_bytes": max_upload_bytes,
            "explain": backend == "torch",
            "batching": batcher.stats(),
            "search": search,
        }

    @app.post("/api/predict")
    async def predict(
        file: list[UploadFile] | None = File(None, description="an image (JPEG, PNG, WebP, BMP, TIFF, GIF); "
                                                              "several parts: photos of one item"),
        threshold: str | None = None,
        explain: bool = False,
        source: str = "api",
        log: bool = True,
    ) -> JSONResponse:
        """Classify one photo, or several photos of one item, and decide its bin."""
        thr = _parse_threshold(threshold, default_threshold)
        files = [f for f in (file or []) if isinstance(f, StarletteUploadFile)]
        if not files:
            raise _ApiError(422, "missing multipart file field 'file' (one image)")
        if len(files) > MAX_PHOTOS_PER_ITEM:
            raise _ApiError(422, f"at most {MAX_PHOTOS_PER_ITEM} photos of one item, got {len(files)}")
        blobs = []
        for f in files:
            data = await f.read(max_upload_bytes + 1)
            await f.close()
            if len(data) > max_upload_bytes:
                raise _ApiError(413, f"upload too large: the limit is {max_upload_bytes / 2**20:g} MB")
            blobs.append(data)
        name = _upload_name(files[0].filename)
        tag = source if _SOURCE_RE.match(source or "") else "api"
        if len(blobs) > 1:
            result = await run_in_threadpool(_predict_item, blobs, name, thr, tag, log)
        else:
            result = await run_in_threadpool(_predict_one, blobs[0], name, thr, explain, tag, log)
        return JSONResponse(result)

    def _predict_item(blobs: list[bytes], name: str, thr: float, tag: str, keep: bool) -> dict[str, Any]:
        """Several photos of one item: one decision from their combined probabilities and scores."""
        smalls, first = [], None
        for data in blobs:
            with decode_slots:
                full = load_image(data, max_pixels=max_pixels, draft_size=draft_size)  # -> 415/422
                smalls.append(_resize_for(full, classifier, search))
                if first is None:
                    first = review_copy(full)
                del full
        with model_lock:  # outside the batcher: one call for the whole item, under the model's lock
            pred = classifier.predict_groups({name: smalls}, threshold=thr, search=search)[0]
        if pred.decision == "error":
            raise ImageDecodeError(str(pred.error or "unreadable image"))
        out = _plain(pred.to_dict())
        out.update(path=name, threshold=thr, photos=len(smalls))
        try:
            out["id"] = decision_log.record(pred, first, name, thr, arch, tag) if keep else None
        except sqlite3.Error as exc:
            logger.error("decision log write failed: %s", exc)
            raise _ApiError(503, f"decision log unavailable: {exc}") from None
        return out

    def _predict_one(data: bytes, name: str, thr: float, want_explain: bool, tag: str,
                     keep: bool) -> dict[str, Any]:
        # At most max_decodes full-size images exist at once; what outlives the slot is small:
        # the model's input and a <= 1024 px copy for the log and Grad-CAM.
        with decode_slots:
            full = load_image(data, max_pixels=max_pixels, draft_size=draft_size)  # ImageDecodeError -> 415/422
            # The costly part of preprocessing (the resize) happens here, in parallel across
            # requests; the model thread's own resize is then a no-op and only crops.
            small = _resize_for(full, classifier, search)
            image = review_copy(full)
            del full
        pred = batcher.predict(small, thr)
        if getattr(pred, "decision", None) == "error":
            raise ImageDecodeError(str(getattr(pred, "error", None) or "unreadable image"))
        out = _plain(pred.to_dict())
        out["path"] = name
        out["threshold"] = thr
        try:
            out["id"] = decision_log.record(pred, image, name, thr, arch, tag) if keep else None
        except sqlite3.Error as exc:
            # no answer without its log entry: the caller may retry
            logger.error("decision log write failed: %s", exc)
            raise _ApiError(503, f"decision log unavailable: {exc}") from None
        if want_explain:
            out.update(_explain(image, out.get("label")))
        return out

    def _explain(image: Any, label: str | None) -> dict[str, Any]:
        if backend != "torch":
            return {"explanation": None,
                    "explanation_error": "heatmaps need the PyTorch backend (a .pt checkpoint)"}
        try:
            from wastenet.inference.explain import explain as gradcam

            with model_lock:  # Grad-CAM hooks the model: no forward pass may run beside it
                overlay, _heatmap, _pred = gradcam(classifier, image, target_class=label)
            return {"explanation": _png_data_url(overlay)}
        except Exception as exc:  # noqa: BLE001 - a failed heatmap must not lose the decision
            logger.warning("Grad-CAM failed: %s", exc)
            return {"explanation": None, "explanation_error": f"heatmap failed: {exc}"}

    def _need_token(request: Request) -> None:
        refused = token_refusal(request.headers, app.state.review_token)
        if refused is not None:
            raise _ApiError(*refused)

    @app.get("/api/review")
    def review_list(request: Request, limit: int = 50) -> dict[str, Any]:
        """Manual-sort items that wait for a person's label, newest first (needs the review token)."""
        _need_token(request)  # the queue and its photos are the reviewers' only
        limit = max(1, min(int(limit), 500))
        items = []
        for it in decision_log.pending_reviews(limit):
            items.append({
                "id": it["id"], "created_at": it["created_at"], "label": it["label"],
                "confidence": it["confidence"], "bin": it["bin"],
                "bin_confidence": it["bin_confidence"], "threshold": it["threshold"], "reason": it["reason"],
                "model": it["model"], "source": it["source"], "image_name": it["image_name"],
                "image_url": f"/api/review/{it['id']}/image",
            })
        return {"items": items, "pending": decision_log.pending_count(), "classes": classes,
                "bins": bins, "retention": decision_log.retention_note()}

    @app.get("/api/review/{decision_id}/image")
    def review_image(decision_id: int, request: Request) -> Response:
        """The photo stored with a manual-sort decision (needs the review token)."""
        _need_token(request)
        data = decision_log.image(decision_id)
        if data is None:
            raise _ApiError(404, f"no stored image for decision {decision_id}")
        # nosniff + a sandboxing CSP: stored bytes are shown as an image, never run as a page
        return Response(data, media_type=image_media_type(data),
                        headers={"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff",
                                 "Content-Security-Policy": "default-src 'none'; sandbox"})

    @app.post("/api/review/{decision_id}")
    async def review_set(decision_id: int, request: Request) -> dict[str, Any]:
        """Record a person's label: JSON ``{"label": "<class>"}`` with the review token."""
        refused = review_refusal(request.headers, app.state.review_token, guard)
        if refused is not None:
            raise _ApiError(*refused)
        try:
            body = await request.json()
        except Exception:  # noqa: BLE001 - any unparsable body is the client's mistake
            raise _ApiError(400, 'expected a JSON body like {"label": "<class>"}') from None
        label = body.get("label") if isinstance(body, dict) else None
        if not isinstance(label, str) or label not in classes:
            raise _ApiError(400, f"label must be one of: {', '.join(classes)}")
        try:
            who = f"web:{request.client.host if request.client else 'unknown'}"
            item = await run_in_threadpool(decision_log.review, decision_id, label, who)
        except KeyError:
            raise _ApiError(404, f"no decision with id {decision_id}") from None
        return {"id": item["id"], "label": item["label"], "reviewed_label": item["reviewed_label"],
                "reviewed_at": item["reviewed_at"], "history": decision_log.history(item["id"])}

    # ------------------------------------------------------------------ pages
    def _page(name: str) -> Callable[[], FileResponse]:
        def serve_page() -> FileResponse:
            return FileResponse(STATIC_DIR / name, media_type="text/html",
                                headers={"Content-Security-Policy": _PAGE_CSP,
                                         "Cache-Control": "no-cache",
                                         "X-Content-Type-Options": "nosniff"})
        return serve_page

    app.add_api_route("/", _page("index.html"), methods=["GET"], include_in_schema=False)
    app.add_api_route("/review", _page("review.html"), methods=["GET"], include_in_schema=False)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` / multi-worker ``wastenet serve``: the settings come as
    one JSON environment variable (:class:`~wastenet.serve.settings.ServeSettings`)."""
    settings = ServeSettings.from_env()
    return create_app(settings.checkpoint, **settings.app_options())
