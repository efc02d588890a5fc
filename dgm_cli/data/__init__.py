"""Datasets as tensors: reading files, representations, batches by indexing."""
