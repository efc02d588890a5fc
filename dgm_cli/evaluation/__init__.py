"""Likelihood estimators and sample-quality metrics, and the report `dgm eval` writes."""
