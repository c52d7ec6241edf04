"""A run killed at any checkpoint write resumes and still ends with the best epoch's weights.

The kill is simulated deterministically: a wrapper around ``checkpoint.save`` raises right after
the chosen ``last.pt`` write (what ``kill -9`` at that moment leaves on disk), and the validation
scores are scripted per (stage, epoch) so that the best epoch is known in advance.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from wastenet import checkpoint
from wastenet.cli import main
from wastenet.training.loop import Trainer

from test_training import tiny_trainer

TINY = ["--model", "test_resnet", "--weights", "none", "--img-size", "48", "--batch-size", "8",
        "--head-views", "1", "--amp", "off", "--patience", "5"]


class Killed(BaseException):
    """Stands in for SIGKILL: nothing in the code under test catches a BaseException subclass."""


def _script_scores(monkeypatch, best: tuple[str, int]) -> None:
    """Validation says epoch ``best`` = (stage name, epoch in stage) is the best, all others worse."""
    original = Trainer.record

    def record(self, stage, train_loss, train_acc, val_loss, val_acc, *args, **kwargs):
        good = (stage.name, self.state.stage_epoch + 1) == best
        return original(self, stage, train_loss, train_acc, 0.1 if good else 1.0 + self.state.global_epoch,
                        0.9 if good else 0.5, *args, **kwargs)

    monkeypatch.setattr(Trainer, "record", record)


def _kill_after_last(monkeypatch, when) -> dict:
    """Raise ``Killed`` right after the first ``last.pt`` write for which ``when(ckpt)`` holds."""
    original = checkpoint.save
    seen: dict = {}

    def save(ck, path):
        out = original(ck, path)
        if Path(path).name == "last.pt" and not seen and when(ck):
            seen["state_dict"] = {k: v.clone() for k, v in ck["state_dict"].items()}
            raise Killed
        return out

    monkeypatch.setattr(checkpoint, "save", save)
    return seen


def _train(data: Path, out: Path, *extra: str) -> int:
    return main(["train", "--data", str(data), "--out", str(out), *TINY, *extra])


@pytest.mark.parametrize("settings, best, kill_at", [
    # finetune, 4 epochs: the best is epoch 3, killed right after epoch 3's last.pt
    (dict(recipe="finetune", epochs=4), ("finetune", 3), lambda ck: ck["stage_epoch"] == 3),
    # wastenet recipe, killed in a partial step (unfreeze-1) after its best epoch
    (dict(recipe="wastenet", unfreeze_groups=2, head_epochs=3, step_epochs=3, epochs=2), ("unfreeze-1", 2),
     lambda ck: ck["stage_index"] == 1 and ck["stage_epoch"] == 2),
    # ... and in the last step (unfreeze-2), after its best epoch
    (dict(recipe="wastenet", unfreeze_groups=2, head_epochs=3, step_epochs=1, epochs=3), ("unfreeze-2", 1),
     lambda ck: ck["stage_index"] == 2 and ck["stage_epoch"] == 1),
], ids=["finetune", "wastenet-partial-step", "wastenet-last-step"])
def test_a_run_killed_after_its_best_epoch_resumes_and_keeps_those_weights(
        tmp_path, image_folder, monkeypatch, settings, best, kill_at):
    out = tmp_path / "run"
    _script_scores(monkeypatch, best)
    killed = _kill_after_last(monkeypatch, lambda ck: not ck["stage_done"] and kill_at(ck))
    with pytest.raises(Killed):
        tiny_trainer(image_folder, out, patience=5, **settings).fit()
    best_weights = killed["state_dict"]  # the model right after the best epoch; later saves pass
    resumed = tiny_trainer(image_folder, out, patience=5, **settings)
    resumed.fit(checkpoint.load(out / "last.pt"))
    final = checkpoint.load(out / "best.pt")  # before the fix: missing, or an older stage's weights
    assert final["best_score"][0] == pytest.approx(0.9)
    assert all(torch.equal(final["state_dict"][k], v) for k, v in best_weights.items())
    assert all(torch.equal(resumed.best_state[k], v) for k, v in best_weights.items())


def test_a_run_killed_in_the_head_stage_can_be_resumed_from_the_command_line(tmp_path, image_folder, monkeypatch):
    out = tmp_path / "run"
    args = ["--recipe", "linear", "--head-epochs", "3"]
    original = Trainer.record

    def record(self, stage, *a, **kw):
        if self.state.stage_epoch == 1:  # in the middle of the head stage
            raise Killed
        return original(self, stage, *a, **kw)

    monkeypatch.setattr(Trainer, "record", record)
    with pytest.raises(Killed):
        _train(image_folder, out, *args)
    monkeypatch.setattr(Trainer, "record", original)
    assert _train(image_folder, out, *args, "--resume") == 0  # before the fix: no last.pt, exit 2
    assert [r["stage"] for r in checkpoint.load(out / "last.pt")["history"]] == ["head"] * 3
    assert (out / "best.pt").is_file()
