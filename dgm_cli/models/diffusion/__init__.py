"""Diffusion models: DDPM (Ho et al. 2020) with the simple and hybrid losses, its variational bound in
bits/dim, and ancestral and DDIM sampling."""
