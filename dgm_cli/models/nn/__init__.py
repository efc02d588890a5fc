"""Layers and likelihoods shared by several model families."""
