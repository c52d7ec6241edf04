"""The bin learns from its reviewers: a candidate from the log's reviewed items, and whether it earns its place.

Every reviewed item with a stored photo (manual-sort items and audits) is a training item, except
the newest 20% by review time, which are held out and never trained on. The candidate is
version 0's head (the model the service was started with) re-fitted on the rest plus a rehearsal set
(:func:`wastenet.training.adapt.adapt`), not the current version's: every reviewed item is learned again,
and no version's drift carries on to the next;
a reviewed kind the model has no class for becomes a class once it has ``new_class_min`` training
items (:func:`wastenet.training.grow.grow_classes`). Candidate and current model are then scored on
the held-out items as they would decide them, and :func:`promotion` says whether the candidate
replaces the current one::

    result = learn_from_log("runs/x/decisions.sqlite", "runs/x/best.pt", "runs/x/candidate",
                            mix="../shared/data/trashnet", mix_split="../shared/data/trashnet-split.csv")
    result["promoted"], result["reason"], result["scores"]["candidate"]["class_accuracy"]
"""

from __future__ import annotations

import io
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from wastenet.errors import ConfigError
from wastenet.ood import NOT_AN_ITEM

__all__ = ["COMPARISONS", "HOLDOUT_SHARE", "MAX_FORGETTING_POINTS", "check_compare", "check_holdout_max",
           "check_max_forgetting", "forgetting", "learn_from_log", "promotion", "reviewed_items", "score", "split_newest"]

#: Share of reviewed items, the newest by review time, held out to compare candidate and current model.
HOLDOUT_SHARE = 0.2
#: What a candidate must not be worse at on the held-out items (besides no bin more contaminated): ``class``,
#: the top-1 class of every item (the default, the issue's rule); ``sorted``, the class of the items it sorts
#: itself. ``class`` also counts the label of an item both models send to manual sort, where it changes
#: nothing in any bin: on the floors stream it kept out four candidates that sorted as many items or more,
#: all of them right, for one such label each (BENCHMARKS.md "Which candidates the rule keeps out").
COMPARISONS = ("class", "sorted")
#: Points of accuracy on the rehearsal set's validation rows (the original training data's classes) that a
#: candidate may have lost against the model its chain of versions started from. The site's held-out items
#: cannot show forgetting (they are the site's kinds of items); these rows can, and no version trains on them
#: (adaptation early-stops on them, though, so they flatter a candidate: a guard, not a measure of drift).
MAX_FORGETTING_POINTS = 1.0
#: Folder in the versions folder that keeps the frozen backbone's features between runs: the rehearsal
#: set's and the reviewed photos' (:mod:`wastenet.training.feature_store`). Sessions before 12 called it
#: ``.rehearsal-cache``; a run from such a folder computes its features once again.
FEATURE_CACHE = ".feature-cache"


def reviewed_items(log: Any) -> list[dict[str, Any]]:
    """``{"id", "label", "bin", "reviewed_at"}`` of every reviewed decision whose photo is stored, by review time."""
    items = [{"id": it["id"], "label": it["reviewed_label"], "bin": it.get("reviewed_bin"),
              "reviewed_at": it["reviewed_at"] or ""} for it in log.reviewed() if it.get("has_image")]
    return sorted(items, key=lambda it: (it["reviewed_at"], it["id"]))


def split_newest(items: Sequence[dict[str, Any]], share: float = HOLDOUT_SHARE,
                 max_held: int | None = None) -> tuple[list, list]:
    """``(train, held_out)``: the newest ``share`` of ``items`` (already in review order) held out, at most
    ``max_held`` of them (None: no cap). A share alone holds more back the older the log: what a bin saw in its
    last quarter of reviewed items is learned only once that many more came in (a new floor on the field
    stream went unlearned for ~190 items at 226 reviewed; BENCHMARKS.md "How long a new floor waits")::

        split_newest(items, 0.2, max_held=40)   # 20% of the newest, 40 at most
    """
    n_held = int(math.floor(len(items) * share))
    if share > 0 and n_held == 0 and len(items) >= 2:
        n_held = 1
    if max_held is not None:
        n_held = min(n_held, max_held)
    cut = len(items) - n_held
    return list(items[:cut]), list(items[cut:])


