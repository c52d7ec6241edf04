"""The site loop, measured end to end: a labelled stream through a real server and a simulated reviewer.

(Over 450 lines: one script others run from a checkout on streams we do not have, so the server,
the reviewer, the figures and the plot of a run stay in one file beside its contract.)

A real ``wastenet serve`` on loopback; the photos of ``DIR/<class>/...`` go through
``POST /api/predict`` one at a time in a fixed order; a simulated reviewer polls the review queue
(``GET /api/review``) as a site's reviewer does and labels manual-sort items and audits from ground
truth (``--reviewer-delay``: only items at least that many items old; ``--reviewer-error``: that
share labelled with a wrong class, seeded); the server adapts as configured (``--adapt-every``
...). Each item is scored when it is streamed, before anyone labels it, and the model can learn
only from items already streamed and reviewed: the one honest way to learn from an evaluation set.

The class map (``classes: {folder: target}``) says what each folder is: a model class; ``bin:NAME``
(only its bin is known: the reviewer skips it); ``unknown`` (not a waste item: it should be refused;
skipped); ``new:BIN`` (a kind the model has no class for: the reviewer labels it with the folder's
name and that bin); ``not_an_item`` (a photo of no item, e.g. an empty floor: it should be refused,
and the reviewer labels it ``not_an_item``; coverage and the manual-sort rate are of the other photos,
and each window says how many empty photos were sorted into a bin). DESIGN.md "The site loop" holds
the contract::

    python benchmarks/site_stream.py --checkpoint runs/mnv2/best.pt \\
        --stream ../shared/data/field-drinkingwaste --class-map benchmarks/field/drinkingwaste.yaml \\
        --order benchmarks/results/field-order.csv --out benchmarks/results/site-stream-field.json \\
        --plot benchmarks/results/site-stream-field.png

``--order``: a CSV whose ``path`` column (relative to DIR) is the stream, in order (paths it does
not name are not streamed; ``benchmarks/stream_order.py`` writes them); default: every photo,
sorted, shuffled by ``--seed``. RESULT.json: one row per window of ``--window`` items (photos of
no item join the window of the item before them; ``start``/``end`` are request indices,
``item_start``/``item_end`` item counts) and a
``final`` block over the last third; the last line printed is
``last third: coverage C; recycling-bin contamination X; class accuracy of auto-sorted A``
(the recycling bin is the taxonomy's ``recycling``, else its first ``recycl*`` bin: a line before it
says which). A bad stream folder, order file or class map, or a server that will not start (e.g. an
option it does not have), is one line on stderr and exit 2, before anything is streamed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shlex
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_description, wait_for_health  # noqa: E402
from load_test import REPO, _free_port  # noqa: E402 - one port picker

from wastenet.audit import wilson_interval  # noqa: E402
from wastenet.errors import ConfigError  # noqa: E402
from wastenet.evaluation.field import UNKNOWN, load_class_map, read_class_map  # noqa: E402
from wastenet.ood import NOT_AN_ITEM  # noqa: E402

TOKEN = "site-stream-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
AUTO_KINDS = ("auto", "audit")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--stream", required=True, help="DIR/<class>/... photos")
    p.add_argument("--class-map", required=True, help="YAML classes: {folder: class | bin:NAME | unknown | new:BIN}")
    p.add_argument("--order", default=None, help="CSV with a path column: the stream, in order")
    p.add_argument("--audit-rate", type=float, default=None, help="passed to serve (default: serve's)")
    p.add_argument("--adapt-every", type=int, default=None, help="passed to serve")
    p.add_argument("--adapt-mix", default=None, help="passed to serve")
    p.add_argument("--adapt-mix-split", default=None, help="passed to serve")
    p.add_argument("--window", type=int, default=100, help="items per window (photos of no item not counted)")
    p.add_argument("--reviewer-error", type=float, default=0.0)
    p.add_argument("--reviewer-delay", type=int, default=0, help="label an item only once this many more streamed")
    p.add_argument("--review-every", type=int, default=10, help="the reviewer looks at the queue every N items")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-wait-for-adaptation", action="store_true",
                   help="stream flat out while an adaptation runs (default: the stream waits, as a bin's items come "
                        "slower than an adaptation, and a probe re-posts the next photo unlogged to time the server)")
    p.add_argument("--check-data", default=None, help="after the stream: each version's accuracy on --check-split's "
                                                      "test rows of this folder (e.g. TrashNet: forgetting)")
    p.add_argument("--check-split", default=None)
    p.add_argument("--serve-args", default="", help="more `wastenet serve` options")
    p.add_argument("--out", required=True)
    p.add_argument("--plot", default=None)
    args = p.parse_args(argv)
    if args.window < 1 or not 0.0 <= args.reviewer_error <= 1.0 or args.reviewer_delay < 0 or args.review_every < 1:
        p.error("--window and --review-every must be >= 1, --reviewer-delay >= 0, --reviewer-error in [0, 1]")
    return args


def stream_paths(root: Path, order: str | None, seed: int) -> list[str]:
    """The stream's paths relative to ``root``, in order; ConfigError (one line) for a bad folder or CSV.

    The photos are what every wastenet command reads from ``DIR/<class>/...`` (``scan_folder``:
    image suffixes, hidden files skipped, symlinked folders followed).
    """
    from wastenet.data.datasets import scan_folder

    if order:
        p = Path(order)
        if not p.is_file():
            raise ConfigError(f"--order file not found: {p}")
        with p.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if "path" not in (reader.fieldnames or []):
                raise ConfigError(f"--order {p} needs a 'path' column (paths relative to --stream)")
            paths = [(r["path"] or "").strip() for r in reader]
        if not paths:
            raise ConfigError(f"--order {p} lists no photos")
        missing = [x for x in paths if len(Path(x).parts) < 2 or not (root / x).is_file()]
        if missing:
            raise ConfigError(f"--order names {len(missing)} paths that are no photo in a class folder of {root}, "
                              f"e.g. {missing[0]!r}")
        return paths
    rows, _ = scan_folder(root, min_classes=1)
    paths = sorted(r.path for r in rows)
    random.Random(seed).shuffle(paths)
    return paths


def map_has_new_kinds(class_map: str) -> bool:
    """Whether the class map names a ``new:BIN`` kind (the server then accepts new bins), read before
    the server starts; ConfigError (one line) when the file is missing or not a class map."""
    return any(v.strip().startswith("new:") for v in read_class_map(class_map).values())


def truth_of(targets: dict[str, Any], class_bins: dict[str, str]) -> dict[str, dict[str, Any]]:
    """``{folder: {"class", "bin", "label", "review_bin"}}``: the true class and bin, and what the reviewer says."""
    out = {}
    for folder, t in targets.items():
        if t.kind == "class":
            out[folder] = {"class": t.name, "bin": class_bins.get(t.name), "label": t.name, "review_bin": None}
        elif t.kind == "new":
            out[folder] = {"class": folder, "bin": t.name, "label": folder, "review_bin": t.name}
        elif t.kind == "bin":
            out[folder] = {"class": None, "bin": t.name, "label": None, "review_bin": None}
        elif t.kind == NOT_AN_ITEM:  # no item at all: belongs in no bin, and the reviewer says so
            out[folder] = {"class": None, "bin": None, "label": NOT_AN_ITEM, "review_bin": None}
        else:  # unknown: belongs in no bin
            out[folder] = {"class": None, "bin": None, "label": None, "review_bin": None}
    return out


def recycling_bin(bins: list[str]) -> tuple[str, str | None]:
    """The bin the last line calls "recycling", and a note when it is not literally that name.

    >>> recycling_bin(["recyclable", "landfill"])
    ('recyclable', "the taxonomy has no bin called 'recycling': the last line's recycling bin is 'recyclable'")
    """
    if "recycling" in bins:
        return "recycling", None
    for b in bins:
        if b.lower().startswith("recycl"):
            return b, f"the taxonomy has no bin called 'recycling': the last line's recycling bin is {b!r}"
    return bins[0], (f"the taxonomy has no recycling bin (bins: {', '.join(bins)}): "
                     f"the last line's recycling bin is the first one, {bins[0]!r}")


class Server:
    def __init__(self, args: argparse.Namespace, db: Path, new_bins: bool) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "wastenet", "serve", "--checkpoint", args.checkpoint, "--port", str(self.port),
               "--log-db", str(db), "--log-level", "warning", "--review-token", TOKEN]
        for flag in ("audit_rate", "adapt_every", "adapt_mix", "adapt_mix_split"):  # only what was asked for
            if getattr(args, flag) is not None:
                cmd += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
        if new_bins:
            cmd.append("--allow-new-bins")
        cmd += shlex.split(args.serve_args)
        self.log_path = db.with_suffix(".serve.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT)
        try:
            wait_for_health(self.proc, self.url)
        except SystemExit:  # e.g. a usage error: an option this server does not have
            print(f"wastenet serve did not start: {self.last_line()}", file=sys.stderr)
            sys.exit(2 if self.proc.returncode == 2 else 1)  # the server's usage/config error is ours

    def last_line(self) -> str:
        """The server's last line of output (its one-line error when it exits)."""
        self.log.flush()
        tail = self.log_path.read_text(errors="replace").strip().splitlines()
        return tail[-1] if tail else "no output"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


