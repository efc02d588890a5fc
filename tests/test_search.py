"""Hyperparameter search through Hydra's Optuna sweeper: each trial returns its run's final validation
loss, the study's best trial is the one with the lowest, `dgm report` reads the study's folder as a sweep
and marks that trial, and the hparams_search presets name keys that exist."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from conftest import TOY, run_dgm, run_folders

PRESETS = sorted(p.stem for p in (Path(__file__).parents[1] / "dgm_cli" / "configs" / "hparams_search").glob("*.yaml"))


@pytest.mark.slow
def test_three_trials_on_a_toy_and_the_study_picks_the_lowest_validation_loss(tmp_path):
    run_dgm(
        "train",
        "-m",
        "hydra/sweeper=optuna",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.sampler.seed=3",
        "optimizer.lr=interval(1e-4,3e-2)",
        "model.latent_dim=choice(1,2)",
        *TOY,
        "trainer.max_steps=6",
        cwd=tmp_path,
    )
    runs = run_folders(tmp_path)
    assert len(runs) == 3
    (sweep,) = {run.parent for run in runs}
    study = yaml.safe_load((sweep / "optimization_results.yaml").read_text())

    from dgm_cli.evaluation.runs import Run

    objectives = {run: Run.read(run).final("val/loss") for run in runs}
    assert len(set(objectives.values())) == 3  # three different trials, so "the lowest" means one
    best = min(objectives, key=objectives.get)
    assert study["best_value"] == pytest.approx(objectives[best], rel=1e-6)
    assert f"optimizer.lr={study['best_params']['optimizer.lr']}" in best.name
    assert "objective of this trial for the sweeper: val_loss" in (best / "train.log").read_text()

    run_dgm("report", str(sweep), f"out={tmp_path / 'report'}", cwd=tmp_path)
    rows = list(csv.DictReader((tmp_path / "report" / "report.csv").open()))
    assert [r["best_trial"] for r in rows].count("True") == 1
    (marked,) = [r for r in rows if r["best_trial"] == "True"]
    assert marked["run"] == f"{sweep.name}/{best.name.split('_')[0]}"
    assert "optimizer.lr" in rows[0]  # a searched key is a swept column

    (sweep / "optimization_results.yaml").unlink()  # a search still running (or killed) is a sweep all the same
    run_dgm("report", str(sweep), f"out={tmp_path / 'report2'}", cwd=tmp_path)
    rows = list(csv.DictReader((tmp_path / "report2" / "report.csv").open()))
    assert sorted(r["run"] for r in rows) == sorted(f"{sweep.name}/{run.name.split('_')[0]}" for run in runs)
    assert "optimizer.lr" in rows[0] and "best_trial" not in rows[0]


@pytest.mark.slow
def test_a_study_kept_in_a_database_goes_on_across_commands(tmp_path):
    """hydra.sweeper.storage: the second command adds its trials to the first's study (Optuna 2.10's storage
    needs SQLAlchemy below 2, which pyproject.toml pins)."""
    import optuna

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    for seed in (1, 2):
        run_dgm(
            "train",
            "-m",
            "hydra/sweeper=optuna",
            "hydra.sweeper.n_trials=1",
            f"hydra.sweeper.storage={storage}",
            "hydra.sweeper.study_name=toy",
            f"hydra.sweeper.sampler.seed={seed}",
            "optimizer.lr=interval(1e-4,1e-2)",
            *TOY,
            "trainer.max_steps=3",
            cwd=tmp_path,
        )
    study = optuna.load_study(storage=storage, study_name="toy")
    assert len(study.trials) == 2 and study.best_value == min(t.value for t in study.trials)


def test_a_search_refuses_a_run_without_validation_data(tmp_path):
    result = run_dgm(
        "train",
        "-m",
        "hydra/sweeper=optuna",
        "hydra.sweeper.n_trials=1",
        *TOY,
        "data.val_size=0",
        "trainer.max_steps=2",
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 2 and "data.val_size=0 holds no validation data" in result.stderr
    assert not run_folders(tmp_path)


@pytest.mark.parametrize("name", PRESETS)
def test_hparams_search_presets_search_keys_the_config_has(name):
    from hydra import compose, initialize_config_module

    from dgm_cli.settings.schema import register_configs

    register_configs()
    with initialize_config_module(config_module="dgm_cli.configs", version_base="1.3"):
        cfg = compose("train", overrides=[f"hparams_search={name}"], return_hydra_config=True)
    assert "optuna" in cfg.hydra.sweeper._target_.lower() and cfg.hydra.sweeper.direction == "minimize"
    assert cfg.data.val_size != 0  # the objective is the validation loss
    for key in cfg.hydra.sweeper.params:
        assert OmegaConf.select(cfg, key, throw_on_missing=False) is not None, (
            f"{name} searches {key}, which no config has"
        )
