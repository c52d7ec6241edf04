"""Class → bin maps (taxonomies): which bin each predicted class goes in. Torch-free.

A taxonomy is YAML with one ``bins`` mapping, bin name → list of classes, every model class
in exactly one bin (bin order is kept; a bin may be empty)::

    name: trashnet
    bins:
      recyclable: [cardboard, glass, metal, paper, plastic]
      compostable: []
      landfill: [trash]

Built in: ``trashnet`` and ``household`` (the 30-class Kaggle set). Usage::

    import numpy as np
    from wastenet.taxonomy import load_taxonomy

    classes = ["cardboard", "glass", "metal", "paper", "plastic", "trash"]
    tax = load_taxonomy("trashnet", classes)        # or a YAML path, a dict, a Taxonomy
    tax.bin_of("glass")                              # 'recyclable'
    probs = np.array([[0.1, 0.1, 0.1, 0.3, 0.1, 0.3]])
    tax.bin_probabilities(probs, classes)            # [[0.7, 0.0, 0.3]], in tax.bin_names order
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import yaml

from wastenet.errors import ConfigError

__all__ = [
    "BUILTIN_TAXONOMIES",
    "resolve_taxonomy",
    "Taxonomy",
    "builtin_taxonomy",
    "default_taxonomy_for",
    "identity_taxonomy",
    "load_taxonomy",
]

#: Names accepted by :func:`load_taxonomy` without a file (``taxonomies/<name>.yaml``).
BUILTIN_TAXONOMIES = ("trashnet", "household")


@dataclass
class Taxonomy:
    """A named map from bins to the classes they receive.

    >>> t = Taxonomy("demo", {"recyclable": ["can"], "landfill": ["straw"]})
    >>> t.bin_names, t.classes, t.bin_of("straw")
    (['recyclable', 'landfill'], ['can', 'straw'], 'landfill')
    """

    name: str
    bins: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.bins = _normalise_bins(self.bins, f"taxonomy {self.name!r}")
        self._check_unique()

    # ------------------------------------------------------------------ queries
    @property
    def bin_names(self) -> list[str]:
        """Bin names in their declared order (the column order of ``bin_probabilities``)."""
        return list(self.bins)

    @property
    def classes(self) -> list[str]:
        """Every class the taxonomy maps, bin by bin, in declared order."""
        return [c for members in self.bins.values() for c in members]

    def bin_of(self, cls: str) -> str:
        """The bin that ``cls`` goes in; ConfigError if the taxonomy does not map it."""
        for bin_name, members in self.bins.items():
            if cls in members:
                return bin_name
        raise ConfigError(f"class {cls!r} is not mapped to any bin in taxonomy {self.name!r}")

    # --------------------------------------------------------------- validation
    def check(self, classes: Sequence[str]) -> None:
        """Raise ConfigError unless every model class is in exactly one bin.

        Classes the taxonomy maps but the model lacks are allowed (and ignored), so one
        taxonomy can serve models trained on a subset of its classes.
        """
        self._check_unique()
        repeated = sorted(c for c, n in Counter(classes).items() if n > 1)
        if repeated:
            raise ConfigError(f"model class list repeats {', '.join(map(repr, repeated))}")
        mapped = set(self.classes)
        missing = [c for c in classes if c not in mapped]
        if missing:
            raise ConfigError(
                f"taxonomy {self.name!r} does not map model class"
                f"{'es' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} "
                f"to a bin (bins: {', '.join(self.bin_names)})"
            )

    def _check_unique(self) -> None:
        owner: dict[str, str] = {}
        for bin_name, members in self.bins.items():
            for cls in members:
                if cls in owner:
                    where = (
                        f"twice in bin {bin_name!r}"
                        if owner[cls] == bin_name
                        else f"in two bins, {owner[cls]!r} and {bin_name!r}"
                    )
                    raise ConfigError(f"taxonomy {self.name!r} maps class {cls!r} {where}")
                owner[cls] = bin_name

    # ------------------------------------------------------------------ arrays
    def class_to_bin_index(self, classes: Sequence[str]) -> np.ndarray:
        """For each model class (in model order), the index of its bin in ``bin_names``.

        >>> Taxonomy("d", {"a": ["y"], "b": ["x"]}).class_to_bin_index(["x", "y"])
        array([1, 0])
        """
        self.check(classes)
        index = {b: i for i, b in enumerate(self.bins)}
        owner = {c: index[b] for b, members in self.bins.items() for c in members}
        return np.array([owner[c] for c in classes], dtype=np.int64)

    def bin_probabilities(self, probs: np.ndarray, classes: Sequence[str]) -> np.ndarray:
        """Sum class probabilities per bin: ``probs`` [N, C] (model order) → [N, B].

        Columns follow ``bin_names``; an empty bin gets 0. A 1-D ``probs`` [C] gives [B].
        """
        probs = np.asarray(probs)
        if probs.ndim not in (1, 2) or probs.shape[-1] != len(classes):
            raise ValueError(
                f"probabilities of shape {probs.shape} do not match {len(classes)} classes"
            )
        dtype = probs.dtype if np.issubdtype(probs.dtype, np.floating) else np.float64
        onehot = np.zeros((len(classes), len(self.bins)), dtype=dtype)
        onehot[np.arange(len(classes)), self.class_to_bin_index(classes)] = 1
        return probs.astype(dtype, copy=False) @ onehot

    # ------------------------------------------------------------ (de)serialise
    def to_dict(self) -> dict[str, Any]:
        """Plain dict for checkpoints, ONNX metadata and YAML: ``{"name", "bins"}``."""
        return {"name": self.name, "bins": {b: list(m) for b, m in self.bins.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = "taxonomy") -> Taxonomy:
        """Inverse of :meth:`to_dict`; ``name`` is optional (default ``"custom"``)."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"{source}: expected a mapping with 'bins', got {type(d).__name__}")
        if not isinstance(d.get("bins"), Mapping):
            raise ConfigError(
                f"{source}: expected a 'bins:' mapping of bin name -> list of classes"
            )
        name = d.get("name") or "custom"
        return cls(str(name), _normalise_bins(d["bins"], source))


