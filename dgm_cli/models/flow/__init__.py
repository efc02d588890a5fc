"""Normalizing flows: exact likelihood by the change of variables.

``layers`` holds the invertible layers, ``base`` the shared model (preprocessing,
base distribution, training step, sampling); ``realnvp``, ``glow`` and ``maf``
only build their layer stacks."""
