"""The commands behind `dgm train`, `dgm sample`, `dgm eval` and `dgm report`: each composes its Hydra
config (``app.py``), checks it (``settings``) and calls the engine, models and evaluation code."""
