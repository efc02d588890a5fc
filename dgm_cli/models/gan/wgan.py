"""WGAN (Arjovsky, Chintala & Bottou 2017): the critic estimates the Wasserstein-1 distance,

    W(P_r, P_g) ~ max_{||f||_L <= K} E_{x~P_r} f(x) - E_{z} f(G(z))          (Sec. 3, eq. 3)

with the Lipschitz constraint enforced by clipping every critic weight to [-c, c] after each
critic update (Algorithm 1, line 7), c = 0.01; n_critic = 5; RMSProp with lr 5e-5 (Algorithm 1:
momentum-based optimizers such as Adam made the critic's training unstable, Sec. 4). The critic
is the DCGAN discriminator with batch norm, as in the paper's experiments (Sec. 4). The weight
clipping is what WGAN-GP (Gulrajani et al. 2017) replaces by a gradient penalty: it biases the
critic towards simple functions (their Fig. 1) -- ``experiment=wgan_eight_gaussians`` beside
``experiment=gan_eight_gaussians`` shows both on one toy.

The critic's ``wasserstein`` metric (``WassersteinGAN``), E D(x) - E D(G(z)), is the paper's loss curve (Sec. 4.2,
Fig. 3): up to the unknown constant K it estimates W and falls as the samples improve.
"""

from __future__ import annotations

import torch

from ..registry import register
from .base import WassersteinGAN


@register("wgan")
class WGAN(WassersteinGAN):
    objectives = ("wgan",)
    critic_norm = "batch"

    def __init__(self, config, data, objective):
        super().__init__(config, data, objective)
        self.clip_value = self.objective.clip_value  # c: the critic's weights are clipped to [-c, c]

    @torch.no_grad()
    def after_step(self, phase: str) -> None:
        """w <- clip(w, -c, c) for every critic parameter, after each critic update (Algorithm 1, line 7)."""
        if phase == "critic":
            for p in self.critic.parameters():
                p.clamp_(-self.clip_value, self.clip_value)
