"""The prediction API: a trained model (``.pt`` checkpoint or ``.onnx`` file) as a bin sorter.

``Classifier`` hides the runtime (PyTorch or onnxruntime, imported only when a file of that
kind is loaded, so the torch-free edge install can run ONNX files) and turns images into
``Prediction`` rows: class, calibrated confidence, bin, and the decision (the bin, or
``manual_sort`` when the bin's total probability is below the threshold, with the ``reason``),
decided by :func:`wastenet.decision.decide`::

    clf = Classifier.load("runs/densenet121/best.pt")        # or "model.onnx"
    preds = clf.predict(["bottle.jpg", "photos/can.png"], threshold=0.85)
    print(preds[0])                 # bottle.jpg: glass 0.97 -> recyclable (0.99)

Images may be paths, PIL images, uint8 ``H x W x 3`` arrays or encoded bytes, mixed. A file
that cannot be decoded gives an error ``Prediction`` (``decision == "error"``) and never
stops the batch. Decoding and preprocessing of the next batches run in background threads
while the model works on the current one.

The rows are :class:`wastenet.inference.results.Prediction`, the inputs
:mod:`wastenet.inference.inputs` (both importable from here too).
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from wastenet.data.images import ImageDecodeError
from wastenet.decision import DEFAULT_THRESHOLD, MANUAL_SORT, Threshold, check_threshold, decide
from wastenet.errors import ConfigError
from wastenet.inference.backends import OnnxBackend, TorchBackend
from wastenet.inference.inputs import ImageInput, as_list, display_name, to_pil
from wastenet.inference.results import Prediction
from wastenet.inference.tta import tta_logits
from wastenet.preprocessing import Preprocessing, preprocess_images
from wastenet.probabilities import softmax
from wastenet.taxonomy import Taxonomy, load_taxonomy, resolve_taxonomy

__all__ = [
    "Classifier",
    "ImageInput",
    "MANUAL_SORT",
    "OnnxBackend",
    "Prediction",
    "TorchBackend",
    "softmax",
]

# --------------------------------------------------------------------------- classifier
class Classifier:
    """A waste classifier plus its decision rule (taxonomy, temperature, threshold).

    Usage::

        clf = Classifier.load("runs/x/best.pt")
        clf.predict(["a.jpg", "b.png"], threshold=0.8)    # list[Prediction], input order
        clf.predict_one("a.jpg").decision                  # 'recyclable' or 'manual_sort'
    """

    def __init__(self, backend: Any, *, classes: Sequence[str], preprocessing: Preprocessing,
                 taxonomy: Taxonomy | Mapping[str, Any] | str | None = None, temperature: float = 1.0,
                 threshold: float = DEFAULT_THRESHOLD, arch: str = "", source: str | None = None,
                 ood: Mapping[str, Any] | None = None) -> None:
        self.backend = backend
        # the unknown-item rule: {"method", "thresholds": {method: t}} from training (None: no rule)
        self.ood = _check_ood(ood)
        self.classes = [str(c) for c in classes]
        self.preprocessing = preprocessing
        self.taxonomy = resolve_taxonomy(taxonomy, self.classes)  # none in the file: a built-in or one bin per class
        self.temperature = float(temperature)
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be positive, got {temperature}")
        self.threshold = check_threshold(threshold)
        self.arch = arch
        self.source = source

    # ---------------------------------------------------------------- construction
    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu", channels_last: bool = False,
             onnx_spin_wait: bool = True) -> "Classifier":
        """Load a ``.pt`` checkpoint (PyTorch) or an ``.onnx`` file (onnxruntime).

        ``channels_last`` applies to ``.pt`` models; ``onnx_spin_wait=False`` lets onnxruntime's
        idle threads sleep instead of spinning (better for a server sharing a few cores).

        A missing file, another suffix or a file without wastenet metadata is a ConfigError.
        """
        p = Path(path)
        suffix = p.suffix.lower()
        if suffix not in (".pt", ".onnx"):
            raise ConfigError(f"model file must be a .pt checkpoint or an .onnx file, got {p}")
        if not p.is_file():
            raise ConfigError(f"{'checkpoint' if suffix == '.pt' else 'ONNX model'} not found: {p}")
        if suffix == ".pt":
            return cls._load_torch(p, device, channels_last)
        return cls._load_onnx(p, device, onnx_spin_wait)

    @classmethod
    def _load_torch(cls, path: Path, device: str, channels_last: bool) -> "Classifier":
        try:
            from wastenet import checkpoint
            from wastenet.models import model_from_checkpoint
        except ImportError as exc:  # the edge install has no torch
            raise ConfigError(f"a .pt checkpoint needs PyTorch ({exc.name} is missing); "
                              "export to ONNX for the torch-free runtime") from exc
        ckpt = checkpoint.load(path)
        model = model_from_checkpoint(ckpt)
        ood = ckpt.get("ood")
        backend = TorchBackend(model, device, channels_last, ood_rule=ood)
        return cls(backend, classes=ckpt["classes"], ood=ood,
                   preprocessing=Preprocessing.from_dict(ckpt["preprocessing"]),
                   taxonomy=ckpt.get("taxonomy"), temperature=ckpt["temperature"],
                   threshold=ckpt["threshold"], arch=ckpt["arch"], source=str(path))

    @classmethod
    def _load_onnx(cls, path: Path, device: str, spin_wait: bool = True) -> "Classifier":
        backend = OnnxBackend(path, device, spin_wait)
        meta = backend.metadata()  # checked: classes, preprocessing, temperature, threshold
        try:
            clf = cls(backend, classes=meta["classes"], preprocessing=Preprocessing.from_dict(meta["preprocessing"]),
                      taxonomy=meta.get("taxonomy"), temperature=meta["temperature"], threshold=meta["threshold"],
                      arch=meta.get("arch", ""), source=str(path), ood=_onnx_ood_rule(meta, backend))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # the ood record, a taxonomy
            raise ConfigError(f"{path}: unreadable wastenet metadata ({exc})") from exc
        clf._check_graph(path)
        return clf

    def _check_graph(self, path: Path) -> None:
        """One blank image through the graph at load time: metadata that disagrees with it
        (input size, number of classes) fails here, once, not on every request."""
        h, w = self.preprocessing.hw  # (H, W): square crop or the aspect-preserving --img-size HxW
        size = f"{h}" if h == w else f"{h}x{w}"
        try:
            out = self.backend.predict_arrays(np.zeros((1, 3, h, w), np.float32))
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise ConfigError(f"{path}: the graph does not take the {size} px input its metadata declares "
                              f"({' '.join(str(exc).split())[:160]})") from None
        if out.shape != (1, len(self.classes)):
            raise ConfigError(f"{path}: the graph gives {tuple(out.shape)[1:]} outputs per image but its metadata "
                              f"names {len(self.classes)} classes")

    # ---------------------------------------------------------------- properties
    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def model(self) -> Any:
        """The PyTorch network (torch backend only; Grad-CAM needs it)."""
        model = getattr(self.backend, "model", None)
        if model is None:
            raise ConfigError(f"the {self.backend_name} backend has no PyTorch model: use a .pt checkpoint")
        return model

    def __repr__(self) -> str:
        return (f"Classifier(arch={self.arch!r}, backend={self.backend_name!r}, "
                f"classes={len(self.classes)}, taxonomy={self.taxonomy.name!r})")

    # ---------------------------------------------------------------- inference
    def predict_arrays(self, x: np.ndarray) -> np.ndarray:
        """Normalised float32 ``[N,3,S,S]`` -> raw logits ``[N,C]`` (no temperature)."""
        return self.backend.predict_arrays(x)

    def probabilities(self, x: np.ndarray, tta: bool = False) -> np.ndarray:
        """Calibrated class probabilities ``softmax(logits / T)``; ``tta`` adds the mirror image
        as :mod:`wastenet.inference.tta` defines (probabilities averaged, then the temperature)."""
        return self.scored_probabilities(x, tta)[0]

    def scored_probabilities(self, x: np.ndarray, tta: bool = False,
                             ood_method: str | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Calibrated probabilities and the unknown-item score (None when the model has no rule).

        With ``tta`` the logits combine as :mod:`wastenet.inference.tta` defines; the
        feature-space score is averaged over the image and its mirror image.
        """
        logits, graph_score = self.backend.predict_scored(x)
        if tta:
            mirrored, graph_m = self.backend.predict_scored(np.ascontiguousarray(x[..., ::-1]))
            logits = tta_logits(np.stack([logits, mirrored]))
            graph_score = None if graph_score is None else (graph_score + graph_m) / 2.0
        method = ood_method or (self.ood or {}).get("method")
        score = None
        if method is not None and method == (self.ood or {}).get("graph_method"):
            score = graph_score  # the feature-space score is computed inside the network
        elif method in ("msp", "energy"):
            from wastenet import ood as ood_scores

            score = ood_scores.scores(method, logits, self.temperature)
        elif method is not None:
            raise ConfigError(f"this model scores unknown items with {self.ood['graph_method']}, msp or energy, "
                              f"not {method}")
        return softmax(logits, self.temperature), score

    def unknown_threshold(self, override: float | None = None, method: str | None = None,
                          search: bool = False) -> float | None:
        """The unknown-item threshold in force: ``override``, else the one fitted for the method
        (under ``search``, the one fitted on searched validation photos where the model has it)."""
        if override is not None:
            return float(override)
        if not self.ood:
            return None
        method = method or self.ood["method"]
        if search and method in self.ood["search_thresholds"]:
            return self.ood["search_thresholds"][method]
        return self.ood["thresholds"].get(method)

    def preprocess(self, images: Sequence[Image.Image]) -> np.ndarray:
        """PIL images -> the model's normalised float32 input (same code for every backend)."""
        return preprocess_images(images, self.preprocessing)

    def predict_one(self, image: ImageInput, **kwargs: Any) -> Prediction:
        """``predict([image])[0]``."""
        return self.predict([image], **kwargs)[0]

    def predict(self, images: Iterable[ImageInput] | ImageInput, threshold: Threshold | None = None,
                taxonomy: Any = None, batch_size: int = 32, topk: int = 3, progress: bool = False,
                tta: bool = False, decode_workers: int = 2, ood_threshold: float | None = None,
                ood_method: str | None = None, unknown_rule: bool = True, search: bool = False,
                progress_desc: str = "predict") -> list[Prediction]:
        """Classify ``images`` and decide a bin for each; results in input order.

        ``threshold`` defaults to the model file's; a ``{bin: threshold}`` mapping sets some bins'
        thresholds (the others keep the model's); ``taxonomy`` overrides the model's (a
        built-in name, YAML path, dict or Taxonomy; checked against the classes, ConfigError).
        ``decode_workers`` threads decode the next batches while the model runs (0: decode in
        this thread between forward passes; 2 is fastest even on 2 cores, see BENCHMARKS.md).
        The unknown-item rule (a model trained with one) sends an item whose score exceeds
        ``ood_threshold`` (default: fitted on validation data) to manual sort with reason
        ``unknown``; ``unknown_rule=False`` reports the score but does not act on it.
        ``search`` also looks at windows of each photo and lets the most item-like one decide
        (:mod:`wastenet.inference.search`; ~51 model inputs for a 320 x 427 photo) and takes the
        unknown-item threshold fitted on searched validation photos where the model has one.
        """
        items = as_list(images)
        thr = self.threshold if threshold is None else check_threshold(threshold)
        tax = self.taxonomy if taxonomy is None else load_taxonomy(taxonomy, self.classes)
        if int(batch_size) < 1:
            raise ConfigError(f"batch size must be at least 1, got {batch_size}")
        k = max(1, min(int(topk), len(self.classes)))
        ood_thr = self.unknown_threshold(ood_threshold, ood_method, search)
        names = [display_name(item, i) for i, item in enumerate(items)]
        results: list[Prediction | None] = [None] * len(items)
        from wastenet.inference.search import photos_per_batch

        step = photos_per_batch(batch_size) if search else batch_size  # a searched photo is ~51 inputs
        batches = [list(range(i, min(i + step, len(items)))) for i in range(0, len(items), step)]
        bar = _progress_bar(len(items), progress, progress_desc)
        try:
            workers = max(0, int(decode_workers))
            # decode + preprocess up to `workers` batches ahead while the model runs (PIL releases the GIL)
            with ThreadPoolExecutor(max_workers=max(workers, 1), thread_name_prefix="wastenet-decode") as pool:
                pending: deque[Future] = deque()
                next_batch = 0
                for _ in batches:
                    while next_batch < len(batches) and len(pending) <= workers:
                        idx = batches[next_batch]
                        job = [items[i] for i in idx]
                        pending.append(pool.submit(self._prepare, job, idx, search) if workers
                                       else _done(self._prepare(job, idx, search)))
                        next_batch += 1
                    x, ok_idx, failures, counts = pending.popleft().result()
                    for i, reason in failures:
                        results[i] = Prediction.failed(names[i], reason)
                    if ok_idx:
                        probs, score = self._scored_in_chunks(x, batch_size, tta, ood_method)
                        if search:
                            probs, score = _best_windows(probs, score, counts)
                        unknown = None
                        if unknown_rule and score is not None and ood_thr is not None:
                            unknown = np.asarray(score) > ood_thr
                        preds = self._predictions([names[i] for i in ok_idx], probs, tax, thr, k, score, unknown)
                        for i, pred in zip(ok_idx, preds):
                            results[i] = pred
                    if bar is not None:
                        bar.update(len(ok_idx) + len(failures))
        finally:
            if bar is not None:
                bar.close()
        return [r for r in results if r is not None]

    def predict_groups(self, groups: Mapping[str, Sequence[ImageInput]], threshold: Any = None, taxonomy: Any = None,
                       topk: int = 3, ood_threshold: float | None = None, **kwargs: Any) -> list[Prediction]:
        """One decision per item from several photos of it: ``{item: [photo, ...]}`` -> one row each.

        The item's class probabilities are the mean over its readable photos, and so is its
        unknown-item score; then the one decision rule applies. An item none of whose photos
        can be read is an error row naming the first reason::

            clf.predict_groups({"item-17": ["cam1.jpg", "cam2.jpg"]})[0].decision
        """
        thr = self.threshold if threshold is None else check_threshold(threshold, name="threshold")
        tax = self.taxonomy if taxonomy is None else load_taxonomy(taxonomy, self.classes)
        flat = [(key, img) for key, imgs in groups.items() for img in imgs]
        preds = self.predict([img for _, img in flat], threshold=thr, taxonomy=tax, topk=len(self.classes),
                             ood_threshold=ood_threshold, unknown_rule=False, **kwargs)
        index = {c: i for i, c in enumerate(self.classes)}
        names, rows, scores, errors = [], [], [], {}
        for key in groups:
            mine = [p for (k, _), p in zip(flat, preds) if k == key]
            good = [p for p in mine if p.ok]
            if not good:
                errors[key] = mine[0].error if mine else "no photos"
                continue
            probs = np.zeros(len(self.classes))
            for p in good:
                for label, q in p.topk:
                    probs[index[label]] += q / len(good)
            names.append(key)
            rows.append(probs)
            s = [p.ood_score for p in good if p.ood_score is not None]
            scores.append(float(np.mean(s)) if s else None)
        out: dict[str, Prediction] = {k: Prediction.failed(k, why) for k, why in errors.items()}
        if rows:
            score = None if any(s is None for s in scores) else np.asarray(scores)
            limit = self.unknown_threshold(ood_threshold, kwargs.get("ood_method"), bool(kwargs.get("search")))
            unknown = None if score is None or limit is None else score > limit
            k = max(1, min(int(topk), len(self.classes)))
            for p in self._predictions(names, np.stack(rows), tax, thr, k, score, unknown):
                out[p.path] = p
        return [out[k] for k in groups]

    def _prepare(self, batch: list[ImageInput], idx: list[int], search: bool = False
                 ) -> tuple[np.ndarray, list[int], list[tuple[int, str]], list[int]]:
        """Decoded, preprocessed inputs; with ``search`` each photo's windows (``counts`` per photo)."""
        from wastenet.inference.search import windows

        pils: list[Image.Image] = []
        ok: list[int] = []
        counts: list[int] = []
        failures: list[tuple[int, str]] = []
        for i, item in zip(idx, batch):
            try:
                views = windows(to_pil(item)) if search else [to_pil(item)]
            except ImageDecodeError as err:
                failures.append((i, err.reason))
                continue
            pils.extend(views)
            counts.append(len(views))
            ok.append(i)
        return self.preprocess(pils), ok, failures, counts

    def _scored_in_chunks(self, x: np.ndarray, chunk: int, tta: bool, ood_method: str | None
                          ) -> tuple[np.ndarray, np.ndarray | None]:
        """``scored_probabilities`` ``chunk`` inputs at a time (a searched batch holds ~51 per photo)."""
        parts = [self.scored_probabilities(x[i : i + chunk], tta=tta, ood_method=ood_method)
                 for i in range(0, len(x), max(1, chunk))]
        probs = np.concatenate([p for p, _ in parts])
        score = None if any(s is None for _, s in parts) else np.concatenate([s for _, s in parts])
        return probs, score

    def _predictions(self, names: list[str], probs: np.ndarray, tax: Taxonomy, threshold: Any,
                     k: int, ood_score: np.ndarray | None = None, unknown: np.ndarray | None = None) -> list[Prediction]:
        """One batch's rows: every item decided at once by :func:`wastenet.decision.decide`."""
        bp = tax.bin_probabilities(probs, self.classes)
        default = self.threshold if isinstance(self.threshold, float) else DEFAULT_THRESHOLD
        d = decide(bp, tax.bin_names, threshold, unknown=unknown, default=default)
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        out = []
        for n, name in enumerate(names):
            top = int(order[n, 0])
            out.append(Prediction(
                path=name, label=self.classes[top], confidence=float(probs[n, top]), bin=str(d.bin[n]),
                bin_confidence=float(d.confidence[n]), decision=str(d.decision[n]), error=None,
                topk=[(self.classes[int(j)], float(probs[n, j])) for j in order[n]],
                bin_probs={b: min(float(v), 1.0) for b, v in zip(tax.bin_names, bp[n])},
                reason=str(d.reason[n]), ood_score=None if ood_score is None else float(ood_score[n])))
        return out


