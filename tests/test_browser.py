"""The real server (uvicorn in a subprocess) and the page in a real headless Chromium.

Browser tests need Debian's ``/usr/bin/chromium`` and Playwright's Python package; they are
marked ``browser`` (``pytest -m "not browser"`` skips them). ``WASTENET_SCREENSHOT=1`` also
saves ``docs/screenshot.png`` (and ``docs/screenshot-phone.png``); ``WASTENET_SCREENSHOT_DIR``
puts them elsewhere.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TRASHNET, make_image

httpx = pytest.importorskip("httpx")

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
# a fake camera that auto-grants permission: the live-camera loop can run headless
FAKE_CAMERA_ARGS = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
BINS = ("recyclable", "compostable", "landfill", "manual_sort")
REVIEW_TOKEN = "browser-test-token"
SERVER_DB: list[Path] = []  # the module server's decision log


def _screenshot_dir() -> Path:
    folder = Path(os.environ.get("WASTENET_SCREENSHOT_DIR") or REPO / "docs")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def unsure_checkpoint(tiny_checkpoint, tmp_path_factory) -> Path:
    """The tiny checkpoint with one class per bin: its ~1/3 guesses land in manual sort."""
    from wastenet import checkpoint

    ckpt = checkpoint.load(tiny_checkpoint)
    ckpt["taxonomy"] = {"name": "split", "bins": {"recyclable": ["glass"], "compostable": ["paper"],
                                                  "landfill": ["metal"]}}
    return checkpoint.save(ckpt, tmp_path_factory.mktemp("unsure") / "unsure.pt")


def _start_server(checkpoint: Path, db: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """`wastenet serve` on a free loopback port; returns the process and its base URL."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "wastenet", "serve", "--checkpoint", str(checkpoint), "--port", str(port),
         "--log-db", str(db), "--log-level", "warning", *extra],
        cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{proc.stdout.read()[-3000:]}")
        try:
            if httpx.get(url + "/api/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("server did not start within 120 s")
        time.sleep(0.3)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def server(unsure_checkpoint, tmp_path_factory):
    """The page's server: 1 MB upload limit, decisions in a temporary log."""
    db = tmp_path_factory.mktemp("serve") / "decisions.sqlite"
    SERVER_DB[:] = [db]
    # every automatic decision is audited here: the review page's test labels one
    proc, url = _start_server(unsure_checkpoint, db, "--max-upload-mb", "1", "--review-token", REVIEW_TOKEN,
                              "--audit-rate", "1")
    try:
        yield url
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """A real TrashNet photo when the shared data is there, else a generated one."""
    real = TRASHNET / "glass" / "glass1.jpg"
    if real.is_file():
        return real
    path = tmp_path_factory.mktemp("photo") / "glass.jpg"
    make_image("glass", 0, size=(384, 512)).save(path, quality=92)
    return path


# --------------------------------------------------------------------------- real server, no browser


def test_live_server_limits(server, photo):
    """Through real uvicorn: health, a prediction, and 413 for an over-long body."""
    h = httpx.get(server + "/api/health").json()
    assert h["status"] == "ok" and h["bins"] == ["recyclable", "compostable", "landfill"]
    r = httpx.post(server + "/api/predict?log=false", files={"file": ("a.jpg", photo.read_bytes(), "image/jpeg")})
    assert r.status_code == 200 and r.json()["decision"] in BINS
    big = b"\xff\xd8\xff" + b"\0" * (2 * 2**20)
    r = httpx.post(server + "/api/predict", files={"file": ("big.jpg", big, "image/jpeg")})
    assert r.status_code == 413 and "too large" in r.json()["error"]

    def chunks():  # no Content-Length at all: counted while it arrives
        for _ in range(40):
            yield b"\0" * 65536

    r = httpx.post(server + "/api/predict", content=chunks(),
                   headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413
    assert httpx.get(server + "/api/health").status_code == 200  # still serving


def test_answered_decisions_survive_a_killed_server(unsure_checkpoint, tmp_path, photo):
    """Every decision the server answered is in the log even after SIGKILL (no clean shutdown)."""
    import signal
    import sqlite3

    db = tmp_path / "decisions.sqlite"
    proc, url = _start_server(unsure_checkpoint, db)
    try:
        ids = [httpx.post(url + "/api/predict", files={"file": (f"{i}.jpg", photo.read_bytes(), "image/jpeg")},
                          timeout=60).json()["id"] for i in range(5)]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with sqlite3.connect(db) as conn:
        logged = conn.execute("SELECT id, image IS NOT NULL FROM decisions ORDER BY id").fetchall()
    assert logged == [(i, 1) for i in ids]  # manual_sort photos included


# --------------------------------------------------------------------------- browser


def _chromium(extra_args=()):
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is missing (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (python) is not installed")
    return sync_api


@pytest.fixture(scope="module")
def browser():
    sync_api = _chromium()
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS + FAKE_CAMERA_ARGS)
        try:
            yield b
        finally:
            b.close()


def _classify_photo(page, server: str, photo: Path) -> dict:
    page.goto(server + "/")
    # selectors, not wait_for_function: the page's CSP forbids the eval() that would need
    page.wait_for_selector("#model-info:text-matches('^Model ')")
    page.set_input_files("#file-input", str(photo))
    page.wait_for_selector("#decision:not([data-decision=''])", timeout=30_000)
    return {k: page.inner_text(f"#{k}") for k in ("label", "confidence", "bin", "decision")} | {
        "data-decision": page.get_attribute("#decision", "data-decision"),
        "data-bin": page.get_attribute("#bin", "data-bin"),
        "topk": page.locator("#topk li").count(),
    }


@pytest.mark.browser
def test_page_classifies_a_photo(browser, server, photo):
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    external = []
    page.on("request", lambda req: None if req.url.startswith(server) or req.url.startswith(("data:", "blob:"))
            else external.append(req.url))
    console_errors = []
    page.on("console", lambda msg: console_errors.append(msg.text) if msg.type == "error" else None)
    shown = _classify_photo(page, server, photo)
    assert shown["data-decision"] in BINS
    assert shown["label"].lower() in ("glass", "metal", "paper")
    assert shown["data-bin"] in BINS[:3] and shown["bin"].lower() == shown["data-bin"]
    assert shown["confidence"].endswith("%")
    assert shown["topk"] == 3
    assert "manual sort" in shown["decision"].lower() or shown["data-decision"] in shown["decision"].lower()
    # colour follows the decision
    assert f"bin-{shown['data-decision']}" in page.get_attribute("#decision", "class")

    page.check("#heatmap-toggle")
    page.wait_for_selector("#heatmap", state="visible", timeout=30_000)
    assert page.get_attribute("#heatmap", "src").startswith("data:image/png;base64,")
    page.uncheck("#heatmap-toggle")
    page.wait_for_selector("#preview", state="visible")

    if os.environ.get("WASTENET_SCREENSHOT") == "1":
        page.screenshot(path=str(_screenshot_dir() / "screenshot.png"), full_page=True)
    assert external == []
    assert console_errors == []
    page.close()


@pytest.mark.browser
def test_page_rejects_a_non_image(browser, server, tmp_path):
    page = browser.new_page()
    page.goto(server + "/")
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    page.set_input_files("#file-input", str(bad))
    page.wait_for_selector("#error", state="visible", timeout=30_000)
    assert "cannot read image" in page.inner_text("#error")
    page.close()


@pytest.mark.browser
def test_page_on_a_phone(browser, server, photo):
    page = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True,
                            has_touch=True)
    shown = _classify_photo(page, server, photo)
    assert shown["data-decision"] in BINS
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, "the page scrolls sideways on a phone"
    if os.environ.get("WASTENET_SCREENSHOT") == "1":
        page.screenshot(path=str(_screenshot_dir() / "screenshot-phone.png"), full_page=True)
    page.close()


@pytest.mark.browser
def test_live_camera(browser, server):
    context = browser.new_context()
    context.grant_permissions(["camera"], origin=server)
    page = context.new_page()
    page.goto(server + "/")
    page.click("#camera-start")
    page.wait_for_selector("#camera-stop", state="visible", timeout=15_000)
    page.wait_for_selector("#decision:not([data-decision=''])", timeout=30_000)
    assert page.get_attribute("#decision", "data-decision") in BINS
    page.click("#camera-stop")
    page.wait_for_selector("#camera-start", state="visible")
    assert page.is_hidden("#camera")
    context.close()


def _current_id(page) -> int:
    return int(page.get_attribute("#current", "data-id"))


def _wait_for_other_item(page, old: int) -> int:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        shown = page.get_attribute("#current", "data-id")
        if shown is not None and int(shown) != old and page.is_visible("#current"):
            return int(shown)
        page.wait_for_timeout(50)
    pytest.fail(f"the next item did not come up after #{old}")


@pytest.mark.browser
def test_review_page_labels_by_keyboard_alone_with_undo_and_shows_the_live_figures(browser, server, photo):
    auth = {"Authorization": f"Bearer {REVIEW_TOKEN}"}
    # three manual-sort items (the tiny model is never sure enough), then one automatic decision
    # (threshold 0), which this server (--audit-rate 1) keeps as an audit
    posted = [httpx.post(server + "/api/predict", files={"file": (f"k{i}.jpg", photo.read_bytes(), "image/jpeg")}).json()
              for i in range(3)]
    assert all(p["decision"] == "manual_sort" for p in posted)
    audit = httpx.post(server + "/api/predict?threshold=0",
                       files={"file": ("audit.jpg", photo.read_bytes(), "image/jpeg")}).json()
    assert audit["kind"] == "audit"
    left_before = httpx.get(server + "/api/review", headers=auth).json()["pending"]

    page = browser.new_page()
    page.goto(server + "/review#token=" + REVIEW_TOKEN)  # the address `wastenet serve` prints
    page.wait_for_selector("#current", state="visible", timeout=15_000)
    assert _current_id(page) == audit["id"]  # newest first; marked as an audit
    assert page.inner_text("#current-kind") == "Audit"
    assert f"{left_before} left to label" in page.inner_text("#review-status")
    # the buttons show their keys: 1 glass, 2 metal, 3 paper
    assert page.inner_text("#label-metal").split() == ["2", "Metal"]

    labelled = []
    for key in ("2", "2", "1"):  # three items, keyboard only; the next one comes up by itself
        shown = _current_id(page)
        page.keyboard.press(key)
        _wait_for_other_item(page, shown)
        labelled.append(shown)
    assert labelled == [audit["id"], posted[2]["id"], posted[1]["id"]]
    assert f"{left_before - 3} left to label" in page.inner_text("#review-status")

    page.keyboard.press("u")  # undo: the last labelled item is back; its right key relabels it
    page.wait_for_selector(f"#current[data-id='{labelled[-1]}']", timeout=15_000)
    page.keyboard.press("3")
    _wait_for_other_item(page, labelled[-1])
    history = [h["new_label"] for h in httpx.get(server + "/api/review", headers=auth).json()["items"]
               if h["id"] == labelled[-1]]
    assert history == []  # no longer pending
    with sqlite3.connect(SERVER_DB[0]) as conn:
        got = dict(conn.execute(f"SELECT id, reviewed_label FROM decisions WHERE id IN ({','.join(map(str, labelled))})"))
    assert got == {labelled[0]: "metal", labelled[1]: "metal", labelled[2]: "paper"}

    # a kind of item the model has no class for: N, its name and bin, Enter; it is a button from then on
    new_kind = httpx.post(server + "/api/predict", files={"file": ("cup.jpg", photo.read_bytes(), "image/jpeg")}).json()
    page.reload()
    page.wait_for_selector(f"#current[data-id='{new_kind['id']}']", timeout=15_000)
    page.keyboard.press("n")
    page.fill("#new-kind-name", "Food waste")
    page.fill("#new-kind-bin", "compostable")
    page.keyboard.press("Enter")
    page.wait_for_selector("#label-food_waste", timeout=15_000)
    with sqlite3.connect(SERVER_DB[0]) as conn:
        assert conn.execute("SELECT reviewed_label, reviewed_bin FROM decisions WHERE id = ?",
                            (new_kind["id"],)).fetchone() == ("food_waste", "compostable")

    # a photo of no item (an empty floor): E; no bin, and no button for it (it is never a class)
    empty = httpx.post(server + "/api/predict", files={"file": ("floor.jpg", photo.read_bytes(), "image/jpeg")}).json()
    page.reload()
    page.wait_for_selector(f"#current[data-id='{empty['id']}']", timeout=15_000)
    page.keyboard.press("e")
    _wait_for_other_item(page, empty["id"])
    with sqlite3.connect(SERVER_DB[0]) as conn:
        assert conn.execute("SELECT reviewed_label, reviewed_bin FROM decisions WHERE id = ?",
                            (empty["id"],)).fetchone() == ("not_an_item", None)
    assert page.query_selector("#label-not_an_item") is None

    # the live figures: the labelled audit is counted, its estimate shown as an interval (n < 30)
    deadline = time.monotonic() + 15
    while "1 / 1" not in page.inner_text("#stats-body") and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    text = page.inner_text("#stats-body")
    assert "Contamination (95%)" in text and "1 / 1" in text and "(n=1)" in text
    assert "random share" in page.inner_text("#stats-note")
    page.close()


@pytest.mark.browser
def test_review_page_without_the_token_asks_for_it(browser, server, photo):
    r = httpx.post(server + "/api/predict", files={"file": ("ask.jpg", photo.read_bytes(), "image/jpeg")})
    item = r.json()
    context = browser.new_context()  # a fresh tab: no token in its session storage
    page = context.new_page()
    page.goto(server + "/review")
    page.wait_for_selector("#token-form", state="visible", timeout=15_000)
    assert page.is_hidden("#current")  # nothing shown without it
    page.fill("#token", REVIEW_TOKEN)
    page.click("#token-form button")
    page.wait_for_selector(f"#current[data-id='{item['id']}']", timeout=15_000)
    assert page.is_hidden("#token-form")
    context.close()


@pytest.mark.browser
def test_review_page_adapts_shows_why_and_rolls_back(browser, unsure_checkpoint, image_folder, tmp_path):
    """The versions panel: "Adapt now" starts a run, its progress and outcome show on the page with the
    held-out and forgetting figures, and a version is served (and rolled back) with one click each."""
    rows = sorted(p.relative_to(image_folder).as_posix() for p in image_folder.rglob("*.jpg"))
    split = tmp_path / "mix-split.csv"
    split.write_text("path,label,split\n" + "".join(f"{r},{r.split('/')[0]},{('train', 'val')[i % 2]}\n"
                                                      for i, r in enumerate(rows)))
    proc, url = _start_server(unsure_checkpoint, tmp_path / "decisions.sqlite", "--review-token", REVIEW_TOKEN,
                              "--audit-rate", "0", "--threshold", "1", "--adapt-mix", str(image_folder),
                              "--adapt-mix-split", str(split), "--adapt-mix-per-class", "4")
    auth = {"Authorization": f"Bearer {REVIEW_TOKEN}"}
    try:
        for i, cls in enumerate(("glass", "metal", "paper") * 4):  # 12 manual-sort items, labelled right
            buf = __import__("io").BytesIO()
            make_image(cls, 700 + i).save(buf, "JPEG")
            item = httpx.post(url + "/api/predict", files={"file": (f"{i}.jpg", buf.getvalue(), "image/jpeg")}).json()
            assert httpx.post(f"{url}/api/review/{item['id']}", json={"label": cls}, headers=auth).status_code == 200
        page = browser.new_page()
        page.goto(url + "/review#token=" + REVIEW_TOKEN)
        page.wait_for_selector("#adapt-status:text-matches('No adaptation yet')", timeout=15_000)
        page.click("#adapt-now")
        page.wait_for_selector("#adapt-status:text-matches('Last adaptation')", timeout=180_000)
        status = page.inner_text("#adapt-status")
        assert "version 1" in status and ("promoted" in status)
        row = page.inner_text("tr[data-version='1']")
        v1 = httpx.get(url + "/api/models").json()["versions"][1]
        assert v1["reason"] in row and "at most 1 point lower" in row  # the forgetting check, shown
        cur, cand = v1["scores"]["current"], v1["scores"]["candidate"]
        assert f"class accuracy {cur['class_accuracy']:.3f} → {cand['class_accuracy']:.3f}" in row  # what it compared
        assert f"{len(v1['inputs']['trained_on'])} / {len(v1['inputs']['held_out'])}" in row

        # serve the version that is not serving (1 if it was kept out: the reviewer decides; else a rollback
        # to 0), then the other one again: a click each
        serving = 1 if v1["promoted"] else 0
        for other in (1 - serving, serving):
            page.click(f"tr[data-version='{other}'] button")
            page.wait_for_selector(f"tr[data-version='{other}'] td:text-is('Serving now')", timeout=15_000)
            assert httpx.get(url + "/api/models").json()["active"] == other
        page.close()
    finally:
        _stop(proc)
