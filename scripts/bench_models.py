"""How fast is each model where a researcher waits: training, sampling and evaluation on MNIST, each
against the textbook implementation where there is one. Prints Markdown tables (machine, threads,
torch version in the header) for README.

    DGM_DATA_ROOT=../shared/data python scripts/bench_models.py                  # every section, 1 thread
    python scripts/bench_models.py --sections models --models vae,nade,pixelcnn --steps 5
    python scripts/bench_models.py --sections nade,samplers --threads 1,2 --repeats 5

Sections (``--sections``, default all):
  models    every registered model (or ``--models``) at its default config: training images/s (a bare
            loop over the model's phases: no engine), sampling images/s (one training grid:
            trainer.num_samples=64, or the model's ``grid_samples``), evaluation images/s
            (``log_likelihood`` with the model's default estimator settings) and peak memory
  grids     from the models' numbers: the share of training wall time the sample grids take at the
            defaults (trainer.sample_every=1000) and the sample_every that keeps it <= 10%
  nade      dgm's NADE against the per-pixel recurrence through autograd (pytorch-generative's loop) at
            the paper's size (batch 512, 500 hidden units) and dgm's default (128, 200): one Adam step
            on a batch of binarized MNIST, sigmoid units; evaluation likewise
  samplers  PixelCNN and Gated PixelCNN at their default configs: a 64-sample grid (``--grid``) from cached
            activations against 784 full network passes, and whether the two drew the same samples
            from one seed
  overhead  `dgm train` (its logged images/s) against the bare loop of the same model, one per family
  compile   `dgm train` with trainer.compile=true against false: vae, pixelcnn, glow
  flows_vs_normflows
            dgm's Glow and RealNVP at their defaults against normflows' (``pip install -e ".[bench]"``)
            built to the same structure: training images/s of a plain loop (zero_grad, -log p(x),
            backward, Adam) on batches of 128 dequantized MNIST images, dgm and normflows in alternating
            fresh processes; ratio = dgm / normflows

Each measurement runs in a fresh worker process with the thread count set before torch starts.
Peak memory: the worker's peak resident set during the measurement (Linux VmHWM, reset through
/proc/self/clear_refs after glibc's malloc_trim) minus its resident set at the start: what the
measurement added (MiB).
Times are wall clock; where two things are compared, runs alternate and the table gives the median
of the per-pair ratios (and their range). On a machine shared with other work, only those ratios mean
much; the header gives the load average.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FAMILY_MODELS = {
    "vae": "vae",
    "autoregressive": "pixelcnn",
    "flow": "realnvp",
    "gan": "dcgan",
    "energy": "rbm",
    "diffusion": "ddpm",
}
COMPILE_MODELS = ["vae", "pixelcnn", "glow"]
NADE_SIZES = [(512, 500), (128, 200)]
SAMPLERS = ["pixelcnn", "gated_pixelcnn"]
GRID_EVERY, GRID_BUDGET = 1000, 0.10  # trainer.sample_every's default; the share grids may take
FLOW_PEERS = {"glow": 40, "realnvp": 15}  # flows_vs_normflows: timed steps per run (~10 s of one core each)


# --- in the worker ---------------------------------------------------------------------------------
def reset_peak() -> float:
    """Hand freed heap memory back (glibc keeps it otherwise, and a measurement would reuse it unseen)
    and reset the peak resident set (where Linux allows it); the resident set now, in MiB."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return _status_mib("VmRSS")


def peak_since(start_mib: float) -> float:
    return _status_mib("VmHWM") - start_mib


def _status_mib(key: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn) -> tuple[object, float, float]:
    """(what ``fn()`` returns, its seconds, the peak MiB it added)."""
    start = reset_peak()
    t = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t, peak_since(start)


