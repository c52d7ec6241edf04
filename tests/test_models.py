"""Model factory: local weights through timm's pretrained path, sidecars, layer groups."""

import json

import pytest
import torch
from safetensors.torch import save_file

from wastenet.errors import ConfigError
from wastenet.models import create_model, layer_groups, merge_groups


def test_local_weights_load_through_the_sidecar(weights_dir):
    built = create_model("mobilenetv2_100", 6, weights=str(weights_dir / "mobilenetv2_100.safetensors"))
    assert built.model_kwargs == {"pad_type": "same"}
    assert built.preprocessing.mean == (0.5, 0.5, 0.5)  # the weights' own normalisation, from the sidecar
    assert built.model.get_classifier().out_features == 6


def test_backbone_only_file_loads_and_weights_really_arrive(weights_dir):
    from safetensors.torch import load_file

    path = weights_dir / "densenet169.safetensors"
    built = create_model("densenet169", 3, weights=str(path))
    state = load_file(str(path))
    key = "features.denseblock4.denselayer1.conv1.weight"
    assert torch.allclose(built.model.state_dict()[key], state[key].float())


def test_weights_for_another_architecture_are_refused(tmp_path):
    m = create_model("test_resnet", 4).model
    path = tmp_path / "w.safetensors"
    sd = {k: v for k, v in m.state_dict().items() if not k.startswith("layer4")}
    save_file(sd, str(path))
    with pytest.raises(ConfigError, match="missing"):
        create_model("test_resnet", 4, weights=str(path))
    (tmp_path / "w.json").write_text(json.dumps({"architecture": "resnet50"}))
    with pytest.raises(ConfigError, match="resnet50"):
        create_model("test_resnet", 4, weights=str(path))


def test_layer_groups_run_from_stem_to_head():
    built = create_model("test_resnet", 3)
    groups = built.groups
    assert groups[-1] == ["fc.bias", "fc.weight"]
    assert groups[0][0].startswith("conv1")
    names = [n for n, _ in built.model.named_parameters()]
    assert sorted(n for g in groups for n in g) == sorted(names)  # every parameter exactly once


def test_no_unfreezing_step_trains_a_lone_norm_layer():
    # timm puts densenet's final BatchNorm in a group of its own; it joins the last dense block
    model = create_model("densenet121", num_classes=3).model
    sizes = dict((n, p.numel()) for n, p in model.named_parameters())
    body = layer_groups(model)[:-1]
    total = sum(sizes.values())
    assert all(sum(sizes[n] for n in g) >= 0.005 * total for g in body)
    assert "features.norm5.weight" in body[-1] and "features.denseblock4.denselayer16.conv2.weight" in body[-1]
    assert "features.conv0.weight" in body[0] and "features.denseblock1.denselayer1.conv1.weight" in body[0]


def test_merge_groups_merges_the_lowest_and_keeps_the_head():
    groups = [["a"], ["b"], ["c"], ["d"], ["head"]]
    assert merge_groups(groups, 2) == [["a", "b", "c"], ["d"], ["head"]]
    assert merge_groups(groups, 10) == groups


def test_torchvision_classics_have_groups_and_a_fresh_head():
    built = create_model("squeezenet1_1", 5)
    assert built.model(torch.randn(1, 3, 64, 64)).shape == (1, 5)
    assert len(built.groups) >= 3


def test_unknown_model_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown model"):
        create_model("not_a_net", 3)
