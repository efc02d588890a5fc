"""Every config composes, every model config builds its model, every preset composes
(as lightning-hydra-template tests its configs)."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from dgm_cli.settings.schema import register_configs
from dgm_cli.settings.validate import validate_train
from dgm_cli.models.base import DataSpec
from dgm_cli.models.registry import MODELS, build_model, get_model_class

CONFIGS = Path(__file__).resolve().parents[1] / "dgm_cli" / "configs"
MODEL_NAMES = sorted(p.stem for p in (CONFIGS / "model").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))
IMAGE_SHAPE = {"mnist": (1, 28, 28), "binarized_mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


def compose_train(*overrides: str):
    register_configs()
    with initialize_config_module(config_module="dgm_cli.configs", version_base="1.3"):
        return compose("train", overrides=list(overrides))


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
        spec = DataSpec(IMAGE_SHAPE[cfg.data.name], cfg.data.representation or cfg.model.representation, 10, cfg.data.name)
    else:
        spec = DataSpec((2,), "continuous", 0, cfg.data.name)
    build_model(cfg.model, cfg.objective, spec)


def test_defaults_are_a_vae_on_dynamically_binarized_mnist():
    cfg = compose_train()
    assert (cfg.model.name, cfg.data.name, cfg.objective.name, cfg.data.binarize) == ("vae", "mnist", "elbo", "dynamic")
    assert cfg.optimizer.name == "adam" and cfg.scheduler is None


def test_command_line_objective_beats_the_model_default():
    assert compose_train("model=vae", "objective=iwae").objective.name == "iwae"


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
    assert sorted(cfg) == sorted(defaults), f"keys differ: yaml-only {set(cfg) - set(defaults)}, " \
                                            f"dataclass-only {set(defaults) - set(cfg)}"
    for key, value in defaults.items():
        assert cfg[key] == value or (isinstance(value, tuple) and list(value) == cfg[key]), f"{key}: {cfg[key]} != {value}"
