"""Screenshots of the web page with a real model and a real photo, for docs/.

    python scripts/screenshot.py --checkpoint runs/bench/mobilenetv2_100-wastenet-ce-s0/best.pt \
        --photo ../shared/data/trashnet/glass/glass1.jpg --out docs/

Starts `wastenet serve` on a free loopback port, uploads the photo in headless Chromium
(Debian's /usr/bin/chromium through Playwright), shows the Grad-CAM overlay, and saves a
desktop and a phone-sized screenshot.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--photo", required=True)
    ap.add_argument("--out", default="docs")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    db = Path(tempfile.mkdtemp()) / "decisions.sqlite"
    server = subprocess.Popen([sys.executable, "-m", "wastenet", "serve", "--checkpoint", args.checkpoint,
                               "--port", str(port), "--log-db", str(db)])
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(url + "/api/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            for name, kw in (("screenshot.png", {"viewport": {"width": 1100, "height": 800}}),
                             ("screenshot-phone.png", {"viewport": {"width": 390, "height": 844},
                                                       "device_scale_factor": 2, "is_mobile": True})):
                page = browser.new_page(**kw)
                page.goto(url)
                page.wait_for_selector("#model-info:text-matches('^Model ')")
                page.set_input_files("#file-input", args.photo)
                page.wait_for_selector("#decision:not([data-decision=''])", timeout=60_000)
                toggle = page.query_selector("#heatmap-toggle")
                if toggle is not None and name == "screenshot.png":
                    toggle.click()
                    page.wait_for_selector("#heatmap", state="visible", timeout=60_000)
                page.screenshot(path=str(out / name), full_page=True)
                print(out / name, page.inner_text("#result").replace("\n", " | ")[:200])
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
