"""What kind of number a likelihood is, and the estimator settings each model takes.

Every likelihood `dgm eval` reports carries one of these kinds:

  exact                            log p(x) itself (autoregressive models; flows on continuous data)
  stochastic lower bound on log p  its expectation is <= log p(x): IWAE_k, the ELBO (Burda et al. 2015,
                                   Thm. 1), a diffusion model's variational bound; the NLL it gives is
                                   an upper bound on the true NLL, in expectation
  estimate with its own error      an estimate that is neither exact nor a bound, with an error of its
                                   own: AIS (Neal 2001) estimates log Z once, and that error is shared
                                   by every example, so it is reported apart from the spread over
                                   examples and never divided by sqrt(n)
  upper bound on the discrete NLL  a density of dequantized data: E_u[-log p((k+u)/256)] + D ln 256
                                   >= -log P(k) (Theis et al. 2016)
  conditional                      -log p(x|y) with the true labels: not comparable with -log p(x)

A model's estimator settings are a dataclass of its own (``Estimator``, e.g. the VAE's ``k``), given
as ``dgm eval estimator.<key>=...``: the generic eval config knows none of them, and a key the model
does not take is refused with the list of those it does.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..errors import UserError

EXACT = "exact"
LOWER_BOUND = "stochastic lower bound on log p"
ESTIMATE = "estimate with its own error"
UPPER_BOUND = "upper bound on the discrete NLL"
CONDITIONAL = "conditional"
KINDS = (EXACT, LOWER_BOUND, ESTIMATE, UPPER_BOUND, CONDITIONAL)

#: a model's ``likelihood`` (its estimator's short name) -> the kind of number it gives
#: (hutchinson: an unbiased estimate of an exact log p, flow matching's on images; decoder_ais: forward AIS
#: of log p(x) = log int p(z) p(x|z) dz, a stochastic lower bound, Wu et al. 2017)
ESTIMATOR_KINDS = {
    "exact": EXACT,
    "iwae": LOWER_BOUND,
    "elbo": LOWER_BOUND,
    "vlb": LOWER_BOUND,
    "ais": ESTIMATE,
    "hutchinson": ESTIMATE,
    "decoder_ais": LOWER_BOUND,
}


def likelihood_kind(model, settings: Mapping[str, Any] | None = None) -> str:
    """The kind of the NLL ``model`` reports on its own representation with these estimator settings
    (a model whose estimator changes the kind names it by ``likelihood_name(**settings)``). On dequantized
    data an exact density, or Hutchinson's unbiased estimate of one, gives an upper bound on the discrete NLL
    (in expectation)."""
    name = model.likelihood_name(**dict(settings or {})) if hasattr(model, "likelihood_name") else model.likelihood
    kind = ESTIMATOR_KINDS[name]
    if model.data.representation == "dequantized" and (kind == EXACT or name == "hutchinson"):
        return UPPER_BOUND
    return kind


def estimator_settings(model, given: Mapping[str, Any]) -> dict:
    """The model's estimator settings (its ``Estimator`` dataclass, defaults filled in) with ``given``
    merged in. Keys the model does not take, or values of the wrong type, are refused."""
    given = dict(given or {})
    cls = model.Estimator
    name = type(model).__name__
    if cls is None:
        if given:
            how = (
                "it has no likelihood"
                if model.likelihood is None
                else "its likelihood is exact"
                if model.likelihood == "exact"
                else "its bound is computed without sampling"
            )
            raise UserError(
                f"{name} takes no estimator settings ({how}); drop {', '.join('estimator.' + k for k in given)}."
            )
        return {}
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in given if k not in allowed]
    if unknown:
        raise UserError(
            f"{name} takes no estimator setting {', '.join('estimator.' + k for k in unknown)}; "
            f"its estimator settings are: {', '.join('estimator.' + k for k in allowed)}."
        )
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), given)
        chosen = OmegaConf.to_object(merged)
        # an estimator with a switch (AIS or not) names only the settings in effect
        return chosen.in_effect() if hasattr(chosen, "in_effect") else dataclasses.asdict(chosen)
    except OmegaConfBaseException as exc:
        raise UserError(
            f"{name}: estimator.{getattr(exc, 'full_key', '?')}: {str(exc).splitlines()[0]}; "
            f"its estimator settings are: {', '.join('estimator.' + k for k in allowed)}."
        ) from None
