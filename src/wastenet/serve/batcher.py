"""Micro-batching: one thread runs every forward pass, and concurrent requests share a batch.

    batcher = Batcher(classifier, threading.Lock(), max_batch=8)
    pred = batcher.predict(image, threshold)     # blocks the calling worker thread
    batcher.close()

Only the batcher's thread (and whoever else holds ``lock``, e.g. Grad-CAM) touches the model,
so no backend has to be thread-safe.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from typing import Any

__all__ = ["Batcher"]


class Batcher:
    """One thread runs every forward pass; concurrent requests share a batch.

    A batch takes whatever queued up while the previous one ran, without waiting for more:
    a lone request never pays for batching. (Waiting up to 15 ms for requests still being
    uploaded or decoded was tried: batches did not grow under 8 clients, so it went.)
    """

    def __init__(self, classifier: Any, lock: threading.Lock, max_batch: int = 8, search: bool = False) -> None:
        self.classifier = classifier
        self.search = search  # item search (inference.search) for every photo
        self.lock = lock
        self.max_batch = max(1, int(max_batch))
        self.images = 0  # totals, for /api/health
        self.batches = 0
        self._queue: queue.SimpleQueue[tuple[Any, float, Future] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="wastenet-model", daemon=True)
        self._thread.start()

    def predict(self, image: Any, threshold: float) -> Any:
        if not self._thread.is_alive():
            raise RuntimeError("the model thread has stopped")
        future: Future = Future()
        self._queue.put((image, threshold, future))
        return future.result()

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            stop = False
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._run(batch)
            if stop:
                return

    def stats(self) -> dict[str, Any]:
        return {"max_batch": self.max_batch, "images": self.images, "batches": self.batches,
                "mean_batch": round(self.images / self.batches, 2) if self.batches else None}

    def _run(self, batch: list[tuple[Any, float, Future]]) -> None:
        self.images += len(batch)
        self.batches += 1
        by_threshold: dict[float, list[tuple[Any, float, Future]]] = {}
        for item in batch:
            by_threshold.setdefault(item[1], []).append(item)
        for threshold, items in by_threshold.items():
            if len(items) == 1:
                self._run_one(items[0], threshold)
                continue
            try:
                preds = self._predict(items, threshold)
            except BaseException:  # noqa: BLE001
                # one bad input must not fail its batch-mates: retry them one by one
                for it in items:
                    self._run_one(it, threshold)
                continue
            for it, pred in zip(items, preds):
                it[2].set_result(pred)

    def _predict(self, items: list[tuple[Any, float, Future]], threshold: float) -> list[Any]:
        with self.lock:
            preds = self.classifier.predict([it[0] for it in items], threshold=threshold,
                                            batch_size=len(items), search=self.search)
        if len(preds) != len(items):
            raise RuntimeError(f"classifier returned {len(preds)} predictions for {len(items)} images")
        return preds

    def _run_one(self, item: tuple[Any, float, Future], threshold: float) -> None:
        try:
            item[2].set_result(self._predict([item], threshold)[0])
        except BaseException as exc:  # noqa: BLE001 - hand the failure to the waiting request
            item[2].set_exception(exc)
