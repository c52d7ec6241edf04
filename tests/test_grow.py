"""A kind the model has no class for: its grown head row starts from its reviewed photos (issue 23 item 4)."""

import torch

from wastenet.training.grow import imprint_rows


def test_a_grown_row_points_along_its_photos_mean_feature_as_long_as_the_old_rows():
    head = torch.nn.Linear(4, 3)
    with torch.no_grad():
        head.weight[:2] = torch.tensor([[3.0, 0, 0, 0], [0, 1.0, 0, 0]])
        head.bias[:2] = torch.tensor([1.0, -3.0])
        head.weight[2], head.bias[2] = 0.0, 0.0
    old = head.weight[:2].clone()
    x = torch.tensor([[0, 0, 2.0, 0], [0, 0, 0, 2.0], [9.0, 9.0, 0, 0]])
    y = torch.tensor([2, 2, 0])  # two photos of the new kind (row 2), one of an old class

    assert imprint_rows(head, [2], x, y) == [2]

    assert torch.allclose(head.weight[2], torch.tensor([0, 0, 1.0, 1.0]) / 2**0.5 * 2.0)  # mean norm of 3 and 1
    assert float(head.bias[2]) == -1.0
    assert torch.equal(head.weight[:2], old)  # the old classes decide as before


def test_a_grown_row_without_photos_stays_as_grown():
    head = torch.nn.Linear(2, 3)
    with torch.no_grad():
        head.weight[2], head.bias[2] = 0.0, 0.0
    assert imprint_rows(head, [2], torch.ones(2, 2), torch.tensor([0, 1])) == []
    assert not head.weight[2].any() and float(head.bias[2]) == 0.0
