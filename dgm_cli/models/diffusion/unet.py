"""The U-Net of DDPM (Ho et al. 2020, App. B; after PixelCNN++'s backbone and the Wide ResNet):
a sinusoidal embedding of the step, residual blocks with group normalisation that each add the
embedding, self-attention at chosen resolutions (always in the middle, at the lowest one), strided
convolutions down and nearest-neighbour upsampling with skip connections up."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal position embedding of the step (Vaswani et al. 2017, Sec. 3.5), as DDPM uses it."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / max(half - 1, 1))
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, dim % 2))


def group_norm(channels: int) -> nn.GroupNorm:
    """32 groups as in DDPM, or the most that divide a narrower layer."""
    groups = max(g for g in range(1, min(32, channels) + 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


def zero(module: nn.Module) -> nn.Module:
    """Zero-initialise a block's last layer, so that every residual block starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class TimestepResidualBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float):
        super().__init__()
        self.in_layers = nn.Sequential(group_norm(in_ch), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_ch))
        self.out_layers = nn.Sequential(
            group_norm(out_ch), nn.SiLU(), nn.Dropout(dropout), zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        )
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.in_layers(x) + self.emb(emb)[:, :, None, None]
        return self.skip(x) + self.out_layers(h)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of a feature map, with a residual connection."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm = group_norm(ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = zero(nn.Conv2d(ch, ch, 1))

    def forward(self, x: Tensor, emb: Tensor = None) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: Tensor, emb: Tensor = None) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor, emb: Tensor = None) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Level(nn.ModuleList):
    """Blocks applied in turn, each given the step embedding."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        for block in self:
            x = block(x, emb)
        return x


class UNet(nn.Module):
    """eps (and, with ``out_channels`` = 2C, the variance output) from (x_t, t).

    channel_mult: one entry per resolution, the width there in units of ``channels``; every entry
    but the last halves the resolution. attention_resolutions: the feature-map sizes (in pixels)
    with self-attention; the lowest resolution's middle block always has it."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        image_size: int,
        channels: int,
        channel_mult: list[int],
        num_res_blocks: int,
        attention_resolutions: list[int],
        dropout: float,
    ):
        super().__init__()
        emb_dim = 4 * channels
        self.channels = channels
        self.embed = nn.Sequential(nn.Linear(channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.stem = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.down, skips, ch, size = nn.ModuleList(), [channels], channels, image_size
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                blocks = [TimestepResidualBlock(ch, channels * mult, emb_dim, dropout)]
                ch = channels * mult
                if size in attention_resolutions:
                    blocks.append(AttentionBlock(ch))
                self.down.append(Level(blocks))
                skips.append(ch)
            if level < len(channel_mult) - 1:
                self.down.append(Level([Downsample(ch)]))
                skips.append(ch)
                size //= 2
        self.middle = Level(
            [
                TimestepResidualBlock(ch, ch, emb_dim, dropout),
                AttentionBlock(ch),
                TimestepResidualBlock(ch, ch, emb_dim, dropout),
            ]
        )
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                blocks = [TimestepResidualBlock(ch + skips.pop(), channels * mult, emb_dim, dropout)]
                ch = channels * mult
                if size in attention_resolutions:
                    blocks.append(AttentionBlock(ch))
                if level > 0 and i == num_res_blocks:
                    blocks.append(Upsample(ch))
                    size *= 2
                self.up.append(Level(blocks))
        self.head = nn.Sequential(group_norm(ch), nn.SiLU(), zero(nn.Conv2d(ch, out_channels, 3, padding=1)))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        emb = self.embed(timestep_embedding(t, self.channels))
        h = self.stem(x)
        skips = [h]
        for level in self.down:
            h = level(h, emb)
            skips.append(h)
        h = self.middle(h, emb)
        for level in self.up:
            h = level(torch.cat([h, skips.pop()], dim=1), emb)
        return self.head(h)