def compose(name: str, *overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from dgm_cli.settings.schema import register_configs

    register_configs()
    with initialize_config_module(config_module="dgm_cli.configs", version_base="1.3"):
        return hydra_compose("train", overrides=[f"model={name}", "dataset=mnist", *overrides])


def build(name: str):
    """(config, dataset, model) as `dgm train model=<name> dataset=mnist` builds them."""
    import torch

    from dgm_cli.data import pipeline
    from dgm_cli.models.registry import build_model

    cfg = compose(name)
    torch.manual_seed(cfg.seed)
    dataset = pipeline.load(cfg.data)
    representation = pipeline.resolve_representation(cfg.data, cfg.model, dataset)
    model = build_model(cfg.model, cfg.objective, pipeline.spec(dataset, representation, cfg.data.name))
    return cfg, dataset, model


def bare_loop(cfg, dataset, model, steps: int, warmup: int = 2) -> float:
    """images/s of a bare PyTorch loop over the model's phases (what the engine runs, without it)."""
    import torch

    from dgm_cli.data import pipeline
    from dgm_cli.engine.optim import optimizer_factory

    optimizers = model.configure_optimizers(optimizer_factory(cfg.optimizer))
    batches = pipeline.BatchIterator(
        *dataset.train,
        model.data.representation,
        cfg.data.binarize,
        cfg.trainer.batch_size,
        torch.device("cpu"),
        cfg.seed,
    )
    model.train()
    x, y = next(batches)
    model.initialize(x, y)
    for step in range(1, warmup + steps + 1):
        if step == warmup + 1:
            start = time.perf_counter()
        x, y = next(batches)
        for phase in model.phases(step):
            opt = optimizers[phase]
            opt.zero_grad(set_to_none=True)
            loss, _ = model(x, y, phase)
            loss.backward()
            opt.step()
            model.after_step(phase)
    return steps * cfg.trainer.batch_size / (time.perf_counter() - start)


def grid_size(cfg, model) -> int:
    return min(cfg.trainer.num_samples, model.grid_samples or cfg.trainer.num_samples)


def model_row(job: dict) -> dict:
    """Training, sampling and evaluation of one model at its default config."""
    import torch

    from dgm_cli.data import pipeline
    from dgm_cli.errors import UserError

    cfg, dataset, model = build(job["name"])
    row = {"family": model.family, "batch": cfg.trainer.batch_size, "representation": model.data.representation}
    row["train"], _, row["train_mib"] = timed(lambda: bare_loop(cfg, dataset, model, job["steps"]))
    model.eval()
    n = grid_size(cfg, model)
    with torch.no_grad():
        _, seconds, row["sample_mib"] = timed(lambda: model.sample_for_logging(n))  # what a training grid draws
        row.update(sample=n / seconds, grid_samples=n, grid_seconds=seconds)
        if model.likelihood is not None:
            x = pipeline.fixed(dataset.test[0][: job["eval"]], model.data.representation)
            y = None if dataset.test[1] is None else dataset.test[1][: job["eval"]]
            try:
                _, seconds, row["eval_mib"] = timed(lambda: model.log_likelihood(x, y))
                row.update(eval=len(x) / seconds, estimator=model.estimator())
            except UserError as exc:  # e.g. an EBM's AIS runs only on request
                row["estimator"] = f"not at the defaults: {exc}"
    return row


def nade_row(job: dict) -> dict:
    """dgm's NADE against the per-pixel recurrence, alternating: one Adam step, and log p(x)."""
    import torch

    from dgm_cli.models.base import DataSpec
    from dgm_cli.models.registry import get_model_class

    batch, hidden = job["batch"], job["hidden"]
    cls = get_model_class("nade")
    model = cls(cls.Config(hidden_units=hidden, activation="sigmoid"), DataSpec((1, 28, 28), "binary"), {"name": "nll"})
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.bernoulli(mnist_images(batch) / 255.0)

    def step(loss):
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    train = {
        "recurrence": lambda: step(-model.log_prob_by_recurrence(x).mean()),
        "dgm": lambda: step(model.training_loss(x, None, "model")[0]),
    }
    evaluate = {
        "recurrence": lambda: torch.no_grad()(model.log_prob_by_recurrence)(x),
        "dgm": lambda: model.log_likelihood(x),
    }
    return {"train": compare(train, job["repeats"], batch), "eval": compare(evaluate, job["repeats"], batch)}


def compare(fns: dict, repeats: int, images: int) -> dict:
    """Alternating runs after a warm-up of each: best images/s of each, the median and range of the
    per-pair speed-ups of the last over the first, and each one's peak MiB from one more run."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
    first, last = list(fns)[0], list(fns)[-1]
    ratios = [a / b for a, b in zip(times[first], times[last])]
    return {
        "images_per_s": {k: images / min(v) for k, v in times.items()},
        "mib": {k: timed(fn)[2] for k, fn in fns.items()},
        "ratio": statistics.median(ratios),
        "ratio_range": (min(ratios), max(ratios)),
    }


def mnist_images(n: int):
    """n MNIST training images (uint8 -> float), or uniform noise where MNIST is not found."""
    import torch

    from dgm_cli.data import files

    try:
        train, _ = files.load_idx(os.environ.get("DGM_DATA_ROOT", "./data"), "MNIST", False)
        return train[0][:n].float()
    except Exception:  # noqa: BLE001 - the benchmark runs without the data too
        return torch.randint(256, (n, 1, 28, 28)).float()


def sampler_row(job: dict) -> dict:
    """A grid from cached activations (best of ``repeats``) against 784 full passes, from one seed."""
    import torch

    _, _, model = build(job["name"])
    model.eval()
    n = job["samples"]

    def draw(naive: bool):
        torch.manual_seed(0)
        with model.naive_sampling() if naive else contextlib.nullcontext():
            return model.sample(n)

    cached = [timed(lambda: draw(False)) for _ in range(job["repeats"])]
    naive, naive_seconds, naive_mib = timed(lambda: draw(True))
    return {
        "cached": n / min(c[1] for c in cached),
        "naive": n / naive_seconds,
        "naive_mib": naive_mib,
        "cached_mib": max(c[2] for c in cached),
        "identical": bool(torch.equal(cached[0][0], naive)),
    }


def dgm_train(name: str, steps: int, threads: int, *overrides: str) -> float:
    """images/s that `dgm train` logs, over its log windows after the first (start-up, compilation);
    no validation split, so the run ends at its last step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log_every = max(1, steps // 5)
    with tempfile.TemporaryDirectory() as tmp:
        dgm = str(Path(sys.executable).parent / "dgm")
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        subprocess.run(
            [
                dgm,
                "train",
                f"model={name}",
                "dataset=mnist",
                f"trainer.max_steps={steps + log_every}",
                f"trainer.log_every={log_every}",
                "trainer.sample_every=0",
                "trainer.ckpt_every=1000000",
                "data.val_size=0",
                "trainer.device=cpu",
                "trainer.progress=false",
                *overrides,
            ],
            cwd=tmp,
            env=env,
            check=True,
            capture_output=True,
        )
        (tb,) = Path(tmp).glob("outputs/train/*/*/tensorboard")
        events = EventAccumulator(str(tb)).Reload().Scalars("train/images_per_sec")
        return statistics.fmean(e.value for e in events[1:])


def steps_for(job: dict) -> int:
    """Steps per run: at least --engine-steps, and as many as a bare loop takes --engine-seconds for
    (a 10,000 images/s VAE needs thousands of steps before a few percent shows above the timer's noise)."""
    cfg, dataset, model = build(job["name"])
    rate = bare_loop(cfg, dataset, model, steps=3, warmup=1) / cfg.trainer.batch_size
    return max(job["steps"], min(20000, int(job["seconds"] * rate)))


def overhead_row(job: dict) -> dict:
    """`dgm train` against the bare loop of the same model, alternating."""
    bare, ours = [], []
    steps = steps_for(job)
    for _ in range(job["repeats"]):
        cfg, dataset, model = build(job["name"])
        bare.append(bare_loop(cfg, dataset, model, steps))
        ours.append(dgm_train(job["name"], steps, job["threads"], "trainer.compile=false"))
    ratios = [o / b for o, b in zip(ours, bare)]
    return {
        "bare": max(bare),
        "dgm": max(ours),
        "ratio": statistics.median(ratios),
        "ratio_range": (min(ratios), max(ratios)),
        "steps": steps,
    }


def compile_row(job: dict) -> dict:
    eager, compiled = [], []
    steps = steps_for(job)
    for _ in range(job["repeats"]):
        eager.append(dgm_train(job["name"], steps, job["threads"], "trainer.compile=false"))
        compiled.append(dgm_train(job["name"], steps, job["threads"], "trainer.compile=true"))
    ratios = [c / e for c, e in zip(compiled, eager)]
    return {
        "eager": max(eager),
        "compiled": max(compiled),
        "ratio": statistics.median(ratios),
        "ratio_range": (min(ratios), max(ratios)),
        "steps": steps,
    }


def normflows_glow(levels: int, depth: int, hidden: int, alpha: float, shape: tuple[int, int, int]):
    """normflows' Glow as its example builds it (examples/glow.ipynb), at dgm's defaults: L levels of K
    GlowBlocks (actnorm, LU 1x1 convolution, affine coupling with sigmoid(raw + 2) scale whose
    conv3x3-conv1x1-conv3x3 network maps the conditioning half to the other half's scale and shift),
    the logit transform, and a learned per-channel Gaussian (GlowBase) for each level's latent, where dgm
    has a learned conditional prior (a 3x3 convolution) for the factored-out half."""
    import normflows as nf

    c, h, w = shape
    q0, merges, flows = [], [], []
    for i in range(levels):  # coarsest level first: normflows' flows run from z to x
        flows.append(
            [
                nf.flows.GlowBlock(c * 2 ** (levels + 1 - i), hidden, split_mode="channel", scale=True)
                for _ in range(depth)
            ]
            + [nf.flows.Squeeze()]
        )
        if i > 0:
            merges.append(nf.flows.Merge())
            latent = (c * 2 ** (levels - i), h // 2 ** (levels - i), w // 2 ** (levels - i))
        else:
            latent = (c * 2 ** (levels + 1), h // 2**levels, w // 2**levels)
        q0.append(nf.distributions.GlowBase(latent))
    return nf.MultiscaleFlow(q0, flows, merges, transform=nf.transforms.Logit(alpha=alpha), class_cond=False)


def normflows_realnvp(config, shape: tuple[int, int, int]):
    """dgm's default RealNVP (two scales: 3 checkerboard couplings, squeeze, 3 channel couplings, factor
    out half; then 4 checkerboard couplings) from normflows' layers: its RealNVP layer, MaskedAffineFlow
    (the masked form b*x + (1-b)*(x*exp(s(b*x)) + t(b*x)), as dgm's checkerboard couplings), for the
    checkerboard couplings, and AffineCouplingBlocks for the channel-wise ones; dgm's coupling ResNet
    (plain convolutions) as every network, computed once per call for both s and t; the logit transform
    and N(0, I) latents. normflows' scale is exp(raw) (it has no tanh scale): dgm's s = scale * tanh(raw),
    soft-clamped, costs a little more."""
    import normflows as nf
    import torch
    from torch import nn

    from dgm_cli.models.flow.layers import checkerboard_mask
    from dgm_cli.models.flow.realnvp import ResNet

    if config.num_scales != 2:
        raise ValueError("normflows_realnvp builds dgm's default two scales")
    c, h, w = shape

    class Joint(nn.Module):
        """MaskedAffineFlow asks s(b*x), then t(b*x), of two networks: one network's 2C outputs give
        both, computed in s's call (``net``) and handed to t's (``scale_of``: that s)."""

        def __init__(self, net: nn.Module | None = None, scale_of: "Joint | None" = None):
            super().__init__()
            self.net, self.scale_of, self.out = net, [scale_of], None  # a list: s is not t's submodule

        def forward(self, x):
            if self.net is None:
                return self.scale_of[0].out[1]
            self.out = self.net(x).chunk(2, dim=1)
            return self.out[0]

    def couplings(channels: int, size: int, mode: str, count: int) -> list:
        out = []
        for i in range(count):
            if mode == "checkerboard":
                net = ResNet(channels, config.hidden_channels, 2 * channels, config.num_blocks)
                b = checkerboard_mask(torch.zeros(1, channels, size, size), parity=i % 2)[0].expand(
                    channels, size, size
                )
                s = Joint(net)
                out.append(nf.flows.MaskedAffineFlow(b.contiguous(), t=Joint(scale_of=s), s=s))
            else:
                net = ResNet(channels // 2, config.hidden_channels, channels, config.num_blocks)
                out.append(
                    nf.flows.AffineCouplingBlock(
                        net, scale=True, scale_map="exp", split_mode="channel" if i % 2 == 0 else "channel_inv"
                    )
                )
        return out

    coarse = (2 * c, h // 2, w // 2)  # the half that goes on to the second scale, and the half factored out
    flows = [
        couplings(2 * c, h // 2, "checkerboard", 4),
        couplings(4 * c, h // 2, "channel", 3) + [nf.flows.Squeeze()] + couplings(c, h, "checkerboard", 3),
    ]
    q0 = [nf.distributions.DiagGaussian(coarse, trainable=False) for _ in range(2)]
    return nf.MultiscaleFlow(
        q0, flows, [nf.flows.Merge()], transform=nf.transforms.Logit(alpha=config.alpha), class_cond=False
    )


def flow_peer_row(job: dict) -> dict:
    """One library's model in a plain loop: training images/s over ``steps`` steps after 2 warm-up steps
    (the first initialises ActNorm), batches of 128 dequantized MNIST images drawn once."""
    import torch

    from dgm_cli.models.base import DataSpec
    from dgm_cli.models.registry import get_model_class

    torch.manual_seed(0)
    shape, batch = (1, 28, 28), 128
    cls = get_model_class(job["name"])
    config = cls.Config()
    if job["lib"] == "dgm":
        model = cls(config, DataSpec(shape, "dequantized", dataset="mnist"), {"name": "nll"})
        nll = lambda x: -model.log_prob(x).mean()  # noqa: E731
    elif job["name"] == "glow":
        model = normflows_glow(config.num_levels, config.depth, config.hidden_channels, config.alpha, shape)
        nll = model.forward_kld
    else:
        model = normflows_realnvp(config, shape)
        nll = model.forward_kld
    images = mnist_images(4 * batch)
    batches = [((k + torch.rand(k.shape)) / 256).contiguous() for k in images.split(batch)]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    warmup, steps = 2, job["steps"]
    for step in range(warmup + steps):
        if step == warmup:
            start, start_cpu = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        loss = nll(batches[step % len(batches)])
        loss.backward()
        opt.step()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    return {
        "images_per_s": steps * batch / seconds,
        "images_per_cpu_s": steps * batch / cpu_seconds,
        "params": sum(p.numel() for p in model.parameters()),
        "loss": float(loss.detach()),
    }


WORKERS = {
    "model": model_row,
    "nade": nade_row,
    "sampler": sampler_row,
    "overhead": overhead_row,
    "compile": compile_row,
    "flow_peer": flow_peer_row,
}


def worker(job: dict) -> None:
    import torch

    torch.set_num_threads(job["threads"])
    try:
        result = WORKERS[job["kind"]](job)
    except Exception as exc:  # noqa: BLE001 - a model that cannot run here is a row that says why
        result = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:160]}
    print("RESULT " + json.dumps(result))


# --- in the main process ---------------------------------------------------------------------------
def run_job(job: dict, timeout: float) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(job["threads"]), "MKL_NUM_THREADS": str(job["threads"])}
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", json.dumps(job)],
            env=env,
            timeout=timeout,
            capture_output=True,
            text=True,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"over the {timeout:.0f} s limit (--timeout)"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            print(
                f"  {job['kind']} {job.get('name', '')} {job['threads']} thread(s): {line[len('RESULT ') :]}",
                file=sys.stderr,
                flush=True,
            )  # each row as it ends: a stopped run keeps what it measured
            return json.loads(line[len("RESULT ") :])
    return {"error": (proc.stderr.strip().splitlines() or ["no result"])[-1][:160]}


def fmt(value) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def ratio(r: dict) -> str:
    lo, hi = r["ratio_range"]
    return f"**{r['ratio']:.2f}×** ({lo:.2f}–{hi:.2f})"


def header(args) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        names = [
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = f"{names[0]}, {len(names)} logical CPUs" if names else cpu
    except OSError:
        pass
    return (
        f"`python scripts/bench_models.py {' '.join(sys.argv[1:])}` — {cpu}; torch {torch.__version__}; "
        f"threads {args.threads}; load average at start {os.getloadavg()[0]:.1f}"
    )


def section_models(args, threads: int) -> list[str]:
    from dgm_cli.models.registry import MODELS, get_model_class

    get_model_class("vae")  # loads every family
    names = args.models.split(",") if args.models else sorted(MODELS)
    lines = [
        f"**Models at their default configs** (MNIST, {threads} thread(s); training: {args.steps} steps of "
        "a bare loop after 2 warm-up steps; sampling: one training grid; evaluation: "
        f"{args.eval} test images; peak MiB added by each)",
        "",
        "| model | family | batch | train img/s | sample img/s (grid) | eval img/s (estimator) | "
        "peak MiB train / sample / eval |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = {}
    for name in names:
        r = run_job(
            {"kind": "model", "name": name, "threads": threads, "steps": args.steps, "eval": args.eval}, args.timeout
        )
        rows[name] = r
        if "error" in r:
            lines.append(f"| {name} | | | not run: {r['error']} | | | |")
            continue
        estimator = f" ({r['estimator'].split('(')[0].strip()})" if r.get("estimator") else ""
        lines.append(
            f"| {name} | {r['family']} | {r['batch']} | {fmt(r['train'])} | {fmt(r['sample'])} "
            f"({r['grid_samples']}) | {fmt(r.get('eval'))}{estimator} | {fmt(r['train_mib'])} / "
            f"{fmt(r['sample_mib'])} / {fmt(r.get('eval_mib'))} |"
        )
    return lines + [""] + section_grids(rows)


def section_grids(rows: dict) -> list[str]:
    """A grid every GRID_EVERY steps costs grid_seconds against GRID_EVERY steps of training: its share
    of wall time is g / (GRID_EVERY * s + g); at most GRID_BUDGET needs every >= g (1 - b) / (b s)."""
    lines = [
        f"**Sample grids at the defaults** (one grid every {GRID_EVERY} steps; share of training wall time)",
        "",
        "| model | one step (s) | one grid (s) | share | sample_every for <= 10% |",
        "|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        if "error" in r:
            continue
        step = r["batch"] / r["train"]
        grid = r["grid_seconds"]
        share = grid / (GRID_EVERY * step + grid)
        every = math.ceil(grid * (1 - GRID_BUDGET) / (GRID_BUDGET * step))
        lines.append(
            f"| {name} | {fmt(step)} | {fmt(grid)} | {100 * share:.1f}% | "
            f"{'default is fine' if share <= GRID_BUDGET else f'>= {every}'} |"
        )
    return lines + [""]


def section_nade(args, threads: int) -> list[str]:
    lines = [
        f"**NADE against the per-pixel recurrence** ({threads} thread(s); sigmoid units, one Adam step on "
        f"binarized MNIST; {args.repeats} alternating runs; ratio = dgm / recurrence)",
        "",
        "| batch, hidden | what | recurrence img/s | dgm img/s | ratio (median, range) | peak MiB recurrence / dgm |",
        "|---|---|---|---|---|---|",
    ]
    for batch, hidden in NADE_SIZES:
        r = run_job(
            {"kind": "nade", "batch": batch, "hidden": hidden, "threads": threads, "repeats": args.repeats},
            args.timeout,
        )
        if "error" in r:
            lines.append(f"| {batch}, {hidden} | not run: {r['error']} | | | | |")
            continue
        for what in ("train", "eval"):
            m = r[what]
            lines.append(
                f"| {batch}, {hidden} | {'training' if what == 'train' else 'evaluation'} | "
                f"{fmt(m['images_per_s']['recurrence'])} | {fmt(m['images_per_s']['dgm'])} | {ratio(m)} | "
                f"{fmt(m['mib']['recurrence'])} / {fmt(m['mib']['dgm'])} |"
            )
    return lines + [""]


def section_samplers(args, threads: int) -> list[str]:
    lines = [
        f"**Autoregressive sampling: cached activations against one full pass per pixel** ({threads} "
        f"thread(s); default configs, a {args.grid}-sample grid, one seed)",
        "",
        "| model | naive img/s | cached img/s | speed-up | same samples | peak MiB naive / cached |",
        "|---|---|---|---|---|---|",
    ]
    for name in args.models.split(",") if args.models else SAMPLERS:
        r = run_job(
            {"kind": "sampler", "name": name, "threads": threads, "samples": args.grid, "repeats": args.repeats},
            args.timeout,
        )
        if "error" in r:
            lines.append(f"| {name} | not run: {r['error']} | | | | |")
            continue
        lines.append(
            f"| {name} | {fmt(r['naive'])} | {fmt(r['cached'])} | **{r['cached'] / r['naive']:.1f}×** | "
            f"{'yes' if r['identical'] else 'NO'} | {fmt(r['naive_mib'])} / {fmt(r['cached_mib'])} |"
        )
    return lines + [""]


def section_engine(args, threads: int, kind: str) -> list[str]:
    if kind == "overhead":
        names, cols = list(FAMILY_MODELS.values()), ("bare", "dgm")
        title = "**`dgm train` against a bare loop of the same model** (ratio = dgm / bare; goal >= 0.97)"
    else:
        names, cols = COMPILE_MODELS, ("eager", "compiled")
        title = "**trainer.compile=true against eager `dgm train`** (ratio = compiled / eager)"
    lines = [
        f"{title} ({threads} thread(s); per run the steps a bare loop takes {args.engine_seconds:g} s for, at "
        f"least {args.engine_steps}; `dgm train`'s images/s after its first log window; {args.repeats} "
        "alternating runs)",
        "",
        f"| model | steps | {cols[0]} img/s | {cols[1]} img/s | ratio (median, range) |",
        "|---|---|---|---|---|",
    ]
    names = args.models.split(",") if args.models else names
    for name in names:
        r = run_job(
            {
                "kind": kind,
                "name": name,
                "threads": threads,
                "steps": args.engine_steps,
                "seconds": args.engine_seconds,
                "repeats": args.repeats,
            },
            args.timeout * args.repeats * 2,
        )
        if "error" in r:
            lines.append(f"| {name} | not run: {r['error']} | | | |")
            continue
        lines.append(f"| {name} | {r['steps']:,} | {fmt(r[cols[0]])} | {fmt(r[cols[1]])} | {ratio(r)} |")
    return lines + [""]


def section_flows_vs_normflows(args, threads: int) -> list[str]:
    try:
        import normflows
    except ImportError:
        return [
            '**dgm\'s flows against normflows**: not run: normflows is not installed (`pip install -e ".[bench]"`)',
            "",
        ]
    lines = [
        f"**dgm's flows against normflows {normflows.__version__}** ({threads} thread(s); default configs, "
        "normflows built to the same structure; a plain loop: zero_grad, -log p(x), backward, Adam; batch "
        f"128 of dequantized MNIST; {args.repeats} pairs of alternating fresh processes; ratio = dgm / "
        "normflows, of wall time; and of the process's CPU time, which another job on the machine disturbs "
        "less)",
        "",
        "| model | steps | params dgm / normflows | normflows img/s | dgm img/s | ratio (median, range) | "
        "ratio of CPU time |",
        "|---|---|---|---|---|---|---|",
    ]
    names = args.models.split(",") if args.models else list(FLOW_PEERS)
    for name in names:
        steps = args.flow_steps or FLOW_PEERS[name]
        runs = {"dgm": [], "normflows": []}
        for i in range(args.repeats):
            order = ("dgm", "normflows") if i % 2 == 0 else ("normflows", "dgm")  # neither always goes first
            for lib in order:
                runs[lib].append(
                    run_job(
                        {"kind": "flow_peer", "lib": lib, "name": name, "threads": threads, "steps": steps},
                        args.timeout,
                    )
                )
        errors = [r["error"] for rs in runs.values() for r in rs if "error" in r]
        if errors:
            lines.append(f"| {name} | not run: {errors[0]} | | | | | |")
            continue
        r = {}
        for key in ("images_per_s", "images_per_cpu_s"):
            ratios = [d[key] / n[key] for d, n in zip(runs["dgm"], runs["normflows"])]
            r[key] = {"ratio": statistics.median(ratios), "ratio_range": (min(ratios), max(ratios))}
        best = {lib: max(x["images_per_s"] for x in rs) for lib, rs in runs.items()}
        lines.append(
            f"| {name} | {steps} | {runs['dgm'][0]['params']:,} / {runs['normflows'][0]['params']:,} | "
            f"{fmt(best['normflows'])} | {fmt(best['dgm'])} | {ratio(r['images_per_s'])} | "
            f"{ratio(r['images_per_cpu_s'])} |"
        )
    return lines + [""]


SECTIONS = {
    "models": section_models,
    "nade": section_nade,
    "samplers": section_samplers,
    "overhead": lambda a, t: section_engine(a, t, "overhead"),
    "compile": lambda a, t: section_engine(a, t, "compile"),
    "flows_vs_normflows": section_flows_vs_normflows,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated: {', '.join(SECTIONS)}")
    p.add_argument(
        "--models",
        default="",
        help="models, samplers, overhead, compile, flows_vs_normflows: "
        "comma-separated names (default: all registered; one per family; vae,pixelcnn,glow; glow,realnvp)",
    )
    p.add_argument("--threads", default="1", help="comma-separated thread counts, e.g. 1,2")
    p.add_argument("--steps", type=int, default=5, help="training steps per model (models section)")
    p.add_argument("--eval", type=int, default=32, help="test images per model (models section)")
    p.add_argument("--engine-steps", type=int, default=30, help="fewest training steps per run (overhead, compile)")
    p.add_argument(
        "--engine-seconds",
        type=float,
        default=20,
        help="overhead, compile: steps per run = what a bare loop does in this many seconds",
    )
    p.add_argument(
        "--flow-steps", type=int, default=0, help=f"flows_vs_normflows: timed steps per run (default {FLOW_PEERS})"
    )
    p.add_argument("--grid", type=int, default=64, help="samplers: samples in the grid each sampler draws")
    p.add_argument("--repeats", type=int, default=3, help="alternating runs where two things are compared")
    p.add_argument("--timeout", type=float, default=600, help="seconds per worker before its row says so")
    p.add_argument("--out", help="also write the tables to this file")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        p.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    out = [header(args), ""]
    print(out[0] + "\n", flush=True)
    for threads in [int(t) for t in args.threads.split(",")]:
        for name in args.sections.split(","):
            lines = SECTIONS[name](args, threads)
            print("\n".join(lines), flush=True)
            out += lines
    out.append(f"load average at the end {os.getloadavg()[0]:.1f}")
    print(out[-1])
    if args.out:
        Path(args.out).write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
