"""The VAE with convolutional encoder and decoder (same model and bounds as ``vae.py``)."""

from dataclasses import dataclass, field

from ..registry import register
from .vae import VAE, VAEConfig


@dataclass
class ConvVAEConfig(VAEConfig):
    architecture: str = "conv"
    channels: list = field(default_factory=lambda: [32, 64])
    latent_dim: int = 32
    activation: str = "relu"


@register("conv_vae")
class ConvVAE(VAE):
    Config = ConvVAEConfig
