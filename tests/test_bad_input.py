"""Bad input: a one-paragraph message naming what was wrong and what is allowed, exit status 2,
no traceback, and nothing already written is touched."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from conftest import TOY, copy_run


@pytest.fixture
def toy_run(toy_run):
    """The session's tiny toy run (conftest), as its checkpoint file."""
    return toy_run / "checkpoints" / "last.pt"


def refused(proc, *needles: str) -> str:
    """Exit 2, one paragraph naming ``needles``, no traceback (and, see below, no folder written)."""
    err = proc.stderr
    assert proc.returncode == 2, f"exit {proc.returncode}, expected 2\n{proc.stdout}\n{err}"
    assert "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, f"not one paragraph:\n{err}"
    for needle in needles:
        assert needle in err, f"{needle!r} not in: {err}"
    return err


@pytest.fixture(autouse=True)
def no_folder_written(tmp_path):
    """Every command in this file is refused: none may leave a run folder where it ran (tmp_path)."""
    yield
    left = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "outputs").rglob("*"))
    assert not (tmp_path / "outputs").exists(), f"a refused command left {left}"


@pytest.mark.parametrize(
    "override, needles",
    [
        ("model=vea", ["model/vea", "conv_vae", "Did you mean vae?"]),
        ("optimizer.lr=-1", ["optimizer.lr", "> 0"]),
        ("trainer.batch_size=0", ["trainer.batch_size", "> 0"]),
        ("trainer.foo=1", ["trainer.foo", "max_epochs"]),
        ("trainer.batch_size=abc", ["trainer.batch_size", "Integer"]),
        ("trainer.device=tpu", ["trainer.device", "cuda"]),
        ("optimizer=adamx", ["optimizer/adamx", "Did you mean adam or adamw?"]),
        ("objective=hinge", ["objective=hinge", "elbo", "iwae"]),
        ("model.latent_dim=abc", ["model.latent_dim", "latent_dim"]),
        ("data.representation=rgb", ["data.representation", "binary"]),
        # a key added with + would be read by nothing: refused, with what it was probably meant to be
        (
            "+trainer.max_step=10",
            ["+trainer.max_step=10", "no key trainer.max_step", "Did you mean trainer.max_steps?"],
        ),
        ("+foo=1", ["+foo=1", "no key foo"]),
        ("++trainer.max_step=10", ["no key trainer.max_step", "trainer.max_steps"]),
        ("+trainer.max_steps=3", ["already", "`trainer.max_steps=3`"]),
        ("+experiment=vae_burda2015", ["already", "`experiment=vae_burda2015`"]),
        ("trainer.max_step=10", ["trainer.max_step", "Did you mean trainer.max_steps?"]),
        ("model.latnt_dim=3", ["model.latnt_dim", "Did you mean model.latent_dim"]),
        ("data.val_size=100000", ["data.val_size=100000", "2000 training examples"]),
        ("data.val_size=-1", ["data.val_size", ">= 0"]),
        ("resume=does/not/exist", ["no checkpoint at 'does/not/exist'"]),
        ("dataset=npz", ["data.path", "not set"]),
    ],
)
def test_bad_train_config_is_refused(dgm, override, needles):
    err = refused(dgm("train", *TOY, "trainer.max_steps=1", override, check=False), *needles)
    assert "To append" not in err  # Hydra's advice to add the key with + would only get it ignored


@pytest.mark.parametrize(
    "args, optimizer, key",
    [
        ((), "adam", "betas"),
        (("model=wgan",), "rmsprop", "alpha"),
        (("model=wgan", "optimizer=sgd"), "sgd", "nesterov"),
    ],
)
def test_mistyped_optimizer_key_lists_the_keys_of_the_optimizer_in_use(dgm, args, optimizer, key):
    """WGAN defaults to RMSProp: the keys offered are RMSProp's, not train.yaml's Adam's."""
    err = refused(
        dgm("train", "dataset=moons", *args, "trainer.max_steps=1", "optimizer.lrr=1", check=False),
        "optimizer.lrr",
        f"optimizer={optimizer} are:",
        key,
    )
    assert ("betas" in err) == (optimizer == "adam")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_refused(dgm):
    refused(dgm("train", *TOY, "trainer.max_steps=1", "trainer.device=cuda", check=False), "CUDA")


