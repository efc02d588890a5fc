"""Sample-quality part of `dgm eval`: draw samples from any model and score them offline."""
from __future__ import annotations

import logging

import torch

from ..data import pipeline
from ..errors import UserError
from .features import get_feature_network
from .sample_quality import evaluate_samples

log = logging.getLogger("dgm.eval")
SAMPLE_BATCH = 500


@torch.no_grad()
def draw_samples(model, n: int) -> torch.Tensor:
    return torch.cat([model.sample(min(SAMPLE_BATCH, n - i)).cpu() for i in range(0, n, SAMPLE_BATCH)])


def sample_quality_report(model, dataset: pipeline.Dataset, train_cfg, cfg, metrics: list[str], device) -> dict:
    """FID/KID/precision-recall/IS/Parzen of ``cfg.num_samples`` samples against the real ``cfg.split``,
    with the reference in the model's own representation (binarized for binary models), and the
    real-data floor: the reference against as many real training images."""
    if not model.data.is_image:
        raise UserError("sample-quality metrics are defined for image datasets; on 2-D toys look at "
                        "`dgm sample` and the modes_covered scalars logged during training.")
    needs_net = any(m != "parzen" for m in metrics)
    net = None
    if needs_net:
        if dataset.train[1] is None:
            raise UserError("FID/KID/PR/IS need a feature network, which dgm trains on the dataset's labels; "
                            "this dataset has none. metrics=[parzen] works without labels.")
        net = get_feature_network(train_cfg.data.name, dataset.train[0], dataset.train[1], dataset.test[0],
                                  dataset.test[1], device)
    rep = model.data.representation
    reference = pipeline.fixed(getattr(dataset, cfg.split)[0], rep).cpu()
    train_reference = pipeline.fixed(dataset.train[0][: cfg.num_samples], rep).cpu()
    log.info("drawing %d samples", cfg.num_samples)
    generated = draw_samples(model, cfg.num_samples)
    return evaluate_samples(generated, reference, cfg.split, train_reference, net, metrics, cfg.seed)
