"""Generators and critics: MLPs for 2-D toys, DCGAN-style CNNs for images.

Every generator is called as ``G(z, y)`` and every critic as ``D(x, y)`` -> scores (B,);
``y`` (class labels) is used only by class-conditional networks.

The convolutional pair is the "standard CNN" of Miyato et al. 2018 (appendix B),
itself DCGAN-like (Radford et al. 2016): G projects z to a small feature map and
doubles its size with 4x4 stride-2 transposed convolutions (batch norm, ReLU),
then a 3x3 convolution and tanh; D alternates 3x3 stride-1 and 4x4 stride-2
convolutions with leaky ReLU (slope 0.1) and ends in a linear layer. The number of
up-/down-samplings adapts to the image size (3 for 32x32: 4 -> 8 -> 16 -> 32;
2 for 28x28: 7 -> 14 -> 28).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from ...errors import UserError
from ..nn.mlp import mlp

CRITIC_NORMS = ("none", "batch", "spectral")


def resolutions(height: int, width: int) -> int:
    """How many times G doubles its feature map (and D halves it): at most 3, with
    a starting map of at least 4x4 (Miyato et al. 2018 start from 4x4 for 32x32)."""
    for k in (3, 2, 1):
        if height % 2**k == 0 and width % 2**k == 0 and min(height, width) >> k >= 4:
            return k
    raise UserError(f"GAN image networks need height and width divisible by 2 and at least 8; got {height}x{width}.")


def spectral_normalize(module: nn.Module) -> nn.Module:
    """Divide the weight of every linear, convolutional and embedding layer by its largest
    singular value, estimated by one power iteration per forward pass (Miyato et al. 2018, eq. 8)."""
    for layer in [m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.Embedding))]:
        spectral_norm(layer)
    return module


class ConditionalBatchNorm2d(nn.BatchNorm2d):
    """Batch norm whose scale and shift are looked up per class (de Vries et al. 2017;
    Miyato & Koyama 2018 use it in G). With ``num_classes=0`` it is plain batch norm."""

    def __init__(self, features: int, num_classes: int = 0):
        super().__init__(features, affine=num_classes == 0)
        self.embed = nn.Embedding(num_classes, 2 * features) if num_classes else None
        if self.embed is not None:
            nn.init.ones_(self.embed.weight[:, :features])  # gamma starts at 1,
            nn.init.zeros_(self.embed.weight[:, features:])  # beta at 0

    def forward(self, h: Tensor, y: Optional[Tensor] = None) -> Tensor:
        h = super().forward(h)
        if self.embed is None:
            return h
        gamma, beta = self.embed(y)[:, :, None, None].chunk(2, dim=1)
        return gamma * h + beta


class ConvGenerator(nn.Module):
    def __init__(self, latent_dim: int, shape: tuple[int, int, int], width: int, num_classes: int = 0):
        super().__init__()
        channels, height, width_px = shape
        k = resolutions(height, width_px)
        self.start = (width * 2**k, height >> k, width_px >> k)  # e.g. 512 x 4 x 4 for 32x32
        sizes = [width * 2 ** (k - i) for i in range(k + 1)]  # 512, 256, 128, 64
        self.project = nn.Linear(latent_dim, self.start[0] * self.start[1] * self.start[2])
        self.norms = nn.ModuleList([ConditionalBatchNorm2d(c, num_classes) for c in sizes])
        self.ups = nn.ModuleList([nn.ConvTranspose2d(a, b, 4, stride=2, padding=1) for a, b in zip(sizes, sizes[1:])])
        self.out = nn.Conv2d(sizes[-1], channels, 3, padding=1)

    def forward(self, z: Tensor, y: Optional[Tensor] = None) -> Tensor:
        h = torch.relu(self.norms[0](self.project(z).view(-1, *self.start), y))
        for up, norm in zip(self.ups, self.norms[1:]):
            h = torch.relu(norm(up(h), y))
        return torch.tanh(self.out(h))  # in [-1, 1], the model's image space


class ConvCritic(nn.Module):
    """``norm``: "batch" (batch norm after every convolution but the first, as in DCGAN),
    "spectral" (SN-GAN) or "none" (WGAN-GP: a gradient penalty needs per-example scores).

    With ``num_classes`` it is a projection discriminator (Miyato & Koyama 2018, eq. 3):
    D(x, y) = psi(phi(x)) + embed(y) . phi(x)."""

    def __init__(self, shape: tuple[int, int, int], width: int, norm: str = "none", num_classes: int = 0):
        super().__init__()
        channels, height, width_px = shape
        k = resolutions(height, width_px)
        layers: list[nn.Module] = []
        c_in = channels
        for i in range(k):
            c = width * 2**i
            layers += self._conv(c_in, c, 3, 1, norm, first=i == 0) + self._conv(c, c, 4, 2, norm)
            c_in = c
        layers += self._conv(c_in, width * 2**k, 3, 1, norm)
        self.phi = nn.Sequential(*layers, nn.Flatten())
        features = width * 2**k * (height >> k) * (width_px >> k)
        self.psi = nn.Linear(features, 1)
        self.embed = nn.Embedding(num_classes, features) if num_classes else None
        if norm == "spectral":
            spectral_normalize(self)

    @staticmethod
    def _conv(c_in: int, c_out: int, kernel: int, stride: int, norm: str, first: bool = False) -> list[nn.Module]:
        layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, stride, padding=1)]
        if norm == "batch" and not first:
            layers.append(nn.BatchNorm2d(c_out))
        return layers + [nn.LeakyReLU(0.1)]

    def forward(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        h = self.phi(x)
        score = self.psi(h).squeeze(1)
        if self.embed is not None:
            score = score + (self.embed(y) * h).sum(dim=1)
        return score


class MLPGenerator(nn.Module):
    def __init__(self, latent_dim: int, dim: int, hidden: int, depth: int):
        super().__init__()
        self.net = mlp([latent_dim] + [hidden] * depth + [dim], act="relu")

    def forward(self, z: Tensor, y: Optional[Tensor] = None) -> Tensor:
        return self.net(z)


class MLPCritic(nn.Module):
    """The toys' critic: ReLU MLP as in Gulrajani et al. 2017's 2-D experiments; no batch
    norm whatever ``norm`` says ("spectral" normalises every layer)."""

    def __init__(self, dim: int, hidden: int, depth: int, norm: str = "none"):
        super().__init__()
        self.net = mlp([dim] + [hidden] * depth + [1], act="relu")
        if norm == "spectral":
            spectral_normalize(self)

    def forward(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        return self.net(x).squeeze(1)
