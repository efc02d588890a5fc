"""Sample-quality metrics: functions of feature tensors, logits or pixels, and the
`evaluate_samples` entry point that `dgm eval` calls for every model family.

* FID (Heusel et al. 2017), KID (Bińkowski et al. 2018) and improved precision/recall
  (Kynkäänniemi et al. 2019) compare features of generated and real images;
* the Inception score (Salimans et al. 2016) reads the classifier's logits on samples;
* the Parzen-window log-likelihood (Goodfellow et al. 2014) works in pixel space and is
  reported only with `PARZEN_WARNING`.

Features come from `features.FeatureNetwork`; every function here is pure.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

from ..errors import UserError
from .features import FeatureNetwork

METRICS = ("fid", "kid", "pr", "is", "parzen")
PARZEN_WARNING = (
    "The Parzen-window estimate is not a likelihood one can trust: in high dimensions it is "
    "dominated by the kernel width, can rank a model below one that memorizes nothing and "
    "above one with far better log-likelihood, and does not approach the true value for any "
    "practical number of samples (Theis, van den Oord & Bethge 2016, 'A note on the evaluation "
    "of generative models'). It is reported only for comparison with older papers."
)


# --- FID ------------------------------------------------------------------------------
def _stats(f: Tensor) -> tuple[Tensor, Tensor]:
    f = f.detach().to("cpu", torch.float64)
    if len(f) < 2:
        raise UserError(f"FID needs at least 2 samples on each side; got {len(f)}.")
    return f.mean(0), torch.cov(f.T).reshape(f.shape[1], f.shape[1])


def _sqrt_psd(a: Tensor) -> Tensor:
    """Square root of a symmetric positive semi-definite matrix by eigendecomposition."""
    w, v = torch.linalg.eigh((a + a.T) / 2)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def fid_from_stats(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    """Fréchet distance of N(mu1, sigma1) and N(mu2, sigma2) (Heusel et al. 2017, eq. 6 / Dowson & Landau 1982):
    ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2}).

    tr (S1 S2)^{1/2} = tr (S1^{1/2} S2 S1^{1/2})^{1/2}: the two matrices are similar, and the
    second is symmetric PSD, so its square root's trace is the sum of sqrt of its eigenvalues.
    """
    mu1, mu2, sigma1, sigma2 = (t.to(torch.float64) for t in (mu1, mu2, sigma1, sigma2))
    root1 = _sqrt_psd(sigma1)
    m = root1 @ sigma2 @ root1
    tr_covmean = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()
    d = ((mu1 - mu2) ** 2).sum() + sigma1.trace() + sigma2.trace() - 2 * tr_covmean
    return max(float(d), 0.0)


def fid(f1: Tensor, f2: Tensor) -> float:
    """FID between two feature sets (N1, F) and (N2, F), Gaussians fitted by mean and unbiased covariance.
    Biased upward for small N (Bińkowski et al. 2018): compare FIDs at equal sample sizes only."""
    return fid_from_stats(*_stats(f1), *_stats(f2))


# --- KID ------------------------------------------------------------------------------
def polynomial_kernel(x: Tensor, y: Tensor) -> Tensor:
    """k(x, y) = (x.y / d + 1)^3, the kernel of Bińkowski et al. 2018."""
    return (x @ y.T / x.shape[1] + 1) ** 3


def mmd2_unbiased(x: Tensor, y: Tensor) -> Tensor:
    """Unbiased MMD^2 (Gretton et al. 2012, eq. 3): the diagonals k(x_i, x_i) are left out."""
    m, n = len(x), len(y)
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    return (
        (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
        + (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
        - 2 * kxy.mean()
    )


def kid(
    f1: Tensor, f2: Tensor, num_subsets: int = 100, subset_size: int = 1000, generator: Optional[torch.Generator] = None
) -> tuple[float, float]:
    """KID (Bińkowski et al. 2018): unbiased MMD^2 with the cubic polynomial kernel, averaged over
    ``num_subsets`` random subsets of ``subset_size`` from each side (drawn without replacement
    within a subset). Returns (mean, std over subsets)."""
    f1, f2 = f1.detach().to(torch.float64), f2.detach().to(torch.float64)
    size = min(subset_size, len(f1), len(f2))
    if size < 2:
        raise UserError(f"KID needs at least 2 samples on each side; got {len(f1)} and {len(f2)}.")
    g = generator or torch.Generator().manual_seed(0)
    est = torch.stack(
        [
            mmd2_unbiased(
                f1[torch.randperm(len(f1), generator=g)[:size].to(f1.device)],
                f2[torch.randperm(len(f2), generator=g)[:size].to(f2.device)],
            )
            for _ in range(num_subsets)
        ]
    )
    std = est.std().item() if num_subsets > 1 else 0.0
    return est.mean().item(), std


# --- improved precision and recall ----------------------------------------------------------
def knn_radii(f: Tensor, k: int, batch_size: int = 1000) -> Tensor:
    """Distance from each row of ``f`` to its k-th nearest other row (the ball radius of the manifold)."""
    if len(f) <= k:
        raise UserError(f"precision/recall with k={k} needs more than {k} samples on each side; got {len(f)}.")
    # k + 1 smallest, as each point's distance to itself (0) is among them
    return torch.cat([torch.cdist(b, f).topk(k + 1, dim=1, largest=False).values[:, k] for b in f.split(batch_size)])


def manifold_coverage(manifold: Tensor, radii: Tensor, queries: Tensor, batch_size: int = 1000) -> float:
    """Fraction of ``queries`` inside at least one ball B(manifold_i, radii_i)."""
    inside = [(torch.cdist(q, manifold) <= radii[None]).any(1) for q in queries.split(batch_size)]
    return torch.cat(inside).double().mean().item()


def precision_recall(real_f: Tensor, fake_f: Tensor, k: int = 3, batch_size: int = 1000) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, eq. 1-2): precision is the fraction of
    fakes within the real manifold (union of k-NN balls around real features), recall the fraction
    of reals within the fake manifold."""
    real_f, fake_f = real_f.detach().float(), fake_f.detach().float()
    precision = manifold_coverage(real_f, knn_radii(real_f, k, batch_size), fake_f, batch_size)
    recall = manifold_coverage(fake_f, knn_radii(fake_f, k, batch_size), real_f, batch_size)
    return precision, recall


