"""Fine-tuning that keeps the backbone's ImageNet answers (learning without forgetting, Li & Hoiem 2016).

Fine-tuning on 1,263 studio photos lets the backbone forget what it knew; then two things are
lost: features that transfer off the posterboard, and the pretrained ImageNet head that tells the
unknown-item rule what *kind* of thing a photo shows (``wastenet.ood.imagenet_score``). With
``--lwf W`` (``auto``, the default: W = 1 where the weights carry an ImageNet head, ``lwf_weight``)
the backbone stages add a second term: the fine-tuned features, through the frozen
pretrained ImageNet head, must still give the pretrained network's ImageNet posterior for the
same augmented view::

    loss = label_loss + W * tau**2 * KL(anchor_tau || student_tau)

``anchor`` is a frozen copy of the pretrained network with its own ImageNet head (run like the
other frozen passes); ``student`` is the model being trained, its pooled features through that
same head. The ImageNet head then still fits the trained backbone, so the end of training fits
the ImageNet-kinds score as it does for the ``linear`` recipe::

    anchor = ImagenetAnswers(copy.deepcopy(model), head)     # before training
    net = WithImagenetAnswers(model, head)                   # logits, imagenet_logits = net(x)
    loss = label_loss + lwf_weight(cfg, head) * lwf_loss(imagenet_logits, anchor(x))
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn as nn

from wastenet.models import extract_features
from wastenet.training.distill import soft_kl

#: softening of both ImageNet posteriors in the KL term (Li & Hoiem use 2)
LWF_TEMPERATURE = 2.0


def _frozen_head(head: Mapping[str, Any]) -> nn.Linear:
    w, b = torch.as_tensor(head["weight"]).float(), torch.as_tensor(head["bias"]).float()
    fc = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        fc.weight.copy_(w)
        fc.bias.copy_(b)
    fc.requires_grad_(False)
    return fc


class ImagenetAnswers(nn.Module):
    """A network's pooled features through a 1000-class ImageNet head: ``[N, 1000]`` logits."""

    def __init__(self, model: nn.Module, head: Mapping[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.fc = _frozen_head(head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(extract_features(self.model, x).float())


class WithImagenetAnswers(nn.Module):
    """The model being trained: its class logits and its ImageNet logits from one forward pass."""

    def __init__(self, model: nn.Module, head: Mapping[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.fc = _frozen_head(head)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.model.forward_features(x)
        pooled = self.model.forward_head(feats, pre_logits=True)
        return self.model.forward_head(feats), self.fc(pooled.float())


def lwf_loss(student_imagenet: torch.Tensor, anchor_imagenet: torch.Tensor, tau: float = LWF_TEMPERATURE) -> torch.Tensor:
    """``tau**2 * KL(softmax(anchor / tau) || softmax(student / tau))``, batch mean (distillation's
    soft-target term, ``distill.soft_kl``, with the pretrained network as the teacher).

    >>> z = torch.randn(4, 1000)
    >>> float(lwf_loss(z, z)) < 1e-6
    True
    """
    return soft_kl(student_imagenet, anchor_imagenet, tau)


#: ``--lwf auto`` (the default): this weight wherever the recipe trains the backbone and the weights
#: carry a 1000-class ImageNet head, 0 elsewhere (BENCHMARKS.md, "Fine-tuned with field augmentation,
#: 8 epochs, and --lwf": the unknown-item rule keeps its ImageNet-kinds score, so empty floors and
#: unfamiliar kinds go to manual sort while familiar items are sorted)
AUTO_WEIGHT = 1.0


def lwf_weight(cfg: Any, head: Mapping[str, Any] | None) -> float:
    """The KL term's weight for this run: ``--lwf W`` as given, ``auto`` -> ``AUTO_WEIGHT`` when the
    weights carry an ImageNet head (``head``) and 0 when they do not; always 0 for ``linear`` (its
    backbone never trains, so there is nothing to forget)::

        lwf_weight(TrainConfig(recipe="finetune"), head)            # 1.0 (auto)
        lwf_weight(TrainConfig(recipe="finetune", lwf=0), head)     # 0.0: off
    """
    if cfg.recipe == "linear":
        return 0.0
    if cfg.lwf == "auto":
        return AUTO_WEIGHT if head is not None else 0.0
    return float(cfg.lwf)


def _asked_for(cfg: Any) -> bool:
    """``--lwf auto`` or a positive weight, on a recipe that trains the backbone."""
    return cfg.recipe != "linear" and (cfg.lwf == "auto" or float(cfg.lwf) > 0)


def check_lwf_head(cfg: Any, head: Mapping[str, Any] | None) -> None:
    """ConfigError (one line) when a positive ``--lwf W`` is asked for but the weights carry no
    ImageNet head (``auto`` then simply trains without it)."""
    if cfg.lwf != "auto" and _asked_for(cfg) and head is None:
        from wastenet.errors import ConfigError

        raise ConfigError(f"--lwf needs weights with a 1000-class ImageNet head; {cfg.weights} has none "
                          "(--lwf 0 trains without it)")


def imagenet_head_for(cfg: Any, model: nn.Module) -> dict[str, Any] | None:
    """The pretrained ImageNet head wherever it still fits the trained backbone: the ``linear``
    recipe (the backbone never trains) and ``--lwf`` runs (auto or W > 0: it is held to its ImageNet
    answers); None otherwise, and for weights without a 1000-class head
    (``models.pretrained_imagenet_head``)."""
    from wastenet.models import pretrained_imagenet_head, resolve_weights_arg

    if cfg.recipe != "linear" and not _asked_for(cfg):
        return None
    return pretrained_imagenet_head(model, resolve_weights_arg(cfg.weights, pretrained=True))
