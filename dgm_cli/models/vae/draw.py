"""DRAW (Gregor, Danihelka, Graves, Rezende & Wierstra 2015, "DRAW: A Recurrent Neural Network For Image
Generation"): a recurrent VAE that draws on a canvas over T steps, with or without attention.

For t = 1..T, with c_0 = 0 and the LSTM states starting at zero (eqs. 3-8):

    x^_t     = x - sigmoid(c_{t-1})                                   the error image
    r_t      = read(x, x^_t, h^dec_{t-1})
    h^enc_t  = LSTM^enc(h^enc_{t-1}, [r_t, h^dec_{t-1}])
    z_t      ~ Q(z_t | h^enc_t) = N(mu_t, sigma_t^2),  mu_t = W h^enc_t,  log sigma_t = W' h^enc_t   (eqs. 1-2)
    h^dec_t  = LSTM^dec(h^dec_{t-1}, z_t)
    c_t      = c_{t-1} + write(h^dec_t)

and p(x | z_{1:T}) = Bernoulli(sigmoid(c_T)) per pixel. The loss is the negative ELBO in nats,
L = L^x + L^z with L^x = -log p(x|c_T) and L^z = sum_t KL(N(mu_t, sigma_t^2) || N(0, I)) (eqs. 9-12).
Generation runs the decoder alone with z_t ~ N(0, I) (eqs. 13-15); ``dgm sample mode=canvas`` shows
sigmoid(c_t) for every t.

Without attention (``model.attention=false``): read = [x, x^_t], write = W h^dec_t (eqs. 17-18).
With attention, an N x N grid of Gaussian filters (Sec. 3.2): from h^dec, a linear layer gives
(g~_X, g~_Y, log sigma^2, log delta~, log gamma) (eq. 21), with

    g_X = (A + 1)/2 (g~_X + 1),  g_Y = (B + 1)/2 (g~_Y + 1),  delta = (max(A, B) - 1)/(N - 1) delta~  (eqs. 22-24)
    mu_X^i = g_X + (i - N/2 - 0.5) delta,  mu_Y^j = g_Y + (j - N/2 - 0.5) delta,  i, j = 1..N     (eqs. 19-20)
    F_X[i, a] = exp(-(a - mu_X^i)^2 / (2 sigma^2)) / Z_X,  F_Y[j, b] likewise,  a = 1..A, b = 1..B (eqs. 25-26)

(Z_X, Z_Y normalise each filter to sum 1), read(x, x^, h) = gamma [F_Y x F_X^T, F_Y x^ F_X^T] (eq. 27)
and write(h) = (1/gamma^) F^_Y^T w F^_X with the N x N patch w = W h^dec and a second set of filter
parameters (eqs. 28-29). With N = A = B, g~ = 0 and delta~ = 1 the filter centres fall on the pixel
centres with unit stride, so a narrow filterbank reads and writes the image itself.

``dgm eval`` reports log p(x) >= E_q[log p(x, z) - log q(z|x)]: with ``estimator.k=1`` (the default)
the ELBO of one trajectory z_{1:T} ~ q per example, the paper's bound; with k > 1 the importance-weighted
bound over k trajectories (Burda et al. 2015), tighter and k times as costly. Both are stochastic lower
bounds on log p(x).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from ...errors import UserError
from ...rules import POSITIVE, checked
from ..base import DataSpec, GenerativeModel, Metrics, PhaseLoss
from ..nn import distributions as D
from ..objectives import Objective
from ..registry import register
from .base import IWAEEstimator
from .importance import importance_log_likelihood


@dataclass
class DRAWConfig:
    steps: int = checked(16, POSITIVE)  # T, glimpses (64 for MNIST in the paper: experiment=draw_mnist)
    attention: bool = True  # Gaussian filterbank read and write; false: read the whole image, write the whole canvas
    read_size: int = checked(2, POSITIVE)  # N of the read filterbank (2 x 2 in the paper)
    write_size: int = checked(5, POSITIVE)  # N of the write filterbank (5 x 5)
    hidden: int = checked(256, POSITIVE)  # units of each LSTM (256)
    latent_dim: int = checked(100, POSITIVE)  # z_t per step (100)


@dataclass
class DRAWEstimator(IWAEEstimator):
    """`dgm eval estimator.k=...`: trajectories per example; 1 is the ELBO, k > 1 the importance-weighted bound."""

    k: int = 1  # each trajectory is T steps of both LSTMs: the paper's bound is one


def filterbank(
    gx: Tensor, gy: Tensor, log_var: Tensor, delta: Tensor, n: int, height: int, width: int
) -> tuple[Tensor, Tensor]:
    """(F_Y (B, N, height), F_X (B, N, width)): N Gaussian filters per axis, each summing to one over the
    pixels (Gregor et al. 2015, eqs. 19-20, 25-26), pixel coordinates 1..A and 1..B as in the paper."""
    offsets = torch.arange(1, n + 1, device=gx.device, dtype=gx.dtype) - n / 2 - 0.5
    var = log_var.exp()[:, None, None]

    def axis(centre: Tensor, size: int) -> Tensor:
        mu = centre[:, None] + offsets * delta[:, None]  # (B, N)
        pixels = torch.arange(1, size + 1, device=gx.device, dtype=gx.dtype)
        return torch.softmax(-((pixels - mu[:, :, None]) ** 2) / (2 * var), dim=-1)  # normalised: / Z

    return axis(gy, height), axis(gx, width)


class Attention(nn.Module):
    """h^dec -> an N x N filterbank over an A x B image and its intensity gamma (eqs. 21-24)."""

    def __init__(self, hidden: int, n: int, height: int, width: int):
        super().__init__()
        self.params = nn.Linear(hidden, 5)
        self.n, self.height, self.width = n, height, width

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.from_params(self.params(h))

    def from_params(self, p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(F_Y, F_X, gamma) from (g~_X, g~_Y, log sigma^2, log delta~, log gamma), shape (B, 5)."""
        gx_, gy_, log_var, log_delta, log_gamma = p.unbind(-1)
        gx = (self.width + 1) / 2 * (gx_ + 1)
        gy = (self.height + 1) / 2 * (gy_ + 1)
        delta = (max(self.height, self.width) - 1) / max(self.n - 1, 1) * log_delta.exp()
        fy, fx = filterbank(gx, gy, log_var, delta, self.n, self.height, self.width)
        return fy, fx, log_gamma.exp()