class Reviewer:
    """Labels what the queue shows, from ground truth, like a person at the review page."""

    def __init__(self, client: httpx.Client, url: str, classes: list[str], error: float, delay: int, seed: int) -> None:
        self.client, self.url, self.classes = client, url, classes
        self.error, self.delay = error, delay
        self.rng = random.Random(seed + 1)
        self.labelled: dict[int, str] = {}   # decision id -> the label the server accepted
        self.refused: list[str] = []

    def work(self, streamed: dict[int, dict[str, Any]], now: int) -> None:
        try:
            r = self.client.get(self.url + "/api/review?limit=500", headers=AUTH)
        except httpx.TransportError as exc:  # the server is gone: the stream loop says so
            self.refused.append(f"queue: no answer ({type(exc).__name__})")
            return
        if r.status_code != 200:
            self.refused.append(f"queue: HTTP {r.status_code}")
            return
        for item in r.json()["items"]:
            seen = streamed.get(item["id"])
            if seen is None or item["id"] in self.labelled or now - seen["index"] < self.delay:
                continue
            truth = seen["truth"]
            if truth["label"] is None:  # bin-only or not a waste item: nothing to label it with
                continue
            label, body = truth["label"], {"label": truth["label"]}
            if truth["review_bin"]:
                body["bin"] = truth["review_bin"]
            if self.error and self.rng.random() < self.error:
                label = self.rng.choice([c for c in self.classes if c != truth["label"]])
                body = {"label": label}
            try:
                resp = self.client.post(f"{self.url}/api/review/{item['id']}", json=body, headers=AUTH)
            except httpx.TransportError as exc:
                self.refused.append(f"#{item['id']} {body}: no answer ({type(exc).__name__})")
                return
            if resp.status_code == 200:
                self.labelled[item["id"]] = resp.json()["reviewed_label"]
            else:
                self.refused.append(f"#{item['id']} {body}: HTTP {resp.status_code} {resp.text[:120]}")


def percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def shows_item(row: dict[str, Any]) -> bool:
    """Whether a streamed photo shows an item (a photo of no item is counted apart everywhere)."""
    return row["truth"]["label"] != NOT_AN_ITEM


def figures(rows: list[dict[str, Any]], bins: list[str]) -> dict[str, Any]:
    """Coverage, auto-sorted class accuracy, true contamination per bin, manual sort, latency, errors.

    Coverage and the manual-sort rate are of the photos that show an item; photos of no item
    (``not_an_item`` in the class map) are counted apart (``empty_*``: refused is right), and one
    sorted into a bin contaminates it."""
    answered = [r for r in rows if r["kind"] is not None]
    auto = [r for r in answered if r["kind"] in AUTO_KINDS]
    items = [r for r in answered if shows_item(r)]
    empty = [r for r in answered if not shows_item(r)]
    with_class = [r for r in auto if r["truth"]["class"] is not None]
    out: dict[str, Any] = {
        "n": len(rows), "coverage": sum(r["kind"] in AUTO_KINDS for r in items) / len(items) if items else None,
        "auto_class_accuracy": (sum(r["label"] == r["truth"]["class"] for r in with_class) / len(with_class)
                                if with_class else None),
        "auto_class_n": len(with_class),
        "manual_sort_rate": (sum(r["kind"] == "manual_sort" for r in items) / len(items)) if items else None,
        "empty_n": len(empty), "empty_sorted": sum(r["kind"] in AUTO_KINDS for r in empty),
        "empty_refused_rate": sum(r["kind"] == "manual_sort" for r in empty) / len(empty) if empty else None,
        "refused_unknown": sum(r["reason"] == UNKNOWN for r in answered),
        "contamination": {}, "p50_ms": percentile([r["ms"] for r in rows if r["status"] is not None], 50),
        "p99_ms": percentile([r["ms"] for r in rows if r["status"] is not None], 99),
        "server_errors_5xx": sum(r["status"] is not None and r["status"] >= 500 for r in rows),
        # 4xx answers, and requests that got no answer at all (connection lost: status None)
        "other_errors": sum(r["status"] is None or 400 <= r["status"] < 500 for r in rows),
    }
    for b in bins:
        inb = [r for r in auto if r["decision"] == b]
        wrong = sum(r["truth"]["bin"] != b for r in inb)
        out["contamination"][b] = {"value": wrong / len(inb) if inb else None, "n": len(inb), "k": wrong}
    return out


