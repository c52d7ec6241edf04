"""Field augmentation and field evaluation: studio items onto new floors; foreign data scored as a bin would."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from wastenet.data.backgrounds import FAMILIES, BackgroundBank, procedural
from wastenet.data.composite import CameraJitter, StudioComposite, is_studio_like, studio_matte
from wastenet.errors import ConfigError


def studio_batch(n: int = 4, size: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    """White boards with a light fall-off and one dark square item each; returns (images, item masks)."""
    x = torch.ones(n, 3, size, size) * 0.92
    x = x * torch.linspace(0.9, 1.0, size).view(1, 1, 1, size)  # a lamp on the right
    mask = torch.zeros(n, 1, size, size)
    for i in range(n):
        a = 20 + 5 * i
        x[i, :, a : a + 30, a : a + 25] = torch.tensor([0.6, 0.1, 0.1]).view(3, 1, 1)
        mask[i, :, a : a + 30, a : a + 25] = 1
    return x, mask


def test_matte_finds_the_item_and_not_the_unevenly_lit_board():
    x, mask = studio_batch()
    alpha = studio_matte(x)
    assert alpha[mask.bool()].mean() > 0.9
    assert alpha[~mask.bool()].mean() < 0.1


def test_composite_replaces_the_board_and_keeps_the_item_colour():
    torch.manual_seed(0)
    x, mask = studio_batch()
    y = StudioComposite(p=1.0, min_cover=None)(x)  # no rescale: the item stays where it was
    board = ~mask.bool().expand(-1, 3, -1, -1)
    assert (y[board] - x[board]).abs().mean() > 0.1          # a new background
    inner = torch.zeros_like(board)
    for i in range(len(x)):                                    # well inside each item
        a = 20 + 5 * i
        inner[i, :, a + 8 : a + 22, a + 8 : a + 17] = True
    assert (y[inner] - x[inner]).abs().max() < 0.05


def test_scale_jitter_makes_items_smaller_or_larger_than_they_were():
    torch.manual_seed(0)
    x, _ = studio_batch(8)
    y = StudioComposite(p=1.0, min_cover=0.02, max_cover=0.03)(x)  # tiny items
    red = (y[:, 0] > 0.5) & (y[:, 1] < 0.2) & (y[:, 2] < 0.2)
    before = ((x[:, 0] > 0.5) & (x[:, 1] < 0.2)).float().mean()
    assert red.float().mean() < before / 2


def test_images_that_are_not_studio_like_are_left_alone():
    noise = torch.rand(4, 3, 64, 64)
    assert torch.equal(StudioComposite(p=1.0)(noise), noise)  # the matte covers everything


def test_studio_detection_tells_boards_from_textured_floors():
    boards = (studio_batch(8)[0] * 255).to(torch.uint8)
    carpet = torch.randint(60, 140, (8, 3, 96, 96), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert is_studio_like(boards) and not is_studio_like(carpet)


@pytest.mark.slow
def test_studio_detection_on_real_photos_trashnet_yes_field_floors_no(trashnet_root):
    from wastenet.preprocessing import fit_square
    from conftest import SHARED

    field = SHARED / "data" / "field-drinkingwaste"
    if not field.is_dir():
        pytest.skip("field photos not available")

    def batch(files):
        return torch.from_numpy(np.stack([fit_square(Image.open(f), 256) for f in files])).permute(0, 3, 1, 2)

    assert is_studio_like(batch(sorted(trashnet_root.glob("*/*.jpg"))[::60]))
    assert not is_studio_like(batch(sorted(field.glob("*/*.jpg"))[::40]))


def test_every_background_family_draws_valid_images_and_a_folder_mixes_in(tmp_path):
    gen = torch.Generator().manual_seed(0)
    for fam in FAMILIES:
        bg = procedural(2, 32, gen, families=(fam,))
        assert bg.shape == (2, 3, 32, 32) and 0 <= bg.min() and bg.max() <= 1 and bg.std() > 0.01
    Image.new("RGB", (40, 30), (0, 0, 255)).save(tmp_path / "tray.jpg")
    bank = BackgroundBank(tmp_path)
    out = bank.sample(64, 32, torch.Generator().manual_seed(1))
    blue = (out[:, 2].mean((1, 2)) > 0.9) & (out[:, 0].mean((1, 2)) < 0.1)
    assert 0 < int(blue.sum()) < 64


def test_a_background_folder_without_images_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no readable background"):
        BackgroundBank(tmp_path)


def test_camera_jitter_changes_colours_and_stays_in_range():
    torch.manual_seed(0)
    x = torch.rand(8, 3, 32, 32)
    y = CameraJitter(color=0.4, blur_jpeg=1.0)(x)
    assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1
    assert (y - x).abs().mean() > 0.02


# --------------------------------------------------------------------------- field evaluation
def _field_folder(root):
    """Two foreign classes on a textured floor, with item boxes."""
    rows = []
    rng = np.random.default_rng(0)
    for cls, colour in (("can", (120, 120, 140)), ("jar", (40, 160, 60))):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            img = Image.fromarray(rng.integers(60, 120, (128, 160, 3), dtype=np.uint8))
            box = (10 + i, 20, 40 + i, 50)
            ImageDraw.Draw(img).rectangle(box, fill=colour)
            img.save(root / cls / f"{i}.jpg")
            rows.append({"path": f"{cls}/{i}.jpg", "label": cls, "bbox": ",".join(map(str, box))})
    with (root / "labels.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "bbox"])
        w.writeheader()
        w.writerows(rows)
    return root


def test_class_map_targets_are_checked_against_the_model(tmp_path):
    from wastenet.evaluation.field import Target, load_class_map

    p = tmp_path / "map.yaml"
    p.write_text("classes: {can: metal, jar: 'bin:recyclable', rag: unknown}\n")
    cmap = load_class_map(p, ["glass", "metal"], ["recyclable", "landfill"])
    assert cmap == {"can": Target("class", "metal"), "jar": Target("bin", "recyclable"), "rag": Target("unknown")}
    p.write_text("classes: {can: steel}\n")
    with pytest.raises(ConfigError, match="not a class of the model"):
        load_class_map(p, ["glass", "metal"], ["recyclable"])
    p.write_text("classes: {can: 'bin:compost'}\n")
    with pytest.raises(ConfigError, match="unknown bin"):
        load_class_map(p, ["glass", "metal"], ["recyclable"])


def test_crop_views_frame_the_item_and_floor_views_miss_it():
    from wastenet.evaluation.field import floor_crop, item_crop

    img = Image.new("RGB", (200, 100), (0, 0, 0))
    ImageDraw.Draw(img).rectangle((150, 40, 169, 59), fill=(255, 0, 0))
    crop = np.asarray(item_crop(img, (150, 40, 170, 60)))
    assert crop.shape[0] == crop.shape[1] and (crop[..., 0] > 200).mean() > 0.5
    floor = np.asarray(floor_crop(img, (150, 40, 170, 60)))
    assert floor.shape[0] >= 64 and (floor[..., 0] > 200).sum() == 0


def test_scores_count_class_bin_manual_sort_and_unknown_rejection():
    from wastenet.evaluation.field import FieldItem, Target, score
    from wastenet.inference.predictor import Prediction
    from wastenet.taxonomy import load_taxonomy

    tax = load_taxonomy({"bins": {"recyclable": ["metal", "glass"], "landfill": ["trash"]}}, ["glass", "metal", "trash"])
    items = [FieldItem("a", "can", Target("class", "metal")), FieldItem("b", "can", Target("class", "metal")),
             FieldItem("c", "rag", Target("unknown")), FieldItem("d", "rag", Target("unknown"))]
    preds = [Prediction("a", "metal", 0.99, "recyclable", 0.99, "recyclable"),
             Prediction("b", "glass", 0.5, "recyclable", 0.95, "recyclable"),
             Prediction("c", "trash", 0.6, "landfill", 0.6, "manual_sort", reason="low_confidence"),
             Prediction("d", "glass", 0.97, "recyclable", 0.99, "recyclable")]
    r = score(preds, items, ["glass", "metal", "trash"], tax, "full")
    assert r["class_accuracy"] == 0.5 and r["bin_accuracy"] == 1.0
    assert r["coverage"] == 0.75 and r["unknown_rejected"] == 0.5
    assert r["auto_sorted_class_accuracy"] == 0.5
    recycling = next(b for b in r["per_bin"] if b["bin"] == "recyclable")
    assert (recycling["count"], recycling["contaminated"]) == (3, 1)  # the unknown rag went in


@pytest.mark.slow
def test_eval_field_mode_writes_a_report_for_every_view(tiny_checkpoint, tmp_path):
    data = _field_folder(tmp_path / "field")
    cmap = tmp_path / "map.yaml"
    cmap.write_text("classes: {can: metal, jar: glass}\n")
    out = tmp_path / "report"
    r = subprocess.run([sys.executable, "-m", "wastenet", "eval", "--checkpoint", str(tiny_checkpoint),
                        "--data", str(data), "--class-map", str(cmap), "--boxes", str(data / "labels.csv"),
                        "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = (out / "report.md").read_text()
    for view in ("full", "crop", "floor"):
        assert f"View: {view}" in text and (out / f"field-{view}.csv").is_file()
    assert "class accuracy" in text and (out / "confidence-full.png").is_file()
    bad = subprocess.run([sys.executable, "-m", "wastenet", "eval", "--checkpoint", str(tiny_checkpoint),
                          "--data", str(data), "--class-map", str(cmap), "--views", "crop"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "need --boxes" in bad.stderr and "Traceback" not in bad.stderr


def test_the_field_mode_from_python_is_the_same_call_as_the_command(tiny_checkpoint, tmp_path):
    from wastenet.evaluation.evaluator import Evaluator

    data = _field_folder(tmp_path / "field")
    cmap = tmp_path / "map.yaml"
    cmap.write_text("classes: {can: metal, jar: glass}\n")
    results, out = Evaluator.field(tiny_checkpoint, data, cmap, out=tmp_path / "report")
    assert list(results) == ["full"] and out == tmp_path / "report"  # no boxes: the full view only
    assert results["full"]["n"] == len(list(data.rglob("*.jpg"))) and (out / "field.json").is_file()
    with pytest.raises(ConfigError, match="need --boxes"):
        Evaluator.field(tiny_checkpoint, data, cmap, views=["crop"])


def test_a_new_kind_target_only_where_asked_for():
    from wastenet.errors import ConfigError
    from wastenet.evaluation.field import Target, parse_target

    assert parse_target("new:landfill", ["metal"], ["recyclable", "landfill"], allow_new=True) == Target("new", "landfill")
    assert str(Target("new", "landfill")) == "new:landfill"
    with pytest.raises(ConfigError, match="site_stream"):
        parse_target("new:landfill", ["metal"], ["recyclable", "landfill"])
