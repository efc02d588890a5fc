"""Typed schemas of the three commands' configs, and value checks."""

from .schema import register_configs  # noqa: F401
