"""The web service: every endpoint, every kind of bad upload, the decision log, concurrency."""

from __future__ import annotations

import base64
import io
import re
import sqlite3
import threading
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from conftest import make_image  # noqa: E402
from wastenet.model_identity import model_id  # noqa: E402
from wastenet.serve.app import create_app  # noqa: E402
from wastenet.serve.body_limit import BodyLimitMiddleware  # noqa: E402


def TestClient(app, **kwargs):  # noqa: N802 - the service refuses Host names it does not serve
    """Starlette's client as a browser on this machine sees the server (Host 127.0.0.1)."""
    from fastapi.testclient import TestClient as Client

    return Client(app, **{"base_url": "http://127.0.0.1", **kwargs})


def auth(client) -> dict[str, str]:
    return {"Authorization": f"Bearer {client.app.state.review_token}"}

STATIC = Path(__file__).resolve().parents[1] / "src" / "wastenet" / "serve" / "static"
DESIGN_FIELDS = ("path", "label", "confidence", "bin", "decision", "error")


def jpeg_bytes(cls: str = "glass", seed: int = 0, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    make_image(cls, seed).save(buf, fmt)
    return buf.getvalue()


def upload(data: bytes, name: str = "item.jpg", ctype: str = "image/jpeg") -> dict:
    return {"file": (name, data, ctype)}


@pytest.fixture(scope="module")
def classifier(tiny_checkpoint):
    from wastenet.inference.predictor import Classifier

    return Classifier.load(tiny_checkpoint)


@pytest.fixture()
def client(tiny_checkpoint, tmp_path):
    app = create_app(tiny_checkpoint, log_path=tmp_path / "decisions.sqlite")
    with TestClient(app) as c:
        yield c


@pytest.fixture()
def unsure_client(unsure_classifier, tmp_path):
    # no audits: the review-queue tests count exactly the manual-sort items (tests/test_audit_served.py has audits)
    app = create_app(unsure_classifier, log_path=tmp_path / "decisions.sqlite", audit_rate=0.0)
    with TestClient(app) as c:
        yield c


def rows(client: TestClient) -> list[dict]:
    path = client.app.state.decision_log.path
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM decisions ORDER BY id")]


# --------------------------------------------------------------------------- health / predict


def test_health(client):
    r = client.get("/api/health")
    assert r.status_code == 200
    h = r.json()
    assert h["status"] == "ok"
    assert h["model"] == "test_resnet"
    assert h["classes"] == ["glass", "metal", "paper"]
    assert h["bins"] == ["recyclable", "compostable", "landfill"]
    assert h["threshold"] == pytest.approx(0.9)
    assert h["backend"] == "torch"
    assert h["class_bins"] == {"glass": "recyclable", "metal": "recyclable", "paper": "recyclable"}


def test_predict_returns_design_fields_and_logs(client, tiny_checkpoint):
    data = jpeg_bytes()
    r = client.post("/api/predict", files=upload(data, "bottle.jpg"))
    assert r.status_code == 200, r.text
    p = r.json()
    for key in DESIGN_FIELDS + ("bin_confidence", "topk", "bin_probs", "id", "threshold"):
        assert key in p
    assert p["path"] == "bottle.jpg"
    assert p["label"] in ("glass", "metal", "paper")
    assert p["error"] is None
    assert p["bin"] == "recyclable" and p["decision"] == "recyclable"  # every class is recyclable here
    assert 0 <= p["confidence"] <= 1 and p["bin_confidence"] == pytest.approx(1.0)
    assert len(p["topk"]) == 3 and p["topk"][0]["label"] == p["label"]
    assert set(p["bin_probs"]) == {"recyclable", "compostable", "landfill"}
    logged = rows(client)
    assert len(logged) == 1
    row = logged[0]
    assert row["id"] == p["id"]
    assert (row["label"], row["decision"], row["bin"], row["image_name"], row["source"]) == (
        p["label"], "recyclable", "recyclable", "bottle.jpg", "api")
    # the version in every row (DESIGN "The site loop"): the model file's path and content hash
    assert row["model"] == str(tiny_checkpoint) and row["model_id"] == p["model_id"] == model_id(tiny_checkpoint)
    assert row["kind"] == p["kind"] in ("auto", "audit")
    assert row["confidence"] == pytest.approx(p["confidence"], abs=1e-6)
    # photos are kept only for manual sort and audits (a random 2% draw at the default rate: either may happen)
    assert (row["image"] is None) == (row["kind"] == "auto")


def test_predict_same_as_classifier(client, classifier):
    """The service's preprocessing shortcut (resize in the request thread) changes nothing."""
    data = jpeg_bytes("paper", 3)
    served = client.post("/api/predict", files=upload(data)).json()
    direct = classifier.predict([data])[0]
    assert served["label"] == direct.label
    assert served["confidence"] == pytest.approx(direct.confidence, abs=1e-6)


def test_predict_png_and_source_tag(client):
    r = client.post("/api/predict?source=camera", files=upload(jpeg_bytes(fmt="PNG"), "x.png", "image/png"))
    assert r.status_code == 200
    assert rows(client)[0]["source"] == "camera"
    r = client.post("/api/predict?source=<script>", files=upload(jpeg_bytes()))
    assert r.status_code == 200 and rows(client)[1]["source"] == "api"


def test_predict_without_logging(client):
    r = client.post("/api/predict?log=false", files=upload(jpeg_bytes()))
    assert r.status_code == 200
    assert r.json()["id"] is None
    assert rows(client) == []


def test_threshold_query(unsure_client):
    thr0 = unsure_client.post("/api/predict?threshold=0", files=upload(jpeg_bytes())).json()
    assert thr0["decision"] == thr0["bin"] and thr0["threshold"] == 0
    thr1 = unsure_client.post("/api/predict?threshold=1", files=upload(jpeg_bytes())).json()
    assert thr1["decision"] == "manual_sort" and thr1["threshold"] == 1


@pytest.mark.parametrize("value", ["-0.1", "1.5", "abc", "nan", "inf"])
def test_bad_threshold_is_400(client, value):
    r = client.post(f"/api/predict?threshold={value}", files=upload(jpeg_bytes()))
    assert r.status_code == 400
    assert "threshold" in r.json()["error"]
    assert rows(client) == []


# --------------------------------------------------------------------------- bad uploads


def test_zero_bytes(client):
    r = client.post("/api/predict", files=upload(b"", "empty.jpg"))
    assert r.status_code == 422
    assert r.json() == {"error": "cannot read image: empty file"}


def test_text_file(client):
    r = client.post("/api/predict", files=upload(b"just some text\n" * 10, "notes.txt", "text/plain"))
    assert r.status_code == 415
    assert "not an image" in r.json()["error"]


def test_truncated_jpeg(client):
    data = jpeg_bytes()
    r = client.post("/api/predict", files=upload(data[: len(data) // 2], "cut.jpg"))
    assert r.status_code == 422
    assert "truncated" in r.json()["error"]


def test_corrupt_png_header(client):
    data = jpeg_bytes(fmt="PNG")
    r = client.post("/api/predict", files=upload(data[:8] + b"\x00" * 40, "bad.png", "image/png"))
    assert r.status_code in (415, 422)
    assert r.json()["error"].startswith("cannot read image:")


def test_missing_field(client):
    r = client.post("/api/predict")
    assert r.status_code == 422 and "file" in r.json()["error"]
    r = client.post("/api/predict", files={"photo": ("x.jpg", jpeg_bytes(), "image/jpeg")})
    assert r.status_code == 422 and "file" in r.json()["error"]
    r = client.post("/api/predict", data={"file": "not a file"})
    assert r.status_code == 422 and "error" in r.json()
    r = client.post("/api/predict", json={"file": "x"})
    assert r.status_code == 422 and "error" in r.json()


def test_bad_query_types_use_error_json(client):
    r = client.post("/api/predict?explain=maybe", files=upload(jpeg_bytes()))
    assert r.status_code == 422
    assert set(r.json()) == {"error"} and "explain" in r.json()["error"]


def test_too_large_by_content_length(tiny_checkpoint, tmp_path):
    app = create_app(tiny_checkpoint, log_path=tmp_path / "d.sqlite", max_upload_bytes=20_000)
    with TestClient(app) as c:
        r = c.post("/api/predict", files=upload(b"\xff\xd8\xff" + b"\0" * 200_000))
        assert r.status_code == 413 and "too large" in r.json()["error"]
        # just over the limit: passes the body check (multipart margin), caught on the file
        r = c.post("/api/predict", files=upload(b"\xff\xd8\xff" + b"\0" * 20_000))
        assert r.status_code == 413
        assert c.post("/api/predict", files=upload(jpeg_bytes())).status_code == 200


def test_too_large_chunked_without_length(tiny_checkpoint, tmp_path):
    app = create_app(tiny_checkpoint, log_path=tmp_path / "d.sqlite", max_upload_bytes=20_000)

    def body():
        for _ in range(50):
            yield b"x" * 8192

    with TestClient(app) as c:
        r = c.post("/api/predict", content=body(),
                   headers={"Content-Type": "multipart/form-data; boundary=zzz"})
        assert r.status_code == 413 and "too large" in r.json()["error"]


@pytest.mark.parametrize("declared", [b"10", None])
def test_body_limit_counts_bytes_despite_lying_header(declared):
    """A header that under-states the body (or no header) cannot get past the limit."""
    import asyncio

    reached = []

    async def inner(scope, receive, send):  # pragma: no cover - must not be reached
        reached.append(True)

    mw = BodyLimitMiddleware(inner, limit=1000)
    chunks = [{"type": "http.request", "body": b"a" * 600, "more_body": True},
              {"type": "http.request", "body": b"a" * 600, "more_body": False}]
    sent = []

    async def receive():
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    headers = [(b"content-type", b"multipart/form-data; boundary=x")]
    if declared is not None:
        headers.append((b"content-length", declared))
    asyncio.run(mw({"type": "http", "method": "POST", "path": "/api/predict", "headers": headers},
                   receive, send))
    assert not reached
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 413


# --------------------------------------------------------------------------- explain / ONNX


def test_explain_returns_png_overlay(client):
    r = client.post("/api/predict?explain=true", files=upload(jpeg_bytes()))
    assert r.status_code == 200
    url = r.json()["explanation"]
    assert url.startswith("data:image/png;base64,")
    img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert img.format == "PNG" and img.size[0] == img.size[1]


@pytest.fixture(scope="module")
def tiny_onnx(tiny_checkpoint, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    try:
        from wastenet.export.onnx import export_onnx

        return export_onnx(tiny_checkpoint, tmp_path_factory.mktemp("onnx") / "tiny.onnx", opset=13).path
    except Exception as exc:  # noqa: BLE001 - the exporter is tested elsewhere
        pytest.skip(f"ONNX export unavailable: {exc}")


def test_onnx_backend(tiny_onnx, tmp_path):
    with TestClient(create_app(tiny_onnx, log_path=tmp_path / "d.sqlite")) as c:
        assert c.get("/api/health").json()["backend"] == "onnx"
        r = c.post("/api/predict?explain=true", files=upload(jpeg_bytes()))
        assert r.status_code == 200
        p = r.json()
        assert p["decision"] == "recyclable"
        assert p["explanation"] is None and "PyTorch" in p["explanation_error"]


# --------------------------------------------------------------------------- review loop


def test_manual_sort_is_stored_and_reviewable(unsure_client, tmp_path):
    c = unsure_client
    photos = [jpeg_bytes("glass", 1), jpeg_bytes("metal", 2), jpeg_bytes("paper", 3)]
    ids = []
    for i, data in enumerate(photos):
        p = c.post("/api/predict", files=upload(data, f"item{i}.jpg")).json()
        assert p["decision"] == "manual_sort"
        ids.append(p["id"])
    confident = c.post("/api/predict?threshold=0", files=upload(photos[0])).json()
    assert confident["decision"] != "manual_sort"

    listing = c.get("/api/review", headers=auth(c)).json()
    assert [it["id"] for it in listing["items"]] == ids[::-1]  # newest first
    assert listing["pending"] == 3 and listing["classes"] == ["glass", "metal", "paper"]
    first = listing["items"][0]
    for key in ("id", "created_at", "label", "confidence", "image_url"):
        assert key in first
    img = c.get(first["image_url"], headers=auth(c))
    assert img.status_code == 200 and img.headers["content-type"] == "image/jpeg"
    stored = Image.open(io.BytesIO(img.content))  # re-encoded: a bounded JPEG of the same photo
    assert stored.format == "JPEG" and stored.size == Image.open(io.BytesIO(photos[2])).size
    assert c.get(f"/api/review/{confident['id']}/image", headers=auth(c)).status_code == 404  # not kept
    assert c.get("/api/review/99999/image", headers=auth(c)).json()["error"]

    h = auth(c)
    assert c.post(f"/api/review/{ids[0]}", json={"label": "banana"}, headers=h).status_code == 400
    assert c.post(f"/api/review/{ids[0]}", json={}, headers=h).status_code == 400
    assert c.post(f"/api/review/{ids[0]}", content=b"{not json",
                  headers={"Content-Type": "application/json", **h}).status_code == 400
    assert c.post("/api/review/99999", json={"label": "glass"}, headers=h).status_code == 404
    assert c.post("/api/review/abc", json={"label": "glass"}, headers=h).status_code == 422

    r = c.post(f"/api/review/{ids[0]}", json={"label": "glass"}, headers=h)
    assert r.status_code == 200 and r.json()["reviewed_label"] == "glass"
    c.post(f"/api/review/{ids[1]}", json={"label": "metal"}, headers=h)
    c.post(f"/api/review/{ids[2]}", json={"label": "metal"}, headers=h)
    assert c.get("/api/review", headers=auth(c)).json() == {**listing, "items": [], "pending": 0}

    out = tmp_path / "reviewed"
    counts = c.app.state.decision_log.export_dataset(out)
    assert counts == {"glass": 1, "metal": 2}
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg")) == [
        f"glass/{ids[0]}_item0.jpg", f"metal/{ids[1]}_item1.jpg", f"metal/{ids[2]}_item2.jpg"]
    try:
        from wastenet.data.datasets import scan_folder
    except ImportError:
        return
    scanned, classes = scan_folder(out)
    assert classes == ["glass", "metal"] and len(scanned) == 3


# --------------------------------------------------------------------------- pages, errors


def test_pages_and_static(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    for element_id in ("file-input", "result", "label", "confidence", "bin", "decision", "topk"):
        assert f'id="{element_id}"' in r.text
    assert 'name="viewport"' in r.text and 'aria-live="polite"' in r.text
    for asset in ("app.js", "style.css", "review.js"):
        assert client.get(f"/static/{asset}").status_code == 200
    review = client.get("/review")
    assert review.status_code == 200 and 'id="label-buttons"' in review.text
    assert client.get("/docs").status_code == 200
    assert client.get("/openapi.json").json()["paths"]["/api/predict"]


def test_page_has_no_external_urls():
    for f in STATIC.iterdir():
        text = f.read_text("utf-8")
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), f"external URL in {f.name}"
        assert "@import" not in text


def test_unknown_routes_answer_json(client):
    r = client.get("/api/nothing")
    assert r.status_code == 404 and "error" in r.json()
    r = client.get("/api/predict")
    assert r.status_code == 405 and "error" in r.json()


def test_bad_create_app_arguments(tiny_checkpoint, tmp_path):
    from wastenet.errors import ConfigError

    with pytest.raises(ConfigError):
        create_app(tmp_path / "missing.pt", log_path=tmp_path / "d.sqlite")
    with pytest.raises(ConfigError):
        create_app(tiny_checkpoint, log_path=tmp_path / "d.sqlite", threshold=1.5)


# --------------------------------------------------------------------------- concurrency


def test_concurrent_requests(client, classifier):
    photos = {i: jpeg_bytes(("glass", "metal", "paper")[i % 3], i) for i in range(8)}
    expected = {i: p.confidence for i, p in enumerate(classifier.predict(list(photos.values())))}
    failures: list[str] = []
    results: list[tuple[int, float]] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker(k: int) -> None:
        start.wait()
        for _ in range(4):
            r = client.post("/api/predict", files=upload(photos[k], f"p{k}.jpg"))
            with lock:
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text}")
                else:
                    results.append((k, r.json()["confidence"]))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert len(results) == 32
    for k, conf in results:  # batching with other requests does not change an answer
        assert conf == pytest.approx(expected[k], abs=1e-5)
    logged = rows(client)
    assert len(logged) == 32 and len({r["id"] for r in logged}) == 32


class _PoisonedClassifier:
    """The real classifier, except that a pure red photo makes its whole batch fail."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def predict(self, images, **kwargs):
        if any(img.getpixel((0, 0)) == (255, 0, 0) for img in images):
            raise RuntimeError("poisoned batch")
        return self._inner.predict(images, **kwargs)


def test_one_failing_input_does_not_fail_its_batch(classifier, tmp_path):
    app = create_app(_PoisonedClassifier(classifier), log_path=tmp_path / "d.sqlite")
    red = io.BytesIO()
    Image.new("RGB", (40, 40), (255, 0, 0)).save(red, "PNG")
    good = jpeg_bytes()
    statuses: dict[int, int] = {}
    start = threading.Barrier(8)

    with TestClient(app, raise_server_exceptions=False) as c:
        def worker(k: int) -> None:
            start.wait()
            r = c.post("/api/predict", files=upload(red.getvalue() if k == 0 else good, f"{k}.png"))
            statuses[k] = r.status_code
            if k == 0:
                assert r.json()["error"].startswith("internal server error")

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert statuses == {0: 500, **{k: 200 for k in range(1, 8)}}


def test_onnx_service_runs_without_torch(tiny_onnx, tmp_path):
    """The edge install: an .onnx model served with PyTorch impossible to import."""
    import subprocess
    import sys

    code = f"""
import sys
for name in ("torch", "torchvision", "timm"):
    sys.modules[name] = None  # any import of them now raises ImportError
import io
from PIL import Image
from fastapi.testclient import TestClient
from wastenet.serve.app import create_app
app = create_app({str(tiny_onnx)!r}, log_path={str(tmp_path / "d.sqlite")!r})
buf = io.BytesIO(); Image.new("RGB", (50, 60), (20, 160, 60)).save(buf, "JPEG")
with TestClient(app, base_url="http://127.0.0.1") as c:
    assert c.get("/api/health").json()["backend"] == "onnx"
    r = c.post("/api/predict?explain=true", files={{"file": ("a.jpg", buf.getvalue(), "image/jpeg")}})
    assert r.status_code == 200, r.text
    assert r.json()["explanation"] is None
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]


def test_served_onnx_model_lets_idle_threads_sleep_unless_told_to_spin(tiny_checkpoint, tmp_path, monkeypatch):
    # spinning onnxruntime threads starve request decoding on a small machine (BENCHMARKS.md)
    from wastenet.export import onnx as ex
    from wastenet.inference.predictor import Classifier

    onnx_path = tmp_path / "model.onnx"
    ex.export_onnx(tiny_checkpoint, onnx_path)

    def spinning(clf) -> str:
        opts = clf.backend.session.get_session_options()
        try:
            return opts.get_session_config_entry("session.intra_op.allow_spinning")
        except RuntimeError:  # not set: onnxruntime's default (spin)
            return "default"

    served = create_app(onnx_path, log_path=tmp_path / "a.sqlite").state.classifier
    assert spinning(served) == "0"
    assert spinning(Classifier.load(onnx_path)) == "default"  # a plain load keeps onnxruntime's choice
    assert spinning(create_app(onnx_path, log_path=tmp_path / "b.sqlite", onnx_spin=True).state.classifier) == "default"


def test_worker_settings_cross_as_one_json_variable(tiny_checkpoint, tmp_path, monkeypatch):
    from wastenet.errors import ConfigError
    from wastenet.serve.app import app_from_env
    from wastenet.serve.settings import ENV_VAR, ServeSettings

    s = ServeSettings(checkpoint=str(tiny_checkpoint), log_path=str(tmp_path / "w.sqlite"), threshold=0.75,
                      max_batch=3, max_upload_bytes=50_000, review_token="one-for-all", allowed_hosts=("bin-3.local",))
    assert ServeSettings.from_json(s.to_json()) == s
    monkeypatch.setenv(ENV_VAR, s.to_json())
    app = app_from_env()
    assert app.state.threshold == 0.75 and app.state.batcher.max_batch == 3
    assert app.state.review_token == "one-for-all"  # every worker accepts the token serve printed
    assert str(app.state.decision_log.path) == str(tmp_path / "w.sqlite")
    monkeypatch.setenv(ENV_VAR, "{not json")
    with pytest.raises(ConfigError, match=ENV_VAR):
        app_from_env()


# --------------------------------------------------------------------------- who may change data


@pytest.fixture()
def pending_id(unsure_client) -> int:
    """One logged manual-sort decision (with its stored photo)."""
    p = unsure_client.post("/api/predict", files=upload(jpeg_bytes("glass", 7), "p.jpg")).json()
    assert p["decision"] == "manual_sort"
    return p["id"]


def test_relabel_needs_the_token_json_and_no_foreign_origin(unsure_client, pending_id):
    c = unsure_client
    url = f"/api/review/{pending_id}"
    # a cross-site form or fetch: text/plain "JSON", no credential
    forged = c.post(url, content=b'{"label": "metal"}', headers={"Content-Type": "text/plain"})
    assert forged.status_code == 401 and "token" in forged.json()["error"]
    assert c.post(url, json={"label": "metal"}, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert c.post(url, json={"label": "metal"}, headers={"Authorization": "Basic x"}).status_code == 401
    plain = c.post(url, content=b'{"label": "metal"}', headers={"Content-Type": "text/plain", **auth(c)})
    assert plain.status_code == 415
    foreign = c.post(url, json={"label": "metal"}, headers={"Origin": "https://evil.example", **auth(c)})
    assert foreign.status_code == 403
    assert c.app.state.decision_log.get(pending_id)["reviewed_label"] is None  # nothing changed
    ok = c.post(url, json={"label": "metal"}, headers={"Origin": "http://127.0.0.1:8000", **auth(c)})
    assert ok.status_code == 200 and ok.json()["reviewed_label"] == "metal"


def test_the_review_queue_and_its_photos_need_the_token(unsure_client, pending_id):
    c = unsure_client
    for url in ("/api/review", f"/api/review/{pending_id}/image"):
        r = c.get(url)  # anyone on the bin's network could list and download the photos before
        assert r.status_code == 401 and "token" in r.json()["error"]
        assert c.get(url, headers={"Authorization": "Bearer nope"}).status_code == 401
        assert c.get(url, headers=auth(c)).status_code == 200
    assert c.get("/api/health").status_code == 200  # predicting stays open


def test_a_given_review_token_is_the_one_required(unsure_classifier, tmp_path):
    app = create_app(unsure_classifier, log_path=tmp_path / "d.sqlite", review_token="s3cret")
    with TestClient(app) as c:
        pid = c.post("/api/predict", files=upload(jpeg_bytes())).json()["id"]
        assert c.post(f"/api/review/{pid}", json={"label": "glass"},
                      headers={"Authorization": "Bearer s3cret"}).status_code == 200
    with pytest.raises(Exception, match="empty"):
        create_app(unsure_classifier, log_path=tmp_path / "d.sqlite", review_token="  ")


def test_a_host_header_that_does_not_name_the_server_is_refused(unsure_classifier, tmp_path):
    app = create_app(unsure_classifier, log_path=tmp_path / "d.sqlite", host="0.0.0.0", allowed_hosts=["bin-3.local"])
    with TestClient(app) as c:
        pid = c.post("/api/predict", files=upload(jpeg_bytes())).json()["id"]
        image = f"/api/review/{pid}/image"
        # DNS rebinding: the attacker's name, re-pointed at this machine, reads stored photos
        rebound = c.get(image, headers={"Host": "evil.example:8000"})
        assert rebound.status_code == 403 and "--allowed-host" in rebound.json()["error"]
        assert c.post("/api/predict", files=upload(jpeg_bytes()), headers={"Host": "evil.example"}).status_code == 403
        for host in ("localhost:8000", "192.168.1.20:8000", "[::1]:8000", "bin-3.local", "BIN-3.LOCAL:80"):
            assert c.get(image, headers={"Host": host, **auth(c)}).status_code == 200, host


def test_stored_images_are_never_sniffed_as_pages(unsure_client, pending_id):
    r = unsure_client.get(f"/api/review/{pending_id}/image", headers=auth(unsure_client))
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in r.headers["content-security-policy"]


def test_relabelling_keeps_a_history_instead_of_overwriting(unsure_client, pending_id):
    c = unsure_client
    for label in ("metal", "paper"):
        r = c.post(f"/api/review/{pending_id}", json={"label": label}, headers=auth(c))
        assert r.status_code == 200
    history = r.json()["history"]
    assert [(h["old_label"], h["new_label"]) for h in history] == [(None, "metal"), ("metal", "paper")]
    assert all(h["who"].startswith("web:") and h["at"] for h in history)
    assert c.app.state.decision_log.get(pending_id)["reviewed_label"] == "paper"


@pytest.mark.parametrize("big", [2**63, 2**63 - 1, 10**30])
def test_ids_beyond_sqlite_range_are_404_not_500(unsure_client, big):
    c = unsure_client
    assert c.get(f"/api/review/{big}/image", headers=auth(c)).status_code == 404
    r = c.post(f"/api/review/{big}", json={"label": "glass"}, headers=auth(c))
    assert r.status_code == 404 and r.json()["error"]


# --------------------------------------------------------------------------- bounded storage and memory


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height but holds one empty IDAT: cheap to send, big if decoded."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_the_service_refuses_pixel_counts_that_offline_predict_accepts(client):
    from wastenet.data.images import DEFAULT_MAX_PIXELS, SERVICE_MAX_PIXELS, load_image

    big = _png_header_only(7000, 6000)  # 42 Mpx: over the service's limit, under predict's
    assert SERVICE_MAX_PIXELS < 42_000_000 < DEFAULT_MAX_PIXELS
    with pytest.raises(Exception) as offline:
        load_image(big)
    assert "too large" not in str(offline.value)  # predict tries it (and finds it truncated)
    r = client.post("/api/predict", files=upload(big, "big.png", "image/png"))
    assert r.status_code == 422 and "too large" in r.json()["error"]


def test_a_huge_noise_png_is_stored_as_a_bounded_jpeg(unsure_client):
    import numpy as np

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (1500, 2000, 3), dtype=np.uint8)).save(buf, "PNG")
    assert len(buf.getvalue()) > 8_000_000
    r = unsure_client.post("/api/predict?threshold=1", files=upload(buf.getvalue(), "noise.png", "image/png"))
    assert r.status_code == 200 and r.json()["decision"] == "manual_sort"
    stored = unsure_client.get(f"/api/review/{r.json()['id']}/image", headers=auth(unsure_client)).content
    img = Image.open(io.BytesIO(stored))
    assert img.format == "JPEG" and img.size == (1024, 768) and len(stored) < 2_000_000


def test_images_are_decoded_only_inside_a_decode_slot(tiny_checkpoint, tmp_path, monkeypatch):
    import wastenet.serve.service as app_module

    app = create_app(tiny_checkpoint, log_path=tmp_path / "d.sqlite", max_decodes=1)
    held = []
    real = app_module.load_image

    def probing_load_image(data, **kwargs):
        # with max_decodes=1 this decode holds the only slot: no second decode could start now
        held.append(not app.state.decode_slots.acquire(blocking=False))
        assert kwargs["draft_size"] >= 1024  # big JPEGs decode reduced, never below the review size
        return real(data, **kwargs)

    monkeypatch.setattr(app_module, "load_image", probing_load_image)
    with TestClient(app) as c:
        assert c.post("/api/predict", files=upload(jpeg_bytes())).status_code == 200
    assert held == [True]
    assert app.state.decode_slots.acquire(blocking=False)  # released afterwards


def test_the_review_listing_states_the_retention_rule(unsure_classifier, tmp_path):
    app = create_app(unsure_classifier, log_path=tmp_path / "d.sqlite", log_max_bytes=5 * 2**20)
    with TestClient(app) as c:
        assert "at most 5 MB" in c.get("/api/review", headers=auth(c)).json()["retention"]
    with TestClient(create_app(unsure_classifier, log_path=tmp_path / "e.sqlite", log_max_bytes=None)) as c:
        assert c.get("/api/review", headers=auth(c)).json()["retention"] is None


# --------------------------------------------------------------------------- one item, many photos; unknown items
def test_several_file_parts_are_one_item_decided_from_all_its_photos(client, classifier):
    photos = [jpeg_bytes("glass", 1), jpeg_bytes("metal", 2), jpeg_bytes("paper", 3)]
    r = client.post("/api/predict", files=[("file", (f"p{i}.jpg", d, "image/jpeg")) for i, d in enumerate(photos)])
    assert r.status_code == 200, r.text
    p = r.json()
    assert p["photos"] == 3 and p["path"] == "p0.jpg"
    want = classifier.predict_groups({"item": [io.BytesIO(d).getvalue() for d in photos]})[0]
    assert p["label"] == want.label and p["confidence"] == pytest.approx(want.confidence, abs=1e-5)
    assert len(rows(client)) == 1  # one item, one log row


def test_too_many_photos_of_one_item_is_a_422(client):
    parts = [("file", (f"p{i}.jpg", jpeg_bytes(seed=i), "image/jpeg")) for i in range(9)]
    r = client.post("/api/predict", files=parts)
    assert r.status_code == 422 and "at most" in r.json()["error"]


def test_an_unknown_item_is_manual_sort_with_its_reason_on_the_answer_and_in_the_log(tiny_checkpoint, tmp_path):
    import torch

    from wastenet.inference.predictor import Classifier

    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    dim = 96  # test_resnet's pooled features
    ckpt["ood"] = {"method": "mahalanobis", "keep": 0.95, "thresholds": {"mahalanobis": -1.0, "energy": 0.0, "msp": 0.0},
                   "stats": {"means": torch.zeros(len(ckpt["classes"]), dim), "basis": torch.eye(dim)[:, :4],
                             "inv_var": torch.ones(4), "inv_rest": torch.tensor(1.0)}}
    path = tmp_path / "ood.pt"
    torch.save(ckpt, path)
    clf = Classifier.load(path)
    app = create_app(clf, log_path=tmp_path / "decisions.sqlite")
    with TestClient(app) as c:
        p = c.post("/api/predict", files=upload(jpeg_bytes())).json()
        assert (p["decision"], p["reason"]) == ("manual_sort", "unknown") and p["ood_score"] >= 0
        logged = rows(c)[-1]
        assert (logged["decision"], logged["reason"]) == ("manual_sort", "unknown")


@pytest.mark.parametrize("hw", [None, (48, 64)], ids=["square", "height-x-width"])
def test_a_service_started_with_search_decides_each_photo_as_predict_search_does(tiny_checkpoint, tmp_path, hw):
    import torch

    import numpy as np

    from wastenet.inference.predictor import Classifier

    # tiny_checkpoint's weights are seeded: with some random draws the searched window scored as the whole
    # frame did, and the comparison below failed
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    if hw:  # an aspect-preserving model (`--img-size 48x64`): the pooled resnet takes any input size
        ckpt["preprocessing"].update(input_size=hw[0], resize_size=hw[0], input_width=hw[1])
    dim = 96  # test_resnet's pooled features
    ckpt["ood"] = {"method": "mahalanobis", "keep": 0.95, "thresholds": {"mahalanobis": 1e9, "energy": 0.0, "msp": 0.0},
                   "stats": {"means": torch.zeros(len(ckpt["classes"]), dim), "basis": torch.eye(dim)[:, :4],
                             "inv_var": torch.ones(4), "inv_rest": torch.tensor(1.0)}}
    torch.save(ckpt, tmp_path / "ood.pt")
    clf = Classifier.load(tmp_path / "ood.pt")
    rng = np.random.default_rng(0)
    floor = rng.normal(120, 8, (300, 400, 3)).clip(0, 255).astype(np.uint8)
    floor[20:80, 300:360] = (200, 40, 40)  # a small item in a corner of a wide frame
    buf = io.BytesIO()
    Image.fromarray(floor).save(buf, format="PNG")
    photo = buf.getvalue()
    # the service keeps an upload at searched_side (enough pixels for the smallest window) and runs a
    # lone photo's windows as one micro-batch: the same here
    from wastenet.inference.search import searched_side
    from wastenet.preprocessing import resize_shorter

    prep = clf.preprocessing
    kept = resize_shorter(Image.open(io.BytesIO(photo)), searched_side(prep), prep.interpolation)
    searched, plain = clf.predict([kept], search=True, batch_size=1)[0], clf.predict([kept])[0]
    assert searched.ood_score != pytest.approx(plain.ood_score)
    with TestClient(create_app(clf, log_path=tmp_path / "d.sqlite", search=True)) as c:
        assert c.get("/api/health").json()["search"] is True
        served = c.post("/api/predict", files=upload(photo, "floor.png", "image/png")).json()
    assert served["ood_score"] == pytest.approx(searched.ood_score, abs=1e-6)  # the answer keeps 6 decimals
    assert served["label"] == searched.label and served["confidence"] == pytest.approx(searched.confidence, abs=1e-6)


# --------------------------------------------------------------------------- pinned before the settings refactor


@pytest.mark.parametrize("photos", [1, 2], ids=["one-photo", "one-item-two-photos"])
def test_a_failed_log_write_is_503_and_no_answer(client, monkeypatch, photos):
    # no answer without its log entry: the client may retry (single photos and items alike)
    def broken(*_a, **_k):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(client.app.state.decision_log, "record", broken)
    parts = [("file", (f"p{i}.jpg", jpeg_bytes(seed=i), "image/jpeg")) for i in range(photos)]
    r = client.post("/api/predict", files=parts)
    assert r.status_code == 503 and "decision log unavailable" in r.json()["error"]
    assert client.post("/api/predict?log=false", files=parts).status_code == 200  # not logging: no log needed


def test_an_item_with_one_unreadable_photo_is_refused_and_not_logged(client):
    parts = [("file", ("a.jpg", jpeg_bytes(), "image/jpeg")), ("file", ("b.txt", b"hello", "text/plain"))]
    r = client.post("/api/predict", files=parts)
    assert r.status_code == 415 and r.json()["error"] == "cannot read image: not an image"
    assert rows(client) == []


def test_the_serve_command_hands_its_defaults_and_options_to_the_app(tiny_checkpoint, tmp_path, monkeypatch):
    import uvicorn

    from wastenet.cli import main

    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.update(app=app, **kw))
    monkeypatch.delenv("WASTENET_REVIEW_TOKEN", raising=False)
    port = _free_port()
    assert main(["serve", "--checkpoint", str(tiny_checkpoint), "--port", str(port),
                 "--log-db", str(tmp_path / "d.sqlite")]) == 0
    state = served["app"].state
    assert (served["host"], served["port"], served["workers"]) == ("127.0.0.1", port, 1)
    assert state.batcher.max_batch == 8 and state.decision_log.max_bytes == 512 * 2**20
    assert state.threshold == state.classifier.threshold
    slots = [state.decode_slots.acquire(blocking=False) for _ in range(3)]
    assert slots == [True, True, False]  # --max-decodes 2
    with TestClient(served["app"]) as c:
        assert c.get("/api/health").json()["max_upload_bytes"] == 10 * 2**20
    state.decision_log.close()
    assert main(["serve", "--checkpoint", str(tiny_checkpoint), "--port", str(port), "--log-db",
                 str(tmp_path / "e.sqlite"), "--threshold", "0.7", "--max-batch", "3", "--log-max-mb", "0",
                 "--max-upload-mb", "1", "--review-token", "abc"]) == 0
    state = served["app"].state
    assert (state.threshold, state.batcher.max_batch, state.decision_log.max_bytes, state.review_token) == (
        0.7, 3, None, "abc")
    state.decision_log.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- same origin; labels the cap must keep


