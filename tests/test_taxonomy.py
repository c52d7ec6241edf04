"""Taxonomies: built-ins, YAML files, validation against model classes, bin probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from wastenet.errors import ConfigError
from wastenet.taxonomy import (
    Taxonomy,
    default_taxonomy_for,
    identity_taxonomy,
    load_taxonomy,
)

TRASHNET = ["cardboard", "glass", "metal", "paper", "plastic", "trash"]

HOUSEHOLD = {
    "recyclable": [
        "aluminum_food_cans", "aluminum_soda_cans", "cardboard_boxes", "cardboard_packaging",
        "glass_beverage_bottles", "glass_cosmetic_containers", "glass_food_jars", "magazines",
        "newspaper", "office_paper", "plastic_cup_lids", "plastic_detergent_bottles",
        "plastic_food_containers", "plastic_soda_bottles", "plastic_water_bottles",
        "steel_food_cans",
    ],
    "compostable": ["coffee_grounds", "eggshells", "food_waste", "tea_bags"],
    "landfill": [
        "aerosol_cans", "clothing", "disposable_plastic_cutlery", "paper_cups",
        "plastic_shopping_bags", "plastic_straws", "plastic_trash_bags", "shoes",
        "styrofoam_cups", "styrofoam_food_containers",
    ],
}  # fmt: skip


# ---------------------------------------------------------------------------- built-ins


def test_builtin_trashnet():
    tax = load_taxonomy("trashnet", TRASHNET)
    assert tax.name == "trashnet"
    assert tax.bins == {
        "recyclable": ["cardboard", "glass", "metal", "paper", "plastic"],
        "compostable": [],
        "landfill": ["trash"],
    }
    assert tax.bin_names == ["recyclable", "compostable", "landfill"]
    assert tax.bin_of("glass") == "recyclable" and tax.bin_of("trash") == "landfill"


def test_builtin_household_is_exactly_the_published_30_class_mapping():
    tax = load_taxonomy("household")
    assert tax.name == "household"
    assert tax.bins == HOUSEHOLD
    assert [len(v) for v in tax.bins.values()] == [16, 4, 10]
    assert len(set(tax.classes)) == 30


def test_builtins_are_fresh_copies():
    first = load_taxonomy("trashnet")
    first.bins["landfill"].append("battery")
    assert "battery" not in load_taxonomy("trashnet").classes


# ------------------------------------------------------------------------------ loading


def test_yaml_file_keeps_bin_order_and_allows_empty_bins(tmp_path):
    path = tmp_path / "city.yaml"
    path.write_text("bins:\n  landfill: [straw]\n  special: []\n  recyclable: [can, jar]\n")
    tax = load_taxonomy(path, ["can", "jar", "straw"])
    assert tax.name == "city"  # the file stem when the YAML has no name
    assert tax.bin_names == ["landfill", "special", "recyclable"]
    assert load_taxonomy(str(path)).bins == tax.bins  # str paths work too


def test_dict_and_taxonomy_specs():
    tax = load_taxonomy({"name": "d", "bins": {"a": ["x"], "b": ["y"]}}, ["y", "x"])
    assert (tax.name, tax.bin_of("y")) == ("d", "b")
    again = load_taxonomy(tax)
    assert again == tax and again is not tax and again.bins["a"] is not tax.bins["a"]
    assert load_taxonomy({"bins": {"a": ["x"]}}).name == "custom"


def test_to_dict_from_dict_round_trip():
    for tax in (load_taxonomy("household"), load_taxonomy("trashnet"), identity_taxonomy(["a"])):
        d = tax.to_dict()
        assert d == {"name": tax.name, "bins": tax.bins}
        assert Taxonomy.from_dict(d) == tax
        assert list(Taxonomy.from_dict(d).bins) == tax.bin_names  # order survives


@pytest.mark.parametrize(
    "spec, message",
    [
        ("compost-city", "unknown taxonomy 'compost-city'"),
        ("missing.yaml", "taxonomy file not found: missing.yaml"),
        ("conf/city.yml", "taxonomy file not found: conf/city.yml"),
    ],
)
def test_unknown_names_and_missing_files(spec, message):
    with pytest.raises(ConfigError, match=message):
        load_taxonomy(spec)


@pytest.mark.parametrize(
    "text, message",
    [
        ("recyclable: [can]\n", "expected a 'bins:' mapping"),
        ("bins: [can, jar]\n", "expected a 'bins:' mapping"),
        ("- just\n- a list\n", "expected a 'bins:' mapping"),
        ("bins:\n  recyclable: can\n", "bin 'recyclable' must be a list of class names, got str"),
        ("bins:\n  recyclable: [can, yes]\n", "bin 'recyclable' has True, not a class name"),
        ("bins: {a: [x\n", "is not valid YAML"),
        ("bins:\n  a: [can]\n  b: [jar, can]\n", "maps class 'can' in two bins, 'a' and 'b'"),
        ("bins:\n  a: [can, can]\n", "maps class 'can' twice in bin 'a'"),
    ],
)
def test_bad_yaml_files_fail_with_one_clear_line_naming_the_file(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_taxonomy(path)
    assert "\n" not in str(info.value)
    if "twice" not in message and "two bins" not in message:
        assert str(path) in str(info.value)


def test_empty_bin_written_as_nothing_is_an_empty_list(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("bins:\n  recyclable: [can]\n  compostable:\n")
    assert load_taxonomy(path).bins == {"recyclable": ["can"], "compostable": []}


# ---------------------------------------------------------------------------- checking


def test_unmapped_model_class_is_an_error_naming_it():
    with pytest.raises(ConfigError, match="does not map model class 'battery'"):
        load_taxonomy("trashnet", TRASHNET + ["battery"])


def test_taxonomy_classes_missing_from_the_model_are_ignored():
    tax = load_taxonomy("household", ["newspaper", "tea_bags"])
    assert tax.class_to_bin_index(["newspaper", "tea_bags"]).tolist() == [0, 1]


def test_check_catches_classes_mapped_twice_after_editing():
    tax = load_taxonomy("trashnet")
    tax.bins["landfill"].append("glass")
    with pytest.raises(ConfigError, match="'glass' in two bins"):
        tax.check(TRASHNET)


def test_repeated_model_class_is_an_error():
    with pytest.raises(ConfigError, match="repeats 'glass'"):
        load_taxonomy("trashnet", TRASHNET + ["glass"])


def test_bin_of_unknown_class():
    with pytest.raises(ConfigError, match="'battery' is not mapped"):
        load_taxonomy("trashnet").bin_of("battery")


# ------------------------------------------------------------------------------ arrays


def test_class_to_bin_index_follows_model_order():
    classes = ["trash", "glass", "paper"]
    assert load_taxonomy("trashnet").class_to_bin_index(classes).tolist() == [2, 0, 0]


def test_bin_probabilities_sum_classes_per_bin_in_bin_names_order():
    tax = load_taxonomy("trashnet")
    classes = ["trash", "paper", "cardboard", "glass", "metal", "plastic"]  # model order
    probs = np.array(
        [
            [0.10, 0.45, 0.40, 0.05, 0.0, 0.0],  # torn between paper and cardboard
            [0.70, 0.10, 0.05, 0.05, 0.05, 0.05],
        ],
        dtype=np.float32,
    )
    out = tax.bin_probabilities(probs, classes)
    assert out.shape == (2, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.9, 0.0, 0.1], [0.3, 0.0, 0.7]], atol=1e-6)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(tax.bin_probabilities(probs[0], classes), out[0])  # 1-D


def test_bin_probabilities_rejects_mismatched_shapes_and_unmapped_classes():
    tax = load_taxonomy("trashnet")
    with pytest.raises(ValueError, match="do not match 6 classes"):
        tax.bin_probabilities(np.ones((2, 5)), TRASHNET)
    with pytest.raises(ConfigError, match="'battery'"):
        tax.bin_probabilities(np.ones((1, 2)), ["glass", "battery"])


# ------------------------------------------------------------------------- defaults


def test_default_taxonomy_for_matches_exact_class_sets_only():
    assert default_taxonomy_for(reversed(TRASHNET)).name == "trashnet"
    assert default_taxonomy_for(sum(HOUSEHOLD.values(), [])).name == "household"
    assert default_taxonomy_for(TRASHNET[:-1]) is None
    assert default_taxonomy_for(TRASHNET + ["battery"]) is None


def test_identity_taxonomy_maps_each_class_to_its_own_bin():
    tax = identity_taxonomy(["cans", "jars"])
    assert tax.bins == {"cans": ["cans"], "jars": ["jars"]}
    probs = np.array([[0.25, 0.75]])
    np.testing.assert_allclose(tax.bin_probabilities(probs, ["cans", "jars"]), probs)


# ------------------------------------------------------------------------- the one fallback
def test_taxonomy_for_a_model_takes_the_given_one_else_a_matching_builtin_else_one_bin_per_class():
    from wastenet.taxonomy import resolve_taxonomy

    assert resolve_taxonomy("trashnet", TRASHNET).name == "trashnet"
    assert resolve_taxonomy(None, list(reversed(TRASHNET))).name == "trashnet"  # the built-in with these classes
    assert resolve_taxonomy({}, ["cans", "jars"]).bins == {"cans": ["cans"], "jars": ["jars"]}  # empty: no taxonomy
    with pytest.raises(ConfigError):
        resolve_taxonomy({"bins": {"recyclable": ["cans"]}}, ["cans", "jars"])  # the given one is checked


def test_the_classifier_falls_back_the_same_way():
    from wastenet.inference.predictor import Classifier
    from wastenet.preprocessing import Preprocessing

    prep = Preprocessing(input_size=8, resize_size=8, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bilinear")
    assert Classifier(None, classes=TRASHNET, preprocessing=prep).taxonomy.name == "trashnet"
    assert Classifier(None, classes=["cans", "jars"], preprocessing=prep).taxonomy.name == "identity"
    with pytest.raises(ConfigError):
        Classifier(None, classes=["cans", "jars"], preprocessing=prep, taxonomy={"bins": {"x": ["cans"]}})
