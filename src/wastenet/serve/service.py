"""What every route shares, built once from the settings: the model, its decision log, the batcher,
the decode budget, and the one path a photo takes (decode -> model -> log).

::

    service = Service(settings, classifier)     # create_app does this; routes read app.state.service
    answer = service.predict([jpeg_bytes], name="bottle.jpg", threshold=0.8, source="api", log=True)
    service.close()

A photo is decoded and shrunk inside the decode budget (:mod:`wastenet.serve.decode_budget`); what
outlives the budget is small: the model's input and a <= 1024 px copy for the log and Grad-CAM. One
photo goes through the batcher (shared forward passes), several photos of one item through one
``predict_groups`` call under the model lock. An answer is sent only after its log row committed
(503 otherwise: the client may retry).
"""

from __future__ import annotations

import base64
import io
import logging
import math
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from wastenet.audit import AuditDraw, audit_kind
from wastenet.data.images import ImageDecodeError, load_image
from wastenet.decision import check_threshold
from wastenet.model_identity import model_id
from wastenet.serve.batcher import Batcher
from wastenet.serve.decision_log import REVIEW_MAX_SIDE, DecisionLog, default_log_path, review_copy
from wastenet.serve.decode_budget import DecodeBudget, decode_cost
from wastenet.serve.guard import HostGuard, new_review_token
from wastenet.serve.review_label import LabelRule
from wastenet.serve.settings import ServeSettings

__all__ = ["ApiError", "Service", "SwapGate"]

logger = logging.getLogger("wastenet.serve")


class ApiError(Exception):
    """An answer other than 200: ``{"error": message}`` with ``status`` (4xx, or 503)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class SwapGate:
    """Requests pass together; a model swap waits for those in flight and holds new ones back until it is
    done (a swap is an assignment: the new model is loaded before), so no request sees two models."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._swapping = False

    @contextmanager
    def request(self) -> Iterator[None]:
        with self._cond:
            while self._swapping:
                self._cond.wait()
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                if not self._active:
                    self._cond.notify_all()

    @contextmanager
    def swap(self) -> Iterator[None]:
        with self._cond:
            while self._swapping:
                self._cond.wait()
            self._swapping = True
            while self._active:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._swapping = False
                self._cond.notify_all()


