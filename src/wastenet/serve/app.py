"""The wastenet web service: one model, loaded once, behind a small JSON API and a web page.

::

    from wastenet.serve.app import create_app
    from wastenet.serve.settings import ServeSettings
    app = create_app(ServeSettings(checkpoint="runs/x/best.pt", log_path="decisions.sqlite"))  # or .onnx
    app = create_app("runs/x/best.pt", log_path="decisions.sqlite")   # the same, in short
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

Layout: :mod:`~wastenet.serve.settings` (the options), :mod:`~wastenet.serve.service` (the
model, log and decode path the routes share, in ``app.state.service``),
:mod:`~wastenet.serve.routes` (the JSON endpoints), this module (errors, middleware, pages).

Concurrency: requests decode and resize their image in the thread pool (Pillow releases
the GIL) within a decode budget (:mod:`~wastenet.serve.decode_budget`), then hand it to one model thread (:mod:`wastenet.serve.batcher`). Requests that arrive while the model is busy
share the next forward pass (micro-batching): under load the model runs fewer, larger
batches, which is where a CPU gains throughput. Only that thread (and Grad-CAM, under the
same lock) touches the model, so no backend has to be thread-safe. ``/api/health`` shows
the batching so far (``mean_batch``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from wastenet import __version__
from wastenet.data.images import ImageDecodeError
from wastenet.errors import WastenetError
from wastenet.serve.body_limit import MULTIPART_MARGIN, BodyLimitMiddleware
from wastenet.serve.body_limit import json_error as _error
from wastenet.serve.guard import HostCheckMiddleware
from wastenet.serve.adaptation import startup_model
from wastenet.serve.decision_log import default_log_path
from wastenet.serve.model_routes import router as model_router
from wastenet.serve.routes import router
from wastenet.serve.service import ApiError, Service
from wastenet.serve.settings import ServeSettings

__all__ = ["create_app", "app_from_env"]

logger = logging.getLogger("wastenet.serve")

STATIC_DIR = Path(__file__).resolve().parent / "static"
# The page may only talk to this server: no CDN, no external fonts, no trackers.
_PAGE_CSP = ("default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob: mediastream:; "
             "connect-src 'self'; style-src 'self'; script-src 'self'; object-src 'none'; "
             "base-uri 'none'; frame-ancestors 'none'")


def create_app(settings: ServeSettings | str | os.PathLike | Any, /, **options: Any) -> FastAPI:
    """Build the service from its settings (:class:`~wastenet.serve.settings.ServeSettings`).

    In short, ``create_app(model, **options)`` is ``create_app(ServeSettings(checkpoint=model, **options))``
    where ``model`` is a ``.pt``/``.onnx`` path; a loaded ``Classifier`` is served as it is (tests,
    embedding). ``ConfigError`` for a bad option or model file, before anything is served.

    >>> from fastapi.testclient import TestClient
    >>> client = TestClient(create_app("best.pt", log_path="d.sqlite"))   # doctest: +SKIP
    >>> client.get("/api/health").json()["status"]                       # doctest: +SKIP
    'ok'
    """
    classifier = None
    if not isinstance(settings, ServeSettings):
        if isinstance(settings, (str, os.PathLike)):
            settings = ServeSettings(checkpoint=str(settings), **options)
        else:  # a loaded Classifier
            classifier, settings = settings, ServeSettings(checkpoint=None, **options)
    elif options:
        settings = dataclasses.replace(settings, **options)
    if classifier is None:
        if settings.checkpoint is None:
            raise TypeError("create_app needs a model: ServeSettings(checkpoint=...) or a Classifier")
        from wastenet.inference.predictor import Classifier  # torch only if the file needs it

        log_path = settings.log_path if settings.log_path is not None else default_log_path(settings.checkpoint)
        # the active version beside the log survives a restart (site loop: serve/adaptation.py)
        served, version, note = startup_model(settings.checkpoint, log_path)
        if note:
            logger.warning("wastenet: %s", note)
        source = Path(served)
        # onnxruntime threads that sleep between batches leave the CPU to request decoding:
        # +17% requests/s under 8 clients on 2 cores (BENCHMARKS.md); onnx_spin=True undoes it
        classifier = Classifier.load(source, channels_last=settings.channels_last and source.suffix == ".pt",
                                     onnx_spin_wait=settings.onnx_spin)
    else:
        source, version = None, 0
    service = Service(settings, classifier, source, version)
    if service.adaptation.refusal and settings.adapt_every:
        logger.warning("wastenet: --adapt-every: %s", service.adaptation.refusal)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        logger.info("wastenet: %s (%s), %d classes, decision log %s", service.arch, service.backend,
                    len(service.classes), service.log.path)
        service.adaptation.prepare()  # --adapt-mix: the rehearsal set's features, before the first run needs them
        yield
        service.close()

    app = FastAPI(
        title="wastenet",
        summary="Which bin does this go in? Photo in, bin decision out.",
        version=__version__,
        lifespan=lifespan,
    )
    app.state.service = service
    # short names for what tests and tools look at
    app.state.classifier = classifier
    app.state.decision_log = service.log
    app.state.batcher = service.batcher
    app.state.threshold = service.threshold
    app.state.backend = service.backend
    app.state.decode_slots = service.decoding.slots
    app.state.review_token = service.review_token
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_upload_bytes + MULTIPART_MARGIN)
    # added last: runs first, before any body is read
    app.add_middleware(HostCheckMiddleware, guard=service.guard)
    _add_error_handlers(app)
    app.include_router(router)
    app.include_router(model_router)
    app.add_api_route("/", _page("index.html"), methods=["GET"], include_in_schema=False)
    app.add_api_route("/review", _page("review.html"), methods=["GET"], include_in_schema=False)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` / multi-worker ``wastenet serve``: the settings come as
    one JSON environment variable (:class:`~wastenet.serve.settings.ServeSettings`)."""
    return create_app(ServeSettings.from_env())


def _add_error_handlers(app: FastAPI) -> None:
    """Every answer other than 200 is ``{"error": "..."}``; a 500 is a bug."""

    @app.exception_handler(ApiError)
    async def _client_error(_request: Request, exc: ApiError) -> JSONResponse:
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


def _page(name: str) -> Callable[[], FileResponse]:
    def serve_page() -> FileResponse:
        return FileResponse(STATIC_DIR / name, media_type="text/html",
                            headers={"Content-Security-Policy": _PAGE_CSP,
                                     "Cache-Control": "no-cache",
                                     "X-Content-Type-Options": "nosniff"})
    return serve_page
