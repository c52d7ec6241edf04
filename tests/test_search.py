"""Item search: a small item in a wide frame is found by the window the unknown-item rule likes best."""

import numpy as np
import pytest
from PIL import Image

from wastenet.inference.search import pick, windows


def test_windows_start_with_the_whole_photo_and_cover_it_to_the_far_edges():
    img = Image.new("RGB", (320, 427))
    wins = windows(img)
    assert wins[0].size == (320, 427)
    sides = {w.size for w in wins[1:]}
    assert sides == {(160, 160), (112, 112)}
    # every pixel of the frame lies in some window of each size: the last windows are flush with the edges
    assert len(wins) == 1 + 3 * 5 + 5 * 7


def test_a_searched_photo_keeps_enough_pixels_for_the_smallest_window_along_the_models_longer_side():
    from wastenet.inference.search import WINDOW_SIDES, searched_side
    from wastenet.preprocessing import Preprocessing

    square, wide = Preprocessing(input_size=224), Preprocessing(input_size=256, input_width=320)
    assert min(WINDOW_SIDES) * searched_side(square) >= square.resize_size  # 256 px: the model's resize
    assert min(WINDOW_SIDES) * searched_side(wide) >= 320                    # the square window is stretched to 256 x 320
    assert searched_side(wide) > searched_side(Preprocessing(input_size=256, resize_size=256))


def test_a_tiny_photo_is_looked_at_whole_only():
    assert len(windows(Image.new("RGB", (50, 40)))) == 1


def test_the_most_familiar_window_decides_and_without_a_rule_the_most_confident():
    probs = np.array([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]])
    assert pick(np.array([3.0, 2.0, 1.0]), probs) == 2
    assert pick(None, probs) == 1


def test_eval_refuses_search_outside_the_field_mode(tmp_path):
    from wastenet.cli import main

    assert main(["eval", "--checkpoint", str(tmp_path / "m.pt"), "--data", str(tmp_path), "--search"]) == 2
