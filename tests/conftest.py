"""Shared fixtures: generated image folders, a tiny trained checkpoint, the shared real data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("WASTENET_SHARED", REPO.parent / "shared"))
TRASHNET = SHARED / "data" / "trashnet"
TRASHNET_SPLIT = SHARED / "data" / "trashnet-split.csv"
WEIGHTS = SHARED / "weights"

# colour + shape per class, so that a tiny model can actually learn the task
_CLASS_STYLE = {"glass": ((40, 160, 60), "ellipse"), "paper": ((230, 230, 230), "rectangle"),
                "metal": ((120, 120, 140), "polygon")}


def make_image(cls: str, seed: int, size: tuple[int, int] = (48, 64)) -> Image.Image:
    """A white 'poster board' with one coloured object, like a TrashNet photo."""
    rng = np.random.default_rng(seed)
    colour, shape = _CLASS_STYLE[cls]
    img = Image.new("RGB", size, (250, 250, 245))
    d = ImageDraw.Draw(img)
    w, h = size
    x0, y0 = rng.integers(2, w // 4), rng.integers(2, h // 4)
    x1, y1 = rng.integers(3 * w // 4, w - 2), rng.integers(3 * h // 4, h - 2)
    jitter = tuple(int(c) for c in np.clip(np.array(colour) + rng.integers(-20, 20, 3), 0, 255))
    if shape == "ellipse":
        d.ellipse([x0, y0, x1, y1], fill=jitter)
    elif shape == "rectangle":
        d.rectangle([x0, y0, x1, y1], fill=jitter, outline=(90, 90, 90))
    else:
        d.polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)], fill=jitter)
    return img


def make_dataset(root: Path, per_class: int = 12, classes=tuple(_CLASS_STYLE)) -> Path:
    """ROOT/<class>/<nested>/<image>.jpg with images at two depths (as the household set has)."""
    for ci, cls in enumerate(classes):
        for i in range(per_class):
            sub = root / cls / ("real_world" if i % 2 else "default")
            sub.mkdir(parents=True, exist_ok=True)
            make_image(cls, seed=1000 * ci + i).save(sub / f"{cls}_{i}.jpg", quality=92)
    return root


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """3 classes x 12 generated JPEGs (glass, metal, paper), shared read-only across tests."""
    return make_dataset(tmp_path_factory.mktemp("images") / "waste")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, image_folder) -> Path:
    """A real checkpoint of timm's tiny `test_resnet` (random init, 64 px) for API tests."""
    from wastenet import checkpoint
    from wastenet.models import create_model
    from wastenet.taxonomy import load_taxonomy

    import torch

    classes = sorted(p.name for p in image_folder.iterdir())
    torch.manual_seed(0)  # the same weights in every run: a test's outcome must not depend on a random draw
    built = create_model("test_resnet", len(classes), weights=None, img_size=64)
    tax = load_taxonomy({"bins": {"recyclable": ["glass", "metal", "paper"], "compostable": [], "landfill": []}},
                        classes)
    ckpt = checkpoint.make_checkpoint(built, classes=classes, taxonomy=tax.to_dict())
    return checkpoint.save(ckpt, tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="session")
def trashnet_root() -> Path:
    if not TRASHNET.is_dir():
        pytest.skip("shared TrashNet data not available")
    return TRASHNET


@pytest.fixture(scope="session")
def weights_dir() -> Path:
    if not WEIGHTS.is_dir():
        pytest.skip("shared weights not available")
    return WEIGHTS


@pytest.fixture(scope="module")
def unsure_classifier(tiny_checkpoint):
    """The tiny (random) model with one class per bin: ~1/3 per bin, so manual_sort at 0.9."""
    from wastenet.inference.predictor import Classifier
    from wastenet.taxonomy import load_taxonomy

    clf = Classifier.load(tiny_checkpoint)
    clf.taxonomy = load_taxonomy(
        {"name": "split", "bins": {"recyclable": ["glass"], "compostable": ["paper"], "landfill": ["metal"]}},
        clf.classes)
    return clf
