"""`dgm report` puts every likelihood of the same 8-bit test images in one table (issue 25 item 3): a flow,
flow matching, a GAN's decoder-based AIS, a VAE and a DDPM, each row with its kind of number, and where a
density is normalised on more than the data's [0, 1]^D, which way that biases its NLL."""

from __future__ import annotations

import csv

from test_report import fake_run, make_report

UPPER, LOWER = "upper bound on the discrete NLL", "stochastic lower bound on log p"


def image_eval(nll, kind, representation, support=None, prepared=None):
    lik = {"kind": kind, "estimator": "...", "nll_nats": nll, "nll_nats_stderr": 0.5, "bits_per_dim": nll / 543.4}
    if support:
        lik["density_support"] = support
    if prepared:
        lik["prepared"] = prepared
    return {
        "schema": "dgm-eval-v2",
        "num_parameters": 1000,
        "likelihood": lik,
        "protocol": {
            "dataset": "mnist",
            "split": "test",
            "num_examples": 10000,
            "representation": representation,
            "binarization": None,
        },
    }


def test_the_families_share_one_table_on_8bit_images_each_with_its_kind(tmp_path, capsys):
    day = tmp_path / "outputs" / "train" / "day"
    fake_run(
        day / "realnvp",
        "realnvp",
        "nll",
        1e-3,
        [],
        [1.0],
        image_eval(1100.0, UPPER, "dequantized", "(-0.0556, 1.056)^D"),
    )
    fake_run(day / "fm", "flow_matching", "cfm", 1e-3, [], [1.0], image_eval(1000.0, UPPER, "dequantized", "R^D"))
    fake_run(
        day / "gan",
        "dcgan",
        "nonsaturating",
        1e-3,
        [],
        [1.0],
        image_eval(1500.0, LOWER, "dequantized", "R^D", {"sigma": 0.05, "bdmc_gap_nats": 2.5}),
    )
    fake_run(day / "ddpm", "ddpm", "simple", 1e-3, [], [1.0], image_eval(900.0, LOWER, "8bit"))
    fake_run(day / "vae_binary", "vae", "elbo", 1e-3, [], [1.0], image_eval(90.0, LOWER, "binary"))
    make_report(tmp_path)
    printed = capsys.readouterr().out
    rows = {r["model"]: r for r in csv.DictReader((tmp_path / "report" / "report.csv").open())}
    scale = {rows[m]["protocol"] for m in ("realnvp", "flow_matching", "dcgan", "ddpm")}
    assert len(scale) == 1 and "one scale" in scale.pop()  # one table for the 8-bit images
    assert rows["vae"]["protocol"] != rows["ddpm"]["protocol"]  # binary pixels are another protocol
    assert "2 evaluation protocols" in printed
    assert rows["ddpm"]["kind"] == f"{LOWER} (8bit)" and rows["dcgan"]["kind"] == f"{LOWER} (dequantized)"
    assert rows["flow_matching"]["kind"] == f"{UPPER} (dequantized)"
    assert "biased up" in rows["dcgan"]["density_bias"] and "R^D" in rows["flow_matching"]["density_bias"]
    assert rows["ddpm"]["density_bias"] == ""  # a probability mass: nothing lost
    assert float(rows["dcgan"]["sigma"]) == 0.05 and float(rows["dcgan"]["bdmc_gap_nats"]) == 2.5
    assert "BDMC gap" in printed and "kind" in printed
