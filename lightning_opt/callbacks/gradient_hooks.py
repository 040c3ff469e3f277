"""Callbacks that rewrite ``p.grad`` before every optimizer step: soft clip, centralisation, AGC.

They work with any optimizer (``torch.optim``'s included) because they act on the gradients themselves,
in ``on_before_optimizer_step``. At that point Lightning has already unscaled the gradients of a
GradScaler and has not yet applied the Trainer's own clipping, so the order of one step is::

    backward -> (GradScaler unscale) -> these callbacks, in the order given to the Trainer
             -> Trainer(gradient_clip_val=...) clipping -> optimizer.step

The Trainer's ``gradient_clip_val`` therefore clips the already transformed gradients. Under gradient
accumulation the callbacks see the accumulated gradient of the whole window, once per optimizer step;
under DDP they see the all-reduced gradient, identical on every rank, so replicas stay in sync.

The clipping callbacks also log, at every optimizer step, the share of units they clipped
(``SoftClip/clipped_units``, ``AdaptiveGradientClipping/clipped_units``): 0 means the clip never acted.

The same transforms are available inside this package's optimizers (``grad_transforms=[...]``, fused
into the update and leaving ``p.grad`` alone) and as plain functions in
:mod:`lightning_opt.transforms.gradient`.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from lightning_opt.callbacks.parameter_filter import ParameterFilter, Patterns
from lightning_opt.transforms.gradient import (
    AGC_CLIPPING,
    AGC_EPS,
    SOFT_CLIP_EPS,
    adaptive_clip_scale,
    centralize_,
    scale_units_,
    soft_clip_scale,
)
from lightning_opt.validation import check_bool, check_float


class GradientTransformCallback(Callback):
    """Base class: apply :meth:`transform_` to the gradient of every selected parameter before each step.

    Args:
        include: ``fnmatch`` patterns of the parameter names to transform (default: all parameters).
        exclude: patterns of parameter names to leave alone (``"*.bias"``, ``"head.*"``...).
        log_clipped_units: log ``<ClassName>/clipped_units``, the share of output units the transform
            clipped at each step, with ``pl_module.log`` (for transforms that clip).
    """

    def __init__(self, include: Patterns = None, exclude: Patterns = None, log_clipped_units: bool = True) -> None:
        super().__init__()
        self.parameter_filter = ParameterFilter(include, exclude)
        self.log_clipped_units = check_bool("log_clipped_units", log_clipped_units)
        self._selected: dict[int, str] = {}

    def transform_(self, grad: torch.Tensor, param: torch.Tensor) -> torch.Tensor | None:
        """Rewrite ``grad`` (the gradient of ``param``) in place; return which units were clipped (a bool
        tensor with one entry per unit) for a clipping transform, else ``None``."""
        raise NotImplementedError

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._selected = self.parameter_filter.selected_ids(pl_module)
        if not self._selected:
            rank_zero_warn(
                f"{type(self).__name__}: {self.parameter_filter} selects no parameter of "
                f"{type(pl_module).__name__}; it will do nothing"
            )

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        clipped: torch.Tensor | int = 0
        units = 0
        with torch.no_grad():
            for group in optimizer.param_groups:
                for param in group["params"]:
                    if param.grad is None or id(param) not in self._selected:
                        continue
                    if param.grad.is_sparse:
                        raise RuntimeError(
                            f"{type(self).__name__} cannot transform the sparse gradient of "
                            f"{self._selected[id(param)]!r}; exclude it (exclude=[...]) or use a dense embedding"
                        )
                    mask = self.transform_(param.grad, param)
                    if mask is not None:
                        clipped = clipped + mask.sum().cpu()
                        units += mask.numel()
        if units and self.log_clipped_units:
            share = torch.as_tensor(clipped, dtype=torch.float32) / units
            pl_module.log(f"{type(self).__name__}/clipped_units", share, on_step=True, on_epoch=False, batch_size=1)


class SoftClip(GradientTransformCallback):
    """Clamp each output unit's gradient RMS to the RMS of the unit's weights (the seed author's soft clip).

    A unit (a row of a ``Linear`` weight, an output channel of a convolution; a whole bias) whose gradient
    is large against its own weights is scaled down, direction kept; other units are left alone. See
    :func:`~lightning_opt.transforms.gradient.soft_clip`.

    Args:
        eps: floor on both root-mean-squares (the seed's ``1e-12``).
        include: ``fnmatch`` patterns of the parameter names to clip (default: all).
        exclude: patterns of parameter names to leave alone.
        log_clipped_units: log ``SoftClip/clipped_units``, the share of units clipped at each step.

    Example::

        from lightning.pytorch import Trainer
        from lightning_opt.callbacks import SoftClip

        trainer = Trainer(callbacks=[SoftClip(exclude="*.bias")])

    References:
        The seed blog post, section 5.5.
    """

    def __init__(
        self,
        eps: float = SOFT_CLIP_EPS,
        include: Patterns = None,
        exclude: Patterns = None,
        log_clipped_units: bool = True,
    ) -> None:
        super().__init__(include, exclude, log_clipped_units)
        self.eps = check_float("eps", eps, low=0.0, low_inclusive=False)

    @override
    def transform_(self, grad: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
        scale = soft_clip_scale(grad, param, self.eps)
        scale_units_(grad, scale)
        return scale < 1


class GradientCentralization(GradientTransformCallback):
    """Subtract from each output unit's weight gradient its mean (gradient centralisation).

    Tensors of dimension 0 or 1 (biases, norm gains) are left alone, as in the paper. See
    :func:`~lightning_opt.transforms.gradient.centralize`.

    Args:
        include: ``fnmatch`` patterns of the parameter names to centralise (default: all).
        exclude: patterns of parameter names to leave alone.

    Example::

        from lightning.pytorch import Trainer
        from lightning_opt.callbacks import GradientCentralization

        trainer = Trainer(callbacks=[GradientCentralization()])

    References:
        Yong et al., "Gradient Centralization: A New Optimization Technique for Deep Neural Networks",
        ECCV 2020, arXiv:2004.01461.
    """

    def __init__(self, include: Patterns = None, exclude: Patterns = None) -> None:
        super().__init__(include, exclude, log_clipped_units=False)

    @override
    def transform_(self, grad: torch.Tensor, param: torch.Tensor) -> None:
        centralize_(grad)


class AdaptiveGradientClipping(GradientTransformCallback):
    """Unit-wise adaptive gradient clipping (AGC): cap ``|g_i| / max(|p_i|, eps)`` at ``clipping``.

    NFNets do not clip the final classifier layer; exclude it by name (``exclude="head.*"``). See
    :func:`~lightning_opt.transforms.gradient.adaptive_clip`.

    Args:
        clipping: the largest ratio of a unit's gradient norm to its parameter norm (NFNets: 0.01 at
            batch size 4096; the paper finds smaller batches tolerate larger values).
        eps: floor on a unit's parameter norm, so that zero-initialised units can still move.
        include: ``fnmatch`` patterns of the parameter names to clip (default: all).
        exclude: patterns of parameter names to leave alone.
        log_clipped_units: log ``AdaptiveGradientClipping/clipped_units``, the share of units clipped.

    Example::

        from lightning.pytorch import Trainer
        from lightning_opt.callbacks import AdaptiveGradientClipping

        trainer = Trainer(callbacks=[AdaptiveGradientClipping(clipping=0.05, exclude="classifier.*")])

    References:
        Brock et al., "High-Performance Large-Scale Image Recognition Without Normalization", ICML 2021,
        arXiv:2102.06171.
    """

    def __init__(
        self,
        clipping: float = AGC_CLIPPING,
        eps: float = AGC_EPS,
        include: Patterns = None,
        exclude: Patterns = None,
        log_clipped_units: bool = True,
    ) -> None:
        super().__init__(include, exclude, log_clipped_units)
        self.clipping = check_float("clipping", clipping, low=0.0, low_inclusive=False)
        self.eps = check_float("eps", eps, low=0.0, low_inclusive=False)

    @override
    def transform_(self, grad: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
        scale = adaptive_clip_scale(grad, param, self.clipping, self.eps)
        scale_units_(grad, scale)
        return scale < 1
