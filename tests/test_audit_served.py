"""Audits in the decision log and the service: a seeded random share of automatic decisions kept for
review, labelled like manual-sort items, and the live figures they give (issue 22; DESIGN "The site loop")."""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
import sys

import pytest
from PIL import Image

from conftest import make_image
from wastenet.audit import AuditDraw, audit_draw
from wastenet.model_identity import model_id
from wastenet.serve.decision_log import DecisionLog

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from wastenet.serve.app import create_app  # noqa: E402

LOCAL = "http://127.0.0.1"  # the service refuses Host names it does not serve

AUTO_PRED = {"label": "glass", "confidence": 0.97, "bin": "recyclable", "bin_confidence": 0.99, "decision": "recyclable"}
UNSURE_PRED = {"label": "paper", "confidence": 0.4, "bin": "compostable", "bin_confidence": 0.5,
               "decision": "manual_sort", "reason": "low_confidence"}


def jpeg(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    make_image("glass", seed).save(buf, "JPEG")
    return buf.getvalue()


def photo_of(log: DecisionLog, row_id: int) -> bytes | None:
    return log.image(row_id)


# ------------------------------------------------------------------ the log


def test_the_draw_is_seeded_by_the_row_id_and_logged_with_the_row(tmp_path):
    log = DecisionLog(tmp_path / "d.sqlite")
    draw = AuditDraw(rate=0.3, seed=7)
    ids = [log.record(AUTO_PRED, jpeg(i), f"{i}.jpg", 0.9, "m.pt", audit=draw) for i in range(60)]
    for row_id in ids:
        row = log.get(row_id)
        u = audit_draw(7, row_id)
        assert row["audit_u"] == pytest.approx(u) and row["audit_seed"] == 7 and row["audit_rate"] == 0.3
        assert row["kind"] == ("audit" if u < 0.3 else "auto") == row_id.kind
        assert row["has_image"] == (row["kind"] == "audit")  # only audits keep an automatic decision's photo
    audits = sum(log.get(i)["kind"] == "audit" for i in ids)
    assert 5 <= audits <= 35  # ~18 of 60 at 0.3: random, never all or none


def test_manual_sort_stays_manual_sort_and_no_draw_means_no_audits(tmp_path):
    log = DecisionLog(tmp_path / "d.sqlite")
    m = log.record(UNSURE_PRED, jpeg(), "u.jpg", 0.9, "m.pt", audit=AuditDraw(rate=1.0, seed=1))
    a = log.record(AUTO_PRED, jpeg(), "a.jpg", 0.9, "m.pt")  # audits off
    assert (m.kind, a.kind) == ("manual_sort", "auto")
    assert log.get(a)["audit_u"] is None and not log.get(a)["has_image"]


def test_audits_wait_in_the_review_queue_beside_manual_sort_items(tmp_path):
    log = DecisionLog(tmp_path / "d.sqlite")
    a = log.record(AUTO_PRED, jpeg(), "a.jpg", 0.9, "m.pt", audit=AuditDraw(rate=1.0, seed=1))
    m = log.record(UNSURE_PRED, jpeg(), "u.jpg", 0.9, "m.pt")
    assert [(it["id"], it["kind"]) for it in log.pending_reviews()] == [(m, "manual_sort"), (a, "audit")]
    assert log.pending_count() == 2


def test_a_review_fixes_the_bin_of_its_label(tmp_path):
    log = DecisionLog(tmp_path / "d.sqlite")
    log.set_classes(["glass", "paper"], {"glass": "recyclable", "paper": "compostable"})
    a = log.record(AUTO_PRED, jpeg(), "a.jpg", 0.9, "m.pt", audit=AuditDraw(rate=1.0, seed=1))
    assert log.review(a, "paper")["reviewed_bin"] == "compostable"
    assert log.review(a, "food", bin="compostable")["reviewed_bin"] == "compostable"  # an explicit bin wins


def test_a_log_from_before_audits_gets_its_kinds_on_open(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript("""CREATE TABLE decisions (id INTEGER PRIMARY KEY AUTOINCREMENT, created_at TEXT NOT NULL,
            source TEXT, label TEXT, confidence REAL, bin TEXT, bin_confidence REAL, decision TEXT NOT NULL,
            threshold REAL, model TEXT, image BLOB, image_name TEXT, reviewed_label TEXT, reviewed_at TEXT);
            INSERT INTO decisions (created_at, decision, image) VALUES ('2026-01-01', 'manual_sort', x'ff'),
                                                                     ('2026-01-01', 'recyclable', NULL);""")
    log = DecisionLog(path)
    assert [log.get(i)["kind"] for i in (1, 2)] == ["manual_sort", "auto"]
    assert [it["id"] for it in log.pending_reviews()] == [1]


def test_a_labelled_audit_is_protected_from_the_cap_like_any_reviewed_label(tmp_path):
    log = DecisionLog(tmp_path / "d.sqlite", max_bytes=400_000)
    draw = AuditDraw(rate=1.0, seed=3)
    first = log.record(AUTO_PRED, jpeg(0), "0.jpg", 0.9, "m.pt", audit=draw)
    log.review(first, "glass")
    noise = lambda s: Image.effect_noise((900, 900), 120 + s).convert("RGB")  # noqa: E731 - big, incompressible
    for i in range(40):
        log.record(AUTO_PRED, noise(i), f"{i}.jpg", 0.9, "m.pt", audit=draw)
    assert log.disk_bytes() <= 400_000
    assert photo_of(log, first) is not None  # the labelled audit kept its photo; unlabelled ones made room


# ------------------------------------------------------------------ the service


@pytest.fixture()
def audited(unsure_classifier, tmp_path):
    app = create_app(unsure_classifier, log_path=tmp_path / "d.sqlite", audit_rate=1.0, audit_seed=5,
                     threshold=0.0)  # threshold 0: every item is sorted automatically, every one audited
    with TestClient(app, base_url=LOCAL) as c:
        yield c


def token(c) -> dict:
    return {"Authorization": f"Bearer {c.app.state.review_token}"}


def test_an_audited_answer_says_so_and_waits_for_review(audited, tiny_checkpoint):
    big = io.BytesIO()
    make_image("glass", 1, size=(3000, 2200)).save(big, "PNG")
    p = audited.post("/api/predict", files={"file": ("a.png", big.getvalue(), "image/png")}).json()
    assert p.get("kind") == "audit" and p["decision"] != "manual_sort", p
    queue = audited.get("/api/review", headers=token(audited)).json()
    assert [(it["id"], it["kind"]) for it in queue["items"]] == [(p["id"], "audit")]
    # the same rules as a manual-sort photo: the token, and a JPEG of at most 1024 px
    assert audited.get(f"/api/review/{p['id']}/image").status_code == 401
    stored = audited.get(f"/api/review/{p['id']}/image", headers=token(audited))
    assert stored.status_code == 200 and stored.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(stored.content)).size) == 1024
    h = audited.get("/api/health").json()
    assert h["audit_rate"] == 1.0 and h["model_id"] == p["model_id"] == model_id(tiny_checkpoint)


