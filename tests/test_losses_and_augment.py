"""Losses (CE with smoothing, softmax focal) and Keras-style augmentation."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from wastenet.data.augment import AugmentConfig, KerasAugment, to_model_batch
from wastenet.preprocessing import Preprocessing, fit_square, preprocess_images
from wastenet.training.losses import FocalLoss, balanced_weights, build_loss


def test_focal_with_gamma_zero_and_no_alpha_is_cross_entropy():
    logits, y = torch.randn(16, 5), torch.randint(0, 5, (16,))
    assert torch.allclose(FocalLoss(gamma=0.0)(logits, y), F.cross_entropy(logits, y), atol=1e-6)


def test_focal_matches_the_formula_with_per_class_alpha():
    logits, y = torch.randn(32, 4), torch.randint(0, 4, (32,))
    alpha = torch.tensor([0.1, 0.2, 0.3, 0.4])
    p_true = logits.softmax(1)[torch.arange(32), y]
    expected = (-alpha[y] * (1 - p_true) ** 2 * p_true.log()).mean()
    assert torch.allclose(FocalLoss(2.0, alpha)(logits, y), expected, atol=1e-6)


def test_focal_down_weights_easy_examples():
    easy = torch.tensor([[8.0, 0.0]])
    hard = torch.tensor([[0.0, 0.5]])
    y = torch.tensor([0])
    ratio_focal = FocalLoss(2.0)(easy, y) / FocalLoss(2.0)(hard, y)
    ratio_ce = F.cross_entropy(easy, y) / F.cross_entropy(hard, y)
    assert ratio_focal < ratio_ce / 100


def test_balanced_weights_follow_sklearn():
    w = balanced_weights([10, 30])
    assert torch.allclose(w, torch.tensor([2.0, 2 / 3]))
    loss = build_loss("focal", 2, alpha="balanced", class_counts=[10, 30])
    assert torch.allclose(loss.alpha, w)


def test_label_smoothing_is_applied():
    logits, y = torch.tensor([[10.0, 0.0]]), torch.tensor([0])
    assert build_loss("ce", 2, label_smoothing=0.2)(logits, y) > build_loss("ce", 2)(logits, y) + 0.5


def test_eval_batch_from_cache_equals_numpy_preprocessing(image_folder):
    prep = Preprocessing(input_size=48, resize_size=56, interpolation="bicubic")
    imgs = [Image.open(p).convert("RGB") for p in sorted(image_folder.rglob("*.jpg"))[:4]]
    cache = np.stack([fit_square(im, prep.resize_size, prep.interpolation).transpose(2, 0, 1) for im in imgs])
    torch_path = to_model_batch(torch.from_numpy(cache), prep).numpy()
    numpy_path = preprocess_images(imgs, prep)
    assert np.abs(torch_path - numpy_path).max() < 1e-5


def test_keras_augment_fills_with_the_nearest_pixel_not_black():
    x = torch.ones(4, 3, 32, 32) * 0.8  # a bright "poster board"
    aug = KerasAugment(AugmentConfig(zoom=0.4, rotation=30, shift=0.2, hflip=True))
    torch.manual_seed(0)
    y = aug(x)
    assert y.shape == x.shape
    assert y.min() > 0.79  # replicate-border fill: no black corners after rotation/shift/zoom-out


def test_keras_augment_changes_images():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    y = KerasAugment(AugmentConfig())(x)
    assert not torch.allclose(x, y)


def test_constant_fill_does_leave_black_corners():
    torch.manual_seed(0)
    y = KerasAugment(AugmentConfig(zoom=0, rotation=45, shift=0, hflip=False, fill="constant"))(torch.ones(16, 3, 32, 32))
    assert y.min() < 0.01


def test_composite_and_auto_augment_choices_are_one_list_each_for_the_cli_and_the_config():
    import argparse

    from wastenet.commands import train as train_cmd
    from wastenet.errors import ConfigError
    from wastenet.training.config import TrainConfig

    p = argparse.ArgumentParser()
    train_cmd.add_arguments(p)
    choices = {a.dest: tuple(a.choices) for a in p._actions if a.dest in ("composite", "auto_augment")}
    assert choices == {"composite": ("auto", "on", "off"), "auto_augment": ("none", "trivial", "rand")}
    for field, bad in (("composite", "yes"), ("auto_augment", "auto")):
        with pytest.raises(ConfigError, match=bad):
            TrainConfig(**{field: bad}).validate()
