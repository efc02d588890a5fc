"""Decoder-based AIS and bidirectional Monte Carlo on probabilistic PCA, whose log p(x) is known in closed
form: how the forward (lower) and reverse (upper) estimates close in on the truth as the temperatures grow.

    python scripts/bdmc_ppca.py [--temperatures 10 30 100 300] [--chains 8] [--examples 16] [--seed 0]

x = W z + b + sigma eps with z ~ N(0, I_2), x in R^6, sigma = 0.3: p(x) = N(b, W W^T + sigma^2 I) (Tipping &
Bishop 1999). Prints, per number of temperatures, the mean error of each end against the truth (nats per
example, with the standard error over the examples), the BDMC gap and the HMC acceptance rate.
"""

from __future__ import annotations

import argparse
import time

import torch

from dgm_cli.models.nn import decoder_ais


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--temperatures", type=int, nargs="+", default=[10, 30, 100, 300])
    parser.add_argument("--chains", type=int, default=8)
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--leapfrog", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    D, d, sigma = 6, 2, 0.3
    W = torch.randn(D, d, dtype=torch.float64)
    b = 0.3 * torch.randn(D, dtype=torch.float64)

    def factory(x, chains):
        xr = x.repeat_interleave(chains, 0)
        return lambda z: torch.distributions.Normal(z @ W.T + b, sigma).log_prob(xr).sum(1)

    z = torch.randn(args.examples, d, dtype=torch.float64)
    x = z @ W.T + b + sigma * torch.randn(args.examples, D, dtype=torch.float64)
    truth = torch.distributions.MultivariateNormal(b, W @ W.T + sigma**2 * torch.eye(D, dtype=torch.float64)).log_prob(
        x
    )
    print("| temperatures | forward - truth | reverse - truth | BDMC gap | acceptance | seconds |")
    print("|---|---|---|---|---|---|")
    n = args.examples**0.5
    for t in args.temperatures:
        s = decoder_ais.DecoderAISSettings(
            ais=True, ais_chains=args.chains, ais_temperatures=t, ais_leapfrog=args.leapfrog, ais_pilot_chains=4
        )
        start = time.perf_counter()
        r = decoder_ais.bdmc(factory, z, x, s)
        lo, hi = r["forward"] - truth, r["reverse"] - truth
        rep = r["report"]
        print(
            f"| {t} | {float(lo.mean()):.3f} ± {float(lo.std() / n):.3f} | {float(hi.mean()):.3f} ± "
            f"{float(hi.std() / n):.3f} | {rep['bdmc_gap_nats']:.3f} | {rep['bdmc_acceptance']:.2f} | "
            f"{time.perf_counter() - start:.1f} |"
        )


if __name__ == "__main__":
    main()