class Service:
    """The served model and everything around it; routes are functions over ``app.state.service``."""

    def __init__(self, settings: ServeSettings, classifier: Any, source: Any = None, version: int = 0) -> None:
        self.settings = settings
        self.classifier = classifier
        self.threshold = check_threshold(settings.threshold if settings.threshold is not None
                                         else classifier.threshold)
        self.backend = classifier.backend_name
        if self.backend == "torch" and settings.torch_threads:
            import torch

            torch.set_num_threads(int(settings.torch_threads))
        self.arch = str(getattr(classifier, "arch", None) or "unknown")
        self.guard = HostGuard(settings.host, settings.allowed_hosts)
        self.review_token = settings.review_token.strip() if settings.review_token else new_review_token()
        source = source or settings.checkpoint or getattr(classifier, "source", None)
        self.log = DecisionLog(settings.log_path if settings.log_path is not None
                               else default_log_path(settings.checkpoint or source), max_bytes=settings.log_max_bytes)
        self.gate = SwapGate()
        self._swapping = threading.Lock()
        self._take_model(classifier, source, version)
        self.audit = (AuditDraw(settings.audit_rate, self.log.audit_seed(settings.audit_seed))
                      if settings.audit_rate > 0 else None)
        self.model_lock = threading.Lock()  # the batcher's thread, Grad-CAM and multi-photo items take turns
        self.batcher = Batcher(classifier, self.model_lock, max_batch=settings.max_batch, search=settings.search)
        from wastenet.serve.adaptation import Adaptation

        self.adaptation = Adaptation(self)
        self.decoding = DecodeBudget(settings.max_decodes, settings.decode_pixels)
        # a JPEG is decoded at a reduced DCT scale, never below what the model or a reviewer needs
        prep = getattr(classifier, "preprocessing", None)
        self.draft_size = max(REVIEW_MAX_SIDE, int(getattr(prep, "resize_size", 0) or 0))
        if settings.search and prep is not None:  # windows need more pixels than the model's input
            from wastenet.inference.search import searched_side

            self.draft_size = max(self.draft_size, searched_side(prep))

    def _take_model(self, classifier: Any, source: Any, version: int) -> None:
        """Everything that follows from the served model: classes, bins, its version in every row."""
        self.classifier = classifier
        if self.settings.threshold is None:
            self.threshold = check_threshold(classifier.threshold)
        self.classes = [str(c) for c in classifier.classes]
        self.taxonomy = getattr(classifier, "taxonomy", None)
        self.bins = list(getattr(self.taxonomy, "bin_names", []) or [])
        self.class_bins: dict[str, str] = {}
        for c in self.classes:  # for the page's colours; a class the taxonomy lacks just stays uncoloured
            try:
                self.class_bins[c] = self.taxonomy.bin_of(c)
            except Exception:  # noqa: BLE001
                pass
        self.log.set_classes(self.classes, self.class_bins, self.bins)
        # the version in every row: the file's path and content hash (a handed-in model: its name)
        self.model_path = str(source) if source else self.arch
        self.model_id = model_id(source) if source and Path(source).is_file() else None
        self.version = version

    def use_model(self, path: str | Path, version: int) -> None:
        """Serve another model file from now on (a promoted version, a rollback): loaded first, then
        swapped in between batches; requests in flight finish on the old one, none fails."""
        from wastenet.inference.predictor import Classifier

        with self._swapping:  # the run's watcher and the active-version follower may ask for the same one
            if version == self.version and str(path) == self.model_path:
                return
            new = Classifier.load(path, channels_last=self.settings.channels_last and str(path).endswith(".pt"))
            with self.gate.swap():  # waits for the requests in flight, holds new ones back meanwhile
                with self.model_lock:
                    self.batcher.classifier = new
                self._take_model(new, path, version)
        logger.info("now serving version %s: %s (%s)", version, path, self.model_id)

    def label_rule(self) -> LabelRule:
        """What a reviewer may label an item with now (the model's classes plus the log's new kinds)."""
        return LabelRule.from_log(self.log, self.settings.allow_new_bins)

    def close(self) -> None:
        self.adaptation.close()
        self.batcher.close()
        self.log.close()

    # ------------------------------------------------------------------ the path of a photo
    def decode(self, data: bytes) -> tuple[Any, Any]:
        """``(model input, review copy)`` of one upload, decoded inside the budget (ImageDecodeError: 415/422)."""
        with self.decoding.hold(decode_cost(data, self.draft_size)):
            full = load_image(data, max_pixels=self.settings.max_pixels, draft_size=self.draft_size)
            # the costly part of preprocessing (the resize) happens here, in parallel across
            # requests; the model thread's own resize is then a no-op and only crops
            small = _resize_for(full, self.classifier, self.settings.search)
            copy = review_copy(full)
            del full
        return small, copy

    def predict(self, blobs: list[bytes], name: str, threshold: float, source: str, log: bool,
                explain: bool = False) -> dict[str, Any]:
        """Decide one item from its photos (one or more) and log it; the JSON answer."""
        decoded = [self.decode(data) for data in blobs]
        with self.gate.request():  # one model from the forward pass to the log row that names it
            return self._decide(decoded, name, threshold, source, log, explain)

    def _decide(self, decoded: list[tuple[Any, Any]], name: str, threshold: float, source: str, log: bool,
                explain: bool) -> dict[str, Any]:
        if len(decoded) == 1:
            pred = self.batcher.predict(decoded[0][0], threshold)
        else:  # outside the batcher: one call for the whole item, under the model's lock
            with self.model_lock:
                pred = self.classifier.predict_groups({name: [small for small, _ in decoded]}, threshold=threshold,
                                                      search=self.settings.search)[0]
        if getattr(pred, "decision", None) == "error":
            raise ImageDecodeError(str(getattr(pred, "error", None) or "unreadable image"))
        out = plain(pred.to_dict())
        out.update(path=name, threshold=threshold)
        if len(decoded) > 1:
            out["photos"] = len(decoded)
        first = decoded[0][1]
        try:
            row = (self.log.record(pred, first, name, threshold, self.model_path, source, model_id=self.model_id,
                                   audit=self.audit) if log else None)
        except sqlite3.Error as exc:
            # no answer without its log entry: the caller may retry
            logger.error("decision log write failed: %s", exc)
            raise ApiError(503, f"decision log unavailable: {exc}") from None
        out["id"] = int(row) if row is not None else None
        # an unlogged answer is never audited: its kind follows from the decision alone
        out["kind"] = row.kind if row is not None else audit_kind(out.get("decision") or "", 1.0, 0.0)
        out["model_id"] = self.model_id
        out["model_version"] = self.version
        if explain and len(decoded) == 1:
            out.update(self._explain(first, out.get("label")))
        return out

    def _explain(self, image: Any, label: str | None) -> dict[str, Any]:
        if self.backend != "torch":
            return {"explanation": None,
                    "explanation_error": "heatmaps need the PyTorch backend (a .pt checkpoint)"}
        try:
            from wastenet.inference.explain import explain as gradcam

            with self.model_lock:  # Grad-CAM hooks the model: no forward pass may run beside it
                overlay, _heatmap, _pred = gradcam(self.classifier, image, target_class=label)
            return {"explanation": _png_data_url(overlay)}
        except Exception as exc:  # noqa: BLE001 - a failed heatmap must not lose the decision
            logger.warning("Grad-CAM failed: %s", exc)
            return {"explanation": None, "explanation_error": f"heatmap failed: {exc}"}


def plain(value: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python numbers, tuples to lists, NaN to None."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


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

