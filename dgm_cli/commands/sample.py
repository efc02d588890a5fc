"""`dgm sample`: images (for 2-D toys a density plot, for sequences their paths, for music piano rolls or a
MIDI file) from a checkpoint."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from .. import images
from ..app import command, model_from_checkpoint, repoint_data
from ..atomic import write_atomically
from ..data.sequences import PIANO_ROLLS, is_piano_roll
from ..errors import UserError
from ..settings.validate import ARRAY_SUFFIX, MIDI_SUFFIXES, validate_sample

log = logging.getLogger("dgm.sample")
MIDI_REST_STEPS = 2  # silent steps between two samples in a MIDI file


def draw(model, cfg: DictConfig, dataset, device) -> torch.Tensor:
    """The image to write for ``cfg.mode``."""
    from ..data import pipeline

    if cfg.mode not in model.sample_modes:
        raise UserError(
            f"mode={cfg.mode} is not available for model {model.name}; it offers: {', '.join(model.sample_modes)}."
        )
    if cfg.mode == "sample":
        samples = warn_non_finite(model.sample(cfg.num_samples, temperature=cfg.temperature, label=cfg.label))
        if model.data.is_image or is_piano_roll(model.data):
            return images.of_samples(samples, is_piano_roll(model.data), cfg.nrow)
        if len(model.data.shape) == 2:  # sequences: the test split's paths beside the samples'
            return images.side_by_side(
                images.trajectories(dataset.test[0][: cfg.num_samples]), images.trajectories(samples)
            )
        return toy_plot(model, samples, dataset)
    x, y = getattr(dataset, cfg.split)
    if len(x) == 0:
        raise UserError(f"split={cfg.split} is empty for this run; use split=test.")
    x = pipeline.fixed(x[: cfg.num_samples], model.data.representation).to(device)
    y = None if y is None else y[: cfg.num_samples].to(device)
    return images.grid(warn_non_finite(getattr(model, f"sample_{cfg.mode}")(x, y)))


#: dgm sample's sampler keys -> the model setting each one replaces for this command only
SAMPLER_KEYS = {"steps": "sample_steps", "sampler": "sampler", "eta": "eta"}


def sampler_settings(cfg: DictConfig, model_cfg: dict) -> dict:
    """The model settings that ``steps=``, ``sampler=`` and ``eta=`` give (those not null), refused for a model
    that has no such setting (its saved config ``model_cfg`` lacks model.sample_steps, ...)."""
    given = {key: cfg.get(key) for key in SAMPLER_KEYS if cfg.get(key) is not None}
    takes = [key for key, field in SAMPLER_KEYS.items() if field in model_cfg]
    refused = [key for key in given if key not in takes]
    if refused:
        raise UserError(
            f"{' and '.join(k + '=' for k in refused)} cannot be used with model={model_cfg.get('name')}: "
            f"it has no model.{SAMPLER_KEYS[refused[0]]} to set. "
            + (
                f"It takes {', '.join(k + '=' for k in takes)}."
                if takes
                else "Its sampler has no steps, choice of sampler or noise to set; leave these keys out."
            )
        )
    settings = {SAMPLER_KEYS[key]: value for key, value in given.items()}
    if "eta" in settings and settings.get("sampler", model_cfg.get("sampler")) != "ddim":
        raise UserError(
            f"eta={settings['eta']} is DDIM's noise, but this model samples with "
            f"sampler={model_cfg.get('sampler')}; add sampler=ddim."
        )
    return settings


def set_length(model, cfg: DictConfig) -> None:
    """``length=``: how many time steps a sequence model's samples run for (its default: the training
    data's length). Images, even those a sequence model reads row by row, keep their size."""
    if model.family != "sequence" or model.data.is_image or cfg.mode != "sample":
        raise UserError(
            f"length={cfg.length} sets how many time steps the samples of a model of sequences have "
            f"(mode=sample); this is mode={cfg.mode} of model={model.name} on dataset="
            f"{model.data.dataset}, whose samples have the data's fixed shape. Leave length out."
        )
    model.length = cfg.length


