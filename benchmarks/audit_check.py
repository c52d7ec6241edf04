"""Do audits estimate a bin's real contamination? A labelled stream through a real server, checked.

A real ``wastenet serve`` on loopback, started twice on one model: audits off and audits on (the
largest ``--rates`` value, seed 0). Every item of a labelled stream goes to both, in alternating
order, so the two latency figures come from one run. A simulated reviewer labels every audit of
the audited server from ground truth through ``POST /api/review``; its ``GET /api/stats`` then gives
the estimated contamination per bin, which must equal this script's own count. The true
contamination of the automatically sorted stream is known from ground truth.

Repeating the stream for 20 audit seeds would repeat identical predictions: the draw is a hash of
(seed, row id) (:func:`wastenet.audit.audit_draw`) and nothing else. So the script checks that the
server's audits are exactly the rows whose draw for seed 0 is below the rate, then recomputes the
draws of the same rows for ``--seeds`` seeds and each rate, and reports how often the true value lies
inside the 95% Wilson interval (per seed and bin, where the bin has at least one labelled audit)
and the intervals' width::

    python benchmarks/audit_check.py --checkpoint runs/s9-mnv2-linear/best.pt \\
        --stream ../shared/data/trashnet --split-file ../shared/data/trashnet-split.csv --split test \\
        --out benchmarks/results/audit-check-trashnet.json
    python benchmarks/audit_check.py --checkpoint runs/s9-mnv2-linear/best.pt \\
        --stream ../shared/data/field-drinkingwaste --class-map benchmarks/field/drinkingwaste.yaml \\
        --out benchmarks/results/audit-check-field.json

Target: coverage 90-98% at every rate; p50/p99 latency with audits on <= 1.1x off.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
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

from wastenet.audit import audit_draw, wilson_interval  # noqa: E402

TOKEN = "audit-check-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--stream", required=True, help="DIR/<class>/... photos")
    p.add_argument("--class-map", default=None, help="YAML {folder: model class | bin:NAME | unknown}; default: identity")
    p.add_argument("--split-file", default=None, help="CSV path,label,split: stream only the --split rows")
    p.add_argument("--split", default="test")
    p.add_argument("--rates", default="0.02,0.05,0.1")
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--precise-seeds", type=int, default=1000,
                   help="also the coverage over this many seeds (offline draws): 20 seeds leave it +-10 points")
    p.add_argument("--serve-args", default="", help="extra `wastenet serve` options for both servers")
    p.add_argument("--out", required=True)
    return p.parse_args(argv)


def stream_items(args: argparse.Namespace) -> list[tuple[Path, str]]:
    """``(photo, folder name)`` in a fixed shuffled order (seed 0)."""
    root = Path(args.stream)
    if args.split_file:
        with open(args.split_file, newline="") as f:
            rows = [(root / r["path"], r["label"]) for r in csv.DictReader(f) if r["split"] == args.split]
    else:
        from wastenet.data.datasets import scan_folder  # what every command reads from DIR/<class>/...

        rows = [(root / r.path, r.label) for r in scan_folder(root, min_classes=1)[0]]
    if not rows:
        sys.exit(f"no photos under {root}")
    random.Random(0).shuffle(rows)
    return rows


def start(checkpoint: str, db: Path, extra: list[str]) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "wastenet", "serve", "--checkpoint", checkpoint, "--port", str(port),
                             "--log-db", str(db), "--log-level", "warning", "--review-token", TOKEN, *extra], cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    wait_for_health(proc, url)
    return proc, url


def true_bins(health: dict[str, Any], class_map_path: str | None, folders: set[str]) -> dict[str, tuple[str | None, str | None]]:
    """``{folder: (model class or None, true bin or None)}`` from the class map and the model's taxonomy."""
    from wastenet.evaluation.field import load_class_map

    class_bins = health["class_bins"]
    if class_map_path is None:
        return {f: (f, class_bins.get(f)) for f in folders}
    targets = load_class_map(class_map_path, health["classes"], health["bins"])
    out = {}
    for folder, t in targets.items():
        if t.kind == "class":
            out[folder] = (t.name, class_bins.get(t.name))
        elif t.kind == "bin":
            out[folder] = (None, t.name)
        else:
            out[folder] = (None, None)
    return out


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def contamination_by_bin(rows: list[dict[str, Any]], chosen: set[int] | None = None) -> dict[str, tuple[int, int]]:
    """``{bin: (k wrong-bin, n)}`` over auto-sorted rows with a known true bin (only ``chosen`` ids if given)."""
    out: dict[str, list[int]] = {}
    for r in rows:
        if r["decision"] == "manual_sort" or r["true_bin"] is None or (chosen is not None and r["id"] not in chosen):
            continue
        kn = out.setdefault(r["decision"], [0, 0])
        kn[0] += int(r["true_bin"] != r["decision"])
        kn[1] += 1
    return {b: (k, n) for b, (k, n) in out.items()}


def coverage(rows: list[dict[str, Any]], rates: list[float], seeds: int, true: dict[str, float]) -> dict[str, Any]:
    """Per rate: how often (over seeds and bins with a labelled audit) the true contamination lies in
    the Wilson interval of the audits that seed's draw chose, the median width and audits per bin."""
    per_rate = {}
    for rate in rates:
        hits, runs, widths, ns = 0, 0, [], []
        for seed in range(seeds):
            chosen = {r["id"] for r in rows if r["decision"] != "manual_sort" and audit_draw(seed, r["id"]) < rate}
            for b, (k, n) in contamination_by_bin(rows, chosen).items():
                low, high = wilson_interval(k, n)
                runs += 1
                hits += int(low - 1e-12 <= true[b] <= high + 1e-12)
                widths.append(high - low)
                ns.append(n)
        per_rate[str(rate)] = {"coverage": hits / runs if runs else None, "runs": runs,
                               "median_width": statistics.median(widths) if widths else None,
                               "median_audits_per_bin": statistics.median(ns) if ns else None}
    return per_rate




