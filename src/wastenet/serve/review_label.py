"""What a reviewer may say an item is: one of the model's classes, or a new kind with its bin.

One rule for the review page, ``POST /api/review/ID`` and ``wastenet review --set`` (torch-free)::

    rule = LabelRule(classes=["glass", "paper"], class_bins={"glass": "recyclable", "paper": "recyclable"},
                     bins=["recyclable", "landfill"], new_kinds={"coffee_cup": "landfill"})
    rule.check("glass")                          # ('glass', 'recyclable')
    rule.check("Food waste", "landfill")         # ('food_waste', 'landfill'): a new kind
    rule.check("food_waste", "compostable")      # ValueError: no such bin (unless allow_new_bins)
    rule.check("Not an item")                    # ('not_an_item', None): the photo shows no item

A new kind (a label that is no model class) needs its bin: an existing bin, or a new one only when
the service runs with ``--allow-new-bins``; a kind keeps the bin it was first given. Its name is
normalised (lower case, ``_`` for spaces) so that "Coffee cup" and "coffee_cup" are one kind, and
kept to ``[a-z0-9_-]``: it becomes a class name, a folder and a key in the model file once it has
``--new-class-min`` reviewed items (DESIGN "The site loop").

``not_an_item`` (:data:`wastenet.ood.NOT_AN_ITEM`) says the photo shows no item at all (an empty
floor or belt): it has no bin and never becomes a class; adaptation teaches the unknown-item rule
with it (:func:`wastenet.ood.not_an_item`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from wastenet.ood import NOT_AN_ITEM

__all__ = ["DEFAULT_NEW_CLASS_MIN", "LabelRule", "normalise_kind"]

#: Reviewed items a new kind needs before adaptation makes it a class.
DEFAULT_NEW_CLASS_MIN = 10

_KIND_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")


def normalise_kind(name: str) -> str:
    """``" Coffee cup "`` -> ``"coffee_cup"``; ``ValueError`` when nothing usable is left.

    >>> normalise_kind("Food waste")
    'food_waste'
    """
    text = re.sub(r"\s+", "_", str(name).strip().lower())
    if not _KIND_RE.match(text):
        raise ValueError(f"a new kind's name must be 1-40 letters, digits, '_' or '-', got {str(name)[:40]!r}")
    return text


@dataclass(frozen=True)
class LabelRule:
    """The labels a review may give; :meth:`check` returns ``(label, bin)`` or raises ``ValueError``."""

    classes: Sequence[str]
    class_bins: Mapping[str, str]
    bins: Sequence[str]
    new_kinds: Mapping[str, str] = field(default_factory=dict)   # {kind: bin} the log already holds
    allow_new_bins: bool = False

    @classmethod
    def from_log(cls, log: Any, allow_new_bins: bool = False) -> "LabelRule":
        """The rule a decision log implies: its model's classes and bins, and the new kinds it holds."""
        kinds = {k: v["bin"] for k, v in log.new_kinds().items() if v["bin"]}
        return cls(log.classes() or [], log.class_bins(), log.bin_names(), kinds, allow_new_bins)

    def check(self, label: object, bin: object = None) -> tuple[str, str | None]:
        if not isinstance(label, str) or not label.strip():
            raise ValueError(f"label must be one of: {', '.join(self.classes)} (or a new kind with its bin)")
        if bin is not None and not isinstance(bin, str):
            raise ValueError("bin must be a bin name")
        text = label.strip()
        if text in self.classes:
            own = self.class_bins.get(text)
            if bin is not None and own is not None and bin != own:
                raise ValueError(f"{text!r} is a class of the model and goes to {own!r}, not {bin!r}")
            return text, own
        kind = normalise_kind(text)
        if kind in self.classes:  # "Glass " is the class glass
            return self.check(kind, bin)
        if kind == NOT_AN_ITEM:
            if bin is not None:
                raise ValueError(f"{NOT_AN_ITEM!r} says the photo shows no item: it goes to no bin")
            return kind, None
        known = self.new_kinds.get(kind)
        if bin is None:
            if known is None:
                raise ValueError(f"{kind!r} is no class of the model ({', '.join(self.classes)}): give a new kind "
                                 f"its bin ({', '.join(self.bins) or 'a bin name'})")
            return kind, known
        target = bin.strip()
        if known is not None and target != known:
            raise ValueError(f"the new kind {kind!r} goes to {known!r}; one kind has one bin")
        if target not in self.bins:
            if not self.allow_new_bins:
                raise ValueError(f"unknown bin {target!r} (bins: {', '.join(self.bins)}); "
                                 "a new bin needs `wastenet serve --allow-new-bins`")
            target = normalise_kind(target)
        return kind, target
