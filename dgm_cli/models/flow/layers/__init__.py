"""Invertible layers for normalizing flows, one module per kind (as normflows splits them):

    base            FlowSequential (a chain of layers), soft_clamp, sum_except_batch
    preprocessing   LogitTransform, Shift
    reshaping       Squeeze, Unsqueeze, Flatten, Split (multi-scale, with a learned prior)
    normalization   ActNorm, BatchNorm
    mixing          InvertibleConv1x1
    coupling        AffineCoupling (channel-wise: its network reads one half), its masks and networks
    autoregressive  MaskedAffineAutoregressive (MAF) and its MADEConditioner

Every layer has ``forward(x) -> (z, log_det)`` and ``inverse(z) -> (x, log_det)``; see ``base``.
"""

from .autoregressive import MADEConditioner, MaskedAffineAutoregressive
from .base import MAX_LOG_SCALE, FlowSequential, soft_clamp, sum_except_batch
from .coupling import AffineCoupling, checkerboard_mask, coupling_halves, coupling_mlp, zero_initialized
from .mixing import InvertibleConv1x1
from .normalization import ActNorm, BatchNorm
from .preprocessing import LogitTransform, Shift
from .reshaping import Flatten, Split, Squeeze, Unsqueeze

__all__ = [
    "MADEConditioner",
    "MaskedAffineAutoregressive",
    "MAX_LOG_SCALE",
    "FlowSequential",
    "soft_clamp",
    "sum_except_batch",
    "AffineCoupling",
    "checkerboard_mask",
    "coupling_halves",
    "coupling_mlp",
    "zero_initialized",
    "InvertibleConv1x1",
    "ActNorm",
    "BatchNorm",
    "LogitTransform",
    "Shift",
    "Flatten",
    "Split",
    "Squeeze",
    "Unsqueeze",
]
