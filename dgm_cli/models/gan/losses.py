"""What the critic and the generator minimise, per objective, and the gradient penalty.

Notation: ``d_real = D(x)`` and ``d_fake = D(G(z))`` are the critic's raw scores,
shape (B,). For "minimax" and "nonsaturating" they are logits: the discriminator's
probability that its input is real is sigmoid(score), and every log of it is
written with softplus (-log sigmoid(a) = softplus(-a), -log(1 - sigmoid(a)) = softplus(a)),
so that no sigmoid is ever taken and then logged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


# --- critic losses -------------------------------------------------------------
def cross_entropy_critic(d_real: Tensor, d_fake: Tensor) -> Tensor:
    # Goodfellow et al. 2014, eq. 1: D maximises E log D(x) + E log(1 - D(G(z))).
    return F.softplus(-d_real).mean() + F.softplus(d_fake).mean()


def wasserstein_critic(d_real: Tensor, d_fake: Tensor) -> Tensor:
    # Arjovsky et al. 2017; Gulrajani et al. 2017, eq. 3 (the penalty is added by the model):
    # the critic maximises E D(x) - E D(G(z)).
    return d_fake.mean() - d_real.mean()


def hinge_critic(d_real: Tensor, d_fake: Tensor) -> Tensor:
    # Lim & Ye 2017, as used by Miyato et al. 2018 (sec. 4): E max(0, 1 - D(x)) + E max(0, 1 + D(G(z))).
    return F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()


# --- generator losses ----------------------------------------------------------
def minimax_generator(d_fake: Tensor) -> Tensor:
    # Goodfellow et al. 2014, eq. 1: G minimises E log(1 - D(G(z))) = -E softplus(d_fake).
    # Its gradient vanishes when D confidently rejects the fakes (early training).
    return -F.softplus(d_fake).mean()


def nonsaturating_generator(d_fake: Tensor) -> Tensor:
    # Goodfellow et al. 2014, sec. 3: G maximises E log D(G(z)) instead; same fixed point,
    # strong gradients early on.
    return F.softplus(-d_fake).mean()


def critic_score_generator(d_fake: Tensor) -> Tensor:
    # WGAN (Arjovsky et al. 2017) and hinge (Lim & Ye 2017; Miyato et al. 2018): G maximises E D(G(z)).
    return -d_fake.mean()


@dataclass(frozen=True)
class Loss:
    """What the critic and the generator minimise under one objective (models/objectives.py names it)."""

    critic_loss: Callable[[Tensor, Tensor], Tensor]
    generator_loss: Callable[[Tensor], Tensor]
    #: the critic's score is the logit of a probability (so D(x) is reported as sigmoid(score))
    logits: bool
    #: the objective carries a gradient penalty (its weight is the objective's ``gp_weight``)
    penalized: bool = False


#: objective name -> its losses
LOSSES = {
    "minimax": Loss(cross_entropy_critic, minimax_generator, logits=True),
    "nonsaturating": Loss(cross_entropy_critic, nonsaturating_generator, logits=True),
    # WGAN (Arjovsky et al. 2017, Algorithm 1): the Lipschitz constraint is weight clipping (wgan.py)
    "wgan": Loss(wasserstein_critic, critic_score_generator, logits=False),
    "wgan_gp": Loss(wasserstein_critic, critic_score_generator, logits=False, penalized=True),
    "hinge": Loss(hinge_critic, critic_score_generator, logits=False),
}


# --- gradient penalty (Gulrajani et al. 2017) -----------------------------------
def interpolates(real: Tensor, fake: Tensor) -> Tensor:
    """x_hat = eps * x + (1 - eps) * x_tilde with ONE eps ~ U[0, 1] per example
    (Gulrajani et al. 2017, Algorithm 1, lines 4 and 6): points on the straight
    lines between real and generated examples."""
    eps = torch.rand((real.shape[0],) + (1,) * (real.dim() - 1), device=real.device, dtype=real.dtype)
    return eps * real + (1 - eps) * fake


def gradient_penalty(critic: nn.Module, real: Tensor, fake: Tensor, y: Optional[Tensor] = None) -> Tensor:
    """E_x_hat (||grad_x_hat D(x_hat)||_2 - 1)^2 (Gulrajani et al. 2017, eq. 3, without lambda).

    The gradient of sum_i D(x_hat_i) with respect to x_hat gives every example's own
    gradient only because D scores each example on its own: no batch norm in the critic.
    ``create_graph`` keeps the penalty differentiable with respect to the critic's weights."""
    x_hat = interpolates(real.detach(), fake.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat, y).sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()
