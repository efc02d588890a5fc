"""Log-likelihoods and KL terms, each summed over all but the batch dimension.

Every function returns nats per example, shape (B,).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

LOG_2PI = math.log(2 * math.pi)


def sum_except_batch(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1).sum(dim=1)


def bernoulli_log_prob(logits: Tensor, x: Tensor) -> Tensor:
    """log Bern(x | sigmoid(logits)) = x*logits - softplus(logits); x in {0,1}.

    Takes logits, never probabilities, so that no sigmoid is applied twice."""
    return sum_except_batch(-F.binary_cross_entropy_with_logits(logits, x, reduction="none"))


def gaussian_log_prob(x: Tensor, mean: Tensor, log_var: Tensor) -> Tensor:
    """log N(x | mean, diag(exp(log_var)))."""
    return sum_except_batch(-0.5 * (LOG_2PI + log_var + (x - mean) ** 2 * torch.exp(-log_var)))


def standard_normal_log_prob(z: Tensor) -> Tensor:
    return sum_except_batch(-0.5 * (LOG_2PI + z**2))


def gaussian_kl_standard_normal(mean: Tensor, log_var: Tensor) -> Tensor:
    """KL(N(mean, diag(exp(log_var))) || N(0, I)) in closed form (Kingma & Welling 2014, App. B):
    0.5 * sum(mean^2 + var - log_var - 1)."""
    return sum_except_batch(0.5 * (mean**2 + torch.exp(log_var) - log_var - 1.0))


def gaussian_kl_per_dim(mean: Tensor, log_var: Tensor) -> Tensor:
    """The same KL, not summed: shape (B, latent_dim) (for free bits)."""
    return 0.5 * (mean**2 + torch.exp(log_var) - log_var - 1.0)


def log1mexp(d: Tensor) -> Tensor:
    """log(1 - exp(-d)) for d > 0, accurate for every d: -expm1 near 0, log1p far out
    (Mächler 2012, "Accurately computing log(1 - exp(-|a|))", eq. 7)."""
    return torch.where(d < math.log(2), torch.log(-torch.expm1(-d)), torch.log1p(-torch.exp(-d)))


def discretized_logistic_log_prob(x: Tensor, mean: Tensor, log_scale: Tensor, bins: int = 256) -> Tensor:
    """log P(x) of 8-bit data under a logistic discretized into ``bins`` bins on [0, 1]
    (Kingma et al. 2016; Salimans et al. 2017, PixelCNN++ eq. 2), edge bins extended to +-inf.

    x holds k/(bins-1) for integer k. The bin of k is [k - 0.5, k + 0.5]/(bins-1); with
    a, b its edges in units of the scale, P(k) = sigmoid(b) - sigmoid(a), P(0) = sigmoid(b),
    P(bins-1) = 1 - sigmoid(a) = sigmoid(-a).

    Computed in log space with no floor: sigmoid(b) - sigmoid(a) = sigmoid(b) sigmoid(-a) (1 - e^-(b-a))
    (expand both sides over (1 + e^a)(1 + e^b)), so

        log P(k) = logsigmoid(b) + logsigmoid(-a) + log1mexp(b - a),

    where b - a = bin width / scale is computed directly, never as a difference of two nearly
    equal numbers. Every term is accurate in float32 in both tails and for any scale, which is
    what PixelCNN++'s log-sigmoid edges and mid-bin density fallback approximate case by case;
    the gradient is never cut off by a clamp."""
    half = 0.5 / (bins - 1)
    inv_s = torch.exp(-log_scale)
    centered = x - mean
    upper = (centered + half) * inv_s  # b
    lower = (centered - half) * inv_s  # a
    log_cdf_upper = F.logsigmoid(upper)  # log P(X <= b): the whole mass of bin 0
    log_sf_lower = F.logsigmoid(-lower)  # log P(X > a): the whole mass of bin bins-1
    mid = log_cdf_upper + log_sf_lower + log1mexp((2 * half) * inv_s)
    lp = torch.where(x < half, log_cdf_upper, torch.where(x > 1 - half, log_sf_lower, mid))
    return sum_except_batch(lp)


def bernoulli_sample(logits: Tensor) -> Tensor:
    return torch.bernoulli(torch.sigmoid(logits))


def gaussian_sample(mean: Tensor, log_var: Tensor) -> Tensor:
    return mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)


def discretized_logistic_sample(mean: Tensor, log_scale: Tensor, bins: int = 256) -> Tensor:
    """k/(bins-1) with k the bin of a logistic draw mean + s (log u - log(1 - u)); edge bins take the tails."""
    u = torch.rand_like(mean).clamp(1e-7, 1 - 1e-7)
    x = mean + torch.exp(log_scale) * (torch.log(u) - torch.log1p(-u))
    return torch.round(x.clamp(0, 1) * (bins - 1)) / (bins - 1)


def categorical_log_prob(logits: Tensor, x: Tensor) -> Tensor:
    """log Cat(k | softmax(logits)) with logits of shape (B, K, *dims), x = k/(K-1)."""
    k = logits.shape[1]
    target = torch.round(x * (k - 1)).long()
    return sum_except_batch(-F.cross_entropy(logits, target, reduction="none"))
