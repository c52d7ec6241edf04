"""The markdown pieces every report is made of (``report.md`` of a run, the field report).

One place for how a number, a share, a table and an image link are written, so the two reports
read alike::

    num(0.83412)             # '0.8341' (None or NaN: 'n/a')
    pct(0.0171)              # '1.7%'
    table(["bin", "items"], [["recyclable", 81]])
    image("confusion matrix", "confusion_matrix.png")
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

__all__ = ["cell", "image", "num", "pct", "table"]


def cell(value: Any) -> str:
    """A table cell: pipes escaped, one line."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def num(value: Any, digits: int = 4) -> str:
    """A number with ``digits`` decimals; missing values are 'n/a'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{float(value):.{digits}f}"


def pct(value: Any) -> str:
    """A share as a percentage with one decimal; missing values are 'n/a'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{float(value):.1%}"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A markdown table; ``align`` is one letter per column, 'l' or 'r' (default: first left, rest right)."""
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def image(alt: str, rel: str) -> str:
    """An image link relative to the report."""
    return f"![{alt}]({Path(rel).as_posix()})"
