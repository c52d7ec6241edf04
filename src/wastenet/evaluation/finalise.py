"""Finalise a checkpoint: what the end of training, ``adapt`` and ``eval --recalibrate`` fit on the
validation split before a model is used, in one order and in one place::

    done = finalise(ckpt, model, SplitData(train.labels, images=train.images),
                    SplitData(val.labels, images=val.images, photos=val_paths),
                    prep=prep, device="cpu", path="runs/x/best.pt")
    done.temperature, done.val_logits

1. the temperature, fitted on the validation logits (full precision: the deployed numerics);
2. the unknown-item rule (``inference.ood_model``): fitted anew from the training split (its images,
   or its features when the caller already has them: ``adapt``'s frozen backbone); given no training
   split (``eval --recalibrate``), the rule's statistics stay and only its thresholds on the logit
   scores (msp, energy), which move with the temperature, are refitted at the new one;
3. the rule's threshold under ``--search``, fitted on a seeded sample of the validation photos the
   way search runs (expensive: ~51 windows a photo; ``search=False`` skips it, and a model without
   one searches with the whole-photo threshold);
4. save (with ``path``).

Every step reads the validation split only: the test split is never used to choose anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

__all__ = ["Finalised", "SplitData", "finalise", "searched_thresholds"]


@dataclass
class SplitData:
    """One split as :func:`finalise` sees it: labels, and what is known of its images.

    ``images`` are cached uint8 squares (a forward pass computes what is missing); ``features``
    and ``logits`` are given where the caller has them already; ``views`` (train) are augmented
    views' features for the k-NN bank; ``photos`` (val) the files the searched threshold is fitted on.
    In adaptation (train): ``negatives`` are the features of photos the site's reviewers said show no
    item, and ``site`` (given with them) marks the rows of ``features`` then ``views`` that are the
    site's reviewed items: they keep up to half of the k-NN bank and weigh half in the ImageNet prior
    (:func:`wastenet.inference.ood_model.unknown_rule`).
    """

    labels: np.ndarray
    images: np.ndarray | None = None
    features: np.ndarray | None = None
    logits: np.ndarray | None = None
    views: np.ndarray | None = None
    photos: Sequence[Path] = ()
    site: np.ndarray | None = None
    negatives: np.ndarray | None = None


@dataclass
class Finalised:
    """What :func:`finalise` fitted: the checkpoint (updated in place), its temperature, the validation logits."""

    ckpt: dict[str, Any]
    temperature: float
    val_logits: np.ndarray


def finalise(ckpt: dict[str, Any], model: Any, train: SplitData | None, val: SplitData, *, prep: Any,
             device: Any = "cpu", augment: Any = None, imagenet_head: Mapping[str, Any] | None = None,
             search: bool = True, seed: int = 0, tta: bool = False, frozen_backend: str = "auto",
             path: str | Path | None = None, log: Callable[[str], None] | None = None) -> Finalised:
    """Temperature -> unknown-item rule -> searched threshold -> save, on ``val`` (see the module).

    ``train`` None keeps the rule's statistics (recalibration); otherwise the rule is fitted anew,
    its method and ``keep`` taken from the checkpoint's rule where it has one. ``augment`` (the
    run's training augmentation) adds augmented views of the training images to the k-NN bank;
    ``imagenet_head`` ({weight, bias}) only where it still fits the backbone. ``tta`` and
    ``frozen_backend`` say how validation logits not given are computed (the temperature's; the
    logit thresholds always take the plain view, as training fits them); ``seed`` draws the
    searched sample; ``log`` receives what was fitted.
    """
    from wastenet import checkpoint
    from wastenet.evaluation.calibration import fit_temperature
    from wastenet.inference.ood_model import fit_unknown_detector, refit_logit_thresholds, unknown_rule

    say = log or (lambda _msg: None)
    val_logits = val.logits if val.logits is not None else _logits(model, val, prep, device, tta, frozen_backend)
    temperature = float(fit_temperature(val_logits, val.labels))
    ckpt["temperature"] = temperature
    say(f"calibration: temperature {temperature:.3f} fitted on {len(val.labels)} validation images")

    base = ckpt.get("ood") or {}
    n_classes = len(ckpt["classes"])
    if train is None:
        if base:  # msp and energy are scores of logits / T: their thresholds move with T
            plain = val_logits if not tta else _logits(model, val, prep, device, False, frozen_backend)
            ckpt["ood"] = refit_logit_thresholds(base, plain, temperature)
    elif train.features is not None:
        ckpt["ood"] = unknown_rule(train.features, train.labels, val.features, val_logits, n_classes, temperature,
                                   keep=base.get("keep"), method=base.get("method"), extra_feats=train.views,
                                   imagenet_head=imagenet_head, site_rows=train.site, site_prior=train.site,
                                   negatives=train.negatives)
    else:
        # statistics of the training features (and of their augmented views), thresholds from validation only
        ckpt["ood"] = fit_unknown_detector(model, prep, (train.images, train.labels), val.images, n_classes,
                                           temperature, device, keep=base.get("keep"), method=base.get("method"),
                                           augment=augment, imagenet_head=imagenet_head)
    rule = ckpt.get("ood")
    if rule and train is not None:
        say(f"unknown-item rule: {rule['method']} score, threshold {rule['thresholds'][rule['method']]:.4g} "
            f"keeps {rule['keep']:.0%} of the validation images")
    if rule and search:
        rule["search_thresholds"] = searched_thresholds(model, ckpt, prep, list(val.photos), device, seed)
        if rule["search_thresholds"]:
            say(f"unknown-item threshold under --search: {rule['search_thresholds'][rule['method']]:.4g} "
                f"(fitted on searched validation photos)")
    elif rule:
        rule.pop("search_thresholds", None)  # one fitted for another rule or temperature would mislead
    if path is not None:
        checkpoint.save(ckpt, path)
    return Finalised(ckpt, temperature, val_logits)


def _logits(model: Any, split: SplitData, prep: Any, device: Any, tta: bool, backend: str) -> np.ndarray:
    import torch

    from wastenet.inference.runner import frozen_logits

    return frozen_logits(model, split.images, prep, torch.device(device), tta=tta, backend=backend,
                         desc="calibration pass (val)").numpy()


def searched_thresholds(model: Any, ck: dict[str, Any], prep: Any, val_photos: list[Path], device: Any = "cpu",
                        seed: int = 0) -> dict[str, float]:
    """The rule's threshold for ``predict --search``, fitted the way search runs on a seeded sample of
    the validation photos, through the frozen-pass runtime (``inference.search.fit_search_thresholds``)::

        ck["ood"]["search_thresholds"] = searched_thresholds(model, ck, prep, val_paths)
    """
    from wastenet.inference import search
    from wastenet.inference.backends import FrozenPassBackend
    from wastenet.inference.predictor import Classifier

    photos = search.calibration_sample(val_photos, seed=seed)
    backend = FrozenPassBackend(model, ck["ood"], prep.hw, device, n_inputs=search.TYPICAL_WINDOWS * len(photos))
    clf = Classifier(backend, classes=ck["classes"], preprocessing=prep, taxonomy=ck.get("taxonomy"),
                     temperature=ck["temperature"], threshold=ck["threshold"], arch=ck["arch"], ood=ck["ood"])
    return search.fit_search_thresholds(clf, photos, progress=True)