@pytest.mark.parametrize("origin", ["http://10.9.9.9", "http://10.9.9.9:8000", "http://192.168.1.20",
                                    "http://[::1]:8000", "null", "http://127.0.0.1.evil.example"])
def test_a_relabel_from_another_ip_address_is_refused(unsure_client, pending_id, origin):
    # PITFALLS "IP-literal Origins": any IP passes the Host rule, but a page on 10.9.9.9 is not this page
    c = unsure_client
    r = c.post(f"/api/review/{pending_id}", json={"label": "metal"}, headers={"Origin": origin, **auth(c)})
    assert r.status_code == 403 and "cross-origin" in r.json()["error"]
    assert c.app.state.decision_log.get(pending_id)["reviewed_label"] is None


def test_a_relabel_from_the_page_on_a_lan_address_is_accepted(unsure_client, pending_id):
    c = unsure_client
    r = c.post(f"/api/review/{pending_id}", json={"label": "metal"},
               headers={"Host": "192.168.1.20:8000", "Origin": "http://192.168.1.20:8000", **auth(c)})
    assert r.status_code == 200


def _noise_jpeg(seed: int) -> bytes:
    import numpy as np

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(buf, "JPEG",
                                                                                                       quality=90)
    return buf.getvalue()


def test_an_uploader_without_the_token_cannot_push_reviewed_labels_out_of_the_log(unsure_classifier, tmp_path):
    app = create_app(unsure_classifier, log_path=tmp_path / "d.sqlite", log_max_bytes=2**20)
    with TestClient(app) as c:
        log = c.app.state.decision_log

        def review_one(seed: int) -> int | None:
            p = c.post("/api/predict", files=upload(_noise_jpeg(seed), "r.jpg")).json()
            if log.image(p["id"]) is None:
                return None
            assert c.post(f"/api/review/{p['id']}", json={"label": "glass"}, headers=auth(c)).status_code == 200
            return p["id"]

        reviewed = [review_one(k) for k in range(3)]
        # anyone on the network: a flood of uploads, no token
        for k in range(15):
            r = c.post("/api/predict", files=upload(_noise_jpeg(100 + k), "flood.jpg"))
            assert r.status_code == 200 and r.json()["id"] is not None  # decisions are still logged
        for i in reviewed:  # every reviewed photo, label and history row is still there
            assert c.get(f"/api/review/{i}/image", headers=auth(c)).status_code == 200
            assert log.get(i)["reviewed_label"] == "glass" and len(log.history(i)) == 1
        # reviewers label more until only their (unexported) photos are left: new photos are then not stored
        while c.get("/api/health").json()["log"]["photos_stored"] and len(reviewed) < 30:
            if (i := review_one(200 + len(reviewed))) is not None:
                reviewed.append(i)
        late = c.post("/api/predict", files=upload(_noise_jpeg(999), "late.jpg")).json()
        assert log.get(late["id"]) is not None and log.image(late["id"]) is None
        assert all(log.image(i) is not None for i in reviewed)
        status = c.get("/api/health").json()["log"]
        assert status["photos_stored"] is False and "review --export" in status["reason"]
        assert status["disk_bytes"] <= 2**20 == status["max_bytes"]
        assert "not stored" in c.get("/api/review", headers=auth(c)).json()["retention"]


