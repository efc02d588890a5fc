"""What the VAE family's models share: a latent-variable model p(x, h) with a recognition model
q(h | x), whose log p(x) `dgm eval` estimates by importance sampling with ``estimator.k`` samples
of q (importance.py; Burda et al. 2015, eq. 8): the VAE, the Gumbel-softmax VAE and the
Helmholtz machine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ...errors import UserError
from ..base import GenerativeModel


@dataclass
class IWAEEstimator:
    """`dgm eval estimator.k=...`: importance samples of the IWAE estimate of log p(x)."""

    k: int = 5000  # Burda et al. 2015 evaluate with k = 5000

    def __post_init__(self):
        if self.k < 1:
            raise UserError(f"estimator.k={self.k} is not allowed: it must be >= 1.")


class LatentVariableModel(GenerativeModel):
    family = "vae"
    likelihood = "iwae"
    Estimator = IWAEEstimator

    def check_plain_sampling(self, temperature: float, label: Optional[int], source: str) -> None:
        """Refuse ``temperature`` and ``label`` for a sampler that has neither (it draws ``source``)."""
        if label is not None or temperature != 1.0:
            raise UserError(f"model={self.name} samples {source} as it is: drop label= and temperature=.")
