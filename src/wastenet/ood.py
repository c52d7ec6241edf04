"""Unknown-item scores: is this photo like anything the model was trained on? (torch-free)

A classifier always answers with one of its classes; a smart bin must also be able to say
"I have never seen this" and send the item to manual sort. Every score here is *higher for
more unusual* inputs:

- ``msp``: 1 - the largest calibrated class probability;
- ``energy``: ``-T * logsumexp(logits / T)`` (Liu et al. 2020);
- ``mahalanobis``: the smallest squared Mahalanobis distance of the pooled backbone features
  to a class mean, with one shared covariance (Lee et al. 2018). The covariance is kept as its
  top ``dims`` eigen-directions plus one isotropic variance for the rest, so the stored
  statistics are ``D x dims`` instead of ``D x D`` (1280 x 128 floats = 0.6 MB for MobileNetV2)
  and the small-variance directions, where unfamiliar inputs stand out most, still count;
- ``knn``: the cosine distance to the k-th nearest of a bank of training features (Sun et al.
  2022): at most ``MAX_BANK`` of them, from the clean photos *and* their field-augmented views
  (items on new floors are familiar; a floor with nothing on it is not);
- ``imagenet``: what *kind* of thing the photo shows, through the backbone's own pretrained
  ImageNet head (only where that head still fits the backbone: the ``linear`` recipe, or a
  fine-tuning held to its ImageNet answers with ``--lwf``, ``training.lwf``):
  ``-sum_c q_c(x) log(pi_c + eps)``, the cross-entropy of the photo's ImageNet posterior ``q``
  against the mean posterior ``pi`` of the training photos. A banana, a jumper or a plank
  (ImageNet classes the training photos never show) scores high; a bottle on a new floor
  ("water bottle", as in training) scores low. Feature distances cannot tell those two apart;
- ``knn+imagenet``: both, each scaled by its validation median and 95th percentile, the larger
  one counting (the default when the ImageNet head is usable; otherwise ``knn``).

A site's reviewers can also say that a photo shows no item at all (an empty floor, an empty
belt: ``NOT_AN_ITEM``). Those photos' features are the rule's ``negatives``; a photo its
``not_an_item_probe`` calls empty scores ``NOT_AN_ITEM_SCORE`` whatever its score (:func:`not_an_item`).
A photo taken of an item is mostly floor, so once a floor's items are known an empty patch of that
floor looks like them; only examples of empty floors tell the two apart. The rule is a linear probe
(logistic regression of the negatives against the bank's rows): on a floor no reviewer has labelled
empty yet, an empty photo is nearer its floor's items than any other floor's empty photo, and a
nearest-neighbour test sorts it; the probe learns what "no item" looks like across floors
(BENCHMARKS.md "A probe for 'no item'"). Rules written before the probe keep the nearest-neighbour test.

Fit on the training features at the end of training; choose the threshold on the validation
split only (``threshold_for_coverage``: the score below which ``keep`` of the known
validation items fall)::

    stats = fit_mahalanobis(train_feats, train_labels, n_classes=6)
    s = mahalanobis_score(feats, stats)
    t = threshold_for_coverage(mahalanobis_score(val_feats, stats), keep=0.95)
    unknown = s > t
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

METHODS = ("mahalanobis", "energy", "msp", "knn", "imagenet", "knn+imagenet")
#: the scores computed from the pooled features (inside the ONNX graph at the edge)
FEATURE_METHODS = ("mahalanobis", "knn", "imagenet", "knn+imagenet")
DEFAULT_METHOD = "knn+imagenet"      # where the pretrained ImageNet head is usable
FALLBACK_METHOD = "knn"              # where it is not (backbones fine-tuned without --lwf)
MAX_BANK = 1024                      # k-NN bank rows (1024 x 1280 floats = 5.2 MB for MobileNetV2)
KNN_K = 10
PRIOR_EPS = 1e-3                     # floor under the training posterior (no log of zero)
DEFAULT_KEEP = 0.95      # the default threshold keeps this share of known validation items
DEFAULT_DIMS = 128
SHRINKAGE = 0.05         # covariance shrinkage towards its mean variance (stabilises the inverse)
#: the reviewed label of a photo that shows no item (an empty floor or belt): never a class, never a bin
NOT_AN_ITEM = "not_an_item"
#: the score of a photo the not-an-item rule calls empty: above any threshold (finite: JSON)
NOT_AN_ITEM_SCORE = 1e6
MAX_NEGATIVES = 1024     # not-an-item rows kept (the newest), as many as the k-NN bank
PROBE_L2 = 1e-2          # the not-an-item probe's weight penalty (unit rows; each side weighs half)


def _unit(x: np.ndarray) -> np.ndarray:
    """Float64 rows of ``x`` scaled to unit length (cosine similarity is then a dot product)."""
    x = np.asarray(x, dtype=np.float64)
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)


def _logsumexp(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=-1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis=-1, keepdims=True)))[..., 0]


def energy_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``-T * logsumexp(logits / T)``: low for confident familiar inputs."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    return -float(temperature) * _logsumexp(z)


def msp_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """1 - max softmax probability of ``logits / T``."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    return 1.0 - np.exp(z.max(axis=-1) - _logsumexp(z))


