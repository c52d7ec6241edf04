"""The CPU this runs on, in one place: its model name and the ISA flags that decide precision.

Timings differ 2-3x between this project's machines (AMX vs AVX-512 vs AVX2), so every run's
``summary.json``/``config.yaml`` and every benchmark records it (torch-free)::

    cpu_info()          # {"model": "Intel(R) Xeon(R) Platinum 8481C", "isa": ["avx2", "avx512f", ..., "amx_tile"]}
    cpu_description()   # 'Intel(R) Xeon(R) Platinum 8481C (avx2, avx512f, avx512_vnni, avx512_bf16, amx_bf16, amx_tile)'
"""

from __future__ import annotations

import platform
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = ["PRECISION_FLAGS", "cpu_description", "cpu_info", "cpu_model"]

#: ISA flags that decide CPU precision (bf16 is native with AVX512-BF16 / AMX, emulated without).
PRECISION_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")


@lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str | None, frozenset[str]]:
    """The model name and flags of the first CPU in /proc/cpuinfo (None, {} where there is none)."""
    name, flags = None, frozenset()
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name") and name is None:
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = frozenset(line.split(":", 1)[1].split())
    except OSError:  # not Linux: the name from platform, no flags
        pass
    return name, flags


def cpu_model() -> str:
    """The CPU's model name, to print beside every timing (``AMD EPYC 9B45``)."""
    return _cpuinfo()[0] or platform.processor() or platform.machine() or "unknown"


def cpu_info() -> dict[str, Any]:
    """``{"model": name, "isa": [the PRECISION_FLAGS this CPU has, in that order]}``."""
    flags = _cpuinfo()[1]
    return {"model": cpu_model(), "isa": [f for f in PRECISION_FLAGS if f in flags]}


def cpu_description() -> str:
    """The model name and its precision ISA flags: ``AMD EPYC 9B45 (avx2, avx512f, avx512_bf16)``."""
    info = cpu_info()
    return f"{info['model']} ({', '.join(info['isa']) or 'no AVX2'})"
