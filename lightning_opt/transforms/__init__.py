"""Composable pieces of an optimizer update, each written once.

Every function here works on one tensor and accepts its hyper-parameters either as Python floats (the
eager path) or as 0-d tensors (the compiled path, where a changing value must not trigger a recompile).
Optimizers in :mod:`lightning_opt.optim` are short compositions of these pieces.
"""

from lightning_opt.transforms.acceleration import friction_, gradient_norm_correction_, momentum_second_moment_
from lightning_opt.transforms.arith import Scalar, add_scaled, add_scaled_
from lightning_opt.transforms.cautious import cautious_mask_
from lightning_opt.transforms.constraints import cpr_, norm_loss_
from lightning_opt.transforms.denominators import (
    adaptive_direction,
    atan2_direction,
    eps_direction,
    softplus_direction,
)
from lightning_opt.transforms.gradient import (
    adaptive_clip,
    adaptive_clip_,
    centralize,
    centralize_,
    normalize_gradient,
    normalize_gradient_,
    soft_clip,
    soft_clip_,
)
from lightning_opt.transforms.fractional import grunwald_letnikov, grunwald_letnikov_ring_
from lightning_opt.transforms.moments import ema_, ema_sq_
from lightning_opt.transforms.momentum import (
    adaptive_memory_coefficient,
    adaptive_memory_momentum_,
    nesterov_numerator,
    positive_negative_momentum_,
)
from lightning_opt.transforms.trust_ratio import trust_ratio
from lightning_opt.transforms.weight_decay import (
    cautious_weight_decay_,
    decoupled_weight_decay_,
    l2_regularised,
    stable_weight_decay_,
    stable_weight_decay_scale,
    whole_model_mean,
)

__all__ = [
    "Scalar",
    "adaptive_clip",
    "adaptive_clip_",
    "adaptive_direction",
    "adaptive_memory_coefficient",
    "adaptive_memory_momentum_",
    "add_scaled",
    "add_scaled_",
    "atan2_direction",
    "cautious_mask_",
    "cautious_weight_decay_",
    "centralize",
    "centralize_",
    "cpr_",
    "decoupled_weight_decay_",
    "ema_",
    "ema_sq_",
    "eps_direction",
    "friction_",
    "gradient_norm_correction_",
    "grunwald_letnikov",
    "grunwald_letnikov_ring_",
    "l2_regularised",
    "momentum_second_moment_",
    "nesterov_numerator",
    "norm_loss_",
    "normalize_gradient",
    "normalize_gradient_",
    "positive_negative_momentum_",
    "soft_clip",
    "soft_clip_",
    "softplus_direction",
    "stable_weight_decay_",
    "stable_weight_decay_scale",
    "trust_ratio",
    "whole_model_mean",
]