def test_stats_need_the_token_and_estimate_contamination_from_labelled_audits(audited):
    assert audited.get("/api/stats").status_code == 401
    answers = [audited.post("/api/predict", files={"file": (f"{i}.jpg", jpeg(i), "image/jpeg")}).json()
               for i in range(6)]
    classes = audited.get("/api/health").json()["class_bins"]
    for p in answers[:4]:  # a reviewer labels four: two of them with a class of another bin
        wrong = p["label"] if p is answers[0] or p is answers[1] else next(c for c, b in classes.items()
                                                                          if b != p["decision"])
        r = audited.post(f"/api/review/{p['id']}", json={"label": wrong}, headers=token(audited))
        assert r.status_code == 200
    s = audited.get("/api/stats", headers=token(audited)).json()
    (m,) = s["models"]
    assert m["all"]["decisions"] == 6 and m["all"]["audits_drawn"] == 6 and m["all"]["audits_labelled"] == 4
    c = m["all"]["contamination"]
    assert (c["k"], c["n"], c["show_value"]) == (2, 4, False) and c["low"] < 0.5 < c["high"]
    assert "random share" in s["note"]
    later = audited.get("/api/stats?since=2999-01-01", headers=token(audited)).json()
    assert later["models"] == []
    assert audited.get("/api/stats?since=yesterday", headers=token(audited)).status_code == 400


def test_review_stats_prints_the_same_figures_offline_torch_free(audited, tmp_path):
    p = audited.post("/api/predict", files={"file": ("a.jpg", jpeg(), "image/jpeg")}).json()
    audited.post(f"/api/review/{p['id']}", json={"label": p["label"]}, headers=token(audited))
    db = audited.app.state.decision_log.path
    api = audited.get("/api/stats", headers=token(audited)).json()
    # a fresh interpreter that cannot import torch: the bin computer's edge install
    code = ("import sys; sys.modules['torch'] = None; from wastenet.cli import main; "
            f"sys.exit(main(['review', '--log-db', {str(db)!r}, '--stats', '--format', 'json']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["models"] == api["models"]
    table = subprocess.run([sys.executable, "-m", "wastenet", "review", "--log-db", str(db), "--stats"],
                           capture_output=True, text=True, timeout=120)
    assert table.returncode == 0 and "contamination" in table.stdout and "(n=1)" in table.stdout
    bad = subprocess.run([sys.executable, "-m", "wastenet", "review", "--log-db", str(db), "--stats", "--since", "x"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_audit_options_are_checked_before_anything_loads(tmp_path):
    from wastenet.errors import ConfigError
    from wastenet.serve.settings import ServeSettings

    with pytest.raises(ConfigError, match="--audit-rate"):
        ServeSettings(checkpoint=None, audit_rate=1.5)
    with pytest.raises(ConfigError, match="--audit-seed"):
        ServeSettings(checkpoint=None, audit_seed=-1)
    assert ServeSettings(checkpoint=None).audit_rate == 0.02
