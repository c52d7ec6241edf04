"""Grow a checkpoint's head by new classes (kinds of items the site's reviewers named), keeping the old ones.

The old classes keep their rows of the classifier head (so the model decides them exactly as before
until it is re-fitted); each new class gets a zero row and its bin in the taxonomy (a new bin when
the taxonomy has none of that name). :func:`wastenet.training.adapt.adapt` then starts each new row
from its reviewed photos (:func:`imprint_rows`) and re-fits the head::

    ckpt = checkpoint.load("runs/x/best.pt")
    ckpt = grow_classes(ckpt, {"food_waste": "compostable"})
    ckpt["classes"][-1], ckpt["taxonomy"]["bins"]["compostable"]     # 'food_waste', [..., 'food_waste']
"""

from __future__ import annotations

from typing import Any, Mapping

from wastenet.errors import ConfigError

__all__ = ["grow_classes", "imprint_rows"]


def grow_classes(ckpt: dict[str, Any], new: Mapping[str, str]) -> dict[str, Any]:
    """``ckpt`` with ``new`` ({class: bin}) appended to its classes, head and taxonomy (in place; returned)."""
    import torch

    from wastenet.models import model_from_checkpoint
    from wastenet.taxonomy import resolve_taxonomy

    classes = list(ckpt["classes"])
    clash = sorted(set(new) & set(classes))
    if clash:
        raise ConfigError(f"already classes of the model: {', '.join(clash)}")
    if not new:
        return ckpt
    taxonomy = resolve_taxonomy(ckpt.get("taxonomy"), classes).to_dict()
    model = model_from_checkpoint(ckpt)
    head = model.get_classifier()
    if not isinstance(head, torch.nn.Linear):
        raise ConfigError(f"cannot grow a {type(head).__name__} head (a Linear classifier is needed)")
    weight, bias = head.weight.detach().clone(), head.bias.detach().clone() if head.bias is not None else None
    model.reset_classifier(len(classes) + len(new))
    grown = model.get_classifier()
    with torch.no_grad():
        grown.weight.zero_()
        grown.weight[: len(classes)] = weight
        if grown.bias is not None:
            grown.bias.zero_()
            if bias is not None:
                grown.bias[: len(classes)] = bias
    for cls, bin_name in new.items():
        taxonomy["bins"].setdefault(bin_name, []).append(cls)
    ckpt["state_dict"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    ckpt["classes"] = classes + list(new)
    ckpt["taxonomy"] = taxonomy
    ckpt.setdefault("grown", []).extend({"class": c, "bin": b} for c, b in new.items())
    return ckpt


def imprint_rows(head: Any, rows: list[int], features: Any, labels: Any) -> list[int]:
    """Start the rows ``rows`` of a Linear ``head`` from their classes' photos ("weight imprinting",
    Qi et al. 2018): each points along the mean of its class's ``features``, as long as the
    other rows on average, with their mean bias. Rows without a photo stay as they are; returns the rows
    imprinted. A grown kind then needs fewer reviewed photos (BENCHMARKS.md "A kind the model has no
    class for", session 20)::

        imprint_rows(model.get_classifier(), [5], x_reviewed_clean, y_reviewed_clean)
    """
    import torch

    grown = set(rows)
    others = [i for i in range(head.weight.shape[0]) if i not in grown]
    done = []
    with torch.no_grad():
        scale = head.weight[others].norm(dim=1).mean() if others else torch.tensor(1.0)
        for row in rows:
            mine = features[labels == row]
            if not len(mine):
                continue
            head.weight[row] = torch.nn.functional.normalize(mine.float().mean(0), dim=0) * scale
            if head.bias is not None and others:
                head.bias[row] = head.bias[others].mean()
            done.append(row)
    return done
