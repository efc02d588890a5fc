"""What every autoregressive model shares: the output likelihood, the NLL objective,
sequential sampling and completion.

An autoregressive model factorises p(x) = prod_i p(x_i | x_<i) over an order of the
D dimensions (Larochelle & Murray 2011, eq. 1; van den Oord et al. 2016a, eq. 1).
A subclass only defines ``logits(x, y)``: every conditional's logits in ONE pass,
where the logits of dimension i may depend only on the dimensions before i. Then

  binary: p(x_i = 1 | x_<i) = sigmoid(logit_i), log-likelihood by ``bernoulli_log_prob``
          (the sigmoid is applied once, inside it, never in the model);
  8bit:   p(x_i = k | x_<i) = softmax(logits_i)_k over k = 0..255 (van den Oord et al.
          2016a, Sec. 3.2, "256-way softmax"), by ``categorical_log_prob``.

The order is raster order over pixels and, within a pixel, channel by channel (R, then
G, then B): the "sequence" view below lays an image (C, H, W) out in that order, so
that sequence position s = (h * W + w) * C + c. MADE may use other orders
(``generation_order``).
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from typing import Optional

import torch
from torch import Tensor

from ...errors import UserError
from ...progress import SamplingProgress
from ..base import GenerativeModel, Metrics, PhaseLoss
from ..nn.distributions import bernoulli_log_prob, categorical_log_prob
from ..objectives import Objective

LEVELS = 256  # values of an 8-bit pixel


class PixelStepper:
    """Generation from cached activations (Ramachandran et al. 2017, "Fast Generation for
    Convolutional Autoregressive Models"): what a convolutional model hands ``fill``. ``fill`` writes
    each drawn value into ``image`` (B, C, H, W) and visits the pixels in raster order;
    ``logits_at(r, c)`` computes pixel (r, c)'s activations in every layer from the cached ones of
    the pixels before it, keeps them, and returns the pixel's logits ((B, C) binary, (B, 256, C)
    8-bit, as ``logits`` would at that pixel). Called again after a channel of the pixel is drawn,
    it sees that channel. ``row_done(r)`` runs after row r is complete (row-wise stacks)."""

    image: Tensor

    def logits_at(self, r: int, c: int) -> Tensor:
        raise NotImplementedError

    def row_done(self, r: int) -> None:
        pass


class AutoregressiveModel(GenerativeModel):
    family = "autoregressive"
    objectives = ("nll",)
    representations = ("binary", "8bit")
    likelihood = "exact"
    sample_modes = ("sample", "complete")

    def __init__(self, config, data, objective: Objective):
        super().__init__(config, data, objective)
        #: logits per dimension: one Bernoulli logit, or 256 categorical logits.
        self.bins = 1 if data.representation == "binary" else LEVELS
        #: whether p(x | y) is conditioned on a class label (Gated PixelCNN can be).
        self.conditional = False

    # --- what a model defines -----------------------------------------------
    def logits(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """All conditionals' logits in one pass: (B, *shape) for binary data,
        (B, 256, *shape) for 8-bit data. Entry i may depend only on x_<i."""
        raise NotImplementedError

    def generation_order(self) -> Tensor:
        """Sequence positions in the order they are generated (raster/channel order)."""
        return torch.arange(self.data.dim)

    # --- the sequence view: (..., C, H, W) <-> (..., D) in generation order -----
    def to_sequence(self, t: Tensor) -> Tensor:
        """Flatten the trailing data dimensions; images in (H, W, C) order."""
        if self.data.is_image:
            t = t.movedim(-3, -1)
        return t.reshape(*t.shape[: t.dim() - len(self.data.shape)], self.data.dim)

    def from_sequence(self, t: Tensor) -> Tensor:
        if not self.data.is_image:
            return t.reshape(*t.shape[:-1], *self.data.shape)
        c, h, w = self.data.shape
        return t.reshape(*t.shape[:-1], h, w, c).movedim(-1, -3)

    def image_logits(self, out: Tensor) -> Tensor:
        """A convolutional output (B, C * bins, H, W), channel c's logits contiguous,
        to the layout of ``logits``."""
        if self.bins == 1:
            return out
        b, _, h, w = out.shape
        return out.view(b, self.data.shape[0], self.bins, h, w).transpose(1, 2)

    # --- likelihood --------------------------------------------------------------
    def log_prob(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """log p(x) = sum_i log p(x_i | x_<i), nats per example, shape (B,)."""
        logits = self.logits(x, y)
        if self.bins == 1:
            return bernoulli_log_prob(logits, x)
        return categorical_log_prob(logits, x)

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, y: Optional[Tensor] = None, **settings) -> Tensor:
        return self.log_prob(x, self.labels(y))

    def estimator(self, **settings) -> str:
        return "exact (product of the autoregressive conditionals)"

    # --- training ----------------------------------------------------------------
    def metrics(self, nll: Tensor) -> Metrics:
        """nll is the mean NLL per example in nats; bits/dim = nll / (D ln 2)."""
        nll = nll.detach()
        return {"loss": nll, "nll": nll, "bits_per_dim": nll / (self.data.dim * math.log(2))}

    def training_loss(self, x: Tensor, y: Optional[Tensor], phase: str) -> PhaseLoss:
        nll = -self.log_prob(x, self.labels(y)).mean()  # maximum likelihood
        return nll, self.metrics(nll)

    @torch.no_grad()
    def validation_step(self, x: Tensor, y: Optional[Tensor]) -> Metrics:
        return self.metrics(-self.log_likelihood(x, y).mean())

    # --- labels --------------------------------------------------------------------
    def labels(self, y: Optional[Tensor]) -> Optional[Tensor]:
        """The labels a conditional model needs (None for an unconditional one)."""
        if not self.conditional:
            return None
        if y is None:
            raise UserError(
                f"this {type(self).__name__} is class-conditional (conditional: true) "
                "and needs labelled data; use a dataset with labels or conditional: false."
            )
        return y.long()

    def sample_labels(self, n: int, label: Optional[int], conditional: Optional[bool] = None) -> Optional[Tensor]:
        return super().sample_labels(n, label, self.conditional if conditional is None else conditional)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # --- sampling ------------------------------------------------------------------
    def draw(self, logits: Tensor, temperature: float) -> Tensor:
        """One dimension of B examples from its logits ((B,) binary, (B, 256) 8-bit),
        sharpened or flattened by dividing the logits by ``temperature``."""
        logits = logits / temperature
        if self.bins == 1:
            return torch.bernoulli(torch.sigmoid(logits))
        k = torch.multinomial(torch.softmax(logits, dim=-1), 1).squeeze(-1)
        return k.float() / (LEVELS - 1)

    def stepper(self, x: Tensor, y: Optional[Tensor]) -> Optional["PixelStepper"]:
        """Generation from cached activations, starting from the images ``x`` (zeros where not yet
        drawn); None (the default) samples with one full pass per dimension."""
        return None

    #: set by ``naive_sampling``: sample by full passes even where the model has a stepper
    naive: bool = False

    @contextmanager
    def naive_sampling(self):
        """Within: ``sample`` and ``sample_complete`` run one full network pass per dimension (the
        reference that generation from cached activations is checked and timed against)."""
        self.naive = True
        try:
            yield self
        finally:
            self.naive = False

    @torch.no_grad()
    def fill(self, x: Tensor, y: Optional[Tensor], observed: Tensor, temperature: float = 1.0) -> Tensor:
        """Keep x where ``observed``, draw every other dimension from p(x_i | x_<i), one dimension
        at a time in the generation order: from cached activations where the model has them
        (``stepper``), else by one network pass per dimension. Both draw the same random numbers in
        the same order, so with one seed they give the same samples."""
        start = torch.where(observed, x, torch.zeros_like(x))
        stepper = None if self.naive else self.stepper(start, y)
        if stepper is None:
            return self.fill_naive(start, y, observed, temperature)
        c, h, w = self.data.shape
        todo = (~observed.all(0)).permute(1, 2, 0).tolist()  # [r][col][ch]: does any example draw it?
        image = stepper.image
        with SamplingProgress(h * w, f"sampling {x.shape[0]} x {type(self).__name__} (cached)") as progress:
            for r in range(h):
                for col in range(w):
                    for ch, draw in enumerate(todo[r][col]):
                        # The last channel's pass also leaves this pixel's activations final.
                        if draw or ch == c - 1:
                            logits = stepper.logits_at(r, col)  # (B, C) | (B, bins, C)
                        if draw:
                            drawn = self.draw(logits[..., ch], temperature)
                            known = observed[:, ch, r, col]
                            image[:, ch, r, col] = torch.where(known, image[:, ch, r, col], drawn)
                    progress.update()
                stepper.row_done(r)
        return image.clone(memory_format=torch.contiguous_format)

    @torch.no_grad()
    def fill_naive(self, x: Tensor, y: Optional[Tensor], observed: Tensor, temperature: float = 1.0) -> Tensor:
        """``fill`` by one network pass per dimension: the reference that cached sampling must match."""
        seq = self.to_sequence(torch.where(observed, x, torch.zeros_like(x))).clone()
        known = self.to_sequence(observed)
        order = self.generation_order().tolist()
        with SamplingProgress(len(order), f"sampling {x.shape[0]} x {type(self).__name__}") as progress:
            for s in order:
                progress.update()
                if bool(known[:, s].all()):
                    continue
                logits = self.to_sequence(self.logits(self.from_sequence(seq), y))[..., s]
                seq[:, s] = torch.where(known[:, s], seq[:, s], self.draw(logits, temperature))
        return self.from_sequence(seq)

    @staticmethod
    def check_temperature(temperature: float) -> None:
        if not temperature > 0:
            raise UserError(f"temperature={temperature} is not allowed: it must be > 0.")

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, label: Optional[int] = None) -> Tensor:
        self.check_temperature(temperature)
        y = self.sample_labels(n, label)
        x = torch.zeros(n, *self.data.shape, device=self.device)
        return self.fill(x, y, torch.zeros_like(x, dtype=torch.bool), temperature)

    def completion_context(self):
        """Context in which completions are drawn (MADE picks its raster-order mask)."""
        return nullcontext()

    @torch.no_grad()
    def sample_complete(
        self,
        x: Tensor,
        y: Optional[Tensor] = None,
        mask: Optional[Tensor] = None,
        num_completions: int = 5,
        temperature: float = 1.0,
    ) -> Tensor:
        """Image completion as in van den Oord et al. 2016a, Fig. 1: keep the observed
        pixels, draw the rest in the generation order.

        mask: True where observed, broadcastable to x; default: the upper half of every
        image observed, the lower half hidden. Returns (B, num_completions + 2, C, H, W):
        per row the occluded input (hidden part shown as 0.5 gray), the completions, the
        original. Hidden pixels are drawn from p(x_i | x_<i), so observed pixels that come
        later in the order are kept but do not inform the completion; with the default
        mask every observed pixel comes first, and the completion is exact."""
        if not self.data.is_image:
            raise UserError("sample mode 'complete' needs image data.")
        self.check_temperature(temperature)
        x = x.to(self.device)
        if mask is None:
            mask = torch.zeros(self.data.shape, dtype=torch.bool, device=x.device)
            mask[:, : self.data.shape[1] // 2, :] = True
        observed = mask.to(device=x.device, dtype=torch.bool).expand_as(x)
        y = self.labels(None if y is None else y.to(self.device))
        b, r = x.shape[0], num_completions
        with self.completion_context():
            filled = self.fill(
                x.repeat_interleave(r, 0),
                None if y is None else y.repeat_interleave(r, 0),
                observed.repeat_interleave(r, 0),
                temperature,
            )
        occluded = torch.where(observed, x, torch.full_like(x, 0.5))
        return torch.cat([occluded[:, None], filled.view(b, r, *self.data.shape), x[:, None]], dim=1)