def fit_mahalanobis(features: np.ndarray, labels: np.ndarray, n_classes: int, dims: int = DEFAULT_DIMS,
                    shrinkage: float = SHRINKAGE) -> dict[str, Any]:
    """Class means and a low-rank-plus-isotropic shared covariance of ``features [N, D]``.

    Returns JSON-able float32 lists: ``means [C, D]``, ``basis [D, k]`` (top eigenvectors),
    ``inv_var [k]`` (their inverse variances), ``inv_rest`` (inverse variance of the rest).
    """
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    d = f.shape[1]
    means = np.zeros((n_classes, d))
    for c in range(n_classes):
        if (y == c).any():
            means[c] = f[y == c].mean(0)
    centred = f - means[y]
    cov = centred.T @ centred / max(1, len(f) - n_classes)
    avg = np.trace(cov) / d
    cov = (1 - shrinkage) * cov + shrinkage * avg * np.eye(d)
    vals, vecs = np.linalg.eigh(cov)          # ascending
    k = int(min(dims, d))
    top = np.argsort(vals)[::-1][:k]
    rest = np.setdiff1d(np.arange(d), top)
    rest_var = float(vals[rest].mean()) if len(rest) else float(vals.min())
    return {
        "means": means.astype(np.float32),
        "basis": vecs[:, top].astype(np.float32),
        "inv_var": (1.0 / vals[top]).astype(np.float32),
        "inv_rest": np.float32(1.0 / max(rest_var, 1e-12)),
    }


def mahalanobis_score(features: np.ndarray, stats: Mapping[str, Any]) -> np.ndarray:
    """Smallest squared distance to a class mean under the fitted covariance ``[N]``."""
    f = np.asarray(features, dtype=np.float64)
    means = np.asarray(stats["means"], dtype=np.float64)
    basis = np.asarray(stats["basis"], dtype=np.float64)
    inv_var = np.asarray(stats["inv_var"], dtype=np.float64)
    diff = f[:, None, :] - means[None]                     # [N, C, D]
    z = diff @ basis                                       # [N, C, k]
    inside = (z ** 2 * inv_var).sum(-1)
    residual = (diff ** 2).sum(-1) - (z ** 2).sum(-1)      # what the top directions do not explain
    return (inside + np.maximum(residual, 0) * float(stats["inv_rest"])).min(axis=1)


def knn_score(features: np.ndarray, bank: np.ndarray, k: int = 10) -> np.ndarray:
    """Cosine distance to the k-th nearest of ``bank`` (L2-normalised training features)."""
    sim = _unit(features) @ _unit(bank).T
    k = min(k, sim.shape[1])
    return 1.0 - np.sort(sim, axis=1)[:, -k]


