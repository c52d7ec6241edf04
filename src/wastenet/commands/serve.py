"""``wastenet serve``: the web service and page (FastAPI + uvicorn) around one model file.

Usage::

    wastenet serve --checkpoint runs/x/best.pt                 # http://127.0.0.1:8000/
    wastenet serve --checkpoint model.onnx --host 0.0.0.0 --port 8080 --threshold 0.85
    wastenet serve --checkpoint model.onnx --workers 2          # one process per core
    WASTENET_REVIEW_TOKEN=s3cret wastenet serve --checkpoint model.onnx --host 0.0.0.0 \
        --allowed-host bin-3.local                              # a LAN name for the page

Predicting is open; the review queue, its photos and relabelling (``/review``) need the review token
(``Authorization: Bearer TOKEN``): ``--review-token``, env ``WASTENET_REVIEW_TOKEN``, or a
random one printed at start together with the review page's address.

Decisions go to ``decisions.sqlite`` beside the model file (or ``--log-db``); manual-sort
photos wait there for ``/review`` or ``wastenet review``. Nothing here imports torch at
module level: an ``.onnx`` file runs on the torch-free edge install.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import sys

from wastenet.decision import DEFAULT_THRESHOLD
from wastenet.serve.settings import ServeSettings

HELP = "Serve the classifier: JSON API, web page (upload or camera) and the manual-sort review loop."

_MB = 2**20
_default = ServeSettings.default  # every default below comes from the settings: one place each


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from wastenet.site.learn import COMPARISONS

    parser.add_argument("--checkpoint", required=True, metavar="FILE.pt|FILE.onnx",
                        help="model file: a training checkpoint (.pt) or an exported model (.onnx)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (0.0.0.0 for every interface; predicting needs no login, "
                             "reviewing needs the review token)")
    parser.add_argument("--review-token", default=None, metavar="TOKEN",
                        help="credential for the review queue and relabelling (Authorization: Bearer TOKEN); default: env "
                             "WASTENET_REVIEW_TOKEN, else a random token printed at start")
    parser.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                        help="a host name clients use to reach the server (e.g. bin-3.local); IP addresses, "
                             "localhost and --host are always accepted, other Host headers get 403")
    parser.add_argument("--port", type=int, default=8000, help="TCP port")
    parser.add_argument("--log-db", default=_default("log_path"), metavar="PATH",
                        help="SQLite decision log (None = decisions.sqlite beside the model file, "
                             "else ~/.local/share/wastenet/)")
    parser.add_argument("--threshold", type=float, default=_default("threshold"),
                        help="default decision threshold in [0, 1] (None = the model file's, normally "
                             f"{DEFAULT_THRESHOLD:g})")
    parser.add_argument("--max-upload-mb", type=float, default=_default("max_upload_bytes") / _MB,
                        help="largest accepted upload, in MB (default %(default)g)")
    parser.add_argument("--log-max-mb", type=float, default=_default("log_max_bytes") / _MB,
                        help="cap on the decision log's files on disk, in MB (default %(default)g; 0 = no cap): past "
                             "it the photos of the oldest automatic decisions go first, then those of pending reviews; "
                             "reviewed photos not yet exported are never deleted (new photos are then not stored)")
    parser.add_argument("--max-decodes", type=int, default=_default("max_decodes"),
                        help="images decoded at once per process (default %(default)s)")
    parser.add_argument("--decode-mpx", type=float, default=_default("decode_pixels") / 1e6,
                        help="decoded megapixels in flight at once per process (default %(default)g: one image at "
                             "the service's pixel limit, ~3 bytes a pixel); a larger image waits until it fits")
    parser.add_argument("--workers", type=int, default=1,
                        help="server processes, each with its own copy of the model")
    parser.add_argument("--max-batch", type=int, default=_default("max_batch"),
                        help="most concurrent requests stacked into one forward pass (1 = no batching)")
    parser.add_argument("--threads", type=int, default=_default("torch_threads"),
                        help="PyTorch CPU threads per process (None = cores / workers)")
    parser.add_argument("--search", action="store_true",
                        help="look at each photo through windows, the most item-like one decides (predict --search; "
                             "~51 model calls a photo)")
    parser.add_argument("--audit-rate", type=float, default=_default("audit_rate"), metavar="R",
                        help="share of automatically sorted photos kept for review as audits, drawn at random "
                             "(default %(default)g; 0 = off): they estimate each bin's real contamination")
    parser.add_argument("--audit-seed", type=int, default=_default("audit_seed"), metavar="N",
                        help="seed of the audit draw (default: the log's own, random when the log was made)")
    parser.add_argument("--allow-new-bins", action="store_true",
                        help="a reviewer's new kind of item may name a bin the taxonomy lacks (default: existing bins only)")
    parser.add_argument("--new-class-min", type=int, default=_default("new_class_min"), metavar="K",
                        help="reviewed items a new kind needs before adaptation makes it a class (default %(default)s)")
    parser.add_argument("--adapt-every", type=int, default=_default("adapt_every"), metavar="N",
                        help="adapt in the background after N new reviewed items (default: only on POST "
                             "/api/models/adapt); a candidate is promoted only if it beats the served model on "
                             "the newest 20%% of reviewed items")
    parser.add_argument("--adapt-mix", default=_default("adapt_mix"), metavar="DIR",
                        help="rehearsal data for adaptation (e.g. the training set), so the model does not forget it")
    parser.add_argument("--adapt-mix-split", default=_default("adapt_mix_split"), metavar="CSV",
                        help="split file of --adapt-mix (train rows rehearsed, val rows calibrate)")
    parser.add_argument("--adapt-mix-per-class", type=int, default=_default("adapt_mix_per_class"), metavar="N",
                        help="--adapt-mix images rehearsed per class (default: wastenet adapt's; more forgets less "
                             "and makes the first adaptation, which computes their features, longer)")
    parser.add_argument("--adapt-holdout-max", type=int, default=_default("adapt_holdout_max"), metavar="N",
                        help="hold out at most N of the newest reviewed items to compare a candidate with (default: "
                             "20%% of them; the share alone makes an older log wait longer for its newest items)")
    parser.add_argument("--adapt-compare", choices=COMPARISONS, default=_default("adapt_compare"),
                        help="what a candidate must not be worse at on the held-out items: every item's class "
                             "(default), or the class of the items each model sorts itself (a label of an item both "
                             "send to manual sort then changes nothing)")
    parser.add_argument("--adapt-max-forgetting", type=float, default=_default("adapt_max_forgetting"),
                        metavar="POINTS", help="a candidate that lost more than POINTS of accuracy on --adapt-mix's "
                                               "validation rows (against the model the versions started from) is "
                                               "not promoted (default: 1)")
    parser.add_argument("--channels-last", action="store_true",
                        help="run a .pt model in channels-last (NHWC) memory layout, often faster on CPU")
    parser.add_argument("--onnx-spin", action="store_true",
                        help="let an .onnx model's idle onnxruntime threads spin between batches (default: they "
                             "sleep, leaving the cores to request decoding: faster under load on a small machine)")
    parser.add_argument("--log-level", default="info",
                        choices=("critical", "error", "warning", "info", "debug"), help="server log level")


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    """The command line as :class:`ServeSettings` (units converted; ConfigError for a bad value).

    The review token comes from ``--review-token``, else ``$WASTENET_REVIEW_TOKEN``; None here
    means ``run`` makes (and prints) a random one.
    """
    from pathlib import Path

    from wastenet.errors import ConfigError

    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    for flag in ("max_upload_mb", "log_max_mb", "decode_mpx"):
        if not math.isfinite(getattr(args, flag)):
            raise ConfigError(f"--{flag.replace('_', '-')} must be a number, got {getattr(args, flag)}")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    # one model per process: split the cores between processes instead of oversubscribing
    threads = args.threads or (max(1, cores // args.workers) if args.workers > 1 else None)
    token = args.review_token if args.review_token is not None else os.environ.get("WASTENET_REVIEW_TOKEN") or None
    return ServeSettings(
        checkpoint=str(Path(args.checkpoint).expanduser().resolve()),
        log_path=str(Path(args.log_db).expanduser()) if args.log_db else None,
        max_upload_bytes=int(args.max_upload_mb * _MB), log_max_bytes=int(args.log_max_mb * _MB) or None,
        decode_pixels=int(args.decode_mpx * 1e6), max_decodes=args.max_decodes,
        threshold=args.threshold, max_batch=args.max_batch, torch_threads=threads,
        channels_last=args.channels_last, onnx_spin=args.onnx_spin, review_token=token,
        host=args.host, allowed_hosts=tuple(args.allowed_host),
        search=args.search, audit_rate=args.audit_rate, audit_seed=args.audit_seed,
        allow_new_bins=args.allow_new_bins, new_class_min=args.new_class_min, adapt_every=args.adapt_every,
        adapt_mix=str(Path(args.adapt_mix).expanduser().resolve()) if args.adapt_mix else None,
        adapt_mix_split=str(Path(args.adapt_mix_split).expanduser().resolve()) if args.adapt_mix_split else None,
        adapt_mix_per_class=args.adapt_mix_per_class, adapt_max_forgetting=args.adapt_max_forgetting,
        adapt_holdout_max=args.adapt_holdout_max, adapt_compare=args.adapt_compare)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from wastenet.errors import ConfigError

    settings = settings_from_args(args)  # every option checked here, before anything loads
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be in 1..65535, got {args.port}")
    try:
        import uvicorn

        import wastenet.serve.app  # noqa: F401 - fastapi present?
    except ImportError as exc:
        raise ConfigError(f"serving needs the serve extra ({exc.name} is missing): "
                          "pip install 'wastenet[serve]'") from exc
    _check_port_free(args.host, args.port)

    url = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '') else args.host}:{args.port}/"
    generated = settings.review_token is None
    if generated:
        from wastenet.serve.guard import new_review_token

        settings = dataclasses.replace(settings, review_token=new_review_token())  # one for every worker

    def say_token() -> None:  # the fragment never reaches the server or its logs; the page keeps it
        if generated:
            print(f"wastenet serve: review token {settings.review_token}  "
                  f"(review page: {url}review#token={settings.review_token})", file=sys.stderr)

    if args.workers == 1:
        from wastenet.serve.app import create_app

        app = create_app(settings)  # a bad model file fails here: its one line, no token line before it
        say_token()
        print(f"wastenet serve: {url}  (decision log: {app.state.decision_log.path})", file=sys.stderr)
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, workers=1)
        return 0

    # several processes: uvicorn imports the app factory in each one; the settings go as one JSON variable
    from wastenet.serve.settings import ENV_VAR

    os.environ[ENV_VAR] = settings.to_json()
    _check_model_loads(settings.checkpoint)  # in the workers a bad file would fail after the token line
    say_token()
    print(f"wastenet serve: {url}  ({args.workers} workers)", file=sys.stderr)
    uvicorn.run("wastenet.serve.app:app_from_env", factory=True, host=args.host, port=args.port,
                workers=args.workers, log_level=args.log_level)
    return 0


def _check_model_loads(path: str | None) -> None:
    """Load the model once and let it go: a file that is not a usable model fails with its one line here."""
    import gc

    from wastenet.inference.predictor import Classifier

    Classifier.load(path)
    gc.collect()


def _check_port_free(host: str, port: int) -> None:
    """Fail with one clear line (exit 2) instead of uvicorn's traceback when the port is taken."""
    from wastenet.errors import ConfigError

    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot resolve --host {host!r}: {exc}") from None
    family, socktype, proto, _, addr = infos[0]
    with socket.socket(family, socktype, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            s.bind(addr)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
