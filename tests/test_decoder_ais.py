"""Decoder-based AIS (Wu et al. 2017): on probabilistic PCA, whose marginal likelihood is Gaussian in closed
form, forward AIS lands on the truth within its error and bidirectional Monte Carlo brackets it; through the
CLI a tiny trained DCGAN gets sigma, the schedule and a BDMC bracket with forward <= reverse."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import run_folders
from dgm_cli.evaluation import estimators
from dgm_cli.models.nn import decoder_ais
from test_resume_families import small_images  # 300 8x8 images with a bright square


def ppca(seed: int = 0, data_dim: int = 6, latent_dim: int = 2, sigma: float = 0.3):
    """x = W z + b + sigma eps, z ~ N(0, I): log p(x) = log N(x; b, W W^T + sigma^2 I) (Tipping & Bishop 1999)."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(data_dim, latent_dim, generator=g, dtype=torch.float64)
    b = 0.3 * torch.randn(data_dim, generator=g, dtype=torch.float64)

    def factory(x, chains):
        xr = x.repeat_interleave(chains, 0)
        return lambda z: torch.distributions.Normal(z @ W.T + b, sigma).log_prob(xr).sum(1)

    marginal = torch.distributions.MultivariateNormal(b, W @ W.T + sigma**2 * torch.eye(data_dim, dtype=torch.float64))
    z = torch.randn(16, latent_dim, generator=g, dtype=torch.float64)
    x = z @ W.T + b + sigma * torch.randn(16, data_dim, generator=g, dtype=torch.float64)
    return factory, z, x, marginal.log_prob(x)


def test_ais_on_probabilistic_pca_matches_the_closed_form_and_bdmc_brackets_it():
    torch.manual_seed(0)
    factory, z, x, truth = ppca()
    settings = decoder_ais.DecoderAISSettings(
        ais=True, ais_chains=8, ais_temperatures=100, ais_leapfrog=5, ais_pilot_chains=4
    )
    result = decoder_ais.bdmc(factory, z, x, settings)
    lower, upper = result["forward"] - truth, result["reverse"] - truth
    se_lower, se_upper = float(lower.std() / 4), float(upper.std() / 4)
    assert abs(float(lower.mean())) < 3 * se_lower + 0.02  # within its error of the truth
    assert float(lower.mean()) < 3 * se_lower and float(upper.mean()) > -3 * se_upper  # the bracket holds it
    assert 0.5 < result["report"]["bdmc_acceptance"] < 0.85  # the pilot tuned the step sizes toward 0.65
    # fewer temperatures: a looser bracket, still around the truth
    coarse = decoder_ais.bdmc(
        factory,
        z,
        x,
        decoder_ais.DecoderAISSettings(ais=True, ais_chains=8, ais_temperatures=10, ais_leapfrog=5, ais_pilot_chains=4),
    )
    assert coarse["report"]["bdmc_gap_nats"] > result["report"]["bdmc_gap_nats"] > 0
    assert float(coarse["forward"].mean()) < float(truth.mean()) < float(coarse["reverse"].mean())


def test_the_sigmoid_schedule_runs_from_prior_to_posterior():
    betas = decoder_ais.sigmoid_schedule(50)
    assert betas[0] == 0 and betas[-1] == 1 and (betas.diff() > 0).all()
    assert betas.diff()[0] < betas.diff()[25]  # dense at the ends


CHEAP = [
    "estimator.ais=true",
    "estimator.ais_chains=4",
    "estimator.ais_temperatures=100",
    "estimator.ais_leapfrog=2",
    "estimator.ais_pilot_chains=2",
    "estimator.bdmc_examples=8",
    "estimator.sigma_examples=5",
    "estimator.sigma_temperatures=10",
    "limit=4",
]


@pytest.mark.slow
def test_a_tiny_dcgan_gets_a_likelihood_on_the_flows_protocol_with_a_bdmc_bracket(dgm, tmp_path):
    data = small_images(tmp_path / "images.npz")
    dgm(
        "train",
        "model=dcgan",
        "dataset=npz",
        f"data.path={data}",
        "model.width=8",
        "model.latent_dim=4",
        "trainer.max_steps=30",
        "trainer.batch_size=32",
        "trainer.progress=false",
        "data.val_size=30",
    )
    (run,) = run_folders(tmp_path)
    dgm("eval", f"checkpoint={run}", *CHEAP, "estimator.sigmas=[0.05,0.1]")
    report = json.loads((run / "checkpoints" / "eval.json").read_text())
    lik = report["likelihood"]
    assert report["protocol"]["representation"] == "dequantized"  # the flows' protocol
    assert lik["kind"] == estimators.LOWER_BOUND and "Wu et al. 2017" in lik["estimator"]
    prepared = lik["prepared"]
    assert prepared["sigma"] in (0.05, 0.1) and set(prepared["sigma_grid_mean_log_p"]) == {"0.05", "0.1"}
    assert prepared["sigma_chosen_on"] == "5 validation examples" and "temperatures" in prepared["schedule"]
    assert prepared["bdmc_forward_log_p"] <= prepared["bdmc_reverse_log_p"]
    assert prepared["bdmc_gap_nats"] == pytest.approx(prepared["bdmc_reverse_log_p"] - prepared["bdmc_forward_log_p"])
    assert "outside the cube" in prepared["density_note"] and math.isfinite(lik["nll_nats"])
    assert lik["density_support"] == "R^D"  # dgm report says its NLL is biased up by the mass off the cube
    # without the switch a GAN keeps its sample metrics; a bad grid is refused in one paragraph
    bad = dgm("eval", f"checkpoint={run}", "estimator.ais=true", "estimator.sigmas=[]", check=False)
    assert bad.returncode == 2 and "estimator.sigmas" in bad.stdout + bad.stderr


def test_a_vae_gets_ais_as_a_second_estimate_that_agrees_with_iwae(toy_run):
    from dgm_cli.app import model_from_checkpoint
    from dgm_cli.data import pipeline
    from dgm_cli.engine import checkpoint

    model, _, dataset = model_from_checkpoint(checkpoint.load(str(toy_run)), torch.device("cpu"))
    assert estimators.estimator_settings(model, {}) == {"k": 5000}  # without the switch, IWAE's settings alone
    settings = estimators.estimator_settings(
        model,
        {
            "ais": True,
            "ais_chains": 8,
            "ais_temperatures": 100,
            "ais_leapfrog": 3,
            "ais_pilot_chains": 2,
            "bdmc_examples": 8,
        },
    )
    assert "k" not in settings and estimators.likelihood_kind(model, settings) == estimators.LOWER_BOUND
    torch.manual_seed(0)
    x = pipeline.fixed(dataset.test[0][:40], "continuous")
    iwae = model.log_likelihood(x, k=2000).double()
    ais = model.log_likelihood(x, **settings).double()
    diff = ais - iwae  # two lower bounds on the same log p(x), both tight here (a 2-D latent)
    assert abs(float(diff.mean())) < 3 * float(diff.std() / math.sqrt(len(x))) + 0.02
    bdmc = model.prepare_eval(x, **settings)
    assert bdmc["bdmc_forward_log_p"] <= bdmc["bdmc_reverse_log_p"] + 1e-3 and "chains" in bdmc["schedule"]
