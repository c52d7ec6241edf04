"""The end of a training run: the best weights finalised on the validation split, then the test report.

``wastenet train`` calls it once the stages are done (rank 0 only)::

    metrics = finish(trainer, train_seconds=812.4)     # best.pt updated; report.md in the run folder

The checkpoint is finalised by :func:`wastenet.evaluation.finalise.finalise` (temperature ->
unknown-item rule -> searched threshold -> save), the way ``adapt`` and ``eval --recalibrate``
finalise theirs; the test split is evaluated once, after it, and chooses nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from wastenet import checkpoint
from wastenet.evaluation.finalise import SplitData, finalise
from wastenet.evaluation.runner import SUGGESTION_TARGET, Subject, evaluate, suggest_for
from wastenet.progress import emit
from wastenet.taxonomy import Taxonomy

if TYPE_CHECKING:
    from wastenet.training.loop import Trainer


def finish(trainer: "Trainer", train_seconds: float) -> dict[str, Any]:
    """Best weights -> checkpoint finalised on val (``best.pt`` updated) -> test report in the run folder.

    Returns the test metrics with their calibration and decision sections (``{}`` without test rows).
    """
    cfg, d, out = trainer.cfg, trainer.data, trainer.out
    model = trainer.model
    if trainer.best_state is not None:
        model.load_state_dict(trainer.best_state)
    model.eval()
    subject = Subject(model, trainer.prep, d.classes, Taxonomy.from_dict(trainer.taxonomy),
                      threshold=cfg.threshold, device=trainer.device, tta=cfg.tta, frozen_backend=cfg.frozen_backend)
    val_logits = subject.logits(d.val.images, desc="calibration pass (val)")
    ck = checkpoint.load(out / "best.pt")
    ck["val_accuracy"] = float((val_logits.argmax(1) == d.val.labels).mean())
    # the unknown-item rule: statistics of the training features (and of their augmented views),
    # thresholds from validation only; the ImageNet head where it still fits the backbone
    # (training.lwf.imagenet_head_for: the linear recipe, or --lwf)
    subject.temperature = finalise(
        ck, model, SplitData(d.train.labels, images=d.train.images),
        SplitData(d.val.labels, images=d.val.images, logits=val_logits, photos=[d.root / r.path for r in d.val.rows]),
        prep=trainer.prep, device=trainer.device, augment=trainer.augment, imagenet_head=trainer.imagenet_head,
        seed=cfg.seed, path=out / "best.pt", log=emit).temperature
    suggestion = suggest_for(subject, val_logits, d.val.labels, SUGGESTION_TARGET)
    if len(d.test) == 0:
        emit("no test rows: skipping the test report")
        return {}
    result = evaluate(
        subject, d.test, out, history=trainer.state.history,
        title=f"{cfg.model} / {cfg.recipe} on {Path(str(d.root)).name}", split="test",
        extra={"train_seconds": round(train_seconds, 1), "model": cfg.model, "recipe": cfg.recipe,
               "loss": cfg.loss, "seed": cfg.seed, "val_accuracy": ck["val_accuracy"],
               "parameters": sum(p.numel() for p in model.parameters())},
        suggestion=suggestion,
    )
    m = result["metrics"]
    emit(f"test: accuracy {m['accuracy']:.4f}, macro F1 {m['f1_macro']:.4f}, "
         f"ECE {result['calibration']['ece_before']:.4f} -> {result['calibration']['ece_after']:.4f} "
         f"({len(d.test)} images); report in {out / 'report.md'}")
    return {**m, "calibration": result["calibration"], "decision": result["decision"]}
