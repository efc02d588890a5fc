"""The interface every model implements; the training loop knows nothing else.

A model is an ``nn.Module`` that

* builds its optimizers (one for single-loss models, one per player for GANs),
* says which of them step on each batch, in order (``phases``), and computes
  the loss of one phase in ``training_loss``, which the engine calls through
  the module's ``forward`` -- so ``DistributedDataParallel`` can wrap the model
  and arm its gradient all-reduce -- then runs backward, clipping, mixed
  precision and ``optimizer.step``, and finally calls ``after_step``. A GAN's
  critic and generator updates, or several critic steps per generator step,
  need no special case in the loop. The order of events for one batch:

      for phase in model.phases(step):            # e.g. ("critic", "generator")
          loss, metrics = model(x, y, phase)      # forward -> training_loss
          backward, clip, optimizer[phase].step()
          model.after_step(phase)                 # counters, chain bookkeeping
      ema.update(); schedulers.step()

* keeps any sampler state it carries across steps (persistent Gibbs chains,
  replay buffers, step counters) in registered buffers, so that checkpoints
  and resume cover it,
* samples, and, where its family has one, computes or estimates ``log p(x)``.

See docs/architecture.md for how each family fits.
"""

from __future__ import annotations

from typing import Callable, ClassVar, Optional

import torch
from torch import Tensor, nn

from ..data.spec import DataSpec  # noqa: F401  (models name their data by it)
from ..errors import UserError
from .objectives import Objective, typed

Metrics = dict[str, Tensor]
#: the loss of one phase and its metrics (detached scalars)
PhaseLoss = tuple[Tensor, Metrics]
OptimizerFactory = Callable[..., torch.optim.Optimizer]


