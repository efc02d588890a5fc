"""WGAN-GP (Gulrajani et al. 2017): the critic estimates the Wasserstein-1 distance,
its 1-Lipschitz constraint enforced softly by a gradient penalty on interpolates;
no normalisation in the critic (the penalty is per example); n_critic = 5 and Adam
with lr 1e-4, betas (0.5, 0.9) (Miyato et al. 2018, Table 1, setting A), which the model
config's optimizer=adam gets (configs/model/optimizer/wgan_gp_adam.yaml)."""

from __future__ import annotations

from ..registry import register
from .base import WassersteinGAN


@register("wgan_gp")
class WGANGP(WassersteinGAN):
    objectives = ("wgan_gp",)
    critic_norm = "none"
