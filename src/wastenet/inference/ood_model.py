"""The network plus its unknown-item score, as one module: logits and a feature-space score.

The same module runs in PyTorch and is what ``wastenet export`` writes to ONNX (outputs
``logits`` and ``ood``), so the torch-free runtime gets the feature-space score from the graph
without carrying the statistics separately::

    net = ScoredNet(model, rule)          # rule = checkpoint["ood"] (see unknown_rule)
    logits, ood = net(x)                  # [N, C], [N]; same numbers as wastenet.ood.feature_score
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
import torch.nn as nn

from wastenet.inference.runner import FeaturePasses


class MahalanobisScore(nn.Module):
    """``wastenet.ood.mahalanobis_score`` as graph operations (opset 13: MatMul, Sub, ReduceSum, Min)."""

    def __init__(self, stats: Mapping[str, Any]) -> None:
        super().__init__()

        def t(name: str) -> torch.Tensor:
            return torch.as_tensor(np.asarray(stats[name], dtype=np.float32))

        means, basis = t("means"), t("basis")
        self.register_buffer("basis", basis)                       # [D, k]
        self.register_buffer("means", means)                       # [C, D]
        self.register_buffer("inv_var", t("inv_var"))              # [k]
        self.register_buffer("inv_rest", t("inv_rest").reshape(()))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        # differences first, then squares: expanding ||f - mu||^2 loses digits in fp32
        diff = f.float()[:, None, :] - self.means[None]             # [N, C, D]
        z = diff @ self.basis                                       # [N, C, k]
        inside = (z ** 2 * self.inv_var).sum(-1)                    # [N, C]
        residual = torch.clamp((diff ** 2).sum(-1) - (z ** 2).sum(-1), min=0.0)
        return (inside + residual * self.inv_rest).min(dim=1).values


class KnnScore(nn.Module):
    """``wastenet.ood.knn_score`` against a stored bank (MatMul, TopK)."""

    def __init__(self, bank: Any, k: int) -> None:
        super().__init__()
        # [M, D] unit rows, stored in half precision (half the file; the fit used the same rounded values)
        self.register_buffer("bank", torch.as_tensor(np.asarray(bank, dtype=np.float16)))
        self.k = int(min(k, self.bank.shape[0]))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        f = f.float()
        f = f / (f.norm(dim=1, keepdim=True) + 1e-12)
        sim = f @ self.bank.float().T
        return 1.0 - sim.topk(self.k, dim=1).values[:, -1]


class ImagenetScore(nn.Module):
    """``wastenet.ood.imagenet_score``: the pretrained ImageNet head, its posterior against the training prior."""

    def __init__(self, head: Mapping[str, Any]) -> None:
        super().__init__()
        self.register_buffer("weight", torch.as_tensor(np.asarray(head["weight"], dtype=np.float16)))  # as the fit
        for name in ("bias", "log_prior"):
            self.register_buffer(name, torch.as_tensor(np.asarray(head[name], dtype=np.float32)))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        z = f.float() @ self.weight.float().T + self.bias
        return -(torch.softmax(z, dim=1) * self.log_prior).sum(1)


class NotAnItem(nn.Module):
    """``wastenet.ood.not_an_item`` of a rule written before the probe: the nearest not-an-item row nearer than the
    nearest bank row (MatMul, ReduceMax)."""

    def __init__(self, bank: Any, negatives: Any) -> None:
        super().__init__()
        # a tensor is kept as it is: the k-NN score's bank, one initializer for both in the exported file
        self.register_buffer("bank", bank if isinstance(bank, torch.Tensor)
                             else torch.as_tensor(np.asarray(bank, dtype=np.float16)))  # as the fit
        self.register_buffer("negatives", torch.as_tensor(np.asarray(negatives, dtype=np.float16)))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        f = f.float()
        f = f / (f.norm(dim=1, keepdim=True) + 1e-12)
        nearest_known = (f @ self.bank.float().T).max(dim=1).values
        return (f @ self.negatives.float().T).max(dim=1).values > nearest_known


class NotAnItemProbe(nn.Module):
    """``wastenet.ood.not_an_item`` with a probe: ``unit(f) @ weight + bias > 0`` (one MatMul)."""

    def __init__(self, probe: Mapping[str, Any]) -> None:
        super().__init__()
        self.register_buffer("weight", torch.as_tensor(np.asarray(probe["weight"], dtype=np.float32)))
        self.register_buffer("bias", torch.as_tensor(float(probe["bias"]), dtype=torch.float32))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        f = f.float()
        f = f / (f.norm(dim=1, keepdim=True) + 1e-12)
        return f @ self.weight + self.bias > 0


class FeatureScore(nn.Module):
    """The rule's feature-space score (``wastenet.ood.FEATURE_METHODS``; ``a+b``: the larger of the scaled scores;
    ``NOT_AN_ITEM_SCORE`` for a photo the rule's not-an-item test calls empty)."""

    def __init__(self, rule: Mapping[str, Any], method: str) -> None:
        super().__init__()
        from wastenet import ood

        parts = method.split("+")
        self.parts = nn.ModuleList([self._part(rule, m, ood.KNN_K) for m in parts])
        scales = [rule["scales"][m] for m in parts] if len(parts) > 1 else [(0.0, 1.0)]
        self.register_buffer("median", torch.tensor([float(a) for a, _ in scales]))
        self.register_buffer("spread", torch.tensor([max(float(b) - float(a), 1e-9) for a, b in scales]))
        negatives = rule.get("negatives")
        knn = [p for p in self.parts if isinstance(p, KnnScore)]
        probe = rule.get("not_an_item_probe")
        self.not_an_item = (NotAnItemProbe(probe) if probe is not None
                            else NotAnItem(knn[0].bank if knn else rule["bank"], negatives)
                            if negatives is not None and len(negatives) else None)
        self.not_an_item_score = float(ood.NOT_AN_ITEM_SCORE)

    @staticmethod
    def _part(rule: Mapping[str, Any], method: str, k: int) -> nn.Module:
        if method == "mahalanobis":
            return MahalanobisScore(rule["stats"])
        if method == "knn":
            return KnnScore(rule["bank"], k)
        if method == "imagenet":
            return ImagenetScore(rule["imagenet"])
        raise ValueError(f"{method!r} is not a feature-space score")

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        if len(self.parts) == 1:
            score = self.parts[0](f)
        else:
            s = torch.stack([p(f) for p in self.parts], dim=1)          # [N, parts]
            score = ((s - self.median) / self.spread).max(dim=1).values
        if self.not_an_item is None:
            return score
        return torch.where(self.not_an_item(f), torch.clamp(score, min=self.not_an_item_score), score)


