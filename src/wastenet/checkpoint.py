"""The checkpoint file: everything ``predict`` needs, written atomically.

A checkpoint is a ``torch.save``d dict (see docs/ARCHITECTURE.md)::

    ckpt = make_checkpoint(built, classes=["glass", "paper"], taxonomy=tax)
    save(ckpt, "runs/x/best.pt")          # write to a temp file, then rename
    ckpt = load("runs/x/best.pt")         # validated dict
    model = wastenet.models.model_from_checkpoint(ckpt)
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from wastenet.decision import DEFAULT_THRESHOLD
from wastenet.errors import ConfigError
from wastenet.files import write_atomic
from wastenet.model_metadata import check_metadata

FORMAT = "wastenet-checkpoint"
VERSION = 1
REQUIRED_KEYS = ("arch", "state_dict", "classes", "preprocessing")


def make_checkpoint(
    built: Any,
    *,
    classes: list[str],
    taxonomy: dict[str, Any] | None = None,
    temperature: float = 1.0,
    threshold: float = DEFAULT_THRESHOLD,
    **extra: Any,
) -> dict[str, Any]:
    """A checkpoint dict from a ``models.BuiltModel`` (weights copied to CPU float32)."""
    state = {k: v.detach().to("cpu", copy=True).float() if v.is_floating_point() else v.detach().cpu().clone()
             for k, v in unwrap(built.model).state_dict().items()}
    return {
        "format": FORMAT,
        "version": VERSION,
        "arch": built.arch,
        "model_kwargs": dict(built.model_kwargs),
        "state_dict": state,
        "classes": list(classes),
        "taxonomy": taxonomy,
        "preprocessing": built.preprocessing.to_dict(),
        "temperature": float(temperature),
        "threshold": float(threshold),
        **extra,
    }


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The network inside a (Distributed)DataParallel wrapper, or ``model`` itself: what a checkpoint stores."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    return model.module if isinstance(model, (DataParallel, DistributedDataParallel)) else model


def save(ckpt: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write atomically: a crash mid-write never leaves a truncated checkpoint behind."""
    return write_atomic(path, lambda f: torch.save(ckpt, f))


def load(path: str | os.PathLike, map_location: str = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint; a missing, foreign or malformed file is a one-line ``ConfigError``.

    The one loader of ``.pt`` files: its metadata (classes, preprocessing, temperature,
    threshold) is checked here, by :func:`wastenet.model_metadata.check_metadata`, so every
    mode refuses a bad file the same way before any work. A file that carries code (a pickle
    of functions or classes) is refused without running any of it.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint not found: {path}")
    try:
        # our checkpoints hold only tensors, numbers, strings, lists and dicts
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc):  # torch's advice (weights_only=False) would run the code
            raise ConfigError(f"{path}: not a wastenet checkpoint (it contains code objects); "
                              "refusing to load it") from None
        raise ConfigError(f"cannot read checkpoint {path}: {_one_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's input problem
        raise ConfigError(f"cannot read checkpoint {path}: {_one_line(exc)}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ConfigError(f"{path} is not a wastenet checkpoint")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise ConfigError(f"checkpoint {path} lacks {', '.join(missing)}")
    ckpt.setdefault("model_kwargs", {})
    return check_metadata(ckpt, str(path))  # fills in the default temperature and threshold


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
