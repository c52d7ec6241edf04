"""A server killed (SIGKILL) in the middle of an adaptation: the run dies with it, no candidate becomes a
version, the active version is unchanged, and every reviewed label is still in the log after a restart."""

from __future__ import annotations

import io
import json
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import make_image

httpx = pytest.importorskip("httpx")
TOKEN = "crash-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(model: Path, db: Path) -> tuple[subprocess.Popen, str]:
    port = _port()
    proc = subprocess.Popen([sys.executable, "-m", "wastenet", "serve", "--checkpoint", str(model), "--port", str(port),
                             "--log-db", str(db), "--threshold", "1", "--audit-rate", "0", "--review-token", TOKEN,
                             "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/api/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.3)
    proc.kill()
    pytest.fail("server did not start")


def _children_of(pid: int) -> list[int]:
    out = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            ppid = next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("PPid:"))
        except (OSError, StopIteration, ValueError):
            continue
        if ppid == pid:
            out.append(int(status.parent.name))
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_kill_9_in_the_middle_of_an_adaptation_discards_the_candidate(tiny_checkpoint, tmp_path):
    from wastenet import checkpoint

    ckpt = checkpoint.load(tiny_checkpoint)
    ckpt["taxonomy"] = {"name": "split", "bins": {"recyclable": ["glass"], "compostable": ["paper"],
                                                  "landfill": ["metal"]}}
    model = checkpoint.save(ckpt, tmp_path / "best.pt")
    db = tmp_path / "decisions.sqlite"
    proc, url = _serve(model, db)
    labelled = {}
    try:
        for i in range(24):
            cls = ("glass", "metal", "paper")[i % 3]
            buf = io.BytesIO()
            make_image(cls, 300 + i).save(buf, "JPEG")
            p = httpx.post(url + "/api/predict", files={"file": ("x.jpg", buf.getvalue(), "image/jpeg")}).json()
            assert httpx.post(f"{url}/api/review/{p['id']}", json={"label": cls}, headers=AUTH).status_code == 200
            labelled[p["id"]] = cls
        assert httpx.post(url + "/api/models/adapt", json={}, headers=AUTH).status_code == 202
        deadline = time.monotonic() + 30
        while not (runs := _children_of(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert runs, "the adaptation process did not start"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 30
        while any(Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
                  for pid in runs) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
                       for pid in runs), "the adaptation outlived the server"
    finally:
        if proc.poll() is None:
            proc.kill()
    models = tmp_path / "models"
    assert not list(models.glob("0001.*"))  # no candidate became a version
    assert not (models / "active").exists() or json.loads((models / "active").read_text())["id"] == 0
    with sqlite3.connect(db) as conn:
        got = dict(conn.execute("SELECT id, reviewed_label FROM decisions WHERE reviewed_label IS NOT NULL"))
    assert got == labelled  # no reviewed label lost
    proc, url = _serve(model, db)  # the restart serves version 0, and can adapt again
    try:
        h = httpx.get(url + "/api/health").json()
        assert h["model_version"] == 0 and h["adaptation"]["state"] == "idle"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
