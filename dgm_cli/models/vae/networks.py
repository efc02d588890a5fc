"""Encoders q(z|x) and decoders p(x|z) for the VAE family: MLP and convolutional."""

from __future__ import annotations

import math

from torch import Tensor, nn

from ...errors import UserError
from ..nn.mlp import activation, mlp


class MLPEncoder(nn.Module):
    """x -> (mean, log_var) of a diagonal Gaussian q(z|x)."""

    def __init__(self, shape: tuple[int, ...], hidden: list[int], latent_dim: int, act: str):
        super().__init__()
        self.net = mlp([math.prod(shape), *hidden, 2 * latent_dim], act)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_var = self.net(x.flatten(1)).chunk(2, dim=1)
        return mean, log_var


class MLPDecoder(nn.Module):
    """z -> ``params_per_dim`` likelihood parameters per data dimension, shape (B, P, *shape)."""

    def __init__(self, shape: tuple[int, ...], hidden: list[int], latent_dim: int, act: str, params_per_dim: int):
        super().__init__()
        self.shape, self.params = tuple(shape), params_per_dim
        self.net = mlp([latent_dim, *reversed(hidden), params_per_dim * math.prod(shape)], act)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).view(z.shape[0], self.params, *self.shape)


def check_conv_shape(shape: tuple[int, ...], n_layers: int) -> None:
    """Refuse data the convolutional encoder and decoder cannot take (VAE.check_settings asks)."""
    if len(shape) != 3 or shape[1] % 2**n_layers or shape[2] % 2**n_layers:
        raise UserError(
            f"the convolutional VAE needs images whose height and width divide by 2**{n_layers} "
            f"(one halving per entry of model.channels); got data of shape {shape}. "
            f"Use model=vae, fewer model.channels, or data.image_size."
        )


class ConvEncoder(nn.Module):
    """Strided 4x4 convolutions, each halving the image, then a linear layer to (mean, log_var)."""

    def __init__(self, shape: tuple[int, ...], channels: list[int], latent_dim: int, act: str):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = shape[0]
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 4, stride=2, padding=1), activation(act)]
            c_in = c
        scale = 2 ** len(channels)
        self.conv = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in * (shape[1] // scale) * (shape[2] // scale), 2 * latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_var = self.fc(self.conv(x).flatten(1)).chunk(2, dim=1)
        return mean, log_var


class ConvDecoder(nn.Module):
    """The encoder mirrored: a linear layer, then 4x4 transposed convolutions, each doubling the image."""

    def __init__(self, shape: tuple[int, ...], channels: list[int], latent_dim: int, act: str, params_per_dim: int):
        super().__init__()
        scale = 2 ** len(channels)
        self.shape, self.params = tuple(shape), params_per_dim
        self.start = (channels[-1], shape[1] // scale, shape[2] // scale)
        self.fc = nn.Sequential(nn.Linear(latent_dim, math.prod(self.start)), activation(act))
        layers: list[nn.Module] = []
        rev = list(reversed(channels))
        for c_in, c_out in zip(rev, rev[1:]):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), activation(act)]
        layers.append(nn.ConvTranspose2d(rev[-1], params_per_dim * shape[0], 4, stride=2, padding=1))
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        h = self.deconv(self.fc(z).view(z.shape[0], *self.start))
        return h.view(z.shape[0], self.params, *self.shape)