def load_taxonomy(
    spec: str | Path | Mapping[str, Any] | Taxonomy,
    classes: Sequence[str] | None = None,
) -> Taxonomy:
    """Load a taxonomy from a built-in name, a YAML file, a dict or a Taxonomy.

    With ``classes`` (the model's class names), also check that each is in exactly one
    bin. Every problem is a one-line :class:`~wastenet.errors.ConfigError`.

    >>> load_taxonomy("household").bin_names
    ['recyclable', 'compostable', 'landfill']
    """
    if isinstance(spec, Taxonomy):
        tax = Taxonomy(spec.name, copy.deepcopy(spec.bins))
    elif isinstance(spec, Mapping):
        tax = Taxonomy.from_dict(spec)
    elif isinstance(spec, (str, Path)):
        tax = _load_named_or_file(spec)
    else:
        raise ConfigError(f"cannot use {type(spec).__name__} as a taxonomy")
    if classes is not None:
        tax.check(list(classes))
    return tax


def resolve_taxonomy(spec: str | Path | Mapping[str, Any] | Taxonomy | None, classes: Sequence[str]) -> Taxonomy:
    """The taxonomy a model decides with: ``spec`` when given (checked against ``classes``), else the
    built-in one whose classes match, else one bin per class. The one fallback rule: training,
    evaluation and prediction all call it.

    >>> resolve_taxonomy(None, ["trash", "glass", "paper", "plastic", "metal", "cardboard"]).name
    'trashnet'
    """
    if spec:
        return load_taxonomy(spec, classes)
    return default_taxonomy_for(classes) or identity_taxonomy(classes)


