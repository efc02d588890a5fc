"""SN-GAN (Miyato et al. 2018): every weight of the critic is divided by its spectral
norm, which bounds the critic's Lipschitz constant by 1 without a penalty; hinge loss
by default; one critic step per generator step with Adam lr 2e-4, betas (0.5, 0.999)
(Miyato et al. 2018, Table 1, setting C). With ``conditional: true`` the critic is a
projection discriminator (Miyato & Koyama 2018)."""

from __future__ import annotations

from ..registry import register
from .base import GAN


@register("sngan")
class SNGAN(GAN):
    objectives = ("hinge", "nonsaturating")
    critic_norm = "spectral"
    # Config: GANConfig, whose defaults are Miyato et al. 2018's setting C
