"""The training objectives, ``objective=<name>``: each one dataclass declared here, once, with its keys'
types, defaults and rules (``checked``, dgm_cli/rules.py) and their meanings (the trailing comments, which
`dgm train --help` prints). settings/schema.py stores each in Hydra's ConfigStore as the option
``objective=<name>`` (no YAML file restates them), so ``objective.k=50`` is typed and an unknown key is
refused; settings/validate.py applies the rules before anything is written; a model receives the
instance (``self.objective.k``), built by ``typed`` from the config or a checkpoint's saved dict.

Pure Python (no torch): validation and `--help` read it cheaply. Which objectives a model trains with is
the model's ``objectives`` (names of the table below).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import UserError
from ..rules import NON_NEGATIVE, POSITIVE, check_declared, checked

#: name -> the objective's dataclass
OBJECTIVES: dict[str, type] = {}


def objective(cls: type) -> type:
    """Register an objective dataclass under its ``name``'s default."""
    OBJECTIVES[cls.name] = cls
    return cls


@dataclass
class Objective:
    """An objective: its name, and in a subclass the keys it takes. Also the objective of a model built
    outside this table (a test's), which takes no keys."""

    name: str = ""


def typed(values: Any) -> Objective:
    """The objective's dataclass instance for ``values``: an instance already, or a mapping (a config's
    ``objective`` section, a checkpoint's saved dict, an API caller's ``{"name": "iwae", "k": 50}``); a
    key the objective does not take is refused (it would be ignored), as is a value its rule refuses."""
    if isinstance(values, Objective):
        return values
    from omegaconf import OmegaConf  # (a checkpoint's or composed config's section)

    if OmegaConf.is_config(values):
        values = OmegaConf.to_container(values, resolve=True)
    values = dict(values)
    name = values.get("name")
    cls = OBJECTIVES.get(name, Objective)
    keys = [f.name for f in dataclasses.fields(cls)]
    extra = sorted(set(values) - set(keys))
    if extra:
        raise UserError(
            f"objective={name} takes only {', '.join(sorted(keys))}; got {', '.join(extra)}, which it would ignore."
        )
    result = cls(**values)
    check_declared({"objective": result}, "objective", cls)
    return result


# --- latent-variable models (models/vae, models/sequence) --------------------------------------------
@objective
@dataclass
class ELBO(Objective):
    """The evidence lower bound (Kingma & Welling 2014), optionally with KL warm-up and free bits."""

    name: str = "elbo"
    kl_warmup_steps: int = checked(0, NON_NEGATIVE)  # > 0: the KL weight grows linearly from 0 to 1 over this many
    #   steps (Sønderby et al. 2016)
    free_bits: float = checked(0.0, NON_NEGATIVE)  # > 0: nats per latent dimension below which the KL is not penalised
    #   (Kingma et al. 2016)

    @property
    def plain(self) -> bool:
        """Whether this is the ELBO itself, with neither warm-up nor free bits."""
        return not self.kl_warmup_steps and not self.free_bits


@objective
@dataclass
class BetaELBO(ELBO):
    """beta-VAE objective (Higgins et al. 2017): reconstruction - beta * KL."""

    name: str = "beta_elbo"
    beta: float = checked(4.0, NON_NEGATIVE)  # the KL's weight (1 is the ELBO)


@objective
@dataclass
class IWAE(Objective):
    """The importance-weighted bound with k samples (Burda et al. 2015); k=1 is the ELBO."""

    name: str = "iwae"
    k: int = checked(5, POSITIVE)  # importance samples per example


@objective
@dataclass
class WakeSleep(Objective):
    """Wake-sleep (Hinton et al. 1995): wake -- h ~ q(h|x), maximise log p(x, h) over the generative model;
    sleep -- (x, h) dreamed from p, maximise log q(h|x) over the recognition model."""

    name: str = "wake_sleep"


@objective
@dataclass
class RWS(Objective):
    """Reweighted wake-sleep (Bornschein & Bengio 2015): k samples of q(h|x) with normalised importance weights
    train p (eq. 9) and q (wake update, eq. 11); q_sleep also averages in the sleep update of q."""

    name: str = "rws"
    k: int = checked(5, POSITIVE)  # samples of q(h|x) per example
    q_sleep: bool = True  # q's update is the average of its wake and sleep updates ("wake+sleep")


@objective
@dataclass
class VQ(Objective):
    """VQ-VAE's loss (van den Oord et al. 2017, eq. 3): -log p(x|z_q(x)) + ||sg[z_e(x)] - e||^2 +
    beta ||z_e(x) - sg[e]||^2; its second stage (the PixelCNN prior over the codes) is maximum likelihood."""

    name: str = "vq"
    beta: float = checked(0.25, NON_NEGATIVE)  # weight of the commitment loss (the paper's 0.25)


