"""Lightning callbacks that feed optimizers and act on gradients."""

from lightning_opt.callbacks.exact_accumulation import ExactAccumulation
from lightning_opt.callbacks.gradient_hooks import (
    AdaptiveGradientClipping,
    GradientCentralization,
    GradientNormalization,
    GradientTransformCallback,
    SoftClip,
)
from lightning_opt.callbacks.loss_feeder import LossDriven, LossFeeder
from lightning_opt.callbacks.parameter_filter import ParameterFilter
from lightning_opt.callbacks.tail_monitor import GradientTailMonitor
from lightning_opt.callbacks.warmup_free import WarmupFreeScaling, warmup_free_factors

__all__ = [
    "AdaptiveGradientClipping",
    "ExactAccumulation",
    "GradientCentralization",
    "GradientNormalization",
    "GradientTailMonitor",
    "GradientTransformCallback",
    "LossDriven",
    "LossFeeder",
    "ParameterFilter",
    "SoftClip",
    "WarmupFreeScaling",
    "warmup_free_factors",
]
