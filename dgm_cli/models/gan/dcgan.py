"""DCGAN (Radford et al. 2016): a convolutional generator and a batch-normalised
convolutional discriminator trained with the cross-entropy game of Goodfellow et al.
2014, by default with the non-saturating generator loss; Adam with lr 2e-4 and
beta1 = 0.5, one discriminator step per generator step."""

from __future__ import annotations

from ..registry import register
from .base import GAN


@register("dcgan")
class DCGAN(GAN):
    objectives = ("nonsaturating", "minimax")
    critic_norm = "batch"
    # Config: GANConfig, whose defaults are DCGAN's (Radford et al. 2016, sec. 4)
