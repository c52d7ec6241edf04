"""Training recipes as plans of stages.

A stage says which layer groups train and at what peak learning rate each::

    plan = make_plan("wastenet", n_backbone_groups=4, lr=5e-4, decay=0.7, head_epochs=60,
                     step_epochs=2, epochs=10)
    [s.name for s in plan]   # ['head', 'unfreeze-1', 'unfreeze-2', 'unfreeze-3', 'unfreeze-4']

Group indices count from the bottom: 0 = stem ... n-1 = top backbone group, n = head.

- ``linear``: feature extraction; the backbone never trains (head on cached features).
- ``finetune``: every layer trains from the start at one learning rate.
- ``wastenet`` (the paper's hybrid tuning): the head first on cached features until the
  validation loss settles, then the backbone groups are unfrozen one at a time from the top
  down, each step a short one-cycle run in which the group ``k`` levels below the head peaks
  at ``lr * decay**k`` (discriminative rates); the last step trains every layer.
"""

from __future__ import annotations

from dataclasses import dataclass

from wastenet.errors import ConfigError
from wastenet.training.config import RECIPES, TrainConfig

# the defaults below are TrainConfig's: one place to change a recipe default
_D = TrainConfig


@dataclass
class Stage:
    name: str
    group_lrs: dict[int, float]           # trainable group index -> peak learning rate
    epochs: int                           # at most; early stopping may end it sooner
    cached_features: bool = False         # head-only stage trained on cached backbone features
    patience: int = 3

    @property
    def trainable_groups(self) -> list[int]:
        return sorted(self.group_lrs)


def discriminative_lrs(n_backbone_groups: int, lowest_unfrozen: int, lr: float, decay: float) -> dict[int, float]:
    """Head at ``lr``; backbone group ``g`` (k = n - g levels below the head) at ``lr * decay**k``."""
    head = n_backbone_groups
    return {g: lr * decay ** (head - g) for g in range(lowest_unfrozen, head + 1)}


def make_plan(
    recipe: str,
    *,
    n_backbone_groups: int,
    lr: float,
    head_lr: float | None = None,
    decay: float = _D.lr_decay,
    epochs: int = _D.epochs,
    head_epochs: int = _D.head_epochs,
    step_epochs: int = _D.step_epochs,
    patience: int = _D.patience,
    head_patience: int = _D.head_patience,
) -> list[Stage]:
    """The stages of ``recipe`` over ``n_backbone_groups`` backbone groups (see the module text)."""
    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe {recipe!r}; choose from {RECIPES}")
    n = n_backbone_groups
    head_stage = Stage("head", {n: head_lr or lr * 2}, head_epochs, cached_features=True, patience=head_patience)
    if recipe == "linear":
        return [head_stage]
    if recipe == "finetune":
        return [Stage("finetune", {g: lr for g in range(n + 1)}, epochs, patience=patience)]
    plan = [head_stage]
    for step in range(1, n + 1):
        last = step == n
        plan.append(Stage(
            f"unfreeze-{step}",
            discriminative_lrs(n, n - step, lr, decay),
            epochs if last else step_epochs,
            patience=patience,
        ))
    return plan


def plan_for(cfg: TrainConfig, n_backbone_groups: int) -> list[Stage]:
    """The plan a training config asks for: ``make_plan`` with the config's fields of the same meaning.

    >>> [s.name for s in plan_for(TrainConfig(recipe="linear"), 4)]
    ['head']
    """
    return make_plan(cfg.recipe, n_backbone_groups=n_backbone_groups, lr=cfg.lr, head_lr=cfg.head_lr,
                     decay=cfg.lr_decay, epochs=cfg.epochs, head_epochs=cfg.head_epochs,
                     step_epochs=cfg.step_epochs, patience=cfg.patience, head_patience=cfg.head_patience)