def write_midi(model, cfg: DictConfig, out: Path) -> None:
    """``out=<file>.mid``: the samples of a model of piano rolls, one after another with a rest between
    them, as one MIDI file (a step is a quarter note at 120 per minute)."""
    from ..data import music

    if not is_piano_roll(model.data) or cfg.mode != "sample":
        raise UserError(
            f"out={cfg.out}: a MIDI file holds samples of music (dataset={', '.join(PIANO_ROLLS)}, or "
            f"dataset=sequences of 88 binary keys) with mode=sample; this is mode={cfg.mode} of a model of "
            f"dataset={model.data.dataset}. Give out= a .png file or a folder."
        )
    samples = warn_non_finite(model.sample(cfg.num_samples, temperature=cfg.temperature, label=cfg.label)).cpu()
    rest = samples.new_zeros(MIDI_REST_STEPS, samples.shape[-1])
    music.write_midi(torch.cat([torch.cat([s, rest]) for s in samples]), out)


def write_samples(model, cfg: DictConfig, out: Path) -> None:
    """``out=<file>.npz``: the samples as the model draws them, for analysis of one's own: ``samples``
    (float32, (N, C, H, W) images in [0, 1] in the model's representation, (N, D) points of a toy,
    (N, T, D) sequences) and, for a class-conditional model, ``labels``."""
    import numpy as np

    if cfg.mode != "sample":
        raise UserError(
            f"out={cfg.out}: an .npz holds the model's samples (mode=sample), not mode={cfg.mode}; give "
            "out= a picture (.png) for that."
        )
    samples = warn_non_finite(model.sample(cfg.num_samples, temperature=cfg.temperature, label=cfg.label))
    arrays = {"samples": samples.detach().float().cpu().numpy()}
    if cfg.label is not None:
        arrays["labels"] = np.full(len(samples), cfg.label)
    write_atomically(out, lambda f: np.savez(f, **arrays))


def warn_non_finite(samples: torch.Tensor) -> torch.Tensor:
    """Say how many samples hold NaN or inf (they are drawn as red cells); refuse when all do."""
    message = images.check_finite(samples, "dgm sample")
    if message and bool(images.non_finite(samples.flatten(0, 1) if samples.dim() == 5 else samples).all()):
        raise UserError(message.replace("dgm sample: ", "", 1) + " Nothing was written.")
    if message:
        sys.stderr.write(message + "\n")
    return samples


def toy_plot(model, samples: torch.Tensor, dataset) -> torch.Tensor:
    """Data | samples as 2-D histograms, and the model's density where it has an exact one."""
    panels = [images.histogram(dataset.test[0]), images.histogram(samples)]
    if model.likelihood == "exact":
        points, _ = images.density_grid()
        device = next(model.parameters()).device
        plot = getattr(model, "plot_settings", {})  # a cheaper estimator for a picture (flow matching's ODE)
        logp = torch.cat([model.log_likelihood(p.to(device), **plot).cpu() for p in points.split(10000)])
        panels.append(images.heatmap(logp.exp().view(200, 200)))
    return images.side_by_side(*panels)


@command("sample", validate_sample)
def main(cfg: DictConfig) -> None:
    from ..engine import checkpoint, runtime

    device = runtime.pick_device(cfg.device)
    state = checkpoint.load(cfg.checkpoint)
    settings = sampler_settings(cfg, state["config"]["model"])
    state["config"]["model"].update(settings)  # checked as the model is built, like any model.* value
    repoint_data(state["config"]["data"], cfg.data.path)
    model, _, dataset = model_from_checkpoint(state, device, cfg.data_root)
    if settings:
        log.info("sampling with %s", ", ".join(f"model.{k}={v}" for k, v in settings.items()))
    if cfg.length is not None:
        set_length(model, cfg)
    runtime.seed_everything(cfg.seed)
    out = Path(cfg.out).expanduser() if cfg.out else Path(HydraConfig.get().runtime.output_dir)
    out = out / f"{cfg.mode}.png" if out.is_dir() or not cfg.out else out
    try:
        if out.suffix.lower() in MIDI_SUFFIXES:
            write_midi(model, cfg, out)
        elif out.suffix.lower() == ARRAY_SUFFIX:
            write_samples(model, cfg, out)
        else:
            images.save_image(draw(model, cfg, dataset, device), out)
    except OSError as exc:
        raise UserError(f"cannot write out={out}: {exc.strerror or exc}.") from None
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