# --------------------------------------------------------------------------- helpers
def _best_windows(probs: np.ndarray, score: np.ndarray | None, counts: Sequence[int]
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """Each photo's deciding window (``search.pick``) out of its ``counts[i]`` consecutive rows."""
    from wastenet.inference.search import pick

    rows, start = [], 0
    for n in counts:
        rows.append(start + pick(None if score is None else score[start : start + n], probs[start : start + n]))
        start += n
    return probs[rows], None if score is None else score[rows]


def _onnx_ood_rule(meta: Mapping[str, Any], backend: Any) -> Mapping[str, Any] | None:
    """An ONNX file's unknown-item rule: a feature-space score needs the graph's ``ood`` output;
    energy and MSP come from the logits alone."""
    from wastenet.ood import FEATURE_METHODS

    rule = meta.get("ood") or None
    if rule is None or (rule.get("method") in FEATURE_METHODS and backend.ood_output is None):
        return None
    return rule


def _check_ood(ood: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The unknown-item rule of a model file, checked: ConfigError on a malformed one."""
    if not ood:
        return None
    try:
        method = str(ood["method"])
        thresholds = {str(m): float(t) for m, t in dict(ood["thresholds"]).items()}
        searched = {str(m): float(t) for m, t in dict(ood.get("search_thresholds") or {}).items()}
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"the model's unknown-item rule is unreadable ({exc})") from None
    if method not in thresholds:
        raise ConfigError(f"the model's unknown-item rule has no threshold for its method {method!r}")
    # rules written before the graph's score was a choice computed Mahalanobis there
    return {"method": method, "thresholds": thresholds, "search_thresholds": searched, "keep": ood.get("keep"),
            "graph_method": str(ood.get("graph_method") or "mahalanobis")}


def _done(value: Any) -> Future:
    fut: Future = Future()
    fut.set_result(value)
    return fut


def _progress_bar(total: int, enabled: bool, desc: str = "predict") -> Any:
    """A bar on a terminal, one line per 10% in a log (``wastenet.progress``); None when off."""
    if not enabled or total == 0:
        return None
    from wastenet.progress import Progress

    return Progress(total, desc, unit="img")
