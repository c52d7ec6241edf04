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

from dataclasses import dataclass, field

from wastenet.errors import ConfigError

RECIPES = ("wastenet", "finetune", "linear")


@dataclass
class Stage:
    name: str
    group_lrs: dict[int, float]           # trainable group index -> peak learning rate
    epochs: int                           # at most; early stopping may end it sooner
    cached_features: bool = False         # head-only stage trained on cached backbone features
    patience: int = 3
    meta: dict = field(default_factory=dict)

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
    decay: float = 0.7,
    epochs: int = 8,
    head_epochs: int = 60,
    step_epochs: int = 2,
    patience: int = 3,
    head_patience: int = 8,
) -> list[Stage]:
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
