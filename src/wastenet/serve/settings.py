"""The service's settings as one object: every option of ``wastenet serve``, its default and its check.

This is the one place a serve option is written down. ``wastenet serve`` takes its argparse
defaults from here and builds one :class:`ServeSettings` (its checks run on construction, so a bad
value is one ``ConfigError`` line, exit 2, before anything loads); :func:`wastenet.serve.app.create_app`
takes the object; with ``--workers N`` it crosses to every worker process as one JSON environment
variable (``WASTENET_SERVE``)::

    s = ServeSettings(checkpoint="runs/x/best.onnx", threshold=0.85, max_batch=4)
    app = create_app(s)
    os.environ[ENV_VAR] = s.to_json()                  # the parent, for N workers ...
    app = create_app(ServeSettings.from_env())         # ... each worker (wastenet.serve.app.app_from_env)

Torch-free, like everything ``serve`` needs for an ``.onnx`` model.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from wastenet.audit import DEFAULT_AUDIT_RATE, check_audit_rate
from wastenet.data.images import SERVICE_MAX_PIXELS  # the service's pixel limit per image
from wastenet.decision import check_threshold
from wastenet.errors import ConfigError
from wastenet.serve.review_label import DEFAULT_NEW_CLASS_MIN

__all__ = ["DEFAULT_LOG_MAX_BYTES", "DEFAULT_MAX_DECODES", "DEFAULT_MAX_UPLOAD_BYTES", "DEFAULT_DECODE_PIXELS",
           "ENV_VAR", "MODEL_SUFFIXES", "SERVICE_MAX_PIXELS", "ServeSettings", "check_model_file"]

ENV_VAR = "WASTENET_SERVE"
MODEL_SUFFIXES = (".pt", ".onnx")
DEFAULT_MAX_UPLOAD_BYTES = 10 * 2**20
DEFAULT_LOG_MAX_BYTES = 512 * 2**20   # the decision log's cap on disk (database + WAL)
DEFAULT_MAX_DECODES = 2               # images decoded at once
#: Decoded pixels in flight at once: one image at the pixel limit, or many small ones. A decoded
#: RGB pixel costs 3 bytes, and conversion/orientation can hold a second copy: ~240 MB at most.
DEFAULT_DECODE_PIXELS = SERVICE_MAX_PIXELS


def check_model_file(path: str | os.PathLike) -> Path:
    """``path`` as a Path when it names an existing ``.pt`` or ``.onnx`` file; ConfigError otherwise.

    >>> check_model_file("model.h5")      # doctest: +SKIP
    ConfigError: --checkpoint must be a .pt checkpoint or an .onnx file, got model.h5
    """
    p = Path(path)
    if p.suffix.lower() not in MODEL_SUFFIXES:
        raise ConfigError(f"--checkpoint must be a .pt checkpoint or an .onnx file, got {p}")
    if not p.is_file():
        raise ConfigError(f"model file not found: {p}")
    return p


@dataclass(frozen=True)
class ServeSettings:
    """Everything the service is started with; each field's default is the documented one.

    ``checkpoint``: the model file (None only when ``create_app`` is handed a loaded ``Classifier``);
    ``threshold``: the model file's when None; ``torch_threads``: PyTorch's choice when None;
    ``review_token`` (None: a random one), ``host``, ``allowed_hosts``: see :mod:`wastenet.serve.guard`;
    ``log_max_bytes``: cap on the log's files on disk (None: no cap); ``max_pixels``: largest image;
    ``max_decodes`` and ``decode_pixels``: images and decoded pixels in flight at once;
    ``onnx_spin``: let onnxruntime's idle threads spin (off: they sleep, which leaves the cores
    to request decoding: +17% requests/s under 8 clients on 2 cores, BENCHMARKS.md);
    ``search``: look at every photo through windows (~51 model calls each);
    ``audit_rate``: share of automatic decisions kept for review (0: no audits; :mod:`wastenet.audit`),
    ``audit_seed``: the seed of the draw (None: the log's own, random at its creation);
    ``allow_new_bins``: a reviewer's new kind may name a bin the taxonomy lacks; ``new_class_min``:
    reviewed items a new kind needs before adaptation makes it a class (:mod:`wastenet.serve.review_label`);
    ``adapt_every``: adapt after that many new reviewed items (None: only on ``POST /api/models/adapt``),
    ``adapt_mix``/``adapt_mix_split``: the rehearsal set and its split file (:mod:`wastenet.serve.adaptation`),
    ``adapt_mix_per_class``: its images rehearsed per class (None: ``wastenet adapt``'s default),
    ``adapt_holdout_max``: at most that many newest reviewed items held out to compare a candidate (None: 20%),
    ``adapt_max_forgetting``: points of rehearsal validation accuracy a candidate may lose
    (None: :data:`wastenet.site.learn.MAX_FORGETTING_POINTS`), ``adapt_compare``: what a candidate must not be
    worse at on the held-out items (:data:`wastenet.site.learn.COMPARISONS`).

    Construction checks every value (``ConfigError`` naming the command-line option):

    >>> ServeSettings(checkpoint=None, max_decodes=0)
    Traceback (most recent call last):
    wastenet.errors.ConfigError: --max-decodes must be at least 1, got 0
    """

    checkpoint: str | None
    log_path: str | None = None
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    threshold: float | None = None
    max_batch: int = 8
    torch_threads: int | None = None
    channels_last: bool = False
    onnx_spin: bool = False
    review_token: str | None = None      # the same in every worker (a random one per worker would differ)
    host: str | None = None
    allowed_hosts: tuple[str, ...] = ()
    log_max_bytes: int | None = DEFAULT_LOG_MAX_BYTES
    max_pixels: int = SERVICE_MAX_PIXELS
    max_decodes: int = DEFAULT_MAX_DECODES
    decode_pixels: int = DEFAULT_DECODE_PIXELS
    search: bool = False
    audit_rate: float = DEFAULT_AUDIT_RATE
    audit_seed: int | None = None
    allow_new_bins: bool = False
    new_class_min: int = DEFAULT_NEW_CLASS_MIN
    adapt_every: int | None = None
    adapt_mix: str | None = None
    adapt_mix_split: str | None = None
    adapt_mix_per_class: int | None = None
    adapt_max_forgetting: float | None = None
    adapt_holdout_max: int | None = None
    adapt_compare: str = "class"

    def __post_init__(self) -> None:
        if self.checkpoint is not None:
            check_model_file(self.checkpoint)
        if self.threshold is not None:
            check_threshold(self.threshold, name="--threshold")
        if not self.max_upload_bytes > 0:
            raise ConfigError(f"--max-upload-mb must be positive, got {self.max_upload_bytes / 2**20:g}")
        if self.log_max_bytes is not None and not self.log_max_bytes > 0:
            raise ConfigError(f"--log-max-mb must be 0 (no cap) or positive, got {self.log_max_bytes / 2**20:g}")
        for name, flag in (("max_batch", "--max-batch"), ("max_decodes", "--max-decodes"), ("max_pixels", "max_pixels")):
            if not getattr(self, name) >= 1:
                raise ConfigError(f"{flag} must be at least 1, got {getattr(self, name)}")
        if not self.decode_pixels >= 1:
            raise ConfigError(f"--decode-mpx must be positive, got {self.decode_pixels / 1e6:g}")
        if self.torch_threads is not None and not self.torch_threads >= 1:
            raise ConfigError(f"--threads must be at least 1, got {self.torch_threads}")
        if self.review_token is not None and not self.review_token.strip():
            raise ConfigError("--review-token must not be empty")
        try:
            object.__setattr__(self, "audit_rate", check_audit_rate(self.audit_rate))
        except ValueError as exc:
            raise ConfigError(f"--audit-rate: {exc}") from None
        if self.audit_seed is not None and not (isinstance(self.audit_seed, int) and 0 <= self.audit_seed < 2**63):
            raise ConfigError(f"--audit-seed must be a whole number >= 0, got {self.audit_seed!r}")
        if not (isinstance(self.new_class_min, int) and self.new_class_min >= 2):
            raise ConfigError(f"--new-class-min must be at least 2 (one to learn from, one to check), got {self.new_class_min}")
        if self.adapt_every is not None and not (isinstance(self.adapt_every, int) and self.adapt_every >= 1):
            raise ConfigError(f"--adapt-every must be at least 1, got {self.adapt_every}")
        if self.adapt_mix is not None:
            if not Path(self.adapt_mix).is_dir():
                raise ConfigError(f"--adapt-mix: no such folder: {self.adapt_mix}")
            if not self.adapt_mix_split or not Path(self.adapt_mix_split).is_file():
                raise ConfigError("--adapt-mix needs --adapt-mix-split CSV (its train rows are rehearsed, "
                                  "its val rows calibrate)")
        elif self.adapt_mix_split is not None:
            raise ConfigError("--adapt-mix-split goes with --adapt-mix")
        if self.adapt_mix_per_class is not None:
            if self.adapt_mix is None:
                raise ConfigError("--adapt-mix-per-class goes with --adapt-mix")
            if not (isinstance(self.adapt_mix_per_class, int) and self.adapt_mix_per_class >= 1):
                raise ConfigError(f"--adapt-mix-per-class must be at least 1, got {self.adapt_mix_per_class}")
        from wastenet.site.learn import check_compare

        check_compare(self.adapt_compare, "--adapt-compare")
        if self.adapt_holdout_max is not None:
            from wastenet.site.learn import check_holdout_max

            check_holdout_max(self.adapt_holdout_max, "--adapt-holdout-max")
        if self.adapt_max_forgetting is not None:
            from wastenet.site.learn import check_max_forgetting

            if self.adapt_mix is None:
                raise ConfigError("--adapt-max-forgetting goes with --adapt-mix (forgetting is measured on its val rows)")
            check_max_forgetting(self.adapt_max_forgetting, "--adapt-max-forgetting")
        object.__setattr__(self, "allowed_hosts", tuple(self.allowed_hosts))  # JSON and callers give lists

    @classmethod
    def default(cls, name: str) -> Any:
        """The default of one field, for the command line: ``ServeSettings.default("max_batch")`` -> 8."""
        return cls.__dataclass_fields__[name].default

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ServeSettings":
        try:
            data = json.loads(text)
            if not isinstance(data, Mapping):
                raise ValueError("not a JSON object")
            return cls(**data)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{ENV_VAR} does not hold serve settings: {exc}") from None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "ServeSettings":
        """The settings ``wastenet serve`` left in ``$WASTENET_SERVE`` (ConfigError when unset)."""
        raw = (os.environ if environ is None else environ).get(ENV_VAR)
        if not raw:
            raise ConfigError(f"{ENV_VAR} is not set: start workers with `wastenet serve --workers N`")
        return cls.from_json(raw)
