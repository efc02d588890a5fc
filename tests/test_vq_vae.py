"""VQ-VAE: the straight-through gradient, the codebook and commitment losses of eq. 3 (van den Oord et
al. 2017) by hand, the two stages' phases, and the two-stage bound against the exact log p(x) of a
model small enough to enumerate every code grid."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from dgm_cli.errors import UserError
from dgm_cli.evaluation.estimators import LOWER_BOUND, estimator_settings, likelihood_kind
from dgm_cli.evaluation.likelihood import evaluate_likelihood
from dgm_cli.models.base import DataSpec
from dgm_cli.models.nn import distributions as D
from dgm_cli.models.vae.vq_vae import VQVAE

TINY = dict(
    hidden_channels=4,
    residual_blocks=1,
    num_codes=3,
    code_dim=2,
    prior_start=3,
    prior_channels=2,
    prior_blocks=1,
    prior_head_channels=4,
)


def tiny(representation="binary", **overrides) -> VQVAE:
    torch.manual_seed(0)
    model = VQVAE(
        VQVAE.Config(**{**TINY, **overrides}), DataSpec((1, 8, 8), representation), {"name": "vq", "beta": 0.25}
    )
    with torch.no_grad():  # codebook = three encoder outputs (as k-means starts), so that every code is in use
        z_e = model.encoder(binary_images()).permute(0, 2, 3, 1).reshape(-1, 2)
        model.codebook.copy_(z_e[[0, 5, 8]])
    return model


def binary_images(n=6):
    return torch.bernoulli(torch.full((n, 1, 8, 8), 0.4), generator=torch.Generator().manual_seed(1))


def test_straight_through_gradient_reaches_the_encoder_and_not_the_codebook():
    model = tiny()
    rec, _, _, _ = model.stage_one_terms(binary_images())
    (-rec.mean()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    assert model.codebook.grad is None, "the reconstruction term must not move the codebook (sg[e - z_e])"


def test_codebook_and_commitment_losses_move_what_eq_3_says():
    """One SGD step on the codebook loss moves e_k to e_k - lr * 2/B sum_{i -> k} (e_k - z_e,i); the
    commitment loss gives the encoder outputs 2 beta/B (z_e - e) and the codebook nothing."""
    model, x, lr = tiny(), binary_images(), 0.1
    b = x.shape[0]
    z_e = model.encoder(x)
    z_e.retain_grad()
    codes, e = model.quantize(z_e)
    flat_z = z_e.detach().permute(0, 2, 3, 1).reshape(-1, 2)
    # nearest entry by brute force
    assert torch.equal(codes.flatten(), torch.cdist(flat_z, model.codebook.detach()).argmin(1))
    _, codebook_loss, commitment_loss, _ = model.stage_one_terms(x)
    before = model.codebook.detach().clone()
    opt = torch.optim.SGD([model.codebook], lr=lr)
    opt.zero_grad()
    codebook_loss.mean().backward()
    opt.step()
    expected = before.clone()
    for k in range(3):
        assigned = flat_z[codes.flatten() == k]
        expected[k] -= lr * 2 / b * (before[k] - assigned).sum(0)
    assert torch.allclose(model.codebook.detach(), expected, atol=1e-6)
    assert len(codes.unique()) > 1, "the check needs codes with different assignments"

    model.zero_grad()
    z_e = model.encoder(x)
    z_e.retain_grad()
    codes, e = model.quantize(z_e)
    commitment = ((z_e - e.detach()) ** 2).flatten(1).sum(1)
    assert torch.allclose(commitment, model.stage_one_terms(x)[2])
    (0.25 * commitment.mean()).backward()
    assert model.codebook.grad is None or model.codebook.grad.abs().max() == 0
    assert torch.allclose(z_e.grad, 2 * 0.25 / b * (z_e - e).detach(), atol=1e-7)


def test_stage_one_steps_then_the_prior_alone_on_frozen_codes():
    model, x = tiny(), binary_images()
    assert [model.phases(s) for s in (1, 3, 4, 10)] == [("model",), ("model",), ("prior",), ("prior",)]
    opts = model.configure_optimizers(lambda params: torch.optim.Adam(params, lr=1e-2))
    assert set(opts) == {"model", "prior"}
    loss, metrics = model(x, None, "prior")
    loss.backward()
    assert all(p.grad is None for p in [*model.encoder.parameters(), model.codebook, *model.decoder.parameters()])
    assert all(p.grad is not None for p in model.prior.parameters())
    first = float(loss.detach())
    for _ in range(20):
        opts["prior"].zero_grad()
        model(x, None, "prior")[0].backward()
        opts["prior"].step()
    assert float(model(x, None, "prior")[0].detach()) < first
    _, metrics = model(x, None, "model")
    assert 1 <= float(metrics["perplexity"]) <= 3 and 0 <= float(metrics["dead_codes"]) <= 3


def test_dead_codes_count_codes_unused_in_the_last_batches():
    model = tiny(dead_after=2)
    model.last_used.copy_(torch.tensor([0, 4, 5]))
    model.step.fill_(5)  # the next batch is number 6: codes last chosen in batches 5 and 6 are alive
    assert float(model.dead_codes()) == 2  # code 0 never, code 1 in batch 4


def test_two_stage_bound_adds_up_and_is_below_the_enumerated_log_likelihood():
    model, x = tiny(), binary_images()
    bound = model.log_likelihood(x)
    codes = torch.cdist(model.encoder(x).detach().permute(0, 2, 3, 1).reshape(-1, 2), model.codebook.detach())
    codes = codes.argmin(1).view(x.shape[0], 2, 2)
    logits = model.decoder(model.codebook.detach()[codes].permute(0, 3, 1, 2)).detach()
    log_prior = model.prior.log_prob(codes).detach()
    assert torch.allclose(bound, log_prior + D.bernoulli_log_prob(logits, x), atol=1e-5)

    grids = torch.tensor(list(itertools.product(range(3), repeat=4))).view(-1, 2, 2)  # all 3^4 code grids
    with torch.no_grad():
        log_pz = model.prior.log_prob(grids)
        assert abs(float(torch.logsumexp(log_pz, 0))) < 1e-5, "the prior sums to one over every grid"
        log_px_z = torch.stack(
            [D.bernoulli_log_prob(model.decoder(model.embed(grids)), xi.expand(len(grids), -1, -1, -1)) for xi in x]
        )
        exact = torch.logsumexp(log_pz + log_px_z, dim=1)
    assert (bound <= exact + 1e-5).all() and (bound < exact).any()

    report = evaluate_likelihood(model, x, None, 3, "cpu")
    assert likelihood_kind(model) == LOWER_BOUND
    assert math.isclose(report["nll_nats"], -float(bound.mean()), rel_tol=1e-5)
    assert math.isclose(report["bits_per_dim"], -float(bound.mean()) / (64 * math.log(2)), rel_tol=1e-5)


def test_8bit_data_get_a_discretized_logistic_decoder_and_samples_in_range():
    model = tiny("8bit")
    x = torch.randint(0, 256, (4, 1, 8, 8)).float() / 255
    assert torch.isfinite(model.log_likelihood(x)).all()
    s = model.sample(3)
    assert s.shape == (3, 1, 8, 8) and s.min() >= 0 and s.max() <= 1


def test_eval_refuses_estimator_settings_naming_the_bound():
    with pytest.raises(UserError, match="its bound is computed without sampling"):
        estimator_settings(tiny(), {"k": 3})


def test_a_training_step_reads_no_counter_back_from_the_device():
    from host_sync import no_host_reads

    model = tiny()
    with no_host_reads():
        model.training_loss(binary_images(), None, "model")