def read_glimpse(image: Tensor, fy: Tensor, fx: Tensor) -> Tensor:
    """F_Y x F_X^T per channel: (B, C, B_px, A_px) -> (B, C, N, N)."""
    return torch.einsum("bjh,bchw,biw->bcji", fy, image, fx)


def write_patch(patch: Tensor, fy: Tensor, fx: Tensor) -> Tensor:
    """F_Y^T w F_X per channel: (B, C, N, N) -> (B, C, height, width)."""
    return torch.einsum("bjh,bcji,biw->bchw", fy, patch, fx)


@register("draw")
class DRAW(GenerativeModel):
    family = "vae"
    objectives = ("elbo",)
    representations = ("binary",)
    likelihood = "iwae"
    sample_modes = ("sample", "canvas")
    Config = DRAWConfig
    Estimator = DRAWEstimator

    @classmethod
    def check_settings(cls, config: DRAWConfig, objective: Objective, data: Optional[DataSpec] = None) -> None:
        super().check_settings(config, objective, data)
        if not objective.plain:
            raise UserError(
                "model=draw trains on the plain ELBO (Gregor et al. 2015, eq. 12); drop "
                "objective.kl_warmup_steps and objective.free_bits."
            )
        if data is not None and not data.is_image:
            raise UserError("model=draw needs image data (C, H, W).")

    def __init__(self, config: DRAWConfig, data: DataSpec, objective: Objective):
        super().__init__(config, data, objective)
        c = config
        channels, height, width = data.shape
        if c.attention:
            self.read_attention = Attention(c.hidden, c.read_size, height, width)
            self.write_attention = Attention(c.hidden, c.write_size, height, width)
            read_dim, write_dim = 2 * channels * c.read_size**2, channels * c.write_size**2
        else:
            read_dim, write_dim = 2 * data.dim, data.dim
        self.encoder = nn.LSTMCell(read_dim + c.hidden, c.hidden)
        self.posterior = nn.Linear(c.hidden, 2 * c.latent_dim)  # (mu_t, log sigma_t)
        self.decoder = nn.LSTMCell(c.latent_dim, c.hidden)
        self.write_out = nn.Linear(c.hidden, write_dim)  # the whole canvas, or the N x N patch w

    # --- read and write --------------------------------------------------------------------
    def read(self, x: Tensor, error: Tensor, h_dec: Tensor) -> Tensor:
        if not self.config.attention:
            return torch.cat([x.flatten(1), error.flatten(1)], 1)  # eq. 17
        fy, fx, gamma = self.read_attention(h_dec)
        glimpses = torch.cat([read_glimpse(x, fy, fx), read_glimpse(error, fy, fx)], 1)  # eq. 27
        return gamma[:, None] * glimpses.flatten(1)

    def write(self, h_dec: Tensor) -> Tensor:
        out = self.write_out(h_dec)
        if not self.config.attention:
            return out.view(-1, *self.data.shape)  # eq. 18
        n = self.config.write_size
        fy, fx, gamma = self.write_attention(h_dec)
        return write_patch(out.view(-1, self.data.shape[0], n, n), fy, fx) / gamma[:, None, None, None]  # eq. 29

    # --- inference ---------------------------------------------------------------------------
    def infer(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One trajectory z_{1:T} ~ q: (final canvas c_T, sum_t KL_t, sum_t log p(z_t) - log q(z_t|x)), per example."""
        b, h = x.shape[0], self.config.hidden
        canvas = x.new_zeros(b, *self.data.shape)
        enc, dec = (x.new_zeros(b, h), x.new_zeros(b, h)), (x.new_zeros(b, h), x.new_zeros(b, h))
        kl, log_ratio = x.new_zeros(b), x.new_zeros(b)
        for _ in range(self.config.steps):
            r = self.read(x, x - torch.sigmoid(canvas), dec[0])
            enc = self.encoder(torch.cat([r, dec[0]], 1), enc)
            mean, log_sigma = self.posterior(enc[0]).chunk(2, 1)
            z = mean + log_sigma.exp() * torch.randn_like(mean)
            kl = kl + D.gaussian_kl_standard_normal(mean, 2 * log_sigma)  # eq. 11
            log_ratio = log_ratio + D.standard_normal_log_prob(z) - D.gaussian_log_prob(z, mean, 2 * log_sigma)
            dec = self.decoder(z, dec)
            canvas = canvas + self.write(dec[0])
        return canvas, kl, log_ratio

    def elbo_terms(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(log p(x|c_T), sum_t KL_t) per example, for one trajectory."""
        canvas, kl, _ = self.infer(x)
        return D.bernoulli_log_prob(canvas, x), kl

    # --- training -------------------------------------------------------------------------------
    def training_loss(self, x: Tensor, y: Optional[Tensor], phase: str) -> PhaseLoss:
        rec, kl = self.elbo_terms(x)
        loss = (kl - rec).mean()  # L^x + L^z, nats per image
        return loss, {
            "loss": loss.detach(),
            "elbo": -loss.detach(),
            "reconstruction": rec.mean().detach(),
            "kl": kl.mean().detach(),
        }

    @torch.no_grad()
    def validation_step(self, x: Tensor, y: Optional[Tensor]) -> Metrics:
        rec, kl = self.elbo_terms(x)
        elbo = rec - kl
        return {"loss": -elbo.mean(), "elbo": elbo.mean(), "reconstruction": rec.mean(), "kl": kl.mean()}

    # --- likelihood -------------------------------------------------------------------------------
    def log_weights(self, x: Tensor, k: int) -> Tensor:
        """log p(x, z) - log q(z|x) of k trajectories per example, shape (k, B)."""
        canvas, _, log_ratio = self.infer(x.repeat(k, 1, 1, 1))  # row i*B + j: trajectory i of example j
        return (D.bernoulli_log_prob(canvas, x.repeat(k, 1, 1, 1)) + log_ratio).view(k, x.shape[0])

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, y: Optional[Tensor] = None, k: int = 1, **_) -> Tensor:
        return importance_log_likelihood(lambda m: self.log_weights(x, m), k, x.shape[0])

    def estimator(self, k: int = 1, **_) -> str:
        if k == 1:
            return "ELBO, one trajectory z_1..z_T ~ q per example (Gregor et al. 2015's bound)"
        return f"importance-weighted bound, k={k} trajectories z_1..z_T ~ q per example (Burda et al. 2015)"

    @torch.no_grad()
    def extra_eval(self, x: Tensor, y: Optional[Tensor] = None) -> Metrics:
        rec, kl = self.elbo_terms(x)
        return {"elbo": (rec - kl).sum(), "reconstruction": rec.sum(), "kl": kl.sum()}

    # --- generation -------------------------------------------------------------------------------
    @torch.no_grad()
    def canvases(self, n: int, temperature: float = 1.0) -> Tensor:
        """sigmoid(c_t) for t = 1..T of n drawings from the prior (eqs. 13-15): (n, T, C, H, W)."""
        device = self.posterior.weight.device
        h = self.config.hidden
        dec = (torch.zeros(n, h, device=device), torch.zeros(n, h, device=device))
        canvas = torch.zeros(n, *self.data.shape, device=device)
        frames = []
        for _ in range(self.config.steps):
            dec = self.decoder(temperature * torch.randn(n, self.config.latent_dim, device=device), dec)
            canvas = canvas + self.write(dec[0])
            frames.append(torch.sigmoid(canvas))
        return torch.stack(frames, 1)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, label: Optional[int] = None) -> Tensor:
        """sigmoid(c_T), the Bernoulli means, of drawings with z_t ~ N(0, temperature^2 I)."""
        if label is not None:
            raise UserError("model=draw is unconditional; sample without label=.")
        return self.canvases(n, temperature)[:, -1]

    @torch.no_grad()
    def sample_canvas(self, x: Tensor, y: Optional[Tensor] = None, **_) -> Tensor:
        """One row per drawing (up to 8): the canvas sigmoid(c_t) after each of the T steps."""
        return self.canvases(min(8, x.shape[0]))
