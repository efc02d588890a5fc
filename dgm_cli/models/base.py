"""The interface every model implements; the training loop knows nothing else.

A model is an ``nn.Module`` that

* builds its optimizers (one for single-loss models, one per player for GANs),
* turns a batch into a sequence of ``(optimizer name, loss, metrics)`` steps;
  the engine runs backward, clipping, mixed precision and ``optimizer.step``
  after each one, so a GAN's critic and generator updates, or several critic
  steps per generator step, need no special case in the loop,
* keeps any sampler state it carries across steps (persistent Gibbs chains,
  replay buffers, step counters) in registered buffers, so that checkpoints
  and resume cover it,
* samples, and, where its family has one, computes or estimates ``log p(x)``.

See docs/architecture.md for how each family fits.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Iterator, Optional

import torch
from torch import Tensor, nn

from ..errors import UserError

Metrics = dict[str, Tensor]
TrainStep = tuple[str, Tensor, Metrics]
OptimizerFactory = Callable[..., torch.optim.Optimizer]


@dataclass(frozen=True)
class DataSpec:
    """What a model needs to know about its data.

    shape: one example's shape, (C, H, W) for images, (2,) for 2-D toys.
    representation: "binary" (values in {0, 1}), "8bit" (k/255 for k in 0..255),
        "dequantized" ((k + u)/256 with u ~ U[0,1)), or "continuous" (real vectors).
    num_classes: number of labels (0 when the data has none).
    """

    shape: tuple[int, ...]
    representation: str
    num_classes: int = 0
    dataset: str = ""  # the dataset's config name (mnist, eight_gaussians, ...)

    @property
    def dim(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3


class GenerativeModel(nn.Module):
    #: family name: "vae", "autoregressive", "flow", "gan", "energy".
    family: ClassVar[str] = ""
    #: objective names this model trains with; the first is the default.
    objectives: ClassVar[tuple[str, ...]] = ()
    #: data representations the model can model; the first is its default.
    representations: ClassVar[tuple[str, ...]] = ()
    #: "exact", an estimator name ("iwae", "ais"), or None when there is no likelihood.
    likelihood: ClassVar[Optional[str]] = None
    #: what `dgm sample mode=...` can ask of this model (method ``sample_<mode>``
    #: for every mode but "sample").
    sample_modes: ClassVar[tuple[str, ...]] = ("sample",)

    #: the model's hyperparameters: a dataclass, so that config keys are typed and checked.
    Config: ClassVar[type]

    def __init__(self, config, data: DataSpec, objective: dict):
        super().__init__()
        if data.representation not in self.representations:
            raise UserError(
                f"{type(self).__name__} cannot model data.representation={data.representation!r}; "
                f"allowed: {', '.join(self.representations)}."
            )
        name = objective.get("name")
        if name not in self.objectives:
            raise UserError(
                f"objective={name} does not fit a {type(self).__name__} ({self.family} family); "
                f"objectives that do: {', '.join(self.objectives)}."
            )
        self.config = config
        self.data = data
        self.objective = dict(objective)

    # --- training -----------------------------------------------------------
    def check_precision(self, precision: str) -> None:
        """Raise UserError if this model cannot train at ``trainer.precision`` (e.g. a gradient
        penalty under fp16, whose inner gradient is taken on unscaled outputs)."""
    def configure_optimizers(self, build: OptimizerFactory) -> dict[str, torch.optim.Optimizer]:
        """``build(params, **overrides)`` makes the configured optimizer."""
        return {"model": build(self.parameters())}

    def training_step(self, x: Tensor, y: Optional[Tensor]) -> Iterator[TrainStep]:
        """Yield ``(optimizer name, loss, metrics)``; the engine steps that optimizer
        on ``loss`` before asking for the next item. Metrics are detached scalars."""
        raise NotImplementedError

    @torch.no_grad()
    def validation_step(self, x: Tensor, y: Optional[Tensor]) -> Metrics:
        """Batch means of validation metrics; ``loss`` (lower is better) selects best.pt."""
        return {}

    # --- generation and likelihood -------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, label: Optional[int] = None) -> Tensor:
        """``n`` samples in data space, shape ``(n, *data.shape)``; images in [0, 1].

        ``temperature`` scales the sampling noise where the family has a notion of it
        (a model that has none raises UserError for temperature != 1); ``label`` picks
        the class of a class-conditional model (UserError for unconditional ones)."""
        raise NotImplementedError

    def sample_labels(self, n: int, label: Optional[int], conditional: bool) -> Optional[Tensor]:
        """Class labels for ``n`` samples: ``label`` for every one, or, when none is given, the
        classes in turn (one class per grid column); ``None`` for an unconditional model, which
        refuses a label."""
        if not conditional:
            if label is not None:
                raise UserError(f"label={label} was given, but this {type(self).__name__} is not "
                                "class-conditional; train it with model.conditional=true, or drop the label.")
            return None
        k = self.data.num_classes
        device = next(self.parameters()).device
        if label is None:
            return torch.arange(n, device=device) % k
        if not 0 <= label < k:
            raise UserError(f"label={label} is not a class of this model; use 0..{k - 1}.")
        return torch.full((n,), label, dtype=torch.long, device=device)

    @torch.no_grad()
    def sample_for_logging(self, n: int) -> Tensor:
        """Samples for the TensorBoard grid; a GAN overrides this to use a fixed latent
        batch, so that grids are comparable over training."""
        return self.sample(n)

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, y: Optional[Tensor] = None, **settings) -> Tensor:
        """Per-example ``log p(x)`` in nats, in the representation's own space
        (binary pixels, 8-bit values, or the density of dequantized data on [0,1)^D),
        exact or estimated as ``likelihood`` says."""
        raise UserError(f"{type(self).__name__} has no likelihood; use sample-quality metrics.")

    def estimator(self, **settings) -> str:
        """A human-readable name of how ``log_likelihood`` is computed with these settings."""
        return str(self.likelihood)

    def monitor(self, real: Tensor) -> Metrics:
        """Extra scalars logged at each validation (e.g. a GAN's modes covered on a toy);
        ``real`` is a batch of validation data."""
        return {}

    def extra_eval(self, x: Tensor, y: Optional[Tensor] = None) -> Metrics:
        """Per-batch sums of extra evaluation scalars (e.g. ELBO and KL for a VAE)."""
        return {}

    def finalize_eval(self, sums: dict[str, float], count: int) -> dict[str, float]:
        """Turn ``extra_eval`` sums over ``count`` examples into reported numbers."""
        return {k: v / count for k, v in sums.items()}