# --- Inception score -------------------------------------------------------------------
def inception_score(logits: Tensor, splits: int = 10) -> tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) || p(y))) (Salimans et al. 2016), p(y) the split's mean prediction;
    returns (mean, std) over ``splits`` equal splits. Between 1 and the number of classes."""
    logp = torch.log_softmax(logits.detach().to(torch.float64), dim=1)
    splits = max(1, min(splits, len(logp)))
    scores = []
    for part in logp.tensor_split(splits):
        log_py = torch.logsumexp(part, 0) - math.log(len(part))
        kl = (part.exp() * (part - log_py)).sum(1)
        scores.append(kl.mean().exp())
    s = torch.stack(scores)
    return s.mean().item(), (s.std().item() if splits > 1 else 0.0)


# --- Parzen window ------------------------------------------------------------------------
def _sq_dists(x: Tensor, centers: Tensor) -> Tensor:
    d = (x * x).sum(1, keepdim=True) + (centers * centers).sum(1)[None] - 2 * x @ centers.T
    return d.clamp_min(0)


def _parzen_log_density(x: Tensor, samples: Tensor, sigmas: Sequence[float], batch_size: int) -> Tensor:
    """(len(sigmas), N) log p(x) under each sigma; the distances are computed once per batch."""
    x, samples = x.flatten(1).to(torch.float64), samples.flatten(1).to(torch.float64)
    n, d = samples.shape
    out = []
    for b in x.split(batch_size):
        sq = _sq_dists(b, samples)
        out.append(
            torch.stack(
                [
                    torch.logsumexp(-sq / (2 * s * s), dim=1) - math.log(n) - d / 2 * math.log(2 * math.pi * s * s)
                    for s in sigmas
                ]
            )
        )
    return torch.cat(out, dim=1)


def parzen_log_likelihood(samples: Tensor, test: Tensor, sigma: float, batch_size: int = 100) -> tuple[float, float]:
    """Parzen-window log-likelihood of ``test`` under model ``samples`` (Goodfellow et al. 2014, sec. 5):
    p(x) = 1/N sum_i N(x; s_i, sigma^2 I), in nats per example over flattened pixels.

    Returns (mean, standard error of the mean). Read `PARZEN_WARNING` before citing it:
    the estimate is unreliable in high dimensions (Theis et al. 2016).
    """
    ll = _parzen_log_density(test, samples, [sigma], batch_size)[0]
    return ll.mean().item(), (ll.std().item() / math.sqrt(len(ll)) if len(ll) > 1 else 0.0)


def select_parzen_sigma(
    samples: Tensor, val: Tensor, sigmas: Optional[Sequence[float]] = None, batch_size: int = 100
) -> float:
    """The kernel width with the highest mean Parzen log-likelihood of ``val`` (a validation set,
    never the test set); the default grid is Goodfellow et al.'s logspace(-1, 0, 10)."""
    sigmas = list(sigmas) if sigmas is not None else torch.logspace(-1, 0, 10).tolist()
    means = _parzen_log_density(val, samples, sigmas, batch_size).mean(1)
    return float(sigmas[int(means.argmax())])


