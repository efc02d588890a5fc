"""VQ-VAE (van den Oord, Vinyals & Kavukcuoglu 2017, "Neural Discrete Representation Learning") with a
PixelCNN prior over its code grid, both stages trained in one run.

Encoder z_e(x): two stride-2 4x4 convolutions and residual 3x3 blocks (ReLU, 3x3 conv, ReLU, 1x1 conv,
plus the input), ending in ``code_dim`` channels: a grid of vectors (7x7 for 28 px). Each vector is
replaced by its nearest codebook entry e_k, k = argmin_j ||z_e - e_j|| (eq. 1-2), and the decoder
(residual blocks, two stride-2 4x4 transposed convolutions) gives p(x|z_q): Bernoulli for binary pixels,
a discretized logistic for 8-bit values (nn/distributions.py). The gradient passes the quantization
unchanged (straight-through: z_q = z_e + sg[e - z_e]). Stage 1 minimises (eq. 3)

    L = -log p(x|z_q(x)) + ||sg[z_e(x)] - e||^2 + beta ||z_e(x) - sg[e]||^2       (objective.beta = 0.25)

with the squared norms summed over the code grid: the codebook term moves e towards the encoder outputs
assigned to it, the commitment term keeps the encoder close to its codes. Stage 2 (after
``model.prior_start`` steps: ``phases`` switches from the "model" optimizer to the "prior" one) fits
the autoregressive prior p(z), a PixelCNN over the K-way codes of the frozen encoder (Sec. 3.1 and 4.2),
by maximum likelihood. ``sample`` draws codes from the prior and decodes them. The codebook starts as
encoder outputs of the first batch (``initialize``).

The two-stage likelihood. The encoder is deterministic: q(z|x) is a point mass on z_q(x), whose
entropy is zero, so the ELBO (Kingma & Welling 2014, eq. 3) becomes

    log p(x) >= E_q[log p(x|z) + log p(z)] + H(q) = log p(z_q(x)) + log p(x|z_q(x)),

with p(x) = sum_z p(z) p(x|z) the marginal of the two-stage model: a lower bound on log p(x), exact in
neither term's approximation (the gap is log p(x) - log p(x, z_q(x)) = -log p(z_q(x)|x) >= 0). It is
defined because both factors are probability masses: the prior over K-way codes and the discretized
decoder over binary or 8-bit pixels. ``dgm eval`` reports it (``likelihood = "elbo"``: a lower bound,
computed without sampling) in nats and bits/dim = -bound / (D ln 2).

Codebook usage is logged during training: the perplexity exp(-sum_k p_k log p_k) of the batch's code
frequencies p_k (K when all codes are used equally), and the dead codes, those not chosen in any of
the last ``model.dead_after`` batches (or never, so far).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import UserError
from ...rules import NON_NEGATIVE, POSITIVE, at_least, checked
from ..autoregressive.pixelcnn import MaskedResidualBlock, output_layers
from ..base import DataSpec, GenerativeModel, Metrics, PhaseLoss, alternating_rows
from ..nn import distributions as D
from ..nn.masked_conv import MaskedConv2d
from ..objectives import Objective
from ..registry import register
from .vae import MIN_LOG_SCALE

#: stride-2 convolutions in the encoder (and transposed ones in the decoder): 28 px -> a 7x7 code grid
DOWNSAMPLES = 2


@dataclass
class VQVAEConfig:
    hidden_channels: int = checked(64, POSITIVE)  # channels of the encoder and decoder (256 in the paper)
    residual_blocks: int = checked(2, NON_NEGATIVE)  # residual 3x3 blocks in the encoder and in the decoder (2 in the
    #   paper)
    num_codes: int = checked(128, at_least(2))  # K, codebook entries
    code_dim: int = checked(16, POSITIVE)  # D, dimension of each entry
    prior_start: int = checked(2000, NON_NEGATIVE)  # steps of stage 1 (encoder, decoder, codebook); the PixelCNN prior
    #   trains after
    prior_channels: int = checked(32, POSITIVE)  # h of the prior PixelCNN: its residual stream has 2h channels
    prior_blocks: int = checked(5, POSITIVE)  # residual blocks of the prior PixelCNN
    prior_kernel_size: int = checked(3, POSITIVE)  # masked convolution of each prior block (mask B)
    prior_head_channels: int = checked(64, POSITIVE)  # width of the prior's 1x1 output layers
    dead_after: int = checked(100, POSITIVE)  # a code not chosen in this many batches counts as dead


class Residual(nn.Module):
    """ReLU, 3x3 conv, ReLU, 1x1 conv, plus the input (van den Oord et al. 2017, Sec. 4.1)."""

    def __init__(self, channels: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(), nn.Conv2d(channels, channels, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)


def encoder(in_channels: int, hidden: int, blocks: int, code_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden, 4, 2, 1),
        nn.ReLU(),
        nn.Conv2d(hidden, hidden, 4, 2, 1),
        *[Residual(hidden) for _ in range(blocks)],
        nn.ReLU(),
        nn.Conv2d(hidden, code_dim, 1),
    )


def decoder(code_dim: int, hidden: int, blocks: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(code_dim, hidden, 3, padding=1),
        *[Residual(hidden) for _ in range(blocks)],
        nn.ReLU(),
        nn.ConvTranspose2d(hidden, hidden, 4, 2, 1),
        nn.ReLU(),
        nn.ConvTranspose2d(hidden, out_channels, 4, 2, 1),
    )


class CodePrior(nn.Module):
    """A PixelCNN over a grid of K-way codes, in raster order: PixelCNN's layers (mask-A input
    convolution, masked residual blocks, 1x1 output layers; autoregressive/pixelcnn.py) with a
    K-way softmax per position. The codes enter one-hot: they are categories with no order, unlike
    the intensities the image PixelCNN reads."""

    def __init__(self, num_codes: int, channels: int, blocks: int, kernel_size: int, head_channels: int):
        super().__init__()
        self.num_codes = num_codes
        self.input = MaskedConv2d(num_codes, 2 * channels, 7, mask_type="A")
        self.blocks = nn.Sequential(*[MaskedResidualBlock(channels, kernel_size, 1) for _ in range(blocks)])
        self.output = output_layers(2 * channels, head_channels, 1, num_codes)

    def logits(self, codes: Tensor) -> Tensor:
        """(B, H, W) code indices -> (B, K, H, W) logits; position i sees only the codes before it."""
        one_hot = F.one_hot(codes, self.num_codes).permute(0, 3, 1, 2).float()
        return self.output(self.blocks(self.input(one_hot)))

    def log_prob(self, codes: Tensor) -> Tensor:
        """log p(z) = sum_i log p(z_i | z_<i), nats per example."""
        return -F.cross_entropy(self.logits(codes), codes, reduction="none").flatten(1).sum(1)

    @torch.no_grad()
    def sample(self, n: int, height: int, width: int, temperature: float = 1.0) -> Tensor:
        """Codes drawn position by position (one pass per position: a code grid is small)."""
        codes = torch.zeros(n, height, width, dtype=torch.long, device=self.input.weight.device)
        for r in range(height):
            for c in range(width):
                probs = torch.softmax(self.logits(codes)[:, :, r, c] / temperature, dim=1)
                codes[:, r, c] = torch.multinomial(probs, 1).squeeze(1)
        return codes


def perplexity(counts: Tensor) -> Tensor:
    """exp(entropy) of the code frequencies: K when every code is used equally, 1 when one code is."""
    p = counts.float() / counts.sum().clamp(min=1)
    return torch.exp(-(p * torch.log(p.clamp(min=1e-12))).sum())


@register("vq_vae")
class VQVAE(GenerativeModel):
    family = "vae"
    objectives = ("vq",)
    representations = ("binary", "8bit")
    likelihood = "elbo"
    sample_modes = ("sample", "reconstruct")
    Config = VQVAEConfig

    @classmethod
    def check_settings(cls, config: VQVAEConfig, objective: Objective, data: Optional[DataSpec] = None) -> None:
        super().check_settings(config, objective, data)
        if data is not None and (not data.is_image or data.shape[1] % 2**DOWNSAMPLES or data.shape[2] % 2**DOWNSAMPLES):
            raise UserError(
                f"model=vq_vae needs images whose height and width divide by {2**DOWNSAMPLES} "
                f"(two stride-2 convolutions); got data of shape {data.shape}."
            )

    def __init__(self, config: VQVAEConfig, data: DataSpec, objective: Objective):
        super().__init__(config, data, objective)
        c = config
        self.beta = self.objective.beta  # the commitment loss's weight
        self.params_per_dim = 1 if data.representation == "binary" else 2  # Bernoulli | discretized logistic
        self.grid = (data.shape[1] // 2**DOWNSAMPLES, data.shape[2] // 2**DOWNSAMPLES)
        self.encoder = encoder(data.shape[0], c.hidden_channels, c.residual_blocks, c.code_dim)
        self.codebook = nn.Parameter(torch.empty(c.num_codes, c.code_dim).uniform_(-1 / c.num_codes, 1 / c.num_codes))
        self.decoder = decoder(c.code_dim, c.hidden_channels, c.residual_blocks, self.params_per_dim * data.shape[0])
        self.prior = CodePrior(
            c.num_codes, c.prior_channels, c.prior_blocks, c.prior_kernel_size, c.prior_head_channels
        )
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("last_used", torch.zeros(c.num_codes, dtype=torch.long))  # batch a code was last chosen

    # --- the two stages ----------------------------------------------------------------------
    def configure_optimizers(self, build) -> dict[str, torch.optim.Optimizer]:
        first = [*self.encoder.parameters(), self.codebook, *self.decoder.parameters()]
        return {"model": build(first), "prior": build(self.prior.parameters())}

    def phases(self, step: int) -> tuple[str, ...]:
        return ("model",) if step <= self.config.prior_start else ("prior",)

    @torch.no_grad()
    def initialize(self, x: Tensor, y: Optional[Tensor]) -> None:
        """The codebook starts as K encoder outputs of the first batch, evenly spaced over its vectors
        (a data-dependent start, as k-means initialisation does, Łańcucki et al. 2020): from a small
        random codebook, every vector is nearest to the same few entries and the rest never train."""
        flat = self.encoder(x).permute(0, 2, 3, 1).reshape(-1, self.config.code_dim)
        pick = torch.linspace(0, len(flat) - 1, self.config.num_codes, device=flat.device).round().long()
        self.codebook.copy_(flat[pick])

    # --- the pieces ---------------------------------------------------------------------------
    def quantize(self, z_e: Tensor) -> tuple[Tensor, Tensor]:
        """(codes (B, H, W), their codebook vectors e (B, D, H, W)): the nearest entry to each vector of
        z_e (van den Oord et al. 2017, eq. 1)."""
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, z_e.shape[1])
        dist = (flat**2).sum(1, keepdim=True) - 2 * flat @ self.codebook.t() + (self.codebook**2).sum(1)
        codes = dist.argmin(1).view(z_e.shape[0], *z_e.shape[2:])
        return codes, self.embed(codes)

    def embed(self, codes: Tensor) -> Tensor:
        """(B, H, W) codes -> (B, D, H, W) codebook vectors."""
        return self.codebook[codes].permute(0, 3, 1, 2)

    def codes(self, x: Tensor) -> Tensor:
        return self.quantize(self.encoder(x))[0]

    def log_px_given_z(self, z_q: Tensor, x: Tensor) -> Tensor:
        """log p(x|z_q) per example: Bernoulli (binary) or discretized logistic (8-bit) per pixel."""
        out = self.decoder(z_q).view(x.shape[0], self.params_per_dim, *x.shape[1:])
        if self.params_per_dim == 1:
            return D.bernoulli_log_prob(out[:, 0], x)
        return D.discretized_logistic_log_prob(x, out[:, 0], out[:, 1].clamp(min=MIN_LOG_SCALE))

    def decode_mean(self, z_q: Tensor) -> Tensor:
        out = self.decoder(z_q).view(z_q.shape[0], self.params_per_dim, *self.data.shape)
        return torch.sigmoid(out[:, 0]) if self.params_per_dim == 1 else out[:, 0].clamp(0, 1)

    def stage_one_terms(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(log p(x|z_q), codebook loss ||sg[z_e] - e||^2, commitment loss ||z_e - sg[e]||^2, codes), per example;
        z_q = z_e + sg[e - z_e] passes the decoder's gradient to the encoder unchanged (straight-through)."""
        z_e = self.encoder(x)
        codes, e = self.quantize(z_e)
        z_q = z_e + (e - z_e).detach()
        codebook = ((z_e.detach() - e) ** 2).flatten(1).sum(1)
        commitment = ((z_e - e.detach()) ** 2).flatten(1).sum(1)
        return self.log_px_given_z(z_q, x), codebook, commitment, codes

    # --- training ------------------------------------------------------------------------------
    def training_loss(self, x: Tensor, y: Optional[Tensor], phase: str) -> PhaseLoss:
        if phase == "prior":
            with torch.no_grad():
                codes = self.codes(x)
            prior_nll = -self.prior.log_prob(codes).mean()
            return prior_nll, {"loss": prior_nll.detach(), "prior_nll": prior_nll.detach()}
        rec, codebook, commitment, codes = self.stage_one_terms(x)
        loss = -rec.mean() + codebook.mean() + self.beta * commitment.mean()
        counts = torch.bincount(codes.flatten(), minlength=self.config.num_codes)
        with torch.no_grad():  # codebook usage: the batch each code was last chosen in
            self.last_used.masked_fill_(counts > 0, self.step + 1)  # a tensor: no host sync
        return loss, {
            "loss": loss.detach(),
            "reconstruction": rec.mean().detach(),
            "codebook_loss": codebook.mean().detach(),
            "commitment_loss": commitment.mean().detach(),
            "perplexity": perplexity(counts),
            "dead_codes": self.dead_codes(),
        }

    def dead_codes(self) -> Tensor:
        """Codes not chosen in the last ``dead_after`` batches, or never so far."""
        since = self.step + 1 - self.config.dead_after
        return ((self.last_used == 0) | (self.last_used <= since)).sum().float()

    def after_step(self, phase: str) -> None:
        self.step += 1

    def bound_terms(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(log p(x|z_q(x)), log p(z_q(x)), codes): the two terms of the two-stage bound."""
        codes = self.codes(x)
        return self.log_px_given_z(self.embed(codes), x), self.prior.log_prob(codes), codes

    @torch.no_grad()
    def validation_step(self, x: Tensor, y: Optional[Tensor]) -> Metrics:
        rec, log_prior, codes = self.bound_terms(x)
        bound = rec + log_prior
        counts = torch.bincount(codes.flatten(), minlength=self.config.num_codes)
        return {
            "loss": -bound.mean(),
            "bound": bound.mean(),
            "reconstruction": rec.mean(),
            "prior_nll": -log_prior.mean(),
            "perplexity": perplexity(counts),
        }

    # --- likelihood ----------------------------------------------------------------------------
    @torch.no_grad()
    def log_likelihood(self, x: Tensor, y: Optional[Tensor] = None, **_) -> Tensor:
        """log p(z_q(x)) + log p(x|z_q(x)) <= log p(x): the ELBO of the point-mass posterior (module docstring)."""
        rec, log_prior, _ = self.bound_terms(x)
        return rec + log_prior

    def estimator(self, **_) -> str:
        return (
            "two-stage bound log p(z_q(x)) + log p(x|z_q(x)): the ELBO of the deterministic encoder's "
            "point-mass posterior (zero entropy), computed without sampling"
        )

    @torch.no_grad()
    def extra_eval(self, x: Tensor, y: Optional[Tensor] = None) -> Metrics:
        rec, log_prior, codes = self.bound_terms(x)
        return {
            "reconstruction": rec.sum(),
            "prior_nll": -log_prior.sum(),
            "code_counts": torch.bincount(codes.flatten(), minlength=self.config.num_codes),
        }

    def finalize_eval(self, sums: dict, count: int) -> dict:
        """Codebook usage over the evaluated split: perplexity and the codes never chosen."""
        counts = sums.pop("code_counts")
        out = {k: float(v) / count for k, v in sums.items()}
        out["perplexity"] = float(perplexity(counts))
        out["unused_codes"] = int((counts == 0).sum())
        out["num_codes"] = self.config.num_codes
        return out

    # --- generation -----------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, label: Optional[int] = None) -> Tensor:
        """Means of p(x|z) for codes z drawn from the PixelCNN prior (its logits divided by ``temperature``)."""
        if label is not None:
            raise UserError("model=vq_vae is unconditional; sample without label=.")
        if not temperature > 0:
            raise UserError(f"temperature={temperature} is not allowed: it must be > 0.")
        return self.decode_mean(self.embed(self.prior.sample(n, *self.grid, temperature)))

    @torch.no_grad()
    def sample_reconstruct(self, x: Tensor, y: Optional[Tensor] = None, **_) -> Tensor:
        """Rows alternate: up to 8 inputs, then their reconstructions (decoder means at z_q(x))."""
        return alternating_rows(x, lambda x: self.decode_mean(self.embed(self.codes(x))))
