"""CycleGAN (Zhu et al. 2017): unpaired image-to-image translation between two domains A and B.

Two generators, G: A -> B and F: B -> A, and two PatchGAN critics, D_B (real b against G(a)) and
D_A (real a against F(b)), trained with

* the least-squares GAN loss (Mao et al. 2017), the paper's choice (Sec. 4): the critic minimises
  1/2 [E (D(b) - 1)^2 + E D(G(a))^2], the generator E (D(G(a)) - 1)^2;
* the cycle-consistency loss (eq. 2), lambda [ E |F(G(a)) - a|_1 + E |G(F(b)) - b|_1 ], lambda = 10;
* the identity loss (Sec. 5.2, from Taigman et al. 2017), 0.5 lambda [ E |G(b) - b|_1 + E |F(a) - a|_1 ];
* image pools (Shrivastava et al. 2017; Zhu et al. Sec. 4): each critic sees the generated images
  through a buffer of the last 50, which returns a stored one (and keeps the new) with probability
  1/2 once full, so the critics are trained on a history of generators, not only the latest.

The data are unpaired (``data.domain_b``, data/pipeline.py): a batch is (a, b) with b drawn
independently of a. One Adam optimizer for both generators and one for both critics (lr 2e-4,
betas (0.5, 0.999)); on every batch the critics step, then the generators. Images are in [0, 1],
the networks work in [-1, 1]. There is no likelihood: ``dgm sample mode=translate`` shows the
translations and their cycles, ``dgm eval`` the FID/KID of G's translations of domain A's test
images against domain B's (evaluation/samples.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...data import pipeline
from ...errors import UserError
from ...rules import NON_NEGATIVE, POSITIVE, checked
from ..base import DataSpec, GenerativeModel, Metrics, PhaseLoss
from ..nn.host_flags import forget_known, marked, set_known
from ..objectives import Objective
from ..registry import register
from .base import frozen

GRID_IMAGES = 8  # images of each domain behind the logged translation grids


@dataclass
class CycleGANConfig:
    width: int = checked(32, POSITIVE)  # channels of G's first convolution and of D's first stage (the paper's 64 at
    #   256 px)
    residual_blocks: int = checked(6, NON_NEGATIVE)  # residual blocks of each generator (the paper: 6 at 128 px, 9 at
    #   256 px)
    critic_downsamplings: int = checked(1, POSITIVE)  # stride-2 convolutions of the PatchGAN critics: 1 -> 16x16
    #   patches, 2 -> 34x34, 3 -> the paper's 70x70
    cycle_weight: float = checked(10.0, NON_NEGATIVE)  # lambda of the cycle-consistency loss (eq. 3)
    identity_weight: float = checked(0.5, NON_NEGATIVE)  # the identity loss's weight, in units of lambda (0 switches it
    #   off)
    pool_size: int = checked(50, NON_NEGATIVE)  # generated images kept for the critic updates (0: no pool)


# --- networks (Zhu et al. 2017, Appendix 7.2; Johnson et al. 2016) -------------------------
def conv_norm_relu(c_in: int, c_out: int, kernel: int, stride: int = 1, transposed: bool = False) -> list[nn.Module]:
    """c7s1-k, dk (3x3 stride 2) or uk (3x3 fractional stride 1/2): convolution, instance norm, ReLU."""
    if transposed:
        conv = nn.ConvTranspose2d(c_in, c_out, kernel, stride, padding=1, output_padding=1)
    elif kernel == 7:
        return [nn.ReflectionPad2d(3), nn.Conv2d(c_in, c_out, 7), nn.InstanceNorm2d(c_out), nn.ReLU(True)]
    else:
        conv = nn.Conv2d(c_in, c_out, kernel, stride, padding=1)
    return [conv, nn.InstanceNorm2d(c_out), nn.ReLU(True)]


class GeneratorResidualBlock(nn.Module):
    """Rk: two 3x3 convolutions with reflection padding and instance norm, x + f(x)."""

    def __init__(self, channels: int):
        super().__init__()
        self.f = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.f(x)


class ResnetGenerator(nn.Module):
    """c7s1-k, d2k, d4k, R4k x n, u2k, uk, c7s1-C with tanh: two halvings and two doublings of the
    image size, so height and width must be multiples of 4 (28 -> 14 -> 7 -> 14 -> 28)."""

    def __init__(self, channels: int, width: int, blocks: int):
        super().__init__()
        k = width
        self.net = nn.Sequential(
            *conv_norm_relu(channels, k, 7),
            *conv_norm_relu(k, 2 * k, 3, 2),
            *conv_norm_relu(2 * k, 4 * k, 3, 2),
            *[GeneratorResidualBlock(4 * k) for _ in range(blocks)],
            *conv_norm_relu(4 * k, 2 * k, 3, 2, transposed=True),
            *conv_norm_relu(2 * k, k, 3, 2, transposed=True),
            nn.ReflectionPad2d(3),
            nn.Conv2d(k, channels, 7),
            nn.Tanh(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class PatchCritic(nn.Module):
    """PatchGAN (Isola et al. 2017; Zhu et al. Appendix 7.2): C64-C128-...: 4x4 convolutions, the
    first ``downsamplings`` with stride 2, then one with stride 1 and a final 1-channel one: a map of
    scores, one per overlapping patch. Instance norm on all but the first, LeakyReLU(0.2)."""

    def __init__(self, channels: int, width: int, downsamplings: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        c = width
        for i in range(1, downsamplings + 1):
            stride = 2 if i < downsamplings else 1
            layers += [nn.Conv2d(c, 2 * c, 4, stride, 1), nn.InstanceNorm2d(2 * c), nn.LeakyReLU(0.2, True)]
            c *= 2
        self.net = nn.Sequential(*layers, nn.Conv2d(c, 1, 4, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # (B, 1, h, w): one score per patch


class ImagePool(nn.Module):
    """The last ``size`` generated images (Shrivastava et al. 2017, Sec. 2.3; Zhu et al. 2017, Sec. 4).

    ``query`` takes each new image in turn: while the pool is not full, it is stored and returned;
    once full, with probability 1/2 a uniformly chosen stored image is returned and the new one takes
    its place, else the new one is returned. Pool and fill level are buffers: checkpoints hold them,
    so a resumed run queries the same pool. The coins come from the global RNG, which the engine
    seeds per step."""

    def __init__(self, size: int, shape: tuple[int, ...]):
        super().__init__()
        self.size = size
        self.register_buffer("images", torch.zeros(size, *shape))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        self.register_load_state_dict_post_hook(forget_known)

    @torch.no_grad()
    def query(self, batch: Tensor) -> Tensor:
        if self.size == 0:
            return batch
        out = batch.detach().clone()
        # the coins and slots are drawn on the host (where the loop reads them), the fill level is read
        # from the device only until the pool is full
        coins, slots = torch.rand(len(batch)).tolist(), torch.randint(self.size, (len(batch),)).tolist()
        count = self.size if marked(self.count) else int(self.count)
        for i in range(len(batch)):
            if count < self.size:
                self.images[count] = batch[i]
                count += 1
            elif coins[i] < 0.5:
                out[i] = self.images[slots[i]]
                self.images[slots[i]] = batch[i]
        if not marked(self.count):
            self.count.fill_(count)
            if count >= self.size:
                set_known(self.count, value=None)
        return out


# --- losses --------------------------------------------------------------------------------
def lsgan_critic_loss(d_real: Tensor, d_fake: Tensor) -> Tensor:
    # Mao et al. 2017, eq. 2 with a = 0, b = 1; halved as in Zhu et al. 2017, Sec. 4 ("we divide the
    # objective by 2 while optimizing D").
    return 0.5 * (((d_real - 1) ** 2).mean() + (d_fake**2).mean())


def lsgan_generator_loss(d_fake: Tensor) -> Tensor:
    # Mao et al. 2017, eq. 2 with c = 1: G minimises E (D(G(x)) - 1)^2 (Zhu et al. 2017, Sec. 4).
    return ((d_fake - 1) ** 2).mean()


def cycle_loss(a: Tensor, a_cycled: Tensor, b: Tensor, b_cycled: Tensor) -> Tensor:
    # Zhu et al. 2017, eq. 2: E |F(G(a)) - a|_1 + E |G(F(b)) - b|_1 (means over pixels).
    return F.l1_loss(a_cycled, a) + F.l1_loss(b_cycled, b)


def identity_loss(a: Tensor, f_of_a: Tensor, b: Tensor, g_of_b: Tensor) -> Tensor:
    # Zhu et al. 2017, Sec. 5.2 (Taigman et al. 2017): E |G(b) - b|_1 + E |F(a) - a|_1.
    return F.l1_loss(g_of_b, b) + F.l1_loss(f_of_a, a)


@register("cyclegan")
class CycleGAN(GenerativeModel):
    family = "gan"
    objectives = ("lsgan",)
    representations = ("8bit",)
    likelihood = None
    sample_modes = ("translate",)
    #: trains on unpaired two-domain data (data.domain_b; settings/validate.py insists on it)
    two_domains = True
    Config = CycleGANConfig

    @classmethod
    def check_settings(cls, config: CycleGANConfig, objective: Objective, data: Optional[DataSpec] = None) -> None:
        super().check_settings(config, objective, data)
        if data is not None and (not data.is_image or data.shape[1] % 4 or data.shape[2] % 4):
            raise UserError(
                f"model=cyclegan translates images whose height and width are multiples of 4 (its "
                f"generators halve them twice); this data has shape {'x'.join(map(str, data.shape))}."
            )

    def __init__(self, config: CycleGANConfig, data: DataSpec, objective: Objective):
        super().__init__(config, data, objective)
        channels = data.shape[0]
        self.g = ResnetGenerator(channels, config.width, config.residual_blocks)  # A -> B
        self.f = ResnetGenerator(channels, config.width, config.residual_blocks)  # B -> A
        self.critic_a = PatchCritic(channels, config.width, config.critic_downsamplings)
        self.critic_b = PatchCritic(channels, config.width, config.critic_downsamplings)
        self.pool_a = ImagePool(config.pool_size, data.shape)  # F(b), for D_A
        self.pool_b = ImagePool(config.pool_size, data.shape)  # G(a), for D_B
        # fixed training images of each domain behind the logged grids (set from the first batch)
        self.register_buffer("fixed_a", torch.zeros(GRID_IMAGES, *data.shape))
        self.register_buffer("fixed_b", torch.zeros(GRID_IMAGES, *data.shape))

    # --- data ----------------------------------------------------------------------------
    def domain_b(self, y: Optional[Tensor]) -> Tensor:
        """Domain B's images from the batch's second slot, in the networks' space [-1, 1]. Training
        batches arrive transformed; validation and test splits arrive as raw 8-bit images."""
        if y is None or y.dim() != 4 or tuple(y.shape[1:]) != tuple(self.data.shape):
            raise UserError(
                "model=cyclegan translates between two image domains: name the second with "
                "data.domain_b=<dataset name, image folder or .npz file>, e.g. dataset=mnist "
                f"data.domain_b=fashion_mnist (the default); dataset={self.data.dataset} alone gives one."
            )
        if y.dtype == torch.uint8:
            y = pipeline.transform(y, self.data.representation, None)
        return y * 2 - 1

    def initialize(self, x: Tensor, y: Optional[Tensor]) -> None:
        """Keep the first batch's first images of each domain for the logged grids."""
        pick = torch.arange(GRID_IMAGES) % len(x)
        self.fixed_a.copy_(x[pick] * 2 - 1)
        self.fixed_b.copy_(self.domain_b(y)[pick])

    # --- training ------------------------------------------------------------------------
    def configure_optimizers(self, build) -> dict[str, torch.optim.Optimizer]:
        return {
            "critic": build([*self.critic_a.parameters(), *self.critic_b.parameters()]),
            "generator": build([*self.g.parameters(), *self.f.parameters()]),
        }

    def phases(self, step: int) -> tuple[str, ...]:
        return ("critic", "generator")

    def training_loss(self, x: Tensor, y: Optional[Tensor], phase: str) -> PhaseLoss:
        a, b = x * 2 - 1, self.domain_b(y)
        if phase == "critic":
            return self.critic_step(a, b)
        return self.generator_step(a, b)

    def critic_step(self, a: Tensor, b: Tensor) -> PhaseLoss:
        with torch.no_grad():  # the fakes are constants here, seen through the pools
            fake_b, fake_a = self.pool_b.query(self.g(a)), self.pool_a.query(self.f(b))
        loss_b = lsgan_critic_loss(self.critic_b(b), self.critic_b(fake_b))
        loss_a = lsgan_critic_loss(self.critic_a(a), self.critic_a(fake_a))
        loss = loss_a + loss_b
        return loss, {"loss_critic": loss.detach(), "loss_critic_a": loss_a.detach(), "loss_critic_b": loss_b.detach()}

    def generator_step(self, a: Tensor, b: Tensor) -> PhaseLoss:
        c = self.config
        fake_b, fake_a = self.g(a), self.f(b)
        with frozen(self.critic_a), frozen(self.critic_b):
            adversarial = lsgan_generator_loss(self.critic_b(fake_b)) + lsgan_generator_loss(self.critic_a(fake_a))
        cycle = cycle_loss(a, self.f(fake_b), b, self.g(fake_a))
        loss = adversarial + c.cycle_weight * cycle
        metrics = {"loss_adversarial": adversarial.detach(), "loss_cycle": cycle.detach()}
        if c.identity_weight > 0:
            identity = identity_loss(a, self.f(a), b, self.g(b))
            loss = loss + c.identity_weight * c.cycle_weight * identity
            metrics["loss_identity"] = identity.detach()
        metrics["loss_generator"] = loss.detach()
        return loss, metrics

    @torch.no_grad()
    def validation_step(self, x: Tensor, y: Optional[Tensor]) -> Metrics:
        """Cycle and identity L1 errors on held-out images (no "loss": no number ranks checkpoints)."""
        a, b = x * 2 - 1, self.domain_b(y)
        n = min(len(a), len(b))
        a, b = a[:n], b[:n]
        return {
            "cycle_l1": cycle_loss(a, self.f(self.g(a)), b, self.g(self.f(b))),
            "identity_l1": identity_loss(a, self.f(a), b, self.g(b)),
        }

    # --- translation -----------------------------------------------------------------------
    @staticmethod
    def to_data_space(g: Tensor) -> Tensor:
        return ((g + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def translate(self, x: Tensor) -> Tensor:
        """G(a): domain A images in [0, 1] -> their translations to domain B, in [0, 1]."""
        return self.to_data_space(self.g(x * 2 - 1))

    @torch.no_grad()
    def translation_rows(self, a: Tensor, b: Tensor) -> Tensor:
        """(6, n, C, H, W) in [0, 1]: a, G(a), F(G(a)), then b, F(b), G(F(b)) (inputs in [-1, 1])."""
        n = min(len(a), len(b))
        a, b = a[:n], b[:n]
        g_a, f_b = self.g(a), self.f(b)
        return self.to_data_space(torch.stack([a, g_a, self.f(g_a), b, f_b, self.g(f_b)]))

    @torch.no_grad()
    def sample_translate(self, x: Tensor, y: Optional[Tensor]) -> Tensor:
        """`dgm sample mode=translate`: rows input / translated / reconstructed, A -> B -> A over
        B -> A -> B, of the split's first images of each domain."""
        return self.translation_rows(x * 2 - 1, self.domain_b(y))

    def sample(self, n: int, temperature: float = 1.0, label: Optional[int] = None) -> Tensor:
        raise UserError(
            "model=cyclegan translates images rather than sampling from noise: use `dgm sample mode=translate`."
        )

    @torch.no_grad()
    def sample_for_logging(self, n: int) -> Tensor:
        """The translation rows of the fixed training images kept at the first step."""
        return self.translation_rows(self.fixed_a, self.fixed_b)
