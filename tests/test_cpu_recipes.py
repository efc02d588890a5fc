"""The CPU recipes (`experiment=<name>_cpu`, issue 23): each one composes, trains two steps, and its
`# dgm eval:` settings -- read by scripts/cpu_recipes.py, the one place that runs them -- are accepted by
`dgm eval` on the run. The hour each recipe takes is measured by the script, not here."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from conftest import compose_train, run_folders
from test_sequences_music import write_pickle

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "cpu_recipes.py"
spec = importlib.util.spec_from_file_location("cpu_recipes", SCRIPT)
cpu_recipes = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cpu_recipes)

RECIPES = cpu_recipes.recipes()
#: the costly knobs of an evaluation, turned down for a test; every other setting is the recipe's own
CHEAP = [
    "limit=2",
    "num_samples=8",
    "estimator.ais_runs=2",
    "estimator.ais_temperatures=[20,20,20]",
    "estimator.timesteps=4",
    "estimator.reverse_burn_in=2",
]


def test_there_is_a_recipe_for_every_family_the_issue_names():
    families = {compose_train(f"experiment={name}").model.name for name in RECIPES}
    assert {"vae", "made", "pixelcnn", "maf", "glow", "rbm", "dcgan", "ddpm", "dmm"} <= families


def test_a_recipe_names_its_evaluation(tmp_path):
    assert cpu_recipes.settings("vae_cpu", cpu_recipes.EVAL_LINE) == ["estimator.k=5000"]
    assert all(cpu_recipes.settings(name, cpu_recipes.EVAL_LINE) for name in RECIPES), (
        "every recipe says how it is evaluated (a '# dgm eval:' line)"
    )


def cheaper(evaluation: list[str], model: str) -> list[str]:
    """The recipe's evaluation with CHEAP's values in place of its own where both set a key; of CHEAP's
    estimator settings only those this model's estimator takes (it refuses the others by name)."""
    keys = {"rbm": ("ais_", "reverse_"), "ddpm": ("timesteps",)}.get(model, ())
    cheap = [o for o in CHEAP if not o.startswith("estimator.") or o[len("estimator.") :].startswith(keys)]
    merged = {o.split("=", 1)[0]: o for o in evaluation + cheap}
    return list(merged.values())


@pytest.mark.slow
@pytest.mark.parametrize("name", RECIPES)
def test_each_recipe_trains_two_steps_and_its_evaluation_runs(name, dgm, tmp_path, data_root):
    cfg = compose_train(f"experiment={name}")
    data = []
    if cfg.data.name == "bach_chorales":  # parsing music21's corpus takes minutes: a small file in the same format
        write_pickle(tmp_path / "JSB Chorales.pickle", (24, 6, 6))
        data = ["dataset=jsb_chorales", f"data.root={tmp_path}", "data.val_size=null"]
    dgm("train", f"experiment={name}", *data, "debug=tiny", "trainer.max_steps=2")
    (run,) = run_folders(tmp_path)
    evaluation = cpu_recipes.settings(name, cpu_recipes.EVAL_LINE)
    if any(m in "".join(evaluation) for m in ("fid", "kid")):  # sample metrics train a feature network (minutes)
        evaluation = [s for s in evaluation if not s.startswith("metrics=")] + ["metrics=[nll]"]
        if cfg.model.name == "dcgan":
            return  # no likelihood to evaluate cheaply; the metrics' own tests cover them
    dgm("eval", f"checkpoint={run}", *cheaper(evaluation, cfg.model.name))
    assert (run / "checkpoints" / "eval.json").exists()