def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rates = sorted(float(r) for r in args.rates.split(","))
    items = stream_items(args)
    work = Path(tempfile.mkdtemp(prefix="wastenet-audit-check-"))
    extra = args.serve_args.split()
    off, off_url = start(args.checkpoint, work / "off.sqlite", [*extra, "--audit-rate", "0"])
    on, on_url = start(args.checkpoint, work / "on.sqlite", [*extra, "--audit-rate", str(rates[-1]), "--audit-seed", "0"])
    try:
        health = httpx.get(on_url + "/api/health").json()
        truth = true_bins(health, args.class_map, {f for _, f in items})
        latency: dict[str, list[float]] = {"off": [], "on": []}
        rows, errors = [], 0
        with httpx.Client(timeout=60) as client:
            for i, (path, folder) in enumerate(tqdm(items, desc="stream", unit="img", file=sys.stderr)):
                data = path.read_bytes()
                answers = {}
                for name in (("off", "on") if i % 2 == 0 else ("on", "off")):  # alternate: no order bias
                    t0 = time.perf_counter()
                    r = client.post((off_url if name == "off" else on_url) + "/api/predict",
                                    files={"file": (path.name, data, "image/jpeg")})
                    latency[name].append(1000 * (time.perf_counter() - t0))
                    if r.status_code != 200:
                        errors += 1
                    answers[name] = r.json() if r.status_code == 200 else None
                a = answers["on"]
                if a is None:
                    continue
                cls, tbin = truth.get(folder, (None, None))
                rows.append({"id": a["id"], "decision": a["decision"], "kind": a["kind"], "label": a["label"],
                             "true_class": cls, "true_bin": tbin,
                             "same_as_off": answers["off"] is not None and answers["off"]["decision"] == a["decision"]})
            # the simulated reviewer labels every audit it can from ground truth (a class target)
            labelled = 0
            for r in tqdm([r for r in rows if r["kind"] == "audit" and r["true_class"]], desc="review", file=sys.stderr):
                resp = client.post(f"{on_url}/api/review/{r['id']}", json={"label": r["true_class"]}, headers=AUTH)
                labelled += resp.status_code == 200
            served = client.get(on_url + "/api/stats", headers=AUTH).json()
    finally:
        for p in (off, on):
            p.terminate()
            p.wait(timeout=30)

    # 1. the server audited exactly the rows its seeded draw chose, and its estimate is the count
    drawn_ok = all((r["kind"] == "audit") == (r["decision"] != "manual_sort" and audit_draw(0, r["id"]) < rates[-1])
                   for r in rows)
    chosen0 = {r["id"] for r in rows if r["kind"] == "audit" and r["true_class"]}
    mine = contamination_by_bin(rows, chosen0)
    (model,) = served["models"]
    server_counts = {b: (g["contamination"]["k"], g["contamination"]["n"]) for b, g in model["bins"].items()
                     if g["contamination"]["n"]}
    # 2. coverage over seeds and rates (recomputed draws of the same rows)
    true = {b: k / n for b, (k, n) in contamination_by_bin(rows).items()}
    per_rate = coverage(rows, rates, args.seeds, true)
    precise = coverage(rows, rates, args.precise_seeds, true)
    auto = [r for r in rows if r["decision"] != "manual_sort"]
    result = {
        "cpu": cpu_description(), "cores": os.cpu_count(), "checkpoint": args.checkpoint, "stream": args.stream,
        "items": len(rows), "errors": errors, "auto_sorted": len(auto),
        "true_contamination": {b: {"value": true[b], "auto_sorted": n}
                               for b, (_, n) in contamination_by_bin(rows).items()},
        "seed0": {"rate": rates[-1], "audits": sum(r["kind"] == "audit" for r in rows), "labelled": labelled,
                  "draw_matches_seed": drawn_ok, "server_estimate_equals_count": server_counts == mine,
                  "server_contamination": {b: g["contamination"] for b, g in model["bins"].items()}},
        "coverage": per_rate, "seeds": args.seeds, "coverage_precise": precise, "precise_seeds": args.precise_seeds,
        "latency_ms": {name: {"p50": percentile(v, 50), "p99": percentile(v, 99)} for name, v in latency.items()},
        "decisions_same_on_and_off": all(r["same_as_off"] for r in rows),
        "rows": [{k: r[k] for k in ("id", "decision", "kind", "true_bin")} for r in rows],
    }
    lat = result["latency_ms"]
    result["latency_ratio"] = {q: lat["on"][q] / lat["off"][q] for q in ("p50", "p99")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=2))
    for rate, c in per_rate.items():
        print(f"rate {rate}: coverage {c['coverage']:.3f} over {c['runs']} (seed, bin) runs "
              f"({precise[rate]['coverage']:.3f} over {args.precise_seeds} seeds); median width {c['median_width']:.3f}; "
              f"median audits per bin {c['median_audits_per_bin']}")
    print(f"latency on/off: p50 {result['latency_ratio']['p50']:.2f}x, p99 {result['latency_ratio']['p99']:.2f}x "
          f"({result['cpu']})")
    return 0 if drawn_ok and server_counts == mine and errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
