"""Adaptation inside the service: a background run from the log's reviewed items, versions listed and
activated (rollback), the active version surviving a restart, swaps under load with no failed request,
and an .onnx server that says it cannot adapt (issue 23 items 1-3; DESIGN "The site loop")."""

from __future__ import annotations

import io
import re
import threading
import time

import pytest

from conftest import make_image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from wastenet.model_identity import model_id  # noqa: E402
from wastenet.serve.app import create_app  # noqa: E402

LOCAL = "http://127.0.0.1"
CLASSES = ("glass", "metal", "paper")


def jpeg(cls: str, seed: int) -> bytes:
    buf = io.BytesIO()
    make_image(cls, seed).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture()
def site(tiny_checkpoint, tmp_path):
    """The tiny model with one class per bin (so nothing is sure of its bin), beside a fresh log."""
    from wastenet import checkpoint

    ckpt = checkpoint.load(tiny_checkpoint)
    ckpt["taxonomy"] = {"name": "split", "bins": {"recyclable": ["glass"], "compostable": ["paper"],
                                                  "landfill": ["metal"]}}
    return checkpoint.save(ckpt, tmp_path / "best.pt"), tmp_path / "decisions.sqlite"


def _client(model, db, **options):
    # threshold 1: every item goes to manual sort, so every one is reviewed and learned from
    return TestClient(create_app(model, log_path=db, threshold=1.0, audit_rate=0.0, **options), base_url=LOCAL)


def _stream_and_review(c, n_per_class: int = 8) -> None:
    auth = {"Authorization": f"Bearer {c.app.state.review_token}"}
    for i in range(n_per_class):
        for k, cls in enumerate(CLASSES):
            p = c.post("/api/predict", files={"file": ("x.jpg", jpeg(cls, 100 * k + i), "image/jpeg")}).json()
            assert c.post(f"/api/review/{p['id']}", json={"label": cls}, headers=auth).status_code == 200


