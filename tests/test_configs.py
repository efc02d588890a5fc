"""Every config composes, every model config builds its model, every preset composes
(as lightning-hydra-template tests its configs)."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import compose_train
from dgm_cli.models.base import DataSpec
from dgm_cli.models.registry import MODELS, build_model, get_model_class
from dgm_cli.settings.validate import validate_train

CONFIGS = Path(__file__).resolve().parents[1] / "dgm_cli" / "configs"
MODEL_NAMES = sorted(p.stem for p in (CONFIGS / "model").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))
IMAGE_SHAPE = {"mnist": (1, 28, 28), "binarized_mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
SEQUENCE_SHAPE = {"bach_chorales": (8, 88)}  # (steps, keys) of a piano roll


def test_every_registered_model_has_a_config_and_back():
    get_model_class("vae")  # loads the registry
    assert sorted(MODELS) == MODEL_NAMES


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_config_builds_its_model_on_mnist(name):
    cfg = compose_train(f"model={name}", "dataset=mnist")
    validate_train(cfg)
    cls = get_model_class(cfg.model.name)
    rep = cfg.data.representation or cfg.model.representation
    assert rep == cls.representations[0] or rep in cls.representations
    assert cfg.objective.name == cls.objectives[0], "the model config's default objective is the class's first"
    model = build_model(cfg.model, cfg.objective, DataSpec((1, 28, 28), rep, 10, "mnist"))
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_presets_compose_and_build(name):
    cfg = compose_train(f"experiment={name}")
    validate_train(cfg)
    if cfg.data.name in IMAGE_SHAPE:
        spec = DataSpec(
            IMAGE_SHAPE[cfg.data.name], cfg.data.representation or cfg.model.representation, 10, cfg.data.name
        )
    elif cfg.data.name in SEQUENCE_SHAPE:
        spec = DataSpec(SEQUENCE_SHAPE[cfg.data.name], "binary", 0, cfg.data.name)
    else:
        spec = DataSpec((2,), "continuous", 0, cfg.data.name)
    build_model(cfg.model, cfg.objective, spec)


def test_defaults_are_a_vae_on_dynamically_binarized_mnist():
    cfg = compose_train()
    assert (cfg.model.name, cfg.data.name, cfg.objective.name, cfg.data.binarize) == ("vae", "mnist", "elbo", "dynamic")
    assert cfg.optimizer.name == "adam" and cfg.scheduler is None


def test_command_line_objective_beats_the_model_default():
    assert compose_train("model=vae", "objective=iwae").objective.name == "iwae"


def built_optimizer(cfg):
    """The optimizer the engine builds from ``cfg.optimizer``, over one weight."""
    import torch

    from dgm_cli.engine.optim import optimizer_factory

    return optimizer_factory(cfg.optimizer)([torch.nn.Parameter(torch.zeros(2, 2))])


def test_the_optimizer_group_holds_optimizers_only():
    """Each file of configs/optimizer is one optimizer under its own name; a model's settings of one
    (a GAN's Adam) live in configs/model/optimizer, not beside the optimizers as another choice."""
    from dgm_cli.engine.optim import optimizer_class

    targets = {}
    for path in sorted((CONFIGS / "optimizer").glob("*.yaml")):
        cfg = OmegaConf.load(path)
        assert cfg.name == path.stem
        targets.setdefault(optimizer_class(cfg), []).append(path.stem)
    assert all(len(names) == 1 for names in targets.values()), targets


#: the papers' optimizer settings each model gets with no optimizer key given (the values the
#: adam_gan, adam_wgan_gp, rmsprop_wgan, sgd_rbm, sgd_grbm and adam_ebm files gave before)
PAPER_OPTIMIZERS = {
    "dcgan": ("Adam", {"lr": 2e-4, "betas": (0.5, 0.999), "weight_decay": 0.0}),
    "sngan": ("Adam", {"lr": 2e-4, "betas": (0.5, 0.999), "weight_decay": 0.0}),
    "wgan_gp": ("Adam", {"lr": 1e-4, "betas": (0.5, 0.9), "weight_decay": 0.0}),
    "wgan": ("RMSprop", {"lr": 5e-5, "alpha": 0.99, "momentum": 0.0, "weight_decay": 0.0}),
    "rbm": ("SGD", {"lr": 0.1, "momentum": 0.9, "weight_decay": 2e-4, "nesterov": False}),
    "dbn": ("SGD", {"lr": 0.1, "momentum": 0.9, "weight_decay": 2e-4, "nesterov": False}),
    "dbm": ("SGD", {"lr": 0.1, "momentum": 0.9, "weight_decay": 2e-4, "nesterov": False}),
    "grbm": ("SGD", {"lr": 1e-3, "momentum": 0.9, "weight_decay": 2e-4, "nesterov": False}),
    "ebm": ("Adam", {"lr": 1e-4, "betas": (0.9, 0.999), "weight_decay": 0.0, "amsgrad": False}),
    "vae": ("Adam", {"lr": 1e-3, "betas": (0.9, 0.999), "weight_decay": 0.0}),
}


@pytest.mark.parametrize("name", sorted(PAPER_OPTIMIZERS))
def test_model_gets_its_papers_optimizer_settings(name):
    kind, expected = PAPER_OPTIMIZERS[name]
    opt = built_optimizer(compose_train(f"model={name}"))
    assert type(opt).__name__ == kind
    assert {k: opt.param_groups[0][k] for k in expected} == expected


def test_another_optimizer_comes_with_its_own_defaults_and_keys_beat_the_model():
    wgan_adam = built_optimizer(compose_train("model=wgan", "optimizer=adam"))
    assert type(wgan_adam).__name__ == "Adam"
    assert (wgan_adam.param_groups[0]["lr"], wgan_adam.param_groups[0]["betas"]) == (1e-3, (0.9, 0.999))
    rbm_adam = built_optimizer(compose_train("model=rbm", "optimizer=adam"))
    assert type(rbm_adam).__name__ == "Adam" and rbm_adam.param_groups[0]["weight_decay"] == 0.0
    dcgan = built_optimizer(compose_train("model=dcgan", "optimizer.lr=1e-3")).param_groups[0]
    assert (dcgan["lr"], dcgan["betas"]) == (1e-3, (0.5, 0.999))


def test_model_optimizer_settings_name_a_model_and_an_optimizer_they_fit():
    from dgm_cli.engine.optim import check_optimizer

    optimizers = {p.stem for p in (CONFIGS / "optimizer").glob("*.yaml")}
    for path in sorted((CONFIGS / "model" / "optimizer").glob("*.yaml")):
        model, optimizer = next(
            (m, path.stem[len(m) + 1 :])
            for m in sorted(MODEL_NAMES, key=len, reverse=True)
            if path.stem.startswith(m + "_")
        )
        assert optimizer in optimizers, path.name
        cfg = compose_train(f"model={model}", f"optimizer={optimizer}")
        check_optimizer(cfg.optimizer)  # only keys the optimizer's constructor takes
        assert cfg.optimizer != compose_train("model=vae", f"optimizer={optimizer}").optimizer, path.name


def test_boltzmann_machines_decay_their_weights_only():
    """rbm.m's weight cost (model/optimizer/rbm_sgd.yaml) reaches the weights, never the biases."""
    from dgm_cli.engine.optim import optimizer_factory

    cfg = compose_train("model=rbm", "model.hidden_units=3")
    model = build_model(cfg.model, cfg.objective, DataSpec((1, 2, 2), "binary", 0, "mnist"))
    (opt,) = model.configure_optimizers(optimizer_factory(cfg.optimizer)).values()
    decay = {p.dim(): group["weight_decay"] for group in opt.param_groups for p in group["params"]}
    assert decay == {2: 2e-4, 1: 0.0}


def test_data_root_defaults_to_the_environment(monkeypatch):
    monkeypatch.setenv("DGM_DATA_ROOT", "/somewhere/data")
    assert OmegaConf.to_container(compose_train(), resolve=True)["data"]["root"] == "/somewhere/data"
    monkeypatch.delenv("DGM_DATA_ROOT")
    assert OmegaConf.to_container(compose_train(), resolve=True)["data"]["root"] == "./data"


def test_configs_ship_in_the_package():
    import importlib.resources

    files = importlib.resources.files("dgm_cli.configs")
    assert files.joinpath("train.yaml").is_file() and files.joinpath("model").joinpath("vae.yaml").is_file()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_yaml_restates_its_dataclass_defaults(name):
    """configs/model/<name>.yaml documents every hyperparameter with the dataclass's default, so the
    two cannot drift: same keys, same values."""
    import dataclasses

    cls = get_model_class(name)
    cfg = OmegaConf.to_container(OmegaConf.load(CONFIGS / "model" / f"{name}.yaml"))  # as dgm reads it
    cfg.pop("defaults", None)
    assert cfg.pop("name") == name and cfg.pop("representation") in cls.representations
    defaults = dataclasses.asdict(cls.Config())
    assert sorted(cfg) == sorted(defaults), (
        f"keys differ: yaml-only {set(cfg) - set(defaults)}, dataclass-only {set(defaults) - set(cfg)}"
    )
    for key, value in defaults.items():
        assert cfg[key] == value or (isinstance(value, tuple) and list(value) == cfg[key]), (
            f"{key}: {cfg[key]} != {value}"
        )


def test_debug_tiny_shrinks_any_run_and_what_the_command_line_says_wins():
    """debug=tiny: a few steps of everything, over a preset too; keys given beside it still win."""
    tiny = compose_train("experiment=made_mnist", "debug=tiny")
    assert (tiny.trainer.max_steps, tiny.trainer.batch_size, tiny.data.val_size) == (3, 16, 100)
    assert tiny.model.hidden_sizes == [8000], "the model keeps its size"
    assert compose_train("debug=tiny", "trainer.max_steps=10").trainer.max_steps == 10
    validate_train(tiny)
