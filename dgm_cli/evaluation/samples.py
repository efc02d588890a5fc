"""Sample-quality part of `dgm eval`: draw samples from any model and score them offline.

The samples are what the model generates, in the representation it was trained on: a model whose
``sample`` shows the means of its observation model (a VAE's Bernoulli means, grey levels) provides
``sample_observations(n)``, x ~ p(x|z), and that is scored, against a reference in the same
representation (binarized digits for a binary model). The report says which it is.
"""

from __future__ import annotations

import logging

import torch

from ..data import modes, pipeline
from ..errors import UserError
from .features import get_feature_network
from .sample_quality import evaluate_samples

log = logging.getLogger("dgm.eval")
SAMPLE_BATCH = 500
IMAGE_METRICS = ("fid", "kid", "pr", "is", "parzen")
TOY_METRICS = ("modes",)
METRICS = IMAGE_METRICS + TOY_METRICS
DEFAULT_IMAGE_METRICS = ["fid", "kid", "pr", "is"]


def default_metrics(model) -> list[str]:
    """The sample-quality metrics `dgm eval` computes for a model with no likelihood."""
    if model.data.is_image:
        return list(DEFAULT_IMAGE_METRICS)
    if modes.toy_mixture(model.data.dataset) is not None:
        return list(TOY_METRICS)
    raise UserError(
        f"{type(model).__name__} has no likelihood, and on dataset={model.data.dataset} dgm has no "
        "sample-quality metric (mode coverage needs eight_gaussians or twenty_five_gaussians); "
        "look at `dgm sample`."
    )


@torch.no_grad()
def draw_samples(model, n: int) -> tuple[torch.Tensor, str]:
    """n samples as the model generates them, and how they were drawn."""
    observed = getattr(model, "sample_observations", None)
    draw = observed or model.sample
    x = torch.cat([draw(min(SAMPLE_BATCH, n - i)).cpu() for i in range(0, n, SAMPLE_BATCH)])
    how = (
        "x ~ p(x|z): drawn from the observation model, not its means"
        if observed is not None
        else "the model's samples (`dgm sample`)"
    )
    return x, f"{how}; {model.data.representation} representation"


def mode_report(model, n: int) -> dict:
    centers, std = modes.toy_mixture(model.data.dataset)
    samples, how = draw_samples(model, n)
    return {
        "num_generated": n,
        "samples": how,
        "protocol": "Srivastava et al. 2017 (VEEGAN), 3 std",
        "num_modes": len(centers),
        **{k: float(v) for k, v in modes.mode_coverage(samples, centers, std).items()},
    }


def sample_quality_report(
    model, dataset: pipeline.Dataset, train_cfg, cfg, metrics: list[str], device, reference_note: str = ""
) -> dict:
    """FID/KID/precision-recall/IS/Parzen of ``cfg.num_samples`` samples against the real ``cfg.split``,
    with the reference in the model's own representation (binarized for binary models), and the
    real-data floor: the reference against as many real training images. On the Gaussian-mixture
    toys, ``modes``: modes covered and the high-quality share."""
    if "modes" in metrics:
        if modes.toy_mixture(model.data.dataset) is None:
            raise UserError(
                "metrics=[modes] is defined on the Gaussian-mixture toys (eight_gaussians, "
                f"twenty_five_gaussians), not on dataset={model.data.dataset}."
            )
        return mode_report(model, modes.NUM_SAMPLES)
    if not model.data.is_image:
        raise UserError(
            "sample-quality metrics are defined for image datasets; on 2-D toys look at "
            "`dgm sample`, metrics=[modes] on the Gaussian mixtures, and the modes_covered scalars "
            "logged during training."
        )
    if dataset.domains:
        return translation_quality_report(model, dataset, cfg, metrics, device)
    net = feature_network(train_cfg.data.name, dataset, metrics, device, cfg.get("features", "auto"))
    metrics = without_inception_score(metrics, net, cfg)
    rep = model.data.representation
    log.info("drawing %d samples", cfg.num_samples)
    generated, how = draw_samples(model, cfg.num_samples)
    out = score_against(generated, dataset, rep, net, metrics, cfg)
    out["samples"] = how
    out["reference"] = f"the {cfg.split} split in the model's representation: {rep}" + (
        f" ({reference_note})" if reference_note else ""
    )
    return out


def feature_network(name: str, dataset: pipeline.Dataset, metrics: list[str], device, kind: str = "auto"):
    """The feature network ``kind`` (``dgm eval features=``: auto, classifier, autoencoder, inception) of
    ``dataset`` (named ``name``) when a metric needs one (all but Parzen); a weak one is warned about."""
    if not any(m != "parzen" for m in metrics):
        return None
    net = get_feature_network(
        name, dataset.train[0], dataset.train[1], dataset.test[0], dataset.test[1], device, kind=kind
    )
    if net.warning:
        log.warning("%s", net.warning)
    return net


def without_inception_score(metrics: list[str], net, cfg) -> list[str]:
    """The model's default metrics less IS where the feature network has no class probabilities (the
    label-free autoencoder); asked for by name, IS is refused (``FeatureNetwork.logits_from_features``)."""
    if net is not None and net.head is None and cfg.get("metrics") is None and "is" in metrics:
        log.info("no Inception score: the %s has no class probabilities", net.description)
        return [m for m in metrics if m != "is"]
    return metrics


def score_against(generated: torch.Tensor, dataset: pipeline.Dataset, rep: str, net, metrics: list[str], cfg) -> dict:
    """``generated`` against ``dataset``'s ``cfg.split``, with the floor of as many of its training images,
    both in the model's representation ``rep``."""
    reference = pipeline.fixed(getattr(dataset, cfg.split)[0], rep).cpu()
    train_reference = pipeline.fixed(dataset.train[0][: cfg.num_samples], rep).cpu()
    return evaluate_samples(generated, reference, cfg.split, train_reference, net, metrics, cfg.seed)


def translation_quality_report(model, dataset: pipeline.Dataset, cfg, metrics: list[str], device) -> dict:
    """Unpaired translation (data.domain_b): the model's translations of domain A's first ``cfg.num_samples``
    ``cfg.split`` images, G(a), scored against domain B's ``cfg.split`` on domain B's feature network (the one
    a model trained on B alone is scored with); the floor is B's split against as many B training images."""
    (name_a, name_b), (a, b) = dataset.domain_names, dataset.domains
    net = feature_network(pipeline.domain_b_config_name(name_b), b, metrics, device, cfg.get("features", "auto"))
    metrics = without_inception_score(metrics, net, cfg)
    rep = model.data.representation
    source = pipeline.fixed(getattr(a, cfg.split)[0][: cfg.num_samples], rep)
    log.info("translating %d images", len(source))
    generated = torch.cat([model.translate(s.to(device)).cpu() for s in source.split(SAMPLE_BATCH)])
    out = score_against(generated, b, rep, net, metrics, cfg)
    out["samples"] = (
        f"G(a): translations of the first {len(generated)} {cfg.split} images of domain A "
        f"({name_a}); {rep} representation"
    )
    out["reference"] = f"domain B's ({name_b}) {cfg.split} split in the model's representation: {rep}"
    return out
