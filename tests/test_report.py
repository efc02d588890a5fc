"""`dgm report`: one table of runs and sweeps, grouped by evaluation protocol, as text, CSV, Markdown
and PNG plots."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.tensorboard import SummaryWriter

from conftest import run_dgm
from dgm_cli.commands.report import command_line, report
from dgm_cli.errors import UserError
from dgm_cli.evaluation.plots import PALETTE
from dgm_cli.evaluation.runs import Run
from dgm_cli.settings.schema import ReportConfig

LOWER = "stochastic lower bound on log p"
BINARIZED = "one Bernoulli draw of the intensities, seed 1234"


def evaluation(nll, kind=LOWER, binarization=BINARIZED, dataset="mnist", n=10000):
    return {
        "schema": "dgm-eval-v2",
        "num_parameters": 1000,
        "protocol": {
            "dataset": dataset,
            "split": "test",
            "num_examples": n,
            "representation": "binary",
            "binarization": binarization,
        },
        "likelihood": {
            "kind": kind,
            "estimator": "IWAE, k=5000",
            "nll_nats": nll,
            "nll_nats_stderr": 0.3,
            "bits_per_dim": nll / 543.4,
        },
    }


def fake_run(
    folder: Path,
    model: str,
    objective: str,
    lr: float,
    overrides: list[str],
    val_loss: list[float],
    evaluation_json: dict | None = None,
) -> Path:
    """A run folder as `dgm train` and `dgm eval` leave it (without the checkpoint)."""
    (folder / ".hydra").mkdir(parents=True)
    config = {
        "model": {"name": model},
        "objective": {"name": objective},
        "optimizer": {"name": "adam", "lr": lr},
        "data": {"name": "mnist"},
        "trainer": {"device": "auto"},
    }
    OmegaConf.save(OmegaConf.create(config), folder / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(overrides), folder / ".hydra" / "overrides.yaml")
    (folder / "train.log").write_text(
        f"[...][dgm.train][INFO] - training vae for 30 steps (10 per epoch) on cpu, run folder {folder}\n"
    )
    writer = SummaryWriter(str(folder / "tensorboard"))
    now = time.time()
    for i, v in enumerate(val_loss):
        writer.add_scalar("val/loss", v, 10 * (i + 1), walltime=now + i)
        writer.add_scalar("train/loss", v + 1, 10 * (i + 1), walltime=now + i)
    writer.close()
    if evaluation_json is not None:
        (folder / "checkpoints").mkdir()
        (folder / "checkpoints" / "eval.json").write_text(json.dumps(evaluation_json))
    return folder


@pytest.fixture
def runs(tmp_path):
    """A 2 x 2 sweep of VAEs (objective x lr) and three runs beside it: a MADE (exact NLL), a VAE on
    the fixed binarization (another protocol) and a run nobody evaluated."""
    sweep = tmp_path / "outputs" / "train" / "multirun" / "day" / "12-00-00-1"
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("{}\n")
    for i, (objective, lr) in enumerate([("elbo", 0.001), ("elbo", 0.003), ("iwae", 0.001), ("iwae", 0.003)]):
        fake_run(
            sweep / f"{i}_objective={objective},optimizer.lr={lr}",
            "vae",
            objective,
            lr,
            [f"objective={objective}", f"optimizer.lr={lr}", "trainer.max_steps=30"],
            [100 - i, 95 - i, 90 - i],
            evaluation(100.0 - 2 * i - (1 if lr > 0.002 else 0)),
        )
    single = tmp_path / "outputs" / "train" / "day"
    fake_run(single / "made", "made", "nll", 0.001, ["model=made"], [99, 97], evaluation(97.0, kind="exact"))
    fake_run(
        single / "vae_fixed",
        "vae",
        "elbo",
        0.001,
        [],
        [98, 96],
        evaluation(95.0, binarization="fixed: the Larochelle & Murray 2011 files", dataset="binarized_mnist"),
    )
    fake_run(single / "unevaluated", "vae", "elbo", 0.001, [], [98, 97])
    return tmp_path


def make_report(tmp_path, **keys):
    keys.setdefault("runs", [str(tmp_path / "outputs" / "train")])
    cfg = OmegaConf.merge(OmegaConf.structured(ReportConfig), keys)
    return report(cfg, tmp_path / "report")


def test_one_table_per_protocol_with_the_swept_hyperparameters(runs, capsys):
    written = make_report(runs)
    printed = capsys.readouterr().out
    rows = list(csv.DictReader(written["csv"].open()))
    assert len(rows) == 7
    assert {
        "objective",
        "optimizer.lr",
        "train_step",
        "wall_time_s",
        "num_parameters",
        "device",
        "val/loss",
        "train/loss",
        "nll_nats",
        "nll_nats_stderr",
        "estimator",
        "protocol",
        "config.optimizer.lr",
    } <= set(rows[0])
    sweep = {(r["objective"], r["optimizer.lr"]): r for r in rows if r["run"].startswith("12-00-00-1/")}
    assert set(sweep) == {("elbo", "0.001"), ("elbo", "0.003"), ("iwae", "0.001"), ("iwae", "0.003")}
    assert float(sweep[("iwae", "0.003")]["nll_nats"]) == 100.0 - 2 * 3 - 1
    assert float(sweep[("elbo", "0.001")]["val/loss"]) == 90.0 and sweep[("elbo", "0.001")]["device"] == "cpu"
    assert len({r["protocol"] for r in sweep.values()}) == 1, "the sweep shares one protocol"
    # four protocols: the sweep, the exact MADE, the fixed binarization, not evaluated -- never one column
    assert len({r["protocol"] for r in rows}) == 4
    assert "4 evaluation protocols" in printed and printed.count("\nP") == 4
    markdown = written["markdown"].read_text()
    assert markdown.count("\n## P") == 4 and "NLL: exact" in markdown and "Larochelle & Murray" in markdown
    (section,) = [s for s in markdown.split("## P") if "12-00-00-1/" in s]
    assert section.count("\n| 12-00-00-1/") == 4 and "100.00 ± 0.30" in section and "| made |" not in section
    header = next(line for line in section.splitlines() if line.startswith("| run"))
    assert "| optimizer.lr |" in header and "| NLL (nats) |" in header


def test_plot_of_a_metric_against_a_swept_hyperparameter(runs):
    path = make_report(runs, plot="nll_nats", x="optimizer.lr")["plot"]
    image = Image.open(path).convert("RGB")
    assert path.name == "plot_nll_nats_vs_optimizer.lr.png" and image.size == (960, 560)
    colors = image.getcolors(maxcolors=1 << 20)
    drawn = {c for n, c in colors if n > 30}
    # one series per (protocol, model, other swept values): elbo and iwae in the sweep, then the others
    assert all(PALETTE[k] in drawn for k in range(4))


def test_learning_curves_on_one_axis(runs):
    path = make_report(runs, curves="val/loss", x="wall_time")["curves"]
    colors = {c for n, c in Image.open(path).convert("RGB").getcolors(maxcolors=1 << 20) if n > 30}
    assert all(PALETTE[k] in colors for k in range(7))
    with pytest.raises(UserError, match="val/loss"):
        make_report(runs, curves="val/nope")


def test_unknown_metric_and_empty_folders_are_refused(runs, tmp_path):
    with pytest.raises(UserError, match="nll_nats"):
        make_report(runs, plot="val/nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no `dgm train` run"):
        report(OmegaConf.merge(OmegaConf.structured(ReportConfig), {"runs": [str(tmp_path / "empty")]}), tmp_path)


def test_training_time_leaves_out_the_gap_before_a_resume(tmp_path):
    run = Run(tmp_path, {}, {}, None)
    run.__dict__["segments"] = [(1000.0, 1010.0), (5000.0, 5005.0)]  # killed at 1010, resumed at 5000
    assert run.training_seconds() == 15.0
    assert run.training_seconds(1004.0) == 4.0 and run.training_seconds(5002.0) == 12.0


def test_bare_arguments_are_runs():
    assert command_line(["outputs/a*", "report.plot=nll_nats", "--cfg", "job", "x=optimizer.lr", "b'c"]) == [
        "plot=nll_nats",
        "--cfg",
        "job",
        "x=optimizer.lr",
        "runs=['outputs/a*','b\\'c']",
    ]


@pytest.mark.slow
def test_report_of_a_sweep_and_two_other_families(tmp_path):
    """End to end through the installed `dgm`: a 2 x 2 VAE sweep and a RealNVP on moons, a WGAN-GP
    on eight_gaussians; each evaluated; one report with its table, CSV, Markdown and PNGs."""
    common = [
        "data.train_size=1000",
        "data.test_size=200",
        "data.val_size=100",
        "trainer.progress=false",
        "trainer.max_steps=20",
        "trainer.log_every=5",
        "trainer.batch_size=50",
        "trainer.sample_every=0",
    ]
    run_dgm(
        "train",
        "-m",
        "dataset=moons",
        "model.hidden=[8]",
        "model.latent_dim=2",
        "objective=elbo,iwae",
        "optimizer.lr=1e-3,3e-3",
        *common,
        cwd=tmp_path,
    )
    run_dgm("train", "dataset=moons", "model=realnvp", *common, cwd=tmp_path)
    run_dgm("train", "dataset=eight_gaussians", "model=wgan_gp", "model.hidden=16", *common, cwd=tmp_path)
    runs = sorted(p.parent.parent for p in (tmp_path / "outputs" / "train").rglob("last.pt"))
    assert len(runs) == 6
    quoted = ",".join("'" + str(r) + "'" for r in runs)
    run_dgm("eval", "-m", f"checkpoint={quoted}", "limit=100", cwd=tmp_path)
    proc = run_dgm(
        "report", "outputs/train", "plot=nll_nats", "x=optimizer.lr", "curves=val/loss", "out=rep", cwd=tmp_path
    )
    assert "3 evaluation protocols" in proc.stdout  # lower bound (VAE), exact (RealNVP), modes (GAN)
    rows = list(csv.DictReader((tmp_path / "rep" / "report.csv").open()))
    assert len(rows) == 6 and {r["model"] for r in rows} == {"vae", "realnvp", "wgan_gp"}
    vae = [r for r in rows if r["model"] == "vae"]
    assert {(r["objective"], float(r["optimizer.lr"])) for r in vae} == {
        ("elbo", 1e-3),
        ("elbo", 3e-3),
        ("iwae", 1e-3),
        ("iwae", 3e-3),
    }
    assert all(float(r["nll_nats"]) > 0 and r["train_step"] == "20" and int(r["num_parameters"]) > 0 for r in vae)
    assert rows[[r["model"] for r in rows].index("wgan_gp")]["modes_covered"] != ""
    assert (tmp_path / "rep" / "report.md").read_text().count("\n## P") == 3
    for name in ("plot_nll_nats_vs_optimizer.lr.png", "curves_val_loss.png"):
        assert Image.open(tmp_path / "rep" / name).size == (960, 560)


def test_an_ais_estimate_shows_the_other_end_of_its_bracket(tmp_path):
    """AIS errs towards too good a likelihood: beside the forward NLL the report gives the NLL that the
    reverse-AIS log Z implies, NLL + (log Z_reverse - log Z_forward)."""
    ais = evaluation(193.0, kind="estimate with its own error")
    ais["likelihood"].update(shared_error_nats=0.11, prepared={"log_z": 509.97, "reverse_log_z": 512.51})
    single = tmp_path / "outputs" / "train" / "day"
    fake_run(single / "rbm", "rbm", "cd", 0.01, [], [5.0], ais)
    fake_run(single / "vae", "vae", "elbo", 0.001, [], [98.0], evaluation(95.0))  # no bracket: cell left empty
    written = make_report(tmp_path)
    rows = {r["run"]: r for r in csv.DictReader(written["csv"].open())}
    assert float(rows["rbm"]["nll_nats_reverse_end"]) == pytest.approx(193.0 + 512.51 - 509.97)
    assert rows["vae"]["nll_nats_reverse_end"] == ""
    (section,) = [s for s in written["markdown"].read_text().split("## P") if "| rbm |" in s]
    assert "| NLL, reverse-AIS end |" in section and "195.54" in section


def test_standard_errors_are_drawn_as_error_bars(tmp_path):
    from dgm_cli.evaluation.plots import Series, line_plot

    def pixels(err):  # series "b" holds the axes at 0..20 with and without the bars
        path = line_plot(
            [Series("a", [1.0, 2.0, 3.0], [10.0, 11.0, 10.5], err), Series("b", [1.0, 3.0], [0.0, 20.0])],
            tmp_path / "p.png",
            "t",
            "x",
            "y",
        )
        return sum(n for n, c in Image.open(path).convert("RGB").getcolors(maxcolors=1 << 20) if c == PALETTE[0])

    assert pixels([2.0, 2.0, 2.0]) > pixels(None) + 3 * 20  # three bars of 4 units (~90 px) each


def test_a_learning_rate_is_plotted_on_a_log_axis_and_the_nll_with_its_errors(runs, monkeypatch):
    """optimizer.lr acts by its order of magnitude: a log axis even over a factor of 3; the NLL's
    standard errors go with it."""
    from dgm_cli.commands import report as report_module
    from dgm_cli.evaluation import plots

    drawn = {}
    monkeypatch.setattr(plots, "line_plot", lambda series, path, *a, **k: drawn.update(series=series, args=a) or path)
    make_report(runs, plot="nll_nats", x="optimizer.lr")
    assert drawn["args"][-1] is True  # log_x
    assert drawn["args"][2] == "NLL (nats)"  # the y axis says what it is, not the column's key
    assert all(e == 0.3 for s in drawn["series"] for e in s.err)
    assert report_module.is_scale_parameter("optimizer.lr") and report_module.is_scale_parameter("model.prior_lr")
    assert not report_module.is_scale_parameter("seed") and not report_module.is_scale_parameter("model.latent_dim")


def test_a_log_axis_is_labelled_at_round_values():
    from dgm_cli.evaluation.plots import log_ticks

    def values(lo, hi):
        return [float(f"{10**t:.3g}") for t in log_ticks(lo, hi)]

    assert values(-3, -2) == [0.001, 0.002, 0.005, 0.01]
    assert values(-3.5, -3) == [0.0004, 0.0005, 0.0006, 0.0007, 0.0008, 0.0009, 0.001]  # under a decade: every digit


def test_evaluations_with_other_settings_are_all_kept_and_the_report_shows_the_most_thorough(tmp_path, toy_run):
    """Three `dgm eval` of one run (k = 10, 100, 5): each keeps its record in checkpoints/evals/;
    eval.json, and so `dgm report`, holds the k=100 one and names it; evals=all shows all three. An
    eval.json written before records existed becomes a record, not lost."""
    from conftest import copy_run

    run = copy_run(toy_run, tmp_path / "runs")
    legacy = json.loads(json.dumps(evaluation(99.0, dataset="moons", n=7)))  # an older dgm's eval.json
    legacy.update(checkpoint=str(run / "checkpoints" / "last.pt"), train_step=5)
    (run / "checkpoints" / "eval.json").write_text(json.dumps(legacy))
    for k in (10, 100, 5):
        run_dgm("eval", f"checkpoint={run}", f"estimator.k={k}", "limit=60", cwd=tmp_path)
    names = sorted(p.stem for p in (run / "checkpoints" / "evals").glob("*.json"))
    assert names == ["step5_test60_nll_k10", "step5_test60_nll_k100", "step5_test60_nll_k5", "step5_test7_nll"]
    best = json.loads((run / "checkpoints" / "eval.json").read_text())
    assert best["likelihood"]["estimator_settings"] == {"k": 100}
    assert best["records"] == {"likelihood": "evals/step5_test60_nll_k100.json"}
    rows = list(csv.DictReader(make_report(tmp_path, runs=[str(run)])["csv"].open()))
    assert len(rows) == 1 and rows[0]["evaluation"] == "step5_test60_nll_k100"
    every = list(csv.DictReader(make_report(tmp_path, runs=[str(run)], evals="all")["csv"].open()))
    assert sorted(r["evaluation"] for r in every) == names
    assert {r["estimator"] for r in every if r["evaluation"] == "step5_test60_nll_k10"} == {
        "IWAE, k=10 importance samples (Burda et al. 2015)"
    }


def test_a_vaes_second_estimate_never_displaces_its_own_bound_as_the_runs_number(tmp_path, toy_run):
    """estimator.ais=true gives a VAE a second estimate (decoder-based AIS) with far more 'effort' than an
    IWAE bound's k: it is kept as a record, but eval.json -- the run's number in dgm report -- stays the
    model's own estimator, whose effort it can be ranked by."""
    from conftest import copy_run

    run = copy_run(toy_run, tmp_path / "runs")
    run_dgm("eval", f"checkpoint={run}", "estimator.k=20", "limit=20", cwd=tmp_path)
    run_dgm(
        "eval",
        f"checkpoint={run}",
        "estimator.ais=true",
        "estimator.ais_chains=2",
        "estimator.ais_temperatures=20",
        "estimator.ais_leapfrog=2",
        "estimator.ais_pilot_chains=2",
        "limit=20",
        cwd=tmp_path,
    )
    names = sorted(p.stem for p in (run / "checkpoints" / "evals").glob("*.json"))
    assert len(names) == 2 and any("ais" in n for n in names)
    best = json.loads((run / "checkpoints" / "eval.json").read_text())
    assert best["likelihood"]["estimator_settings"] == {"k": 20}


