"""lightning-opt: post-Adam optimizers and the callbacks that feed and watch them, for PyTorch Lightning.

Importing this package makes every optimizer resolvable by its short name in ``LightningCLI``
(``--optimizer AdaLo``), because the classes below are then subclasses of ``torch.optim.Optimizer``
defined in public modules.
"""

from lightning_opt.callbacks import AdaptiveGradientClipping, GradientCentralization, LossFeeder, SoftClip
from lightning_opt.factories import build_optimizer, param_groups_for_weight_decay
from lightning_opt.optim import NSGDA, AdaLo, AdamAtan2
from lightning_opt.registry import REGISTRY, OptimizerSpec, get_spec

__version__ = "0.1.0"

__all__ = [
    "NSGDA",
    "REGISTRY",
    "AdaLo",
    "AdamAtan2",
    "AdaptiveGradientClipping",
    "GradientCentralization",
    "LossFeeder",
    "OptimizerSpec",
    "build_optimizer",
    "get_spec",
    "SoftClip",
    "param_groups_for_weight_decay",
]