def graph_method(rule: Mapping[str, Any]) -> str:
    """The score the graph's ``ood`` output computes (rules written before there was a choice: Mahalanobis)."""
    return str(rule.get("graph_method") or "mahalanobis")


class ScoredNet(nn.Module):
    """A classifier that also returns the unknown-item score of its pooled features."""

    def __init__(self, model: nn.Module, rule: Mapping[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.score = FeatureScore(rule, graph_method(rule))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.model.forward_features(x)
        # pooling twice costs nothing next to the backbone, and works for every head layout
        pooled = self.model.forward_head(feats, pre_logits=True)
        return self.model.forward_head(feats), self.score(pooled)


class ScoredSideBySide(nn.Module):
    """``ScoredNet``'s logits and score as one ``[N, C + 1]`` output (a frozen-pass runner takes one)."""

    def __init__(self, model: nn.Module, rule: Mapping[str, Any]) -> None:
        super().__init__()
        self.scored = ScoredNet(model, rule)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, score = self.scored(x)
        return torch.cat([logits.float(), score.float()[:, None]], dim=1)


#: field-augmented views of each training photo added to the k-NN bank and the ImageNet prior
BANK_VIEWS = 2


def fit_unknown_detector(model: nn.Module, prep: Any, train: tuple[np.ndarray, np.ndarray],
                         val_images: np.ndarray, n_classes: int, temperature: float,
                         device: Any = "cpu", keep: float | None = None, method: str | None = None,
                         augment: nn.Module | None = None, imagenet_head: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Fit the unknown-item scores at the end of training; thresholds from the validation split only.

    Computes the clean features of the train and validation images and, with ``augment`` (the
    run's training augmentation), ``BANK_VIEWS`` augmented views of the train images for the
    k-NN bank and the ImageNet prior; then :func:`unknown_rule`. ``imagenet_head``
    ({weight, bias} of the backbone's pretrained 1000-class head) only while the backbone is
    unchanged (``models.pretrained_imagenet_head``).
    """
    n_views = BANK_VIEWS if augment is not None else 0
    passes = FeaturePasses(model, prep, device, len(train[0]) * (1 + n_views) + len(val_images))
    train_feats, _ = passes(train[0], desc="unknown-item statistics (train)")
    with torch.random.fork_rng():  # the same views every time, without resetting the caller's random state
        torch.manual_seed(0)
        views = [passes(train[0], augment=augment, desc=f"unknown-item bank (train view {v + 1}/{n_views})")[0]
                 for v in range(n_views)]
    val_feats, val_logits = passes(val_images, desc="unknown-item threshold (val)")
    extra = np.concatenate(views) if views else None
    return unknown_rule(train_feats, train[1], val_feats, val_logits, n_classes, temperature, keep, method,
                        extra_feats=extra, imagenet_head=imagenet_head)


def unknown_rule(train_feats: np.ndarray, train_labels: np.ndarray, val_feats: np.ndarray, val_logits: np.ndarray,
                 n_classes: int, temperature: float, keep: float | None = None,
                 method: str | None = None, extra_feats: np.ndarray | None = None,
                 imagenet_head: Mapping[str, Any] | None = None, site_rows: np.ndarray | None = None,
                 bank_rows: int | None = None, site_prior: np.ndarray | None = None,
                 negatives: np.ndarray | None = None) -> dict[str, Any]:
    """The checkpoint's ``ood`` entry from features already computed.

    Mahalanobis statistics of the clean train features; a k-NN bank (and the ImageNet prior,
    with ``imagenet_head``) of the clean plus ``extra_feats`` (augmented views) features; a
    threshold per method (the score under which ``keep`` of the validation items fall); the
    default method; and which score the graph's ``ood`` output computes. ``site_rows`` (a boolean
    mask over the train rows then the ``extra_feats`` rows: a site's reviewed items, in adaptation)
    keeps up to half of the bank for those (:func:`ood.fit_knn_bank`), and with ``site_prior`` (the
    same mask) they weigh half in the ImageNet prior; ``bank_rows`` the bank's size. ``negatives``
    (features of photos a site's reviewers said show no item, oldest first) are kept as the rule's
    not-an-item rows, with the probe fitted on them against the bank (:func:`ood.fit_not_an_item_probe`), on top
    of the thresholds (fitted without them).
    Arrays are stored as tensors (``torch.load(weights_only=True)`` reads tensors, not NumPy arrays).
    """
    from wastenet import ood
    from wastenet.errors import ConfigError

    keep = ood.DEFAULT_KEEP if keep is None else keep
    known = np.concatenate([train_feats, extra_feats]) if extra_feats is not None and len(extra_feats) else train_feats
    # the two large tables are kept in half precision (the graph stores them so): fit with the same values
    rule: dict[str, Any] = {"stats": ood.fit_mahalanobis(train_feats, train_labels, n_classes),
                            "bank": ood.fit_knn_bank(known, bank_rows or ood.MAX_BANK, first=site_rows).astype(np.float16)}
    available = ["mahalanobis", "energy", "msp", "knn"]
    if imagenet_head is not None:
        head = {"weight": np.asarray(imagenet_head["weight"], np.float16), "bias": np.asarray(imagenet_head["bias"], np.float32)}
        rule["imagenet"] = {**head, "log_prior": ood.fit_imagenet_prior(known, head, site_prior)}
        available += ["imagenet", "knn+imagenet"]
    method = method or (ood.DEFAULT_METHOD if imagenet_head is not None else ood.FALLBACK_METHOD)
    if method not in available:
        raise ConfigError(f"unknown-item method {method!r} is not available here; choose from {', '.join(available)}")
    rule["scales"] = {m: ood.fit_scale(ood.feature_score(m, val_feats, rule)) for m in ("knn", "imagenet") if m in available}
    val_scores = {m: ood.scores(m, val_logits, temperature, val_feats, rule) for m in available}
    # after the scales and the thresholds: those are the known items' spread; a validation item nearer a
    # negative than the bank would score NOT_AN_ITEM_SCORE, and past 5% of them the threshold would be that
    if negatives is not None and len(negatives):
        rule["negatives"] = ood.fit_negatives(negatives).astype(np.float16)
        rule["not_an_item_probe"] = ood.fit_not_an_item_probe(rule["bank"], rule["negatives"])

    def tensors(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: tensors(v) for k, v in x.items()}
        x = np.asarray(x)
        return torch.as_tensor(x if x.dtype == np.float16 else x.astype(np.float32))

    return {
        "method": method,
        "graph_method": method if method in ood.FEATURE_METHODS else (
            ood.DEFAULT_METHOD if imagenet_head is not None else ood.FALLBACK_METHOD),
        "keep": float(keep),
        "thresholds": {m: ood.threshold_for_coverage(s, keep) for m, s in val_scores.items()},
        "dims": int(np.asarray(rule["stats"]["basis"]).shape[1]),
        "stats": tensors(rule["stats"]),
        "bank": tensors(rule["bank"]),
        **({"imagenet": tensors(rule["imagenet"])} if "imagenet" in rule else {}),
        **({"negatives": tensors(rule["negatives"])} if "negatives" in rule else {}),
        **({"not_an_item_probe": tensors(rule["not_an_item_probe"])} if "not_an_item_probe" in rule else {}),
        "scales": {m: [float(a), float(b)] for m, (a, b) in rule["scales"].items()},
        "fitted_on": {"train": int(len(train_feats)), "bank": int(len(rule["bank"])), "val": int(len(val_feats)),
                      "negatives": int(len(rule.get("negatives", ())))},
    }


def refit_logit_thresholds(rule: Mapping[str, Any], val_logits: np.ndarray, temperature: float) -> dict[str, Any]:
    """``rule`` with the thresholds of its logit scores (msp, energy: scores of ``logits / T``) refitted
    on the validation logits at ``temperature``, as :func:`unknown_rule` fits them; the feature-space
    scores' thresholds (independent of the temperature) and the statistics stay as they are."""
    from wastenet import ood

    keep = ood.DEFAULT_KEEP if rule.get("keep") is None else float(rule["keep"])
    thresholds = dict(rule["thresholds"])
    for m in thresholds:
        if m not in ood.FEATURE_METHODS:
            thresholds[m] = ood.threshold_for_coverage(ood.scores(m, val_logits, temperature), keep)
    return {**rule, "thresholds": thresholds}
