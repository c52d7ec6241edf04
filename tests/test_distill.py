"""Distillation: the teacher's calibrated probabilities really change the student's loss and
training; a teacher of other classes is refused in one line."""

from __future__ import annotations

import pytest
import torch

from wastenet import checkpoint
from wastenet.cli import main
from wastenet.models import create_model
from wastenet.training.distill import Teacher, distillation_loss

from test_train_cli import TINY
from test_training import tiny_trainer


def test_loss_mixes_labels_and_the_teachers_soft_targets():
    torch.manual_seed(0)
    s, label_loss = torch.randn(4, 3), torch.tensor(0.7)
    t1, t2 = torch.randn(4, 3) * 3, torch.randn(4, 3) * 3
    assert distillation_loss(s, t1, label_loss, alpha=0.0, tau=2.0) == pytest.approx(0.7)
    a, b = (distillation_loss(s, t, label_loss, alpha=0.5, tau=2.0) for t in (t1, t2))
    assert a != pytest.approx(b)  # another teacher, another loss
    # the student that copies the (calibrated, softened) teacher has no KL left
    same = distillation_loss(t1 / 1.5, t1, label_loss, alpha=1.0, tau=2.0, teacher_temperature=1.5)
    assert float(same) == pytest.approx(0.0, abs=1e-6)
    # and the KL's gradient pulls the student toward the teacher
    s = s.clone().requires_grad_(True)
    distillation_loss(s, t1, label_loss, alpha=1.0, tau=1.0).backward()
    assert ((s - s.grad * 0.1).softmax(1) - t1.softmax(1)).abs().sum() < (s.softmax(1) - t1.softmax(1)).abs().sum()


def _teacher_ckpt(tmp_path, classes, seed=1):
    torch.manual_seed(seed)
    built = create_model("test_resnet", len(classes), weights=None, img_size=64)
    torch.nn.init.normal_(built.model.get_classifier().weight, std=0.5)  # opinions, not a uniform shrug
    ck = checkpoint.make_checkpoint(built, classes=classes, temperature=1.3)
    return checkpoint.save(ck, tmp_path / f"teacher{seed}.pt")


def test_head_stage_learns_from_the_teacher_with_logits_for_each_cached_view(tmp_path, image_folder):
    classes = sorted(p.name for p in image_folder.iterdir())
    teacher_path = _teacher_ckpt(tmp_path, classes)
    heads = {}
    for name, kw in {"alone": {}, "alpha0": {"teacher": str(teacher_path), "distill_alpha": 0.0},
                     "taught": {"teacher": str(teacher_path), "distill_alpha": 0.9}}.items():
        torch.manual_seed(0)  # the same random student backbone each time
        tr = tiny_trainer(image_folder, tmp_path / name, **kw)
        calls = []
        if tr.teacher is not None:
            real = tr.teacher_logits
            tr.teacher_logits = lambda x, real=real: calls.append(len(x)) or real(x)
        tr.run_head_stage(tr.plan[0])
        heads[name] = tr.model.get_classifier().weight.detach().clone()
        if name != "alone":
            # each cached view (1 plain + head_views augmented) goes through the teacher once
            assert sum(calls) == (1 + tr.cfg.head_views) * len(tr.data.train)
            assert tr.teacher.temperature == pytest.approx(1.3)  # its calibration travels with it
    torch.testing.assert_close(heads["alpha0"], heads["alone"])  # alpha 0: the labels alone
    assert not torch.allclose(heads["taught"], heads["alone"], atol=1e-4)


def test_backbone_step_runs_with_a_teacher_of_another_input_size(tmp_path, image_folder):
    classes = sorted(p.name for p in image_folder.iterdir())
    tr = tiny_trainer(image_folder, tmp_path / "run", teacher=str(_teacher_ckpt(tmp_path, classes)))
    assert tr.teacher.prep.input_size == 64 and tr.prep.input_size == 48  # resized on the way in
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    tr.run_backbone_stage(tr.plan[1])
    assert any(not torch.equal(before[k], v) for k, v in tr.model.state_dict().items())


def test_teacher_of_other_classes_is_one_line_exit_2(tmp_path, image_folder, capsys):
    bad = _teacher_ckpt(tmp_path, ["cardboard", "glass", "trash"])
    rc = main(["train", "--data", str(image_folder), "--out", str(tmp_path / "run"), "--teacher", str(bad), *TINY])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "same classes" in err
    assert not (tmp_path / "run" / "last.pt").exists()
