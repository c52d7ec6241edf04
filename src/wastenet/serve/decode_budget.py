"""How much decoding may happen at once: a count of images and a budget of decoded pixels.

A count alone does not bound memory: a 174 KB TIFF can hold 36 Mpx, so two "slots" can be two
100+ MB buffers, and glibc keeps what each request thread freed in that thread's arena (RSS
went 1.0 -> 3.4 GB after 8 such uploads and stayed there). So a decode here first asks what it
will allocate, from the header alone (:func:`decode_cost`: width x height, or the reduced DCT
size a JPEG draft decodes to), waits until that many pixels are free, and after a large decode
hands the freed memory back to the system (:func:`release_memory`)::

    budget = DecodeBudget(slots=2, pixels=40_000_000)
    with budget.hold(decode_cost(data, draft_size=1024)):
        image = load_image(data, draft_size=1024)
        small = shrink(image)
        del image

Torch-free (Pillow for the header, ctypes for glibc's ``malloc_trim``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import threading
import warnings
from contextlib import contextmanager
from typing import Iterator

__all__ = ["DecodeBudget", "decode_cost", "release_memory", "TRIM_PIXELS"]

#: A decode at least this large (pixels) is followed by ``malloc_trim``: ~12 MB of RGB and more.
TRIM_PIXELS = 4_000_000


def decode_cost(data: bytes, draft_size: int | None = None) -> int:
    """Pixels the decoder will allocate for ``data``, read from its header (no pixel is decoded).

    A JPEG that ``load_image(..., draft_size=N)`` decodes at a reduced DCT scale costs its reduced
    size. Bytes Pillow cannot even open cost 1: the decode fails at once, for the usual reason.

    >>> decode_cost(open("36mpx.tif", "rb").read())        # doctest: +SKIP
    36000000
    """
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # bomb warnings: load_image applies the service's limit
            with Image.open(io.BytesIO(data)) as img:
                if draft_size and img.format in ("JPEG", "MPO"):
                    img.draft("RGB", (int(draft_size), int(draft_size)))  # header only: sets the scale
                width, height = img.size
    except Exception:  # noqa: BLE001 - unreadable: load_image says why, in its own words
        return 1
    return max(1, int(width) * int(height))


class DecodeBudget:
    """At most ``slots`` decodes at once, holding at most ``pixels`` decoded pixels between them.

    A decode larger than the whole budget (the per-image limit may exceed it) runs alone. Waiters
    are served as pixels free up; none waits on another waiter, so nothing deadlocks.
    """

    def __init__(self, slots: int, pixels: int) -> None:
        if slots < 1 or pixels < 1:
            raise ValueError("a decode budget needs at least one slot and one pixel")
        self.slots = threading.BoundedSemaphore(slots)
        self.pixels = int(pixels)
        self._free = threading.Condition()
        self._in_flight = 0
        self.waiting = 0  # decodes waiting for pixels (for /api/health and the tests)
        self.peak = 0  # most pixels ever held at once (for /api/health and the tests)

    @contextmanager
    def hold(self, cost: int) -> Iterator[None]:
        """Wait for a slot and ``cost`` pixels, hold them for the block, then release (and trim)."""
        cost = max(1, min(int(cost), self.pixels))
        with self.slots:
            with self._free:
                self.waiting += 1
                self._free.wait_for(lambda: self._in_flight + cost <= self.pixels)
                self.waiting -= 1
                self._in_flight += cost
                self.peak = max(self.peak, self._in_flight)
            try:
                yield
            finally:
                with self._free:
                    self._in_flight -= cost
                    self._free.notify_all()
        if cost >= TRIM_PIXELS:
            release_memory()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def stats(self) -> dict[str, int]:
        return {"pixels": self.pixels, "in_flight": self._in_flight, "waiting": self.waiting, "peak": self.peak}


_libc: ctypes.CDLL | None | bool = None


def release_memory() -> bool:
    """Return freed heap memory to the system (glibc's ``malloc_trim(0)``); False where unavailable.

    glibc keeps freed blocks in per-thread arenas for reuse, so after a burst of large decodes in
    the thread pool the resident size stays at its peak; trimming gives those pages back.
    """
    global _libc
    if _libc is None:
        try:
            name = ctypes.util.find_library("c")
            lib = ctypes.CDLL(name) if name else None
            _libc = lib if lib is not None and hasattr(lib, "malloc_trim") else False
        except OSError:
            _libc = False
    if not _libc:
        return False
    _libc.malloc_trim(0)  # type: ignore[union-attr]
    return True
