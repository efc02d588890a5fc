"""The training engine: one loop for every family, checkpoints, logging."""