def score(classifier: Any, images: Sequence[Any], items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How ``classifier`` decides held-out ``items``: class accuracy (items whose label is a class of it or
    a kind it may learn; a photo of no item is right when refused) and, per bin, the contamination of what
    it would sort automatically there."""
    preds = classifier.predict(list(images), threshold=classifier.threshold) if images else []
    refused = [not p.sorted for p in preds]
    # a photo of no item is decided right when it is refused; sorted into a bin, it contaminates that bin
    right = sum(no if it["label"] == NOT_AN_ITEM else p.label == it["label"]
                for p, it, no in zip(preds, items, refused))
    bins: dict[str, dict[str, int]] = {}
    auto = auto_right = 0
    for p, it, no in zip(preds, items, refused):
        if no:
            continue
        auto += 1
        auto_right += int(p.label == it["label"])
        b = bins.setdefault(p.decision, {"k": 0, "n": 0})
        b["n"] += 1
        empty = it["label"] == NOT_AN_ITEM
        b["k"] += int(empty or (it["bin"] or classifier.taxonomy.bin_of(it["label"])) != p.decision)
    return {"n": len(items), "class_accuracy": right / len(items) if items else None,
            "auto_share": auto / len(items) if items else None,
            "auto_class_accuracy": auto_right / auto if auto else None,
            "contamination": {name: {**b, "value": b["k"] / b["n"]} for name, b in sorted(bins.items())}}


def check_holdout_max(n: int | None, flag: str = "--holdout-max") -> int | None:
    """``n`` if it is an allowed cap on held-out items (None, or a whole number of at least 1), else a one-line
    ConfigError naming ``flag``.

    >>> check_holdout_max(40)
    40
    """
    if n is not None and not (isinstance(n, int) and not isinstance(n, bool) and n >= 1):
        raise ConfigError(f"{flag} must be a whole number of at least 1, got {n!r}")
    return n


def check_compare(rule: str, flag: str = "--compare") -> str:
    """``rule`` if it is one of :data:`COMPARISONS`, else a one-line ConfigError naming ``flag``.

    >>> check_compare("sorted")
    'sorted'
    """
    if rule not in COMPARISONS:
        raise ConfigError(f"{flag} must be one of {', '.join(COMPARISONS)}, got {rule!r}")
    return rule


def check_max_forgetting(points: float, flag: str = "--max-forgetting") -> float:
    """``points`` if it is an allowed loss (a number from 0 to 100), else a one-line ConfigError naming ``flag``.

    >>> check_max_forgetting(1.0)
    1.0
    """
    if not (isinstance(points, (int, float)) and not isinstance(points, bool) and 0 <= points <= 100):
        raise ConfigError(f"{flag} must be a number of points from 0 to 100, got {points!r}")
    return float(points)


def forgetting(adapted: dict[str, Any], max_points: float = MAX_FORGETTING_POINTS) -> dict[str, Any] | None:
    """What a candidate forgot, from :func:`wastenet.training.adapt.adapt`'s result: its accuracy on the
    rehearsal set's validation rows against the reference model's (version 0, the model the service was
    started with) and the allowed loss; None without a rehearsal set (nothing to measure it on)::

        forgetting({"rehearsal_val_accuracy": 0.90, "rehearsal_reference": {"accuracy": 0.92, "n": 630}})
        # {"reference": 0.92, "candidate": 0.90, "allowed_points": 1.0, "n": 630, ...}
    """
    ref, now = adapted.get("rehearsal_reference"), adapted.get("rehearsal_val_accuracy")
    if not ref or now is None:
        return None
    return {"reference": ref["accuracy"], "reference_model": ref.get("model"), "n": ref.get("n"),
            "before": adapted.get("rehearsal_val_accuracy_before"), "candidate": now, "allowed_points": max_points}


def promotion(current: dict[str, Any], candidate: dict[str, Any],
              forgot: dict[str, Any] | None = None, compare: str = "class") -> tuple[bool, str]:
    """Promote only when class accuracy is not lower and no bin's contamination is higher, and one of them
    is better, or, both equal, the candidate sorts more of the held-out items itself without being less
    often right on what it sorts (fewer manual sorts at no cost); anything else is a tie and keeps the
    current model. ``compare="sorted"`` (:data:`COMPARISONS`) puts the class accuracy of the items each
    model sorts itself in place of class accuracy: promoted when it is not lower, no bin is more contaminated,
    and it is higher, a bin is less contaminated, or the candidate sorts more. With ``forgot``
    (:func:`forgetting`), a candidate more than its ``allowed_points`` below the reference on the rehearsal
    rows is kept out too. Returns ``(promoted, why)``.

    >>> promotion({"n": 10, "class_accuracy": 0.5, "contamination": {}},
    ...           {"n": 10, "class_accuracy": 0.7, "contamination": {}})
    (True, 'class accuracy 0.500 -> 0.700; no bin more contaminated')
    >>> promotion({"n": 10, "class_accuracy": 0.5, "contamination": {}},
    ...           {"n": 10, "class_accuracy": 0.7, "contamination": {}},
    ...           {"reference": 0.92, "candidate": 0.90, "allowed_points": 1.0})
    (False, 'forgets: rehearsal validation accuracy 0.920 (reference) -> 0.900, 2.0 points lower (at most 1)')
    """
    if not candidate.get("n"):
        return False, "no held-out reviewed items to compare on"
    a, b = current["class_accuracy"] or 0.0, candidate["class_accuracy"] or 0.0
    share_a, share_b = current.get("auto_share") or 0.0, candidate.get("auto_share") or 0.0
    # an item the current model sorts none of gives nothing to be worse than: the candidate must be right
    right_a = current.get("auto_class_accuracy") if share_a else 1.0
    right_b = candidate.get("auto_class_accuracy") if share_b else None
    reasons = []
    if forgot is not None:
        lost = (forgot["reference"] - forgot["candidate"]) * 100
        if lost > forgot["allowed_points"] + 1e-9:
            reasons.append(f"forgets: rehearsal validation accuracy {forgot['reference']:.3f} (reference) -> "
                           f"{forgot['candidate']:.3f}, {lost:.1f} points lower (at most {forgot['allowed_points']:g})")
    if compare == "sorted":
        better = right_b is not None and (right_a is None or right_b > right_a)
        if right_b is not None and right_a is not None and right_b < right_a:
            reasons.append(f"class accuracy of the items it sorts {right_a:.3f} -> {right_b:.3f} is lower")
    else:
        better = b > a
        if b < a:
            reasons.append(f"class accuracy {a:.3f} -> {b:.3f} is lower")
    for name in sorted(set(current["contamination"]) | set(candidate["contamination"])):
        was = current["contamination"].get(name, {}).get("value", 0.0)
        now = candidate["contamination"].get(name, {}).get("value", 0.0)
        if now > was:
            reasons.append(f"{name} contamination {was:.3f} -> {now:.3f} is higher")
        better = better or now < was
    if reasons:
        return False, "; ".join(reasons)
    if compare == "sorted":
        if better or share_b > share_a:
            return True, (f"class accuracy of the items it sorts {_three(right_a)} -> {_three(right_b)}, sorts "
                          f"{share_a:.0%} -> {share_b:.0%} of the held-out items itself; no bin more contaminated")
        return False, (f"a tie (class accuracy of the items it sorts {_three(right_b)}, sorts {share_b:.0%}, "
                       "no bin less contaminated): the current model stays")
    if not better:
        if share_b > share_a and right_b is not None and right_a is not None and right_b >= right_a:
            return True, (f"class accuracy {b:.3f} and no bin more contaminated; sorts {share_a:.0%} -> {share_b:.0%} "
                          f"of the held-out items itself, {right_b:.3f} of them in the right class")
        return False, f"a tie (class accuracy {b:.3f}, no bin less contaminated): the current model stays"
    return True, f"class accuracy {a:.3f} -> {b:.3f}; no bin more contaminated"


def _three(x: float | None) -> str:
    """Three decimals, or "none" (a model that sorts none of the items)."""
    return "none" if x is None else f"{x:.3f}"


def _origin(versions: str | Path | None, checkpoint: str | Path, log: Callable[[str], None]) -> Path:
    """Version 0 of ``versions`` (the model the service was started with), else ``checkpoint``: where every
    candidate starts and what its forgetting is measured against."""
    if versions is None:
        return Path(checkpoint)
    from wastenet.site.versions import VersionStore

    try:
        origin = VersionStore(versions).file_of(0)
    except KeyError:  # a new folder: no version 0 recorded
        return Path(checkpoint)
    if not origin.is_file():
        log(f"version 0 ({origin}) is gone: the candidate starts from {checkpoint}")
        return Path(checkpoint)
    return origin


def learn_from_log(log_path: str | Path, checkpoint: str | Path, out: str | Path, *, mix: str | None = None,
                   mix_split: str | None = None, holdout: float = HOLDOUT_SHARE, holdout_max: int | None = None,
                   new_class_min: int = 10,
                   search: bool = False, versions: str | Path | None = None, parent: int = 0,
                   cfg: Any = None, max_forgetting: float = MAX_FORGETTING_POINTS, compare: str = "class",
                   log: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """Train a candidate from the log's reviewed items, score it and the current model (``checkpoint``) on the
    held-out ones, decide; with ``versions`` (a :class:`~wastenet.site.versions.VersionStore` folder) add it as a
    version. The candidate starts from version 0 of ``versions`` (offline, without it: from ``checkpoint``).
    ``cfg``: the head's fit, rehearsal images per class and seed (an :class:`~wastenet.training.adapt.AdaptConfig`;
    None: its defaults);
    ``max_forgetting``: points of rehearsal validation accuracy a candidate may lose (:func:`forgetting`);
    ``holdout_max``: at most this many held-out items (:func:`split_newest`; None: the share alone);
    ``compare``: what the candidate must not be worse at (:data:`COMPARISONS`, :func:`promotion`)."""
    from PIL import Image

    from wastenet import checkpoint as ckpt_io
    from wastenet.inference.predictor import Classifier
    from wastenet.serve.decision_log import DecisionLog
    from wastenet.training.adapt import AdaptConfig, adapt

    t0 = time.time()
    origin = _origin(versions, checkpoint, log)
    classes = list(ckpt_io.load(origin)["classes"])
    with DecisionLog(log_path, create=False) as db:
        items = reviewed_items(db)
        train, held = split_newest(items, holdout, check_holdout_max(holdout_max))
        counts: dict[str, int] = {}
        for it in train:
            counts[it["label"]] = counts.get(it["label"], 0) + 1
        grow = {it["label"]: it["bin"] for it in train if it["label"] not in classes and it["label"] != NOT_AN_ITEM
                and counts[it["label"]] >= new_class_min and it["bin"]}
        known = set(classes) | set(grow) | {NOT_AN_ITEM}  # photos of no item teach the unknown-item rule
        train = [it for it in train if it["label"] in known]  # a new kind below new_class_min waits
        if not any(it["label"] != NOT_AN_ITEM for it in train):
            waiting = sorted(f"{k} {n}" for k, n in counts.items() if k not in known)
            raise ConfigError(f"{log_path}: no reviewed items with a stored photo to learn from "
                              f"({len(items)} reviewed, {len(held)} held out"
                              + (f"; new kinds below --new-class-min {new_class_min}: {', '.join(waiting)}" if waiting else "")
                              + ")")
        work = Path(tempfile.mkdtemp(prefix="wastenet-learn-"))
        for it in train:
            folder = work / "reviewed" / it["label"]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{it['id']:09d}.jpg").write_bytes(db.image(it["id"]) or b"")  # oldest first by name
        held_images = [Image.open(io.BytesIO(db.image(it["id"]) or b"")).convert("RGB") for it in held]
    log(f"learning from {len(train)} reviewed items ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}); "
        f"{len(held)} newest held out" + (f"; new classes: {', '.join(grow)}" if grow else ""))
    cfg = cfg or AdaptConfig()
    # the candidate starts from version 0 and learns every reviewed item again: a head re-fitted from the last
    # version's would carry each version's drift on to the next (the edge model's versions lost up to 1.9 TrashNet
    # points that way; fits from version 0 on the same items, 1.1 at worst; BENCHMARKS.md "The forgetting check")
    result = adapt(origin, work / "reviewed", out, mix=mix, mix_split=mix_split, cfg=cfg,
                   search=search, new_classes=grow,
                   feature_cache=Path(versions) / FEATURE_CACHE if versions is not None else None)
    current, candidate = Classifier.load(checkpoint), Classifier.load(result["checkpoint"])
    scores = {"current": score(current, held_images, held), "candidate": score(candidate, held_images, held)}
    forgot = forgetting(result, max_forgetting)
    if forgot is not None:
        scores["forgetting"] = forgot
    promoted, reason = promotion(scores["current"], scores["candidate"], forgot, check_compare(compare))
    inputs = {"trained_on": [it["id"] for it in train], "held_out": [it["id"] for it in held], "rehearsal": mix,
              "rehearsal_split": mix_split, "rehearsal_per_class": cfg.mix_per_class, "seed": cfg.seed,
              "new_classes": grow, "from": str(origin), "compared_with": str(checkpoint), "holdout_max": holdout_max,
              "compare": compare}
    out_result = {"candidate": result["checkpoint"], "scores": scores, "promoted": promoted, "reason": reason,
                  "inputs": inputs, "adapt_seconds": round(result["seconds"], 1), "seconds": round(time.time() - t0, 1)}
    if versions is not None:
        from wastenet.site.versions import VersionStore

        out_result["version"] = VersionStore(versions).add(result["checkpoint"], parent=parent, inputs=inputs,
                                                           scores=scores, promoted=promoted, reason=reason,
                                                           timing={k: out_result[k] for k in ("adapt_seconds", "seconds")})
    log(f"candidate {'promoted' if promoted else 'kept, not promoted'}: {reason} ({out_result['seconds']:.0f}s)")
    return out_result
