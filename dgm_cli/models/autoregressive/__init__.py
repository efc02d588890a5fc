"""Autoregressive models: p(x) = prod_i p(x_i | x_<i), exact likelihood, sequential sampling.

NADE (Larochelle & Murray 2011), MADE (Germain et al. 2015), PixelCNN and Gated PixelCNN
(van den Oord et al. 2016a, 2016b); the shared likelihood, training step, sampling and
completion live in ``base.py``."""
