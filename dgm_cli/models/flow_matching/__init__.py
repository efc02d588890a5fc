"""Flow matching (Lipman et al. 2023; rectified flow, Liu et al. 2023; minibatch OT couplings, Tong et al.
2024): a velocity field trained by regression, sampled by an ODE solver, with log p(x) by the
instantaneous change of variables."""