def fit_knn_bank(features: np.ndarray, max_rows: int = MAX_BANK, seed: int = 0,
                 first: np.ndarray | None = None) -> np.ndarray:
    """L2-normalised float32 rows of ``features``, at most ``max_rows`` (a seeded sample).

    ``first`` (a boolean mask over ``features``: a site's own reviewed items) keeps up to half of
    the rows for those (more when the other rows cannot fill the rest), sampled when there are
    more; the rest are sampled from the other rows. A
    sample of everything would leave a site's few hundred items a sliver of a bank filled by its
    rehearsal set, and an item on a floor its reviewers have seen would still look unfamiliar::

        bank = fit_knn_bank(np.concatenate([rehearsal, reviewed]),
                            first=np.r_[np.zeros(len(rehearsal), bool), np.ones(len(reviewed), bool)])
    """
    rng = np.random.default_rng(seed)

    def sample(x: np.ndarray, n: int) -> np.ndarray:
        return x[np.sort(rng.choice(len(x), n, replace=False))] if len(x) > n else x

    f = np.asarray(features, dtype=np.float64)
    if first is not None and np.any(first):
        first = np.asarray(first)
        others = f[~first]
        own = sample(f[first], max(max_rows // 2, max_rows - len(others)))
        f = np.concatenate([own, sample(others, max_rows - len(own))])
    else:
        f = sample(f, max_rows)
    return _unit(f).astype(np.float32)


def imagenet_posterior(features: np.ndarray, head: Mapping[str, Any]) -> np.ndarray:
    """The pretrained ImageNet head's softmax on pooled features ``[N, 1000]``."""
    w, b = np.asarray(head["weight"], np.float64), np.asarray(head["bias"], np.float64)
    z = np.asarray(features, np.float64) @ w.T + b
    return np.exp(z - _logsumexp(z)[:, None])


def fit_imagenet_prior(train_features: np.ndarray, head: Mapping[str, Any], first: np.ndarray | None = None) -> np.ndarray:
    """``log(pi + eps)``: pi = the training photos' mean ImageNet posterior; with ``first`` (a boolean
    mask: a site's own items, as in :func:`fit_knn_bank`) those rows' mean and the others' weigh half each."""
    q = imagenet_posterior(train_features, head)
    if first is not None and np.any(first) and not np.all(first):
        pi = 0.5 * q[first].mean(0) + 0.5 * q[~np.asarray(first)].mean(0)
    else:
        pi = q.mean(0)
    return np.log(pi + PRIOR_EPS).astype(np.float32)


def imagenet_score(features: np.ndarray, head: Mapping[str, Any], log_prior: np.ndarray) -> np.ndarray:
    """Cross-entropy of each photo's ImageNet posterior against the training prior ``[N]``."""
    return -(imagenet_posterior(features, head) * np.asarray(log_prior, np.float64)[None]).sum(1)


def fit_scale(val_scores: np.ndarray) -> tuple[float, float]:
    """(median, 95th percentile) of known validation scores: puts two scores on one scale."""
    v = np.asarray(val_scores, np.float64)
    return float(np.median(v)), float(np.quantile(v, 0.95))


def fit_negatives(features: np.ndarray, max_rows: int = MAX_NEGATIVES) -> np.ndarray:
    """L2-normalised float32 rows of not-an-item photos' features (given oldest first), the newest ``max_rows``."""
    f = np.asarray(features, dtype=np.float64)[-max_rows:] if max_rows else np.zeros((0, np.shape(features)[1]))
    return _unit(f).astype(np.float32)


def fit_not_an_item_probe(items: np.ndarray, negatives: np.ndarray, l2: float = PROBE_L2,
                          steps: int = 50) -> dict[str, Any]:
    """Logistic regression of not-an-item rows (1) against item rows (0) on unit features, each side
    weighing half however many rows it has, by Newton steps (deterministic, torch-free)::

        rule["not_an_item_probe"] = fit_not_an_item_probe(rule["bank"], rule["negatives"])

    Returns ``{"weight": [D] float32, "bias": float}``; :func:`not_an_item` says "no item" where
    ``unit(f) @ weight + bias > 0``."""
    pos, neg = _unit(items), _unit(negatives)
    x = np.c_[np.concatenate([pos, neg]), np.ones(len(pos) + len(neg))]      # the last column: the bias
    y = np.r_[np.zeros(len(pos)), np.ones(len(neg))]
    w8 = np.where(y == 1, 0.5 / len(neg), 0.5 / len(pos))
    penalty = np.full(x.shape[1], 2 * l2)
    penalty[-1] = 1e-8                                                         # the bias is not penalised
    theta = np.zeros(x.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(x @ theta)))
        grad = x.T @ (w8 * (p - y)) + penalty * theta
        hess = (x * (w8 * p * (1 - p))[:, None]).T @ x + np.diag(penalty)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.abs(step).max() < 1e-8:
            break
    return {"weight": theta[:-1].astype(np.float32), "bias": float(theta[-1])}


def not_an_item(features: np.ndarray, rule: Mapping[str, Any]) -> np.ndarray:
    """``[N]`` bool: the rule's ``not_an_item_probe`` says "no item" (:func:`fit_not_an_item_probe`); in a rule
    written before the probe, the nearest of its ``negatives`` is nearer (cosine) than the nearest ``bank`` row.

    All False for a rule without negatives (every rule before a site labelled an empty photo)."""
    probe = rule.get("not_an_item_probe")
    if probe is not None:
        return _unit(features) @ np.asarray(probe["weight"], np.float64) + float(probe["bias"]) > 0
    negatives = rule.get("negatives")
    if negatives is None or not len(negatives):
        return np.zeros(len(features), bool)
    return knn_score(features, negatives, 1) < knn_score(features, rule["bank"], 1)


def feature_score(method: str, features: np.ndarray, rule: Mapping[str, Any]) -> np.ndarray:
    """A feature-space score (``FEATURE_METHODS``) from a fitted rule: ``stats`` (Mahalanobis),
    ``bank`` (k-NN), ``imagenet`` {weight, bias, log_prior}, ``scales`` {method: (median, p95)};
    ``NOT_AN_ITEM_SCORE`` where :func:`not_an_item` (a rule with ``negatives``)."""
    s = _feature_score(method, features, rule)
    return np.where(not_an_item(features, rule), np.maximum(s, NOT_AN_ITEM_SCORE), s)


def _feature_score(method: str, features: np.ndarray, rule: Mapping[str, Any]) -> np.ndarray:
    if method == "mahalanobis":
        return mahalanobis_score(features, rule["stats"])
    if method == "knn":
        return knn_score(features, rule["bank"], KNN_K)
    if method == "imagenet":
        im = rule["imagenet"]
        return imagenet_score(features, im, im["log_prior"])
    if "+" in method:
        parts = []
        for m in method.split("+"):
            med, top = (float(v) for v in rule["scales"][m])
            parts.append((_feature_score(m, features, rule) - med) / max(top - med, 1e-9))
        return np.max(parts, axis=0)
    raise ValueError(f"{method!r} is not a feature-space score; those are {', '.join(FEATURE_METHODS)}")


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """Probability that an unknown item scores higher than a known one (ties count half)."""
    a = np.asarray(known, dtype=np.float64)
    b = np.asarray(unknown, dtype=np.float64)
    if not len(a) or not len(b):
        return float("nan")
    allv = np.concatenate([a, b])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(len(allv))
    sorted_v = allv[order]
    # average ranks over ties
    i = 0
    while i < len(allv):
        j = i
        while j + 1 < len(allv) and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1
        i = j + 1
    rb = ranks[len(a):].sum()
    return float((rb - len(b) * (len(b) + 1) / 2) / (len(a) * len(b)))


def threshold_for_coverage(known_scores: np.ndarray, keep: float = DEFAULT_KEEP) -> float:
    """The score under which ``keep`` of ``known_scores`` (validation items) fall.

    Scores at ``NOT_AN_ITEM_SCORE`` (items nearer a not-an-item example) are refused by that rule and
    left out: past ``1 - keep`` of them the quantile would be that score and the threshold refuse nothing."""
    if not 0 < keep <= 1:
        raise ValueError("keep must be in (0, 1]")
    s = np.asarray(known_scores, dtype=np.float64)
    s = s[s < NOT_AN_ITEM_SCORE] if np.any(s < NOT_AN_ITEM_SCORE) else s
    return float(np.quantile(s, keep))


def scores(method: str, logits: np.ndarray, temperature: float, features: np.ndarray | None = None,
           rule: Mapping[str, Any] | None = None) -> np.ndarray:
    """The named score (``METHODS``) for a batch; the feature scores need features and a fitted rule."""
    if method == "energy":
        return energy_score(logits, temperature)
    if method == "msp":
        return msp_score(logits, temperature)
    if method in FEATURE_METHODS:
        if features is None or rule is None:
            raise ValueError(f"the {method} score needs features and a fitted rule")
        return feature_score(method, features, rule)
    raise ValueError(f"unknown OOD method {method!r}; choose from {', '.join(METHODS)}")
