"""The service's settings as one object: what ``wastenet serve`` hands to every worker process.

With ``--workers N`` uvicorn imports the app factory in each process; the settings cross as one
JSON environment variable (``WASTENET_SERVE``) instead of one variable per option::

    s = ServeSettings(checkpoint="runs/x/best.onnx", threshold=0.85, max_batch=4)
    os.environ[ENV_VAR] = s.to_json()         # the parent
    app = create_app_from(ServeSettings.from_env())   # each worker (wastenet.serve.app.app_from_env)

Torch-free, like everything ``serve`` needs for an ``.onnx`` model.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any, Mapping

from wastenet.errors import ConfigError

__all__ = ["DEFAULT_LOG_MAX_BYTES", "DEFAULT_MAX_DECODES", "DEFAULT_MAX_UPLOAD_BYTES", "ENV_VAR", "ServeSettings"]

ENV_VAR = "WASTENET_SERVE"
DEFAULT_MAX_UPLOAD_BYTES = 10 * 2**20
DEFAULT_LOG_MAX_BYTES = 512 * 2**20   # the decision log's cap (oldest reviewed/automatic rows go first)
DEFAULT_MAX_DECODES = 2               # images decoded at once: each can cost ~100 MB at the pixel limit


@dataclass(frozen=True)
class ServeSettings:
    """Everything ``create_app`` takes besides the model; ``None`` means the documented default.

    ``threshold``: the model file's when None; ``torch_threads``: PyTorch's choice when None;
    ``review_token``, ``host``, ``allowed_hosts``: see :mod:`wastenet.serve.guard`;
    ``onnx_spin``: let onnxruntime's idle threads spin (off: they sleep, which leaves the cores
    to request decoding: +17% requests/s under 8 clients on 2 cores, BENCHMARKS.md).
    """

    checkpoint: str
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
    log_max_bytes: int | None = DEFAULT_LOG_MAX_BYTES   # None: no cap
    max_decodes: int = DEFAULT_MAX_DECODES
    search: bool = False                 # item search: windows of each photo (~51 model calls each)

    def app_options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`wastenet.serve.app.create_app` (all but the model)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "checkpoint"}

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ServeSettings":
        try:
            data = json.loads(text)
            if not isinstance(data, Mapping):
                raise ValueError("not a JSON object")
            if "allowed_hosts" in data:  # JSON has lists, the frozen settings a tuple
                data = {**data, "allowed_hosts": tuple(data["allowed_hosts"])}
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
