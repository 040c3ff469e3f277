"""lightning-opt: post-Adam optimizers and the callbacks that feed and watch them, for PyTorch Lightning.

Importing this package makes every optimizer resolvable by its short name in ``LightningCLI``
(``--optimizer AdaLo``), because the classes below are then subclasses of ``torch.optim.Optimizer``
defined in public modules.

The optimizers, the registry and the factory need only torch; the callbacks, which need Lightning, are
imported on first use (``lightning_opt.LossFeeder``, ``from lightning_opt import SoftClip``), so that
``lightning-opt optimizers`` and code that only builds optimizers do not pay for importing Lightning. In a
LightningCLI, give callbacks by their full path (``--trainer.callbacks+=lightning_opt.LossFeeder``) or
``import lightning_opt.callbacks`` first to make their short names resolvable.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lightning_opt.factories import build_optimizer, param_groups_for_weight_decay
from lightning_opt.optim import NSGDA, AdaLo, Adafactor, AdamAtan2
from lightning_opt.optim.adam_family import PNM, AdaMomentum, AdaNorm, AdaPNM, DiffGrad, Lamb, SAdam
from lightning_opt.optim.adaptive_memory import AdaptiveMemoryAdamW, AdaptiveMemorySGD
from lightning_opt.optim.amos import Amos
from lightning_opt.optim.fractional_adam import FractionalAdam
from lightning_opt.optim.lookahead import Lookahead
from lightning_opt.optim.muon import Muon, muon_param_groups
from lightning_opt.optim.sm3 import SM3
from lightning_opt.optim.smmf import SMMF
from lightning_opt.registry import REGISTRY, OptimizerSpec, get_spec

if TYPE_CHECKING:
    from lightning_opt.callbacks import (
        AdaptiveGradientClipping,
        ExactAccumulation,
        GradientCentralization,
        GradientNormalization,
        LossFeeder,
        SoftClip,
        WarmupFreeScaling,
        warmup_free_factors,
    )

__version__ = "0.1.0"

_LAZY = {
    "AdaptiveGradientClipping": "lightning_opt.callbacks",
    "ExactAccumulation": "lightning_opt.callbacks",
    "GradientCentralization": "lightning_opt.callbacks",
    "GradientNormalization": "lightning_opt.callbacks",
    "LossFeeder": "lightning_opt.callbacks",
    "SoftClip": "lightning_opt.callbacks",
    "WarmupFreeScaling": "lightning_opt.callbacks",
    "warmup_free_factors": "lightning_opt.callbacks",
}
"""Public names whose module imports Lightning: imported when first looked up."""

__all__ = [
    "NSGDA",
    "REGISTRY",
    "AdaLo",
    "Adafactor",
    "AdaMomentum",
    "AdaNorm",
    "AdaPNM",
    "AdamAtan2",
    "AdaptiveMemoryAdamW",
    "AdaptiveMemorySGD",
    "Amos",
    "FractionalAdam",
    "Lookahead",
    "Muon",
    "SM3",
    "SMMF",
    "DiffGrad",
    "Lamb",
    "PNM",
    "SAdam",
    "AdaptiveGradientClipping",
    "ExactAccumulation",
    "GradientCentralization",
    "GradientNormalization",
    "LossFeeder",
    "OptimizerSpec",
    "build_optimizer",
    "get_spec",
    "SoftClip",
    "param_groups_for_weight_decay",
    "muon_param_groups",
    "WarmupFreeScaling",
    "warmup_free_factors",
]


def __getattr__(name: str) -> Any:
    """Import the Lightning callbacks on first use (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lightning_opt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