@pytest.mark.parametrize("command", ["sample", "eval"])
def test_checkpoint_must_be_given(dgm, command):
    refused(dgm(command, check=False), "checkpoint= must be given", "run folder")


@pytest.mark.parametrize("command", ["sample", "eval"])
@pytest.mark.parametrize(
    "override, needles",
    [
        ("+foo=1", ["no key foo"]),
        ("+temprature=0.7", ["no key temprature"]),
        ("model=vae", ["`model=vae`", "from checkpoint=", "data_root="]),  # the checkpoint decides the model
        ("trainer.max_steps=3", ["`trainer.max_steps=3`", "training settings from checkpoint="]),
        ("num_sample=3", ["num_sample", "Did you mean num_samples?"]),
    ],
)
def test_sample_and_eval_refuse_keys_they_do_not_have(dgm, toy_run, command, override, needles):
    refused(dgm(command, f"checkpoint={toy_run}", override, check=False), *needles)


def test_sample_refuses_another_dataset(dgm, toy_run):
    """(dgm eval takes dataset=: other data scored on purpose, tests/test_own_data.py)"""
    refused(
        dgm("sample", f"checkpoint={toy_run}", "dataset=fashion_mnist", check=False),
        "`dataset=fashion_mnist`",
        "from checkpoint=",
    )


def test_a_text_file_as_checkpoint_says_what_it_is(dgm, tmp_path):
    notes = tmp_path / "notes.pt"
    notes.write_text("lr=1e-3 was the best\n")
    for command in ("eval", "sample"):
        err = refused(dgm(command, f"checkpoint={notes}", check=False), str(notes), "text file", "lr=1e-3")
        assert "IndexError" not in err and "pop from" not in err


def test_unreadable_npz_files(dgm, tmp_path):
    text = tmp_path / "images.npz"
    text.write_text("not numbers\n")
    objects = tmp_path / "objects.npz"
    np.savez(objects, x=np.array([np.zeros(3), np.zeros(4)], dtype=object))
    for path, needle in ((text, "text file"), (objects, "Python objects")):
        refused(dgm("train", "dataset=npz", f"data.path={path}", "trainer.max_steps=1", check=False), str(path), needle)


def test_an_unreadable_image_in_an_image_folder_is_named(dgm, tmp_path):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.new("L", (8, 8), color=40 * i).save(folder / f"{i}.png")
    (folder / "3.png").write_text("oops")
    refused(
        dgm("train", "dataset=image_folder", f"data.path={folder}", "trainer.max_steps=1", check=False),
        str(folder / "3.png"),
        "not an image",
        "text file",
    )


def test_sample_out_must_be_an_image_file_or_folder_that_can_be_written(dgm, tmp_path, toy_run):
    refused(dgm("sample", f"checkpoint={toy_run}", "out=grid.txt", check=False), "out='grid.txt'", ".png")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    refused(dgm("sample", f"checkpoint={toy_run}", f"out={blocker}/grid.png", check=False), "cannot write out=")


