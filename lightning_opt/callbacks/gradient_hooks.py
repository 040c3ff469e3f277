"""Callbacks that rewrite ``p.grad`` before every optimizer step: soft clip, centralisation, AGC, normalisation.

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
Each instance has a :attr:`~GradientTransformCallback.name`, the class name plus its parameter filter
(``SoftClip[include=net.0.*]``) unless given, which prefixes its logged keys and makes its checkpoint
``state_key``: several instances of one class (one per layer group, say) log and checkpoint apart. The
run's totals (``units_seen``, ``units_clipped``) are checkpointed, so ``clipped_fraction`` covers a
resumed run whole.

The same transforms are available inside this package's optimizers (``grad_transforms=[...]``, fused
into the update and leaving ``p.grad`` alone) and as plain functions in
:mod:`lightning_opt.transforms.gradient`.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from lightning_opt.callbacks.parameter_filter import ParameterFilter, Patterns
from lightning_opt.transforms.gradient import (
    AGC_CLIPPING,
    AGC_EPS,
    NORMALIZE_EPS,
    SOFT_CLIP_EPS,
    adaptive_clip_scale,
    centralize_,
    normalize_gradient_,
    scale_units_,
    soft_clip_scale,
)
from lightning_opt.validation import check_bool, check_float32


class GradientTransformCallback(Callback):
    """Base class: apply :meth:`transform_` to the gradient of every selected parameter before each step.

    Args:
        include: ``fnmatch`` patterns of the parameter names to transform (default: all parameters).
        exclude: patterns of parameter names to leave alone (``"*.bias"``, ``"head.*"``...).
        log_clipped_units: log ``<name>/clipped_units``, the share of output units the transform
            clipped at each step, with ``pl_module.log`` (for transforms that clip).
        name: the prefix of the logged keys and the checkpoint ``state_key``; by default the class name,
            followed by the filter when there is one (``SoftClip[include=net.0.*;exclude=*.bias]``), so that
            instances with different filters stay apart. Two instances in one Trainer need different names.
    """

    def __init__(
        self,
        include: Patterns = None,
        exclude: Patterns = None,
        log_clipped_units: bool = True,
        name: str | None = None,
    ) -> None:
        super().__init__()
        self.parameter_filter = ParameterFilter(include, exclude)
        self.log_clipped_units = check_bool("log_clipped_units", log_clipped_units)
        if name is not None and not (isinstance(name, str) and name.strip()):
            raise ValueError(f"Invalid name: {name!r} (expected a non-empty string, or None for the default)")
        self.name: str = name if name is not None else _default_name(type(self).__name__, self.parameter_filter)
        """The prefix of the logged keys and of the checkpoint ``state_key``."""
        self.units_seen = 0
        """Output units the transform looked at, summed over the run (clipping transforms only)."""
        self.units_clipped = 0
        """Of those, the units it clipped."""
        self._selected: dict[int, str] = {}

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(name=self.name)

    @property
    def clipped_fraction(self) -> float | None:
        """The share of units clipped over the whole run (resumes included); ``None`` before any was seen."""
        return self.units_clipped / self.units_seen if self.units_seen else None

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"units_seen": self.units_seen, "units_clipped": self.units_clipped}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.units_seen = int(state_dict.get("units_seen", 0))
        self.units_clipped = int(state_dict.get("units_clipped", 0))

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
        if not units:
            return
        clipped_count = int(clipped)
        self.units_seen += units
        self.units_clipped += clipped_count
        if self.log_clipped_units:
            share = clipped_count / units
            pl_module.log(f"{self.name}/clipped_units", share, on_step=True, on_epoch=False, batch_size=1)


class SoftClip(GradientTransformCallback):
    """Clamp each output unit's gradient RMS to the RMS of the unit's weights (the seed author's soft clip).

    A unit (a row of a ``Linear`` weight, an output channel of a convolution; a whole bias) whose gradient
    is large against its own weights is scaled down, direction kept; other units are left alone. See
    :func:`~lightning_opt.transforms.gradient.soft_clip`.

    Args:
        eps: floor on both root-mean-squares (the seed's ``1e-12``); positive and representable in float32
            (at most 3.4e38), the precision of the norms.
        include: ``fnmatch`` patterns of the parameter names to clip (default: all).
        exclude: patterns of parameter names to leave alone.
        log_clipped_units: log ``<name>/clipped_units``, the share of units clipped at each step.
        name: the prefix of the logged keys and the checkpoint ``state_key`` (default ``SoftClip``, plus
            the filter if any).

    Example::

        from lightning.pytorch import Trainer
        from lightning_opt.callbacks import SoftClip

        trainer = Trainer(callbacks=[SoftClip(exclude="*.bias")])
        # one instance per layer group, logged as SoftClip[include=net.0.*]/clipped_units and so on
        trainer = Trainer(callbacks=[SoftClip(include="net.0.*"), SoftClip(include="net.2.*", eps=1e-6)])

    References:
        The seed blog post, section 5.5.
    """

    def __init__(
        self,
        eps: float = SOFT_CLIP_EPS,
        include: Patterns = None,
        exclude: Patterns = None,
        log_clipped_units: bool = True,
        name: str | None = None,
    ) -> None:
        super().__init__(include, exclude, log_clipped_units, name)
        self.eps = check_float32("eps", eps)

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
        name: the checkpoint ``state_key``'s name (default ``GradientCentralization``, plus the filter if any).

    Example::

        from lightning.pytorch import Trainer
        from lightning_opt.callbacks import GradientCentralization

        trainer = Trainer(callbacks=[GradientCentralization()])

    References:
        Yong et al., "Gradient Centralization: A New Optimization Technique for Deep Neural Networks",
        ECCV 2020, arXiv:2004.01461.
    """

    def __init__(self, include: Patterns = None, exclude: Patterns = None, name: str | None = None) -> None:
        super().__init__(include, exclude, log_clipped_units=False, name=name)

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
            ``clipping`` and ``eps`` must be positive and representable in float32 (at most 3.4e38).
        include: ``fnmatch`` patterns of the parameter names to clip (default: all).
        exclude: patterns of parameter names to leave alone.
        log_clipped_units: log ``<name>/clipped_units``, the share of units clipped.
        name: the prefix of the logged keys and the checkpoint ``state_key`` (default
            ``AdaptiveGradientClipping``, plus the filter if any).

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
        name: str | None = None,
    ) -> None:
        super().__init__(include, exclude, log_clipped_units, name)
        self.clipping = check_float32("clipping", clipping)
        self.eps = check_float32("eps", eps)

    @override
    def transform_(self, grad: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
        scale = adaptive_clip_scale(grad, param, self.clipping, self.eps)
        scale_units_(grad, scale)
        return scale < 1


class GradientNormalization(GradientTransformCallback):
    """Divide each parameter's gradient by its norm, ``g / (||g|| + eps)`` (one norm per whole tensor).

    Every selected tensor then hands the optimizer a gradient of norm (about) 1: its direction is kept and
    its scale, large or tiny, is dropped. See :func:`~lightning_opt.transforms.gradient.normalize_gradient`.

    Args:
        eps: added to the norm (``1e-8``): a zero gradient stays zero; positive and representable in float32.
        include: ``fnmatch`` patterns of the parameter names to normalise (default: all).
        exclude: patterns of parameter names to leave alone.
        name: the checkpoint ``state_key``'s name (default ``GradientNormalization``, plus the filter if any).

    Example::

        from lightning.pytorch import Trainer
        from lightning_opt.callbacks import GradientNormalization

        trainer = Trainer(callbacks=[GradientNormalization(exclude="*.bias")])

    References:
        arXiv:1711.02257, the reference the seed blog post gives for ``g / (||g|| + eps)``.
    """

    def __init__(
        self,
        eps: float = NORMALIZE_EPS,
        include: Patterns = None,
        exclude: Patterns = None,
        name: str | None = None,
    ) -> None:
        super().__init__(include, exclude, log_clipped_units=False, name=name)
        self.eps = check_float32("eps", eps)

    @override
    def transform_(self, grad: torch.Tensor, param: torch.Tensor) -> None:
        normalize_gradient_(grad, self.eps)


def _default_name(class_name: str, parameter_filter: ParameterFilter) -> str:
    """``SoftClip``, or ``SoftClip[include=a|b;exclude=*.bias]`` for a callback with a filter."""
    parts = []
    if parameter_filter.include is not None:
        parts.append("include=" + "|".join(parameter_filter.include))
    if parameter_filter.exclude:
        parts.append("exclude=" + "|".join(parameter_filter.exclude))
    return f"{class_name}[{';'.join(parts)}]" if parts else class_name