# --- exact likelihoods (autoregressive models, flows) --------------------------------------------------
@objective
@dataclass
class NLL(Objective):
    """Maximum likelihood: minimise -log p(x), exact for autoregressive models and flows."""

    name: str = "nll"


# --- energy-based models (models/energy) ---------------------------------------------------------------
@objective
@dataclass
class CD(Objective):
    """Contrastive divergence CD-k (Hinton 2002): the negative phase is k Gibbs sweeps started at the data.
    Boltzmann machines (rbm, grbm, dbn, dbm) minimise mean F(v_data) - mean F(v_k)."""

    name: str = "cd"
    k: int = checked(1, POSITIVE)  # Gibbs sweeps per update (Salakhutdinov & Murray 2008 compare k = 1, 3, 25)


@objective
@dataclass
class PCD(Objective):
    """Persistent contrastive divergence (Tieleman 2008): fantasy particles carried across updates, each
    advanced k Gibbs sweeps per update; they live in the model's buffers, so checkpoints hold them."""

    name: str = "pcd"
    k: int = checked(1, POSITIVE)  # Gibbs sweeps of the chains per update
    chains: int = checked(100, POSITIVE)  # fantasy particles (per process under torchrun: each keeps its own)


@objective
@dataclass
class ML(Objective):
    """Maximum likelihood for a deep energy-based model: mean E(data) - mean E(Langevin samples) (Du &
    Mordatch 2019; Grathwohl et al. 2020); the sampler's settings are the model's (model.sgld_*)."""

    name: str = "ml"


# --- diffusion and flow matching -----------------------------------------------------------------------
@objective
@dataclass
class Simple(Objective):
    """DDPM's simple loss: |eps - eps_theta(x_t, t)|^2 at a uniform random step (Ho et al. 2020, eq. 14)."""

    name: str = "simple"


@objective
@dataclass
class Hybrid(Objective):
    """L_simple + lambda L_vlb with learned variances; L_vlb trains only the variances (Nichol & Dhariwal
    2021, Sec. 3.1)."""

    name: str = "hybrid"
    vlb_weight: float = checked(0.001, NON_NEGATIVE)  # lambda


@objective
@dataclass
class VLB(Objective):
    """A diffusion model's variational bound itself (Ho et al. 2020, eq. 5), one random step per example:
    "L, fixed isotropic Sigma" in Ho et al.'s Table 2 (3.70 bits/dim on CIFAR-10)."""

    name: str = "vlb"


@objective
@dataclass
class CFM(Objective):
    """Conditional flow matching: |v_theta(x_t, t) - u_t(x_t | x_0, x_1)|^2 at t ~ U[0, 1] (Lipman et al. 2023,
    eq. 23)."""

    name: str = "cfm"


# --- GANs (models/gan) -----------------------------------------------------------------------------------
@objective
@dataclass
class Minimax(Objective):
    """The original GAN game (Goodfellow et al. 2014, eq. 1): G minimises log(1 - D(G(z))); saturates early on."""

    name: str = "minimax"


@objective
@dataclass
class NonSaturating(Objective):
    """Cross-entropy D, and G maximising log D(G(z)) (Goodfellow et al. 2014, sec. 3): the usual GAN loss."""

    name: str = "nonsaturating"


@objective
@dataclass
class Hinge(Objective):
    """Hinge loss (Lim & Ye 2017; Miyato et al. 2018): D minimises E relu(1 - D(x)) + E relu(1 + D(G(z))),
    G maximises E D(G(z))."""

    name: str = "hinge"


@objective
@dataclass
class LSGAN(Objective):
    """Least-squares GAN (Mao et al. 2017), CycleGAN's choice (Zhu et al. 2017, Sec. 4): D minimises
    1/2 [E (D(b) - 1)^2 + E D(G(a))^2], G minimises E (D(G(a)) - 1)^2."""

    name: str = "lsgan"


@objective
@dataclass
class WGAN(Objective):
    """Wasserstein critic with weight clipping (Arjovsky et al. 2017, Algorithm 1): after every critic update
    each critic weight is clipped to [-clip_value, clip_value]; G maximises E D(G(z))."""

    name: str = "wgan"
    clip_value: float = checked(0.01, POSITIVE)  # c in Algorithm 1


@objective
@dataclass
class WGANGP(Objective):
    """Wasserstein critic with gradient penalty (Gulrajani et al. 2017, eq. 3)."""

    name: str = "wgan_gp"
    gp_weight: float = checked(10.0, NON_NEGATIVE)  # lambda: weight of E(||grad D(x_hat)|| - 1)^2, x_hat on lines
    #   between real and fake