# --------------------------------------------------------------------------- decoding bounded by pixels


def _big_tiff(width: int = 6000, height: int = 6000) -> bytes:
    """Many pixels in few bytes (the issue's 36 Mpx TIFFs of ~174 kB): flat colour, deflated."""
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (120, 160, 60)).save(buf, "TIFF", compression="tiff_deflate")
    return buf.getvalue()


def test_the_decode_cost_is_read_from_the_header_and_a_jpeg_costs_its_reduced_size():
    from wastenet.serve.decode_budget import decode_cost

    tiff = _big_tiff(3000, 2000)
    assert len(tiff) < 200_000 and decode_cost(tiff) == 6_000_000
    buf = io.BytesIO()
    Image.new("RGB", (4096, 3072), (1, 2, 3)).save(buf, "JPEG")
    assert decode_cost(buf.getvalue()) == 4096 * 3072
    # 1/2 DCT scale: both sides stay >= 1024 px; exactly what load_image then decodes
    assert decode_cost(buf.getvalue(), draft_size=1024) == 2048 * 1536
    from wastenet.data.images import load_image

    assert load_image(buf.getvalue(), draft_size=1024).size == (2048, 1536)
    assert decode_cost(b"not an image") == 1


def test_a_decode_waits_until_its_pixels_fit_the_budget():
    import time

    from wastenet.serve.decode_budget import DecodeBudget

    budget = DecodeBudget(slots=4, pixels=100)  # slots to spare: only pixels can make B wait
    release, entered = threading.Event(), threading.Event()

    def first():
        with budget.hold(80):
            release.wait()

    def second():
        with budget.hold(50):
            entered.set()

    a = threading.Thread(target=first)
    a.start()
    for _ in range(1000):  # until A holds its pixels (a bounded wait, no timing assertion)
        if budget.in_flight == 80:
            break
        time.sleep(0.005)
    b = threading.Thread(target=second)
    b.start()
    for _ in range(1000):  # until B is waiting for pixels
        if budget.waiting == 1:
            break
        time.sleep(0.005)
    assert budget.waiting == 1 and not entered.is_set()
    release.set()
    a.join(10)
    b.join(10)
    assert entered.is_set() and budget.in_flight == 0 and budget.peak == 80
    with budget.hold(10**9):  # larger than the whole budget: runs alone instead of never
        assert budget.in_flight == 100


def test_the_service_decodes_a_huge_pixel_count_within_its_pixel_budget(tiny_checkpoint, tmp_path):
    app = create_app(tiny_checkpoint, log_path=tmp_path / "d.sqlite", decode_pixels=10_000_000)
    with TestClient(app) as c:
        parts = [("file", (f"t{i}.tif", _big_tiff(), "image/tiff")) for i in range(2)]
        assert c.post("/api/predict", files=parts).status_code == 200
        decoding = c.get("/api/health").json()["decoding"]
    assert decoding["pixels"] == 10_000_000 and decoding["peak"] <= 10_000_000 and decoding["in_flight"] == 0


def test_serve_cli_refuses_a_bad_decode_budget(tiny_checkpoint, capsys):
    from wastenet.cli import main

    for value in ("0", "-1", "nan"):
        assert main(["serve", "--checkpoint", str(tiny_checkpoint), "--decode-mpx", value]) == 2
        err = capsys.readouterr().err
        assert "--decode-mpx" in err and len(err.strip().splitlines()) == 1