def builtin_taxonomy(name: str) -> Taxonomy:
    """One of :data:`BUILTIN_TAXONOMIES`, read from the package data (a fresh copy)."""
    if name not in BUILTIN_TAXONOMIES:
        raise ConfigError(
            f"unknown taxonomy {name!r} (built-in: {', '.join(BUILTIN_TAXONOMIES)})"
        )
    text = resources.files("wastenet").joinpath("taxonomies", f"{name}.yaml").read_text("utf-8")
    return _parse_yaml(text, f"built-in taxonomy {name!r}", default_name=name)


def default_taxonomy_for(classes: Iterable[str]) -> Taxonomy | None:
    """The built-in taxonomy whose class set equals ``classes`` exactly, else None.

    >>> default_taxonomy_for(["trash", "glass", "paper", "plastic", "metal", "cardboard"]).name
    'trashnet'
    """
    wanted = set(classes)
    for name in BUILTIN_TAXONOMIES:
        tax = builtin_taxonomy(name)
        if set(tax.classes) == wanted:
            return tax
    return None


def identity_taxonomy(classes: Sequence[str]) -> Taxonomy:
    """Each class is its own bin: the fallback for a custom dataset without a taxonomy.

    >>> identity_taxonomy(["a", "b"]).bins
    {'a': ['a'], 'b': ['b']}
    """
    return Taxonomy("identity", {str(c): [str(c)] for c in classes})


# --------------------------------------------------------------------------- helpers


def _load_named_or_file(spec: str | Path) -> Taxonomy:
    text_spec = str(spec)
    if isinstance(spec, str) and text_spec in BUILTIN_TAXONOMIES:
        return builtin_taxonomy(text_spec)
    path = Path(spec).expanduser()
    if path.is_file():
        try:
            text = path.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"cannot read taxonomy file {path}: {err}") from None
        return _parse_yaml(text, f"taxonomy file {path}", default_name=path.stem)
    looks_like_file = isinstance(spec, Path) or path.suffix.lower() in (".yaml", ".yml") or (
        "/" in text_spec or "\\" in text_spec
    )
    if looks_like_file:
        raise ConfigError(f"taxonomy file not found: {path}")
    raise ConfigError(
        f"unknown taxonomy {text_spec!r}: use a built-in name "
        f"({', '.join(BUILTIN_TAXONOMIES)}) or a YAML file path"
    )


def _parse_yaml(text: str, source: str, *, default_name: str) -> Taxonomy:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        first = " ".join(str(err).split())
        raise ConfigError(f"{source} is not valid YAML: {first}") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("bins"), Mapping):
        raise ConfigError(f"{source}: expected a 'bins:' mapping of bin name -> list of classes")
    data = dict(data)
    data.setdefault("name", default_name)
    return Taxonomy.from_dict(data, source=source)


def _normalise_bins(bins: Any, source: str) -> dict[str, list[str]]:
    if not isinstance(bins, Mapping):
        raise ConfigError(f"{source}: 'bins' must map bin names to lists of classes")
    out: dict[str, list[str]] = {}
    for bin_name, members in bins.items():
        if not isinstance(bin_name, str) or not bin_name:
            raise ConfigError(f"{source}: bin name {bin_name!r} must be a non-empty string")
        if members is None:  # `compostable:` with nothing after it in YAML
            members = []
        if not isinstance(members, (list, tuple)):
            raise ConfigError(
                f"{source}: bin {bin_name!r} must be a list of class names, "
                f"got {type(members).__name__}"
            )
        names: list[str] = []
        for cls in members:
            # YAML reads `1` as int (fine: folder "1") but `yes`/`null` as bool/None (a typo).
            if isinstance(cls, bool) or not isinstance(cls, (str, int)) or cls == "":
                raise ConfigError(
                    f"{source}: bin {bin_name!r} has {cls!r}, not a class name (quote it)"
                )
            names.append(str(cls))
        out[bin_name] = names
    return out