def _wait_idle(c, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        a = c.get("/api/health").json()["adaptation"]
        if a["state"] not in ("running", "preparing"):
            return a
        time.sleep(0.5)
    pytest.fail("the adaptation did not finish")


def _mix_split(image_folder, tmp_path):
    """A rehearsal split file of ``image_folder``: every other photo train, the rest val."""
    rows = sorted(p.relative_to(image_folder).as_posix() for p in image_folder.rglob("*.jpg"))
    split = tmp_path / "mix-split.csv"
    split.write_text("path,label,split\n" + "".join(f"{r},{r.split('/')[0]},{('train', 'val')[i % 2]}\n"
                                                      for i, r in enumerate(rows)))
    return split


def _hold_back_preparation(monkeypatch, seconds: int) -> list:
    """Start every rehearsal preparation ``seconds`` late (the tiny model's takes a moment); returns the list
    of the preparations' commands, filled as they start."""
    import subprocess

    real_popen, spawned = subprocess.Popen, []

    def late(cmd, **kw):
        if "--prepare-rehearsal" in cmd:
            spawned.append(cmd)
            cmd = ["sh", "-c", f'sleep {seconds}; exec "$@"', "sh", *cmd]
        return real_popen(cmd, **kw)

    monkeypatch.setattr(subprocess, "Popen", late)
    return spawned


def test_adapt_via_the_api_lists_a_version_and_activation_rolls_back_and_survives_a_restart(site):
    model, db = site
    with _client(model, db) as c:
        auth = {"Authorization": f"Bearer {c.app.state.review_token}"}
        _stream_and_review(c)
        assert c.post("/api/models/adapt").status_code == 401  # it changes what the bin does: the token
        r = c.post("/api/models/adapt", json={}, headers=auth)
        assert r.status_code == 202 and r.json()["state"] == "running"
        assert c.post("/api/models/adapt", json={}, headers=auth).status_code == 409  # one at a time
        last = _wait_idle(c)["last"]
        assert last["exit_status"] == 0, last
        listed = c.get("/api/models").json()
        assert [v["id"] for v in listed["versions"]] == [0, 1]
        v1 = listed["versions"][1]
        assert v1["parent"] == 0 and v1["reason"] and set(v1["scores"]) == {"current", "candidate"}
        assert len(v1["inputs"]["held_out"]) == 4 and not set(v1["inputs"]["held_out"]) & set(v1["inputs"]["trained_on"])
        assert listed["active"] == (1 if v1["promoted"] else 0)  # promoted only if it beat the model

        # activate version 1 (a promotion by hand) and roll back to 0: rows name the version that decided
        assert c.post("/api/models/1/activate", json={}, headers=auth).json()["active"] == 1
        p = c.post("/api/predict", files={"file": ("a.jpg", jpeg("glass", 1), "image/jpeg")}).json()
        assert (p["model_version"], p["model_id"]) == (1, model_id(v1["file"]))
        assert c.post("/api/models/9/activate", json={}, headers=auth).status_code == 404
    with _client(model, db) as c:  # a restart: version 1 is still the active one
        assert c.get("/api/health").json()["model_version"] == 1
        auth = {"Authorization": f"Bearer {c.app.state.review_token}"}
        assert c.post("/api/models/0/activate", json={}, headers=auth).json()["model_id"] == model_id(model)


def test_swaps_under_load_fail_no_request(site):
    model, db = site
    with _client(model, db) as c:
        auth = {"Authorization": f"Bearer {c.app.state.review_token}"}
        _stream_and_review(c, n_per_class=7)
        c.post("/api/models/adapt", json={}, headers=auth)
        assert _wait_idle(c)["last"]["exit_status"] == 0
        statuses, stop = [], threading.Event()

        def client_loop(k: int) -> None:
            while not stop.is_set():
                r = c.post("/api/predict", files={"file": ("x.jpg", jpeg(CLASSES[k], 7), "image/jpeg")})
                statuses.append((r.status_code, r.json().get("model_version")))

        threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        for vid in (1, 0, 1, 0, 1):
            assert c.post(f"/api/models/{vid}/activate", json={}, headers=auth).status_code == 200
        stop.set()
        for t in threads:
            t.join()
        assert statuses and all(code == 200 for code, _ in statuses)
        assert {v for _, v in statuses} <= {0, 1}


def test_an_onnx_server_says_it_cannot_adapt(site, tmp_path):
    pytest.importorskip("onnxruntime")
    from wastenet.export.onnx import export_onnx

    model, db = site
    onnx_file = export_onnx(model, tmp_path / "m.onnx").path
    with TestClient(create_app(onnx_file, log_path=db), base_url=LOCAL) as c:
        h = c.get("/api/health").json()["adaptation"]
        assert h["can_adapt"] is False and "cannot adapt" in h["reason"]
        r = c.post("/api/models/adapt", json={}, headers={"Authorization": f"Bearer {c.app.state.review_token}"})
        assert r.status_code == 409 and "cannot adapt" in r.json()["error"]


def test_adapt_options_are_checked_before_anything_loads(tmp_path):
    from wastenet.errors import ConfigError
    from wastenet.serve.settings import ServeSettings

    with pytest.raises(ConfigError, match="--adapt-every"):
        ServeSettings(checkpoint=None, adapt_every=0)
    with pytest.raises(ConfigError, match="--adapt-mix needs --adapt-mix-split"):
        ServeSettings(checkpoint=None, adapt_mix=str(tmp_path))
    with pytest.raises(ConfigError, match="--adapt-mix-per-class goes with --adapt-mix"):
        ServeSettings(checkpoint=None, adapt_mix_per_class=200)
    (tmp_path / "split.csv").write_text("path,label,split\n")
    with pytest.raises(ConfigError, match="--adapt-mix-per-class must be at least 1"):
        ServeSettings(checkpoint=None, adapt_mix=str(tmp_path), adapt_mix_split=str(tmp_path / "split.csv"),
                      adapt_mix_per_class=0)
    with pytest.raises(ConfigError, match="--adapt-compare must be one of class, sorted"):
        ServeSettings(checkpoint=None, adapt_compare="bins")
    with pytest.raises(ConfigError, match="--adapt-holdout-max must be a whole number of at least 1"):
        ServeSettings(checkpoint=None, adapt_holdout_max=0)
    with pytest.raises(ConfigError, match="--adapt-max-forgetting goes with --adapt-mix"):
        ServeSettings(checkpoint=None, adapt_max_forgetting=1.0)
    with pytest.raises(ConfigError, match="--adapt-max-forgetting must be a number of points from 0 to 100"):
        ServeSettings(checkpoint=None, adapt_mix=str(tmp_path), adapt_mix_split=str(tmp_path / "split.csv"),
                      adapt_max_forgetting=-1.0)


def test_the_rehearsal_options_reach_the_run_and_its_version(site, image_folder, tmp_path):
    """``serve --adapt-mix-per-class N``: the background run rehearses N images of every class, and says so;
    ``--adapt-max-forgetting P``: its forgetting check allows P points, against version 0;
    ``--adapt-holdout-max N``: it holds out at most N of the newest reviewed items; ``--adapt-compare sorted``:
    it is compared on the items each model sorts itself."""
    split = _mix_split(image_folder, tmp_path)
    model, db = site
    with _client(model, db, adapt_mix=str(image_folder), adapt_mix_split=str(split), adapt_mix_per_class=2,
                 adapt_max_forgetting=100.0, adapt_holdout_max=3, adapt_compare="sorted") as c:
        auth = {"Authorization": f"Bearer {c.app.state.review_token}"}
        _stream_and_review(c)
        assert c.post("/api/models/adapt", json={}, headers=auth).status_code == 202
        assert _wait_idle(c)["last"]["exit_status"] == 0
        assert c.get("/api/health").json()["adaptation"]["compare"] == "sorted"  # the page says so
        v1 = c.get("/api/models").json()["versions"][1]
    assert v1["inputs"]["rehearsal_per_class"] == 2
    assert len(v1["inputs"]["held_out"]) == 3 and v1["inputs"]["holdout_max"] == 3  # not 20% of 24 (4)
    assert v1["inputs"]["compare"] == "sorted"
    assert not re.search(r"class accuracy \d", v1["reason"])  # the default rule's words: "class accuracy 0.5 -> ..."
    forgot = v1["scores"]["forgetting"]
    assert forgot["allowed_points"] == 100 and forgot["reference_model"] == str(model)  # version 0
    assert forgot["n"] == 3 and 0 <= forgot["candidate"] <= 1  # one val photo of each class
    assert "(+6 rehearsal)" in (db.parent / "models" / "adapt.log").read_text()  # 2 of each of 3 classes


def test_a_server_with_a_rehearsal_set_prepares_its_features_at_start_and_a_run_waits_for_them(site, image_folder,
                                                                                                tmp_path, monkeypatch):
    """``--adapt-mix``: from its start the server computes the rehearsal set's features in the background
    (state ``preparing``) while it answers; a run asked for meanwhile is queued, starts when they are ready,
    and reads them instead of computing them."""
    _hold_back_preparation(monkeypatch, 15)  # the tiny model's would end before the reviews
    split = _mix_split(image_folder, tmp_path)
    model, db = site
    with _client(model, db, adapt_mix=str(image_folder), adapt_mix_split=str(split), adapt_mix_per_class=2) as c:
        auth = {"Authorization": f"Bearer {c.app.state.review_token}"}
        assert c.get("/api/health").json()["adaptation"]["state"] == "preparing"
        assert c.post("/api/predict", files={"file": ("x.jpg", jpeg("glass", 1), "image/jpeg")}).status_code == 200
        _stream_and_review(c)
        r = c.post("/api/models/adapt", json={}, headers=auth)
        assert r.status_code == 202
        assert (r.json()["state"], r.json()["queued"]) == ("preparing", "api")  # it waits for the features
        last = _wait_idle(c)["last"]
        a = c.get("/api/health").json()["adaptation"]
    assert a["rehearsal"]["exit_status"] == 0 and a["queued"] is None
    assert last["exit_status"] == 0 and last["version"] == 1, last
    assert len(list((db.parent / "models" / ".feature-cache").glob("rehearsal-*.npz"))) == 1
    assert "rehearsal features computed" in (db.parent / "models" / "prepare.log").read_text()
    assert "rehearsal features read from" in (db.parent / "models" / "adapt.log").read_text()


def test_a_run_outlives_the_thread_that_asked_for_it(site):
    """A run is started by whichever thread asks (a request's worker, which anyio stops after 10 s idle; the
    watcher that ends when the rehearsal features are ready), and it must not die with that thread."""
    model, db = site
    with _client(model, db) as c:
        _stream_and_review(c)
        asker = threading.Thread(target=c.app.state.service.adaptation.start, args=("a short-lived thread",))
        asker.start()
        asker.join()
        last = _wait_idle(c)["last"]
    assert last["exit_status"] == 0 and last["version"] == 1, last  # not -9: killed when its thread ended


def test_adapt_every_n_starts_a_run_after_n_new_reviewed_items(site):
    model, db = site
    with _client(model, db, adapt_every=20) as c:
        assert c.get("/api/health").json()["adaptation"]["state"] == "idle"
        _stream_and_review(c, n_per_class=6)  # 18 reviewed: not yet
        assert c.get("/api/health").json()["adaptation"]["state"] == "idle"
        _stream_and_review(c, n_per_class=1)  # 21: a run starts by itself
        a = c.get("/api/health").json()["adaptation"]
        assert a["state"] in ("running", "idle") and (a["state"] == "running" or a["last"] is not None)
        assert _wait_idle(c)["last"]["exit_status"] == 0


def test_adapt_every_counts_from_the_last_run_of_any_worker_and_across_a_restart(site):
    """``serve --workers N --adapt-every N``: the count is the log's, so a worker that did not start the last run
    waits for N new reviewed items since that run too, and a restart keeps the count instead of starting it
    again from zero."""
    model, db = site
    with _client(model, db, adapt_every=20) as a, _client(model, db, adapt_every=20) as b:
        _stream_and_review(a, n_per_class=7)  # 21 reviewed through a: its run starts
        assert _wait_idle(a)["last"]["exit_status"] == 0
        _stream_and_review(b, n_per_class=1)  # 3 more through b, which never ran one: not due
        assert b.get("/api/health").json()["adaptation"]["state"] == "idle"
        assert b.get("/api/health").json()["adaptation"]["last"] is None
        _stream_and_review(b, n_per_class=5)  # 18 since a's run: still not due
        assert b.get("/api/health").json()["adaptation"]["last"] is None
    with _client(model, db, adapt_every=20) as c:  # a restart: 18 of the 20 are already in
        assert c.get("/api/health").json()["adaptation"]["state"] == "idle"
        _stream_and_review(c, n_per_class=1)  # 21 since the last run: one starts
        last = _wait_idle(c)["last"]
        assert last is not None and last["exit_status"] == 0, last


def test_the_workers_of_one_server_run_one_adaptation_at_a_time_and_all_serve_the_active_version(site):
    """``serve --workers N``: each worker is its own service on the same log and versions folder. A run started
    through one keeps the others from starting theirs, and a version promoted or activated through one is
    the version every worker serves (they follow the folder's ``active`` pointer)."""
    model, db = site
    with _client(model, db) as a, _client(model, db) as b:
        auth_a = {"Authorization": f"Bearer {a.app.state.review_token}"}
        auth_b = {"Authorization": f"Bearer {b.app.state.review_token}"}
        _stream_and_review(a)
        assert a.post("/api/models/adapt", json={}, headers=auth_a).status_code == 202
        r = b.post("/api/models/adapt", json={}, headers=auth_b)
        assert r.status_code == 409 and "another worker" in r.json()["error"]
        assert _wait_idle(a)["last"]["exit_status"] == 0
        assert a.post("/api/models/1/activate", json={}, headers=auth_a).json()["active"] == 1
        deadline = time.monotonic() + 30
        while b.get("/api/health").json()["model_version"] != 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        p = b.post("/api/predict", files={"file": ("a.jpg", jpeg("glass", 1), "image/jpeg")}).json()
        assert p["model_version"] == 1  # the other worker decides with version 1 too
        assert b.post("/api/models/0/activate", json={}, headers=auth_b).json()["active"] == 0  # a rollback
        deadline = time.monotonic() + 30
        while a.get("/api/health").json()["model_version"] != 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert a.get("/api/health").json()["model_version"] == 0
        assert b.post("/api/models/adapt", json={}, headers=auth_b).status_code == 202  # free again
        assert _wait_idle(b)["last"]["exit_status"] == 0


def test_only_one_worker_prepares_the_rehearsal_features(site, image_folder, tmp_path, monkeypatch):
    """``--workers N --adapt-mix``: the features are the same for every worker, so the first one computes them
    and the others neither compute them again nor start a run meanwhile."""
    spawned = _hold_back_preparation(monkeypatch, 10)
    split = _mix_split(image_folder, tmp_path)
    model, db = site
    mix = dict(adapt_mix=str(image_folder), adapt_mix_split=str(split), adapt_mix_per_class=2)
    with _client(model, db, **mix) as a, _client(model, db, **mix) as b:
        assert a.get("/api/health").json()["adaptation"]["state"] == "preparing"
        assert b.get("/api/health").json()["adaptation"]["state"] == "idle" and len(spawned) == 1
        _stream_and_review(b)
        r = b.post("/api/models/adapt", json={}, headers={"Authorization": f"Bearer {b.app.state.review_token}"})
        assert r.status_code == 409 and "another worker" in r.json()["error"]
        assert _wait_idle(a)["rehearsal"]["exit_status"] == 0
    assert len(list((db.parent / "models" / ".feature-cache").glob("rehearsal-*.npz"))) == 1