# --- `dgm eval` ------------------------------------------------------------------------
def _as_unit_images(x: Tensor, name: str) -> Tensor:
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    x = x.float()
    if len(x) and (x.min() < -1e-3 or x.max() > 1 + 1e-3):
        raise ValueError(f"{name} images must lie in [0, 1]; got values in [{x.min():.3f}, {x.max():.3f}].")
    return x.clamp(0, 1)


def _subset(x: Tensor, n: int, g: torch.Generator) -> Tensor:
    return x if len(x) <= n else x[torch.randperm(len(x), generator=g)[:n]]


def evaluate_samples(
    generated: Tensor,
    reference: Tensor,
    reference_split: str,
    train_reference: Optional[Tensor],
    net: Optional[FeatureNetwork],
    metrics: Sequence[str],
    seed: int = 0,
) -> dict:
    """Sample-quality metrics of ``generated`` (N, C, H, W) in [0, 1] against ``reference`` images
    (floats in [0, 1] or uint8) of split ``reference_split``, as a JSON-ready dict.

    metrics: any of fid, kid, pr, is, parzen. Give the reference in the representation the model
    was trained on (binarized MNIST for a binary model), or FID also measures that mismatch.
    ``train_reference`` (real training images) gives ``fid_floor``: the FID of the reference against
    as many real training images as there are generated ones, the best value a perfect model
    could reach at this sample size; for parzen, it is the validation set that picks sigma.
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise UserError(
            f"unknown sample-quality metric(s) {', '.join(map(str, unknown))}; allowed: {', '.join(METRICS)}."
        )
    metrics = list(dict.fromkeys(metrics))
    if tuple(generated.shape[1:]) != tuple(reference.shape[1:]):
        raise UserError(
            f"generated images have shape {tuple(generated.shape[1:])} but the reference "
            f"({reference_split}) has {tuple(reference.shape[1:])}."
        )
    g = torch.Generator().manual_seed(seed)
    gen, ref = _as_unit_images(generated, "generated"), _as_unit_images(reference, reference_split)
    out: dict = {"num_generated": len(gen), "num_reference": len(ref), "reference_split": reference_split}

    if any(m in metrics for m in ("fid", "kid", "pr", "is")):
        if net is None:
            raise UserError(f"metrics {', '.join(metrics)} need a feature network; only parzen works without one.")
        out["feature_network"] = net.description
        out["feature_network_kind"] = net.kind
        out["feature_network_test_accuracy"] = net.test_accuracy
        out["feature_network_quality"] = net.quality  # held-out: a classifier's accuracy, an autoencoder's R^2
        if net.warning:
            out["feature_network_warning"] = net.warning
        f_gen = net.features(gen)
        f_ref = net.features(ref) if any(m in metrics for m in ("fid", "kid", "pr")) else None
    if "fid" in metrics:
        out["fid"] = fid(f_gen, f_ref)
        if train_reference is not None:
            real = _as_unit_images(_subset(train_reference, len(gen), g), "train_reference")
            out["fid_floor"] = fid(net.features(real), f_ref)
            out["fid_floor_num_train"] = len(real)
    if "kid" in metrics:
        size = min(1000, len(f_gen), len(f_ref))
        out["kid_mean"], out["kid_std"] = kid(f_gen, f_ref, num_subsets=100, subset_size=size, generator=g)
        out["kid_subset_size"], out["kid_num_subsets"] = size, 100
    if "pr" in metrics:
        out["precision"], out["recall"] = precision_recall(f_ref, f_gen, k=3)
        out["pr_k"] = 3
    if "is" in metrics:
        out["inception_score_mean"], out["inception_score_std"] = inception_score(net.logits_from_features(f_gen))
        # the same score of real data: the value a perfect model would get with this classifier
        f_real = f_ref if f_ref is not None else net.features(ref)
        out["inception_score_reference_mean"], out["inception_score_reference_std"] = inception_score(
            net.logits_from_features(f_real)
        )
    if "parzen" in metrics:
        if train_reference is not None:
            val = _as_unit_images(_subset(train_reference, 1000, g), "train_reference")
            test = ref
        else:  # no separate validation data: half of the reference picks sigma, the other half is scored
            perm = torch.randperm(len(ref), generator=g)
            val, test = ref[perm[: len(ref) // 2]], ref[perm[len(ref) // 2 :]]
        sigma = select_parzen_sigma(gen, val)
        out["parzen_sigma"] = sigma
        out["parzen_log_likelihood"], out["parzen_stderr"] = parzen_log_likelihood(gen, test, sigma)
        out["parzen_num_test"] = len(test)
        out["parzen_warning"] = PARZEN_WARNING
    return out
