"""Where a DDPM's grey backgrounds come from: its denoised guess at high noise, on real data and on its own chain.

MNIST's borders are black (-1 on the model's [-1, 1] scale). For a trained DDPM this prints, at a few steps t,
the share of images whose predicted x_0 (Ho et al. 2020, eq. 15, clipped to [-1, 1]) has its top and bottom
three rows brighter than -0.5:

- on test digits noised to step t (x_t ~ q(x_t | x_0)): how often the network misreads a real image;
- along the model's own ancestral chain from x_T ~ N(0, I) (all T steps): where its samples settle;
- the chain's x_t itself: its border's mean over sqrt(abar_t), which is -1 for x_t ~ q(x_t | x_0) of MNIST
  (x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise, eq. 4, and the noise averages out over the border).

If the two agree below some step but the chain's share stays high, the samples' backgrounds were decided in
the chain's first steps, where an error in the predicted noise reaches x_0 multiplied by sqrt((1 - abar_t) /
abar_t) (eq. 4 solved for x_0), and the rest of the chain does not undo it.

    DGM_DATA_ROOT=../shared/data python scripts/ddpm_backgrounds.py <run folder or .pt> [--n 256] [--seed 0] [--no-clip]
"""

from __future__ import annotations

import argparse

import torch

from dgm_cli import api

STEPS = (999, 990, 975, 950, 900, 800, 600, 400, 200, 50, 0)
GREY = -0.5  # border mean above this: not a black background


def border(x: torch.Tensor) -> torch.Tensor:
    """Each image's mean over its top and bottom three rows."""
    return torch.cat([x[..., :3, :], x[..., -3:, :]], dim=-2).mean(dim=(1, 2, 3))


def grey_share(x0: torch.Tensor) -> float:
    return (border(x0) > GREY).float().mean().item()


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--n", type=int, default=256, help="test digits, and chains")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-clip", action="store_true", help="the chain without clipping x_0-hat to [-1, 1]")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    run = api.load(args.checkpoint, device="cpu")
    if run.model.name != "ddpm" or run.model.data.shape[0] != 1:
        raise SystemExit(f"{args.checkpoint}: a DDPM of greyscale images is needed, not model={run.model.name}.")
    model, chain = run.model, run.model.diffusion
    if model.config.sample_steps not in (0, chain.num_steps):
        print(
            f"(the chain below is the full T={chain.num_steps}, not the model's {model.config.sample_steps}-step one)"
        )
    x, _ = run.split("test", limit=args.n)
    x0 = model.to_model_space(x.float() / 255)
    on_data = {}
    for step in [s for s in STEPS if s < chain.num_steps]:
        t = torch.full((len(x0),), step, dtype=torch.long)
        xt = chain.q_sample(x0, t, torch.randn_like(x0))
        eps, v = model.predict(xt, t)
        on_data[step] = grey_share(chain.predict_x0(xt, t, eps).clamp(-1, 1))
    xt = torch.randn_like(x0)
    print("step t   sqrt((1-abar)/abar)   grey x0-hat: noised test digits   along the chain   x_t border / sqrt(abar)")
    for i in reversed(range(chain.num_steps)):
        t = torch.full((len(xt),), i, dtype=torch.long)
        eps, v = model.predict(xt, t)
        mean, log_var, x0_hat = chain.p_mean_variance(eps, xt, t, model.variance, v, clip=not args.no_clip)
        if i in on_data:
            abar = chain.abar[i].item()
            gain = ((1 - abar) / abar) ** 0.5 if abar > 0 else float("inf")
            signal = border(xt).mean().item() / abar**0.5 if gain < 1e3 else float("nan")  # x_T: no signal
            print(f"{i:6d}   {gain:19.3g}   {on_data[i]:31.0%}   {grey_share(x0_hat):13.0%}   {signal:22.2f}")
        xt = mean + torch.exp(0.5 * log_var) * torch.randn_like(xt) * (i > 0)


if __name__ == "__main__":
    main()