def test_a_run_folder_that_cannot_be_made(dgm, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    refused(dgm("train", *TOY, f"hydra.run.dir={blocker}/run", check=False), "hydra.run.dir", str(blocker))


def test_a_refused_sweep_leaves_no_folder(dgm):
    refused(dgm("train", "-m", *TOY, "trainer.max_steps=1", "optimizer.lr=-1,1e-3", check=False), "optimizer.lr")


def test_missing_data_names_the_files(dgm, tmp_path):
    err = refused(
        dgm("train", "dataset=mnist", f"data.root={tmp_path}", "data.download=false", check=False),
        "train-images-idx3-ubyte",
        "data.root",
    )
    assert str(tmp_path) in err


def test_truncated_and_foreign_checkpoints_are_refused(dgm, tmp_path, toy_run):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(toy_run.read_bytes()[:1000])
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    for ckpt in (truncated, foreign):
        for command in ("eval", "sample"):
            refused(dgm(command, f"checkpoint={ckpt}", check=False), str(ckpt))
        refused(dgm("train", f"resume={ckpt}", check=False), str(ckpt))
    refused(dgm("eval", f"checkpoint={tmp_path / 'nothing.pt'}", check=False), "no checkpoint")


def test_refused_resume_leaves_the_run_untouched(dgm, toy_run, tmp_path):
    run = copy_run(toy_run.parent.parent, tmp_path)
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.rglob("*") if p.is_file()}
    refused(dgm("train", f"resume={run}", "optimizer.lr=0.5", check=False), "resume", "trainer.max_steps")
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.rglob("*") if p.is_file()}
    assert before == after


def test_sample_mode_the_model_lacks(dgm, toy_run):
    refused(dgm("sample", f"checkpoint={toy_run}", "mode=complete", check=False), "mode=complete", "reconstruct")


def test_unknown_eval_metric(dgm, toy_run):
    refused(dgm("eval", f"checkpoint={toy_run}", "metrics=[nll,fidd]", check=False), "fidd", "kid")
    refused(dgm("eval", f"checkpoint={toy_run}", "metrics=[]", check=False), "metrics=[] asks for nothing")


def test_unknown_command(dgm):
    refused(dgm("trian", check=False), "unknown command 'trian'", "train")


@pytest.mark.parametrize(
    "out, needles",
    [
        ("/proc/nope/e.json", ["cannot write out='/proc/nope/e.json'"]),
        ("{tmp}", ["is a folder", "eval.json"]),
        ("e.txt", ["out='e.txt'", "ending in .json"]),
        ("{tmp}/a_file/e.json", ["cannot write out=", "a file where a folder should be"]),
    ],
)
def test_eval_refuses_an_out_it_could_not_write_before_computing(dgm, tmp_path, toy_run, out, needles):
    (tmp_path / "a_file").write_text("")
    out = out.format(tmp=tmp_path)
    refused(dgm("eval", f"checkpoint={toy_run}", f"out={out}", check=False), *needles)


def test_report_refuses_an_out_it_could_not_write(dgm, tmp_path, toy_run):
    (tmp_path / "a_file").write_text("")
    refused(dgm("report", str(toy_run.parent.parent), "out=/proc/nope", check=False), "cannot write out='/proc/nope'")
    refused(dgm("report", str(toy_run.parent.parent), f"out={tmp_path / 'a_file'}", check=False), "is a file")


def test_ctrl_c_during_eval_is_one_line_exit_130_and_writes_nothing(dgm, tmp_path, toy_run, monkeypatch):
    """Ctrl-C while the estimator runs (stood in for by a KeyboardInterrupt raised from it): one line,
    status 130 as a shell reports a SIGINT, no traceback, no eval.json and no folder of its own."""
    from dgm_cli.evaluation import likelihood

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(likelihood, "evaluate_likelihood", interrupted)
    out = tmp_path / "e.json"
    proc = dgm("eval", f"checkpoint={toy_run}", f"out={out}", check=False)
    assert proc.returncode == 130 and proc.stderr.strip() == "dgm eval: interrupted (Ctrl-C); nothing more was written."
    assert not out.exists()


def test_files_dgm_writes_get_the_usual_permissions(toy_run):
    """Written through a 0600 temporary file and renamed: the file then gets the mode any new file
    gets (0644 under the usual umask 022), so that others on a cluster can read a run."""
    import os

    umask = os.umask(0o022)
    os.umask(umask)
    assert toy_run.stat().st_mode & 0o777 == 0o666 & ~umask  # the checkpoint file