def test_a_gans_likelihood_asked_for_on_few_images_never_displaces_its_fid():
    """A GAN's own evaluation is its sample metrics (FID on 10,000 samples); decoder AIS switched on for a look
    at 20 images is kept as a record, not made the run's number in eval.json (and so in dgm report)."""
    from dgm_cli.commands.evaluate import most_thorough

    fid = {"schema": "dgm-eval-v2", "train_step": 5000, "protocol": {"split": "test", "num_examples": 10000}}
    fid["sample_quality"] = {"fid": 51.3, "num_generated": 10000}
    ais = evaluation(3919.4, n=20)
    ais.update(train_step=5000)
    ais["protocol"]["representation"] = "dequantized"
    ais["likelihood"]["estimator_settings"] = {"ais": True, "ais_temperatures": 300}
    best = most_thorough([("fid", fid), ("ais", ais)])
    assert best["sample_quality"]["fid"] == 51.3 and "likelihood" not in best
    assert best["records"] == {"sample_quality": "evals/fid.json"}
    # the model's own likelihood (no switch) on its own protocol is the run's number, as before
    ais["likelihood"]["estimator_settings"] = {"k": 5000}
    assert most_thorough([("fid", fid), ("iwae", ais)])["likelihood"]["nll_nats"] == 3919.4
