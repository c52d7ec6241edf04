"""--lwf: fine-tuning that keeps the pretrained network's ImageNet answers (learning without forgetting)."""

import copy

import numpy as np
import torch

from test_training import tiny_trainer
from wastenet.cli import main
from wastenet.data.augment import to_model_batch
from wastenet.training.lwf import ImagenetAnswers, lwf_loss


def _head(d: int) -> dict:
    rng = np.random.default_rng(0)
    return {"weight": rng.normal(0, 0.5, (1000, d)).astype(np.float32), "bias": np.zeros(1000, np.float32)}


def _pretrained_like(image_folder, out, **overrides):
    """tiny_trainer's random network, its BatchNorm statistics first fitted to the photos: like a
    pretrained network, its train-mode and eval-mode answers agree before fine-tuning starts."""
    torch.manual_seed(0)  # the same random 'pretrained' network every time
    probe = tiny_trainer(image_folder, out / "probe")
    x = to_model_batch(torch.from_numpy(probe.data.train.images), probe.prep, device=torch.device("cpu"))
    bns = [m for m in probe.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: one pass gives the photos' own statistics
    with torch.no_grad():
        probe.model.train()(x)
    for m in bns:
        m.momentum = 0.1
    return probe.model.eval().state_dict()


def _drift(image_folder, out, lwf: float) -> float:
    """How far the trained backbone's ImageNet answers moved from the pretrained ones (KL, val images)."""
    state = _pretrained_like(image_folder, out)
    head = _head(state["fc.weight"].shape[1])
    # what the Trainer builds from the weights' head (here: a random one) before the first step
    tr = tiny_trainer(image_folder, out / f"lwf{lwf}-run", imagenet_head=head, recipe="finetune", lwf=lwf, lr=3e-3,
                      epochs=3, patience=10, initial_state=state)
    before = ImagenetAnswers(copy.deepcopy(tr.model), head).eval()
    tr.fit(None)
    x = to_model_batch(torch.from_numpy(tr.data.val.images), tr.prep, device=torch.device("cpu"))
    with torch.no_grad():
        return float(lwf_loss(ImagenetAnswers(tr.model.eval(), head)(x), before(x)))


def test_lwf_holds_the_fine_tuned_backbone_to_its_imagenet_answers(image_folder, tmp_path):
    free, held = _drift(image_folder, tmp_path, 0.0), _drift(image_folder, tmp_path, 5.0)
    assert free > 0 and held < 0.6 * free  # measured: 7.7 -> 4.1


def test_the_kl_term_is_zero_only_for_the_same_answers():
    z = torch.randn(8, 1000)
    assert float(lwf_loss(z, z)) < 1e-6
    assert float(lwf_loss(z, torch.randn(8, 1000))) > 0.1


def test_lwf_without_an_imagenet_head_fails_before_training(image_folder, tmp_path, capsys):
    code = main(["train", "--data", str(image_folder), "--model", "test_resnet", "--weights", "none",
                 "--recipe", "finetune", "--lwf", "1", "--out", str(tmp_path / "run")])
    assert code == 2 and "--lwf needs weights with a 1000-class ImageNet head" in capsys.readouterr().err
    assert not (tmp_path / "run" / "last.pt").exists()


def test_a_negative_lwf_weight_is_a_config_error(image_folder, tmp_path, capsys):
    assert main(["train", "--data", str(image_folder), "--lwf", "-1", "--out", str(tmp_path / "run")]) == 2
    assert "--lwf must be auto, 0 (off) or positive" in capsys.readouterr().err


def test_an_lwf_weight_that_is_not_a_number_is_a_one_line_usage_error(image_folder, tmp_path, capsys):
    import pytest

    with pytest.raises(SystemExit) as exit_:
        main(["train", "--data", str(image_folder), "--lwf", "lots", "--out", str(tmp_path / "run")])
    assert exit_.value.code == 2 and "must be auto or a number, not 'lots'" in capsys.readouterr().err


def test_lwf_is_on_by_default_wherever_the_weights_carry_an_imagenet_head_and_the_backbone_trains():
    from wastenet.training.config import TrainConfig
    from wastenet.training.lwf import AUTO_WEIGHT, check_lwf_head, lwf_weight

    head = _head(8)
    assert TrainConfig().lwf == "auto"
    assert lwf_weight(TrainConfig(recipe="wastenet"), head) == lwf_weight(TrainConfig(recipe="finetune"), head) == AUTO_WEIGHT
    assert lwf_weight(TrainConfig(recipe="finetune"), None) == 0.0   # no head: auto trains without it ...
    check_lwf_head(TrainConfig(recipe="finetune"), None)             # ... and that is no error
    assert lwf_weight(TrainConfig(recipe="linear"), head) == 0.0      # nothing to forget
    assert lwf_weight(TrainConfig(recipe="finetune", lwf=0), head) == 0.0
    assert lwf_weight(TrainConfig(recipe="finetune", lwf=2.5), head) == 2.5


def test_auto_trains_without_lwf_when_the_weights_have_no_imagenet_head_and_says_so(image_folder, tmp_path, capsys):
    tr = tiny_trainer(image_folder, tmp_path / "run", recipe="finetune")  # weights "none": no head
    assert tr.cfg.lwf == "auto" and tr.lwf_weight == 0.0 and tr._anchor is None
    assert "learning without forgetting (--lwf auto): off (the weights carry no ImageNet head)" in capsys.readouterr().err
    held = tiny_trainer(image_folder, tmp_path / "held", recipe="finetune", imagenet_head=_head(tr.model.num_features))
    assert held.lwf_weight == 1.0 and held._anchor is not None
    assert "learning without forgetting (--lwf auto): weight 1" in capsys.readouterr().err