def window_spans(rows: list[dict[str, Any]], size: int) -> list[tuple[int, int, int, int]]:
    """Windows of ``size`` items: ``(start, end, first item, end item)``, rows [start, end).

    A photo of no item joins the window of the item before it (the first window, before any), so
    every window holds ``size`` items but the last, with or without empty photos in the stream::

        window_spans(rows, 100)  # [(0, 117, 0, 100), (117, 236, 100, 200), ...]
    """
    spans: list[tuple[int, int, int, int]] = []
    start, first, n = 0, 0, 0
    for i, r in enumerate(rows):
        if not shows_item(r):
            continue
        if n == size:
            spans.append((start, i, first, first + n))
            start, first, n = i, first + n, 0
        n += 1
    if start < len(rows):
        spans.append((start, len(rows), first, first + n))
    return spans


def audit_estimate(rows: list[dict[str, Any]], bins: list[str]) -> dict[str, Any]:
    """Per bin, from every audit so far: the estimate (Wilson) beside the true contamination of the auto stream."""
    out = {}
    for b in bins:
        audits = [r for r in rows if r["kind"] == "audit" and r["decision"] == b and r["truth"]["label"] is not None]
        k = sum(r["truth"]["bin"] != b for r in audits)
        low, high = wilson_interval(k, len(audits))
        auto = [r for r in rows if r["kind"] in AUTO_KINDS and r["decision"] == b]
        true = sum(r["truth"]["bin"] != b for r in auto) / len(auto) if auto else None
        out[b] = {"estimate": k / len(audits) if audits else None, "low": low, "high": high, "n": len(audits),
                  "true": true, "inside": (true is not None and low <= true <= high) if audits else None}
    return out


def wait_for_adaptation(client: httpx.Client, url: str, photo: Path, index: int, every_s: float = 0.25,
                        timeout_s: float = 900, failed: list | None = None) -> list[dict[str, Any]]:
    """While an adaptation runs (or the server prepares the rehearsal features for the runs to come, from its
    start): re-post ``photo`` unlogged every ``every_s`` and time it; the probes. A run that ended with a
    non-zero exit status is appended to ``failed`` (its ``last`` block)."""
    out: list[dict[str, Any]] = []
    data = photo.read_bytes()
    t_end = time.monotonic() + timeout_s
    while time.monotonic() < t_end:
        try:
            state = (client.get(url + "/api/health").json().get("adaptation") or {}).get("state")
        except (httpx.TransportError, ValueError):  # no (JSON) answer: the stream loop finds out why
            break
        if state not in ("running", "preparing"):
            break
        t0 = time.perf_counter()
        try:
            status = client.post(url + "/api/predict?log=false",
                                 files={"file": (photo.name, data, "image/jpeg")}).status_code
        except httpx.TransportError:
            status = None
        out.append({"index": index, "ms": 1000 * (time.perf_counter() - t0), "status": status})
        time.sleep(every_s)
    if out and failed is not None:  # a run was seen: did it end well?
        try:
            last = (client.get(url + "/api/health").json().get("adaptation") or {}).get("last") or {}
        except (httpx.TransportError, ValueError):
            last = {}
        if last.get("exit_status") not in (0, None):
            failed.append({"index": index, **last})
    return out


