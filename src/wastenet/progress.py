"""Progress of long passes, on a terminal and in a log file; the run's log lines.

On a terminal a pass shows a tqdm bar with rate and ETA. When stderr is not a terminal (a
job's output redirected to a file, a CI log) a bar would be one endless line of carriage
returns, and nothing at all used to appear for 25 minutes; instead the pass writes one line
every ``every`` share (10% by default) with rate and ETA. Every line also goes to the run's
log file once ``set_log_file`` names one::

    set_log_file("runs/x/train.log")
    with Progress(total=6320, desc="[head] features view 1/5", unit="img") as bar:
        for batch in batches:
            ...
            bar.update(len(batch))
    emit("done")            # stderr + runs/x/train.log

Only rank 0 of a distributed run should write (callers pass ``enabled=False`` elsewhere).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, TextIO

__all__ = ["Progress", "emit", "format_seconds", "set_log_file"]

_log_file: Path | None = None


def set_log_file(path: str | Path | None) -> None:
    """Append every ``emit``ted line (and non-terminal progress line) to ``path`` from now on."""
    global _log_file
    _log_file = Path(path) if path else None
    if _log_file is not None:
        _log_file.parent.mkdir(parents=True, exist_ok=True)


def emit(msg: str, stream: TextIO | None = None, to_stream: bool = True) -> None:
    """One log line: to stderr (unless ``to_stream=False``) and to the run's log file, if any."""
    if to_stream:
        print(msg, file=stream or sys.stderr, flush=True)
    if _log_file is not None:
        with _log_file.open("a", encoding="utf-8") as f:
            f.write(time.strftime("%H:%M:%S ") + msg + "\n")


def format_seconds(s: float) -> str:
    """``75`` -> ``'1m15s'``; ``3700`` -> ``'1h01m'``."""
    s = max(0, int(round(s)))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Progress:
    """A bar with ETA on a terminal, else one line per ``every`` of ``total`` (also in the log file).

    ``tty=None`` asks ``stream.isatty()``. ``every`` is a share of the total (0.1 = every 10%).
    """

    def __init__(self, total: int, desc: str, unit: str = "img", *, every: float = 0.1, enabled: bool = True,
                 stream: TextIO | None = None, tty: bool | None = None) -> None:
        self.total, self.desc, self.unit, self.every = int(total), desc, unit, float(every)
        self.enabled = enabled and self.total > 0
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.done = 0
        self.t0 = time.perf_counter()
        self._next_mark = self.every
        self._bar: Any = None
        self._postfix: dict[str, str] = {}
        if self.enabled and self.tty:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=desc, unit=unit, leave=False, file=self.stream)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def set_postfix(self, **kv: Any) -> None:
        """Extra fields (e.g. ``loss="0.412"``) shown on the bar and in the logged lines."""
        self._postfix = {k: str(v) for k, v in kv.items()}
        if self._bar is not None:
            self._bar.set_postfix(self._postfix, refresh=False)

    def _line(self) -> str:
        elapsed = time.perf_counter() - self.t0
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        extra = "".join(f", {k} {v}" for k, v in self._postfix.items())
        eta_text = format_seconds(eta) if eta == eta else "?"
        return (f"{self.desc}: {100 * self.done / self.total:.0f}% ({self.done}/{self.total} {self.unit}), "
                f"{rate:.1f} {self.unit}/s, elapsed {format_seconds(elapsed)}, ETA {eta_text}{extra}")

    def update(self, n: int = 1) -> None:
        if not self.enabled:
            return
        self.done = min(self.total, self.done + int(n))
        if self._bar is not None:
            self._bar.update(n)
            return
        share = self.done / self.total
        if share + 1e-9 >= self._next_mark:
            emit(self._line(), self.stream)
            while self._next_mark <= share + 1e-9:
                self._next_mark += self.every

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            # the terminal bar vanishes (leave=False); the log file keeps the pass's total
            if self.done:
                emit(self._line(), self.stream, to_stream=False)