def alternating_rows(x: Tensor, reconstruct: Callable[[Tensor], Tensor], cols: int = 8) -> Tensor:
    """A reconstruction grid: rows alternate, up to ``cols`` inputs then their reconstructions (as many
    whole rows as ``x`` fills; all of ``x`` in one row if it holds fewer than ``cols``)."""
    n = (x.shape[0] // cols) * cols or x.shape[0]
    x = x[:n]
    rec = reconstruct(x).view_as(x)
    cols = min(cols, n)
    return torch.stack([x.view(-1, cols, *x.shape[1:]), rec.view(-1, cols, *x.shape[1:])], 1).flatten(0, 1)


class GenerativeModel(nn.Module):
    #: family name, the folder it lives in: "vae", "autoregressive", "flow", "flow_matching", "gan", "energy",
    #: "diffusion", "sequence" (a test keeps this list and the folders in step)
    family: ClassVar[str] = ""
    #: objective names this model trains with (models/objectives.py's table); the first is the default.
    objectives: ClassVar[tuple[str, ...]] = ()
    #: data representations the model can model; the first is its default.
    representations: ClassVar[tuple[str, ...]] = ()
    #: "exact", an estimator name ("iwae", "ais"), or None when there is no likelihood.
    likelihood: ClassVar[Optional[str]] = None
    #: at most this many samples in a logged training grid (None: trainer.num_samples), for models
    #: whose sampler costs many network passes (one per dimension, a long denoising or Gibbs chain)
    grid_samples: ClassVar[Optional[int]] = None
    #: what `dgm sample mode=...` can ask of this model (method ``sample_<mode>``
    #: for every mode but "sample").
    sample_modes: ClassVar[tuple[str, ...]] = ("sample",)
    #: a CPU run of at least this many steps earns back torch.compile's cold compilation (measured:
    #: scripts/bench_models.py --sections compile, and a cold-cache 3-step run), so trainer.compile=auto
    #: compiles it; None: compiling was not measured to pay for this model
    compile_pays_after: ClassVar[Optional[int]] = None

    #: the model's hyperparameters: a dataclass, so that config keys are typed; a field whose values are
    #: limited declares its rule (``checked``/``checked_choice``, dgm_cli/rules.py), which validation applies
    #: before anything is written and `--help` shows. Rules across fields go in ``check_settings``.
    Config: ClassVar[type]
    #: the estimator's settings (``dgm eval estimator.<key>=``), a dataclass; None: it takes none.
    Estimator: ClassVar[Optional[type]] = None

    @classmethod
    def class_for(cls, config) -> type:
        """The class that ``config`` (a ``Config``) builds: this one, unless a setting names another
        registered model (``model=vae model.stochastic_layers=2`` builds ``hierarchical_vae``); asked by
        ``registry.build_model``."""
        return cls

    @classmethod
    def check_settings(cls, config, objective: Objective, data: Optional[DataSpec] = None) -> None:
        """Refuse (UserError) settings that no single field's rule can: one field against another, the
        model's against the objective's, or, when ``data`` is given, against the data's shape. Called with
        ``data=None`` by validation, before the run folder exists, and again with the data by
        ``registry.build_model`` before the model is built; never from ``__init__``. A model that adds
        checks calls this one first."""
        if objective.name not in cls.objectives:
            raise UserError(
                f"objective={objective.name} does not fit a {cls.__name__} ({cls.family} family); "
                f"objectives that do: {', '.join(cls.objectives)}."
            )
        if data is not None:
            cls.check_representation(data.representation)

    @classmethod
    def check_representation(cls, representation: str) -> None:
        """Refuse a data representation this model cannot model (validation asks with an explicit
        ``data.representation`` before the data is read; ``check_settings`` with the data's)."""
        if representation not in cls.representations:
            raise UserError(
                f"{cls.__name__} cannot model data.representation={representation!r}; "
                f"allowed: {', '.join(cls.representations)}."
            )

    def __init__(self, config, data: DataSpec, objective: Objective | dict):
        super().__init__()
        self.config = config
        self.data = data
        #: the objective's settings, typed (models/objectives.py): ``self.objective.k``
        self.objective = typed(objective)

    # --- training -----------------------------------------------------------
    def check_precision(self, precision: str) -> None:
        """Raise UserError if this model cannot train at ``trainer.precision`` (e.g. a gradient
        penalty under fp16, whose inner gradient is taken on unscaled outputs)."""

    def configure_optimizers(self, build: OptimizerFactory) -> dict[str, torch.optim.Optimizer]:
        """``build(params, **overrides)`` makes the configured optimizer."""
        return {"model": build(self.parameters())}

    def phases(self, step: int) -> tuple[str, ...]:
        """The optimizers stepped on training batch ``step`` (1, 2, ...), in order. One optimizer
        (``"model"``) by default; a GAN steps its critic on every batch and its generator on every
        ``n_critic``-th. ``step`` is the engine's batch counter, saved in checkpoints, so a model
        needs no counter of its own to decide."""
        return ("model",)

    def training_loss(self, x: Tensor, y: Optional[Tensor], phase: str) -> PhaseLoss:
        """``(loss, metrics)`` of ``phase`` on this batch; the engine steps ``phase``'s optimizer on
        ``loss``. Called through ``forward`` (see below), never directly by the engine. Metrics are
        detached scalars. Must not change state that the optimizer step should come before:
        counters and the like go in ``after_step``."""
        raise NotImplementedError

    def forward(self, x: Tensor, y: Optional[Tensor] = None, phase: str = "model") -> PhaseLoss:
        """The module call the engine makes for every phase, so that a DistributedDataParallel (or
        FSDP) wrapper sees the whole loss computation and averages its gradients."""
        return self.training_loss(x, y, phase)

    def after_step(self, phase: str) -> None:
        """Runs after ``phase``'s optimizer step (and before the next phase's loss): step counters,
        bookkeeping that must see the updated weights."""

    def non_finite_advice(self) -> str:
        """What to try when this model's loss was not finite, added to the engine's message (the engine
        notices when it next reads the device, so a model says it here rather than by reading its loss)."""
        return ""

    def initialize(self, x: Tensor, y: Optional[Tensor]) -> None:
        """Data-dependent initialisation (e.g. Glow's ActNorm), run once before the first step of a
        fresh run on the first *global* batch -- every process of a data-parallel run gets the same
        batch, so every process computes the same weights."""

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
                raise UserError(
                    f"label={label} was given, but this {type(self).__name__} is not "
                    "class-conditional; train it with model.conditional=true, or drop the label."
                )
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
    def images(self, n: int) -> dict[str, Tensor]:
        """Extra images logged beside each sample grid, by TensorBoard tag: ``(N, C, H, W)`` in [0, 1],
        at most ``n`` each (an RBM's weights as filters). None by default."""
        return {}

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, y: Optional[Tensor] = None, **settings) -> Tensor:
        """Per-example ``log p(x)`` in nats, in the representation's own space
        (binary pixels, 8-bit values, or the density of dequantized data on [0,1)^D),
        exact or estimated as ``likelihood`` says."""
        raise UserError(f"{type(self).__name__} has no likelihood; use sample-quality metrics.")

    def example_dims(self, x: Tensor) -> Optional[Tensor]:
        """How many scalar values each example of ``x`` holds, (B,), where that varies (sequences of
        different lengths); ``None``: every example has ``data.dim``. Bits/dim divide by it."""
        return None

    def prepare_eval(self, x: Tensor, y: Optional[Tensor] = None, **settings) -> dict:
        """A pass run once before the per-example one (AIS's log Z); returns fields for the report,
        ``shared_error_nats`` for an error every example shares."""
        return {}

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