def version_accuracy(versions: Path, data: str, split: str) -> list[dict[str, Any]]:
    """Each version's accuracy on the split file's test rows (the forgetting check), and how it was made."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from adapt_curve import trashnet_test_accuracy

    from wastenet.site.versions import VersionStore

    out = []
    listed = VersionStore(versions).list()
    for v in tqdm(listed, desc="versions on the check split", unit="version"):  # minutes: one test pass each
        out.append({"id": v["id"], "promoted": v["promoted"], "reason": v["reason"],
                    "test_accuracy": trashnet_test_accuracy(v["file"], data, split)})
    return out


def lost_labels(db: Path, labelled: dict[int, str]) -> int:
    """Reviewed labels the server accepted that its log does not hold (should be 0)."""
    with sqlite3.connect(db) as conn:
        got = dict(conn.execute("SELECT id, reviewed_label FROM decisions WHERE reviewed_label IS NOT NULL"))
    return sum(got.get(i) != label for i, label in labelled.items())


def plot(result: dict[str, Any], path: str, recycling: str) -> None:
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = result["windows"]
    x = [r["item_end"] for r in w]
    fig, ax = plt.subplots(figsize=(9.5, 4.2))
    series = (("coverage", "coverage (auto-sorted share)"), ("auto_class_accuracy", "class accuracy of auto-sorted"),
              ("manual_sort_rate", "manual-sort rate"))
    if any(r.get("empty_n") for r in w):  # a stream with photos of no item
        series += (("empty_refused_rate", "photos of no item refused"),)
    for key, name in series:
        ax.plot(x, [np.nan if r.get(key) is None else r[key] for r in w], marker="o", label=name)
    ax.plot(x, [r["contamination"][recycling]["value"] for r in w], marker="o", label=f"{recycling}-bin contamination")
    last = None
    for r in w:
        if last is not None and r["version"] != last:
            ax.axvline(r["item_start"], color="grey", ls=":", lw=1)
        last = r["version"]
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("items streamed")
    ax.set_title(f"site stream: {Path(result['stream']).name} ({result['items']} items)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the curves, never on them
    ax.grid(alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = Path(args.stream)
    try:  # the stream and the map's file are checked before a server starts: one line, exit 2
        paths = stream_paths(root, args.order, args.seed)
        folders = sorted({Path(p).parts[0] for p in paths})
        unmapped = sorted(set(folders) - set(read_class_map(args.class_map)))
        if unmapped:
            raise ConfigError(f"the class map does not say what these folders are: {', '.join(unmapped)}")
        # a new kind may name a bin the taxonomy lacks: the server accepts new bins when the map has new kinds
        new_kinds = map_has_new_kinds(args.class_map)
    except ConfigError as exc:
        print(f"site_stream: {exc}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="wastenet-site-stream-"))
    db = work / "decisions.sqlite"
    server = Server(args, db, new_kinds)
    try:  # the targets are checked against the served model's classes and bins
        health = httpx.get(server.url + "/api/health").json()
        targets = load_class_map(args.class_map, health["classes"], health["bins"], allow_new=True)
    except ConfigError as exc:
        server.stop()
        print(f"site_stream: {exc}", file=sys.stderr)
        return 2
    except BaseException:
        server.stop()
        raise
    truth = truth_of(targets, health["class_bins"])
    bins = list(health["bins"]) + sorted({t.name for t in targets.values() if t.kind == "new"} - set(health["bins"]))
    recycling, recycling_note = recycling_bin(bins)

    rows: list[dict[str, Any]] = []
    probes: list[dict[str, Any]] = []
    failed_runs: list[dict[str, Any]] = []  # background runs that exited non-zero (they make no version)
    streamed: dict[int, dict[str, Any]] = {}
    t_start = time.time()
    server_exit = None  # the line that says why the stream stopped early, if the server died
    try:
        with httpx.Client(timeout=120) as client:
            reviewer = Reviewer(client, server.url, health["classes"], args.reviewer_error, args.reviewer_delay,
                                args.seed)
            for i, rel in enumerate(tqdm(paths, desc="stream", unit="img", file=sys.stderr)):
                folder = Path(rel).parts[0]
                data = (root / rel).read_bytes()
                t0 = time.perf_counter()
                try:
                    r = client.post(server.url + "/api/predict", files={"file": (Path(rel).name, data, "image/jpeg")})
                    status, answer = r.status_code, (r.json() if r.status_code == 200 else {})
                except httpx.TransportError as exc:  # no answer: not a 5xx, an "other error"
                    status, answer = None, {"error": str(exc)}
                    if server.proc.poll() is not None:
                        server_exit = (f"wastenet serve exited with status {server.proc.returncode} at item {i} of "
                                       f"{len(paths)}: {server.last_line()}")
                ms = 1000 * (time.perf_counter() - t0)
                kind = answer.get("kind") or (("manual_sort" if answer.get("decision") == "manual_sort" else "auto")
                                              if status == 200 else None)
                row = {"index": i, "path": rel, "truth": truth[folder], "status": status, "ms": ms, "kind": kind,
                       "id": answer.get("id"), "decision": answer.get("decision"), "label": answer.get("label"),
                       "reason": answer.get("reason"), "version": answer.get("model_id") or args.checkpoint}
                rows.append(row)
                if row["id"] is not None:
                    streamed[row["id"]] = row
                if server_exit:
                    break
                if (i + 1) % args.review_every == 0 or i + 1 == len(paths):
                    reviewer.work(streamed, i)
                    if args.adapt_every and not args.no_wait_for_adaptation:
                        probes += wait_for_adaptation(client, server.url, root / paths[min(i + 1, len(paths) - 1)], i,
                                                      failed=failed_runs)
            if args.adapt_every and not args.no_wait_for_adaptation and not server_exit:  # the last run, if any
                probes += wait_for_adaptation(client, server.url, root / paths[-1], len(paths) - 1, failed=failed_runs)
            try:
                health_end = client.get(server.url + "/api/health").json()
            except (httpx.TransportError, ValueError):
                health_end = {}
    finally:
        server.stop()
    seconds = time.time() - t_start

    windows = []
    for start, end, first_item, end_item in window_spans(rows, args.window):
        w = rows[start:end]
        fig = figures(w, bins)
        fig.update(start=start, end=end, item_start=first_item, item_end=end_item, version=w[-1]["version"],
                   reviewed_so_far=sum(1 for i in reviewer.labelled if streamed[i]["index"] < end),
                   audit_vs_truth=audit_estimate(rows[:end], bins))
        windows.append(fig)
    for fig in windows:  # server latency while an adaptation ran, from the probes of that window
        mine = [p["ms"] for p in probes if fig["start"] <= p["index"] < fig["end"]]
        fig.update(adapting_probes=len(mine), adapting_p99_ms=percentile(mine, 99),
                   adapting_5xx=sum((p["status"] or 0) >= 500 for p in probes if fig["start"] <= p["index"] < fig["end"]))
    third = rows[len(rows) - len(rows) // 3:] if len(rows) >= 3 else rows
    final = figures(third, bins)
    final.update(start=len(rows) - len(third), audit_vs_truth=audit_estimate(rows, bins))
    versions = _versions(work / "models")
    result = {
        "cpu": cpu_description(), "cores": os.cpu_count(), "checkpoint": args.checkpoint, "stream": args.stream,
        "class_map": args.class_map, "order": args.order, "items": len(rows), "seconds": round(seconds, 1),
        "options": {k: getattr(args, k) for k in ("audit_rate", "adapt_every", "adapt_mix", "adapt_mix_split",
                                                  "window", "reviewer_error", "reviewer_delay", "review_every",
                                                  "seed", "serve_args")},
        "recycling_bin": recycling, "recycling_bin_note": recycling_note, "log_db": str(db), "reviewed": len(reviewer.labelled), "review_refused": reviewer.refused[:20],
        "lost_reviewed_labels": lost_labels(db, reviewer.labelled),
        "versions": sorted({r["version"] for r in rows}), "adaptation": health_end.get("adaptation"),
        "p99_ms_idle": percentile([r["ms"] for r in rows], 99),
        "p99_ms_adapting": percentile([p["ms"] for p in probes], 99), "adapting_probes": len(probes),
        "adapting_5xx": sum((p["status"] or 0) >= 500 for p in probes),
        "failed_adaptations": failed_runs,
        "version_list": versions,
        "slowest_adaptation": _slowest(versions),
        "version_check": (version_accuracy(work / "models", args.check_data, args.check_split)
                          if args.check_data and (work / "models").is_dir() else None),
        "server_exit": server_exit, "windows": windows, "final": final,
        # every item as it was decided (what a later analysis needs: e.g. when a new kind was first recognised)
        "decided": [{"i": r["index"], "truth": r["truth"]["class"], "label": r["label"], "kind": r["kind"],
                    "version": r["version"]} for r in rows],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    if args.plot:
        plot(result, args.plot, recycling)
    for w in windows:
        c = w["contamination"][recycling]["value"]
        print(f"items {w['item_start']:>5}-{w['item_end']:<5} coverage {w['coverage']:.3f}  auto-sorted accuracy "
              f"{_f(w['auto_class_accuracy'])}  {recycling} contamination {_f(c)}  manual sort "
              f"{w['manual_sort_rate']:.3f}  " + (f"empty sorted {w['empty_sorted']}/{w['empty_n']}  " if w['empty_n'] else "")
              + f"reviewed {w['reviewed_so_far']:>4}  p99 {w['p99_ms']:.0f} ms  "
              f"5xx {w['server_errors_5xx']}  version {w['version']}", file=sys.stderr)
    for v in result["version_list"]:
        took = (v.get("timing") or {}).get("seconds")
        print(f"version {v['id']}: {'promoted' if v['promoted'] else 'kept'} ({v['reason']}); trained on "
              f"{v['trained_on']}, held out {v['held_out']}" + (f"; {took:.0f} s" if took is not None else ""),
              file=sys.stderr)
    if result["version_check"]:
        for v in result["version_check"]:
            print(f"version {v['id']}: {args.check_data} test accuracy {v['test_accuracy']:.3f}", file=sys.stderr)
    prepared = (result["adaptation"] or {}).get("rehearsal")
    if prepared:
        print(f"rehearsal features prepared at the server's start: {prepared.get('error') or 'ready'} "
              f"in {prepared['seconds']:.0f} s", file=sys.stderr)
    if result["slowest_adaptation"]:
        slow = result["slowest_adaptation"]
        print(f"slowest adaptation: {slow['seconds']:.0f} s (version {slow['id']}, on {slow['reviewed']} reviewed items)",
              file=sys.stderr)
    if probes:
        print(f"p99 latency: {result['p99_ms_idle']:.0f} ms streaming, {result['p99_ms_adapting']:.0f} ms while "
              f"adapting ({len(probes)} probes, {result['adapting_5xx']} 5xx)", file=sys.stderr)
    print(f"reviewed {result['reviewed']}, lost reviewed labels {result['lost_reviewed_labels']}, "
          f"5xx {sum(w['server_errors_5xx'] for w in windows)}; {result['cpu']}; {seconds:.0f} s", file=sys.stderr)
    if recycling_note:
        print(recycling_note, file=sys.stderr)
    print(f"last third: coverage {_f(final['coverage'])}; recycling-bin contamination "
          f"{_f(final['contamination'][recycling]['value'])}; class accuracy of auto-sorted {_f(final['auto_class_accuracy'])}")
    if failed_runs:  # the figures are of a server that could not learn: say so beside them
        print(f"site_stream: {len(failed_runs)} adaptation run(s) failed; the first: "
              f"{(failed_runs[0].get('error') or '').strip()[:200]}", file=sys.stderr)
    if server_exit:  # the figures cover the items before it; the run failed
        print(f"site_stream: {server_exit}", file=sys.stderr)
        return 1
    return 0


def _versions(folder: Path) -> list[dict[str, Any]]:
    from wastenet.site.versions import VersionStore

    if not (folder / "0000.json").is_file():
        return []
    keep = ("id", "created_at", "parent", "promoted", "reason", "scores", "active", "model_id", "timing")
    return [{**{k: v.get(k) for k in keep}, "trained_on": len((v.get("inputs") or {}).get("trained_on") or []),
             "held_out": len((v.get("inputs") or {}).get("held_out") or []),
             "new_classes": (v.get("inputs") or {}).get("new_classes")} for v in VersionStore(folder).list()]


def _slowest(versions: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The version that took longest to make (the target: <= 2 min on <= 500 reviewed items), or None."""
    timed = [v for v in versions if (v.get("timing") or {}).get("seconds") is not None]
    if not timed:
        return None
    v = max(timed, key=lambda v: v["timing"]["seconds"])
    return {"id": v["id"], "seconds": v["timing"]["seconds"], "adapt_seconds": v["timing"].get("adapt_seconds"),
            "reviewed": v["trained_on"] + v["held_out"]}


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


if __name__ == "__main__":
    sys.exit(main())
