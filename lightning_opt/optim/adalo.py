"""AdaLo: the step size is a running average of a transform of the training loss."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch

from lightning_opt.engine import BaseOptimizer, Flags, Hyperparameters
from lightning_opt.engine.base import ParamsT
from lightning_opt.transforms import add_scaled_, decoupled_weight_decay_, ema_
from lightning_opt.transforms.gradient import AGC_CLIPPING
from lightning_opt.validation import check_betas, check_choice, check_float

MODES = ("adversarial", "compliant")


def transform_loss(loss: float) -> float:
    """The seed's loss transform ``(tanh(-log1p(L) / 2) + 1) / 2``, which equals ``1 / (2 + L)``.

    It maps a loss in ``[0, inf)`` to ``(0, 1/2]``: 1/2 for a perfect fit, towards 0 for a large loss.
    """
    return 1.0 / (2.0 + loss)


class AdaLo(BaseOptimizer):
    r"""AdaLo: momentum SGD whose step size follows the training loss instead of a second moment.

    Per parameter group, once per step with the training loss ``L``::

        ell  <- beta2 * ell + (1 - beta2) * 1 / (2 + L)          (ell starts at 0: a built-in warm-up)
        lr_t  = max(ell / kappa, eps)           mode="adversarial": smaller steps while the loss is high
        lr_t  = max((1 - ell) / kappa, eps)     mode="compliant":   larger steps while the loss is high

    and per tensor::

        m <- beta1 * m + (1 - beta1) * g
        p <- p * (1 - lr_t * weight_decay) - lr_t * m

    The loss comes from, in order of precedence: a value fed with :meth:`set_loss` or ``step(loss=...)``
    (the :class:`~lightning_opt.callbacks.LossFeeder` callback does this in Lightning), then the value the
    closure returns. A step taken before any loss ever reached the optimizer raises ``RuntimeError``
    rather than silently taking eps-sized steps. A non-finite loss leaves ``ell`` unchanged (with a
    warning), so one bad batch cannot poison the step size. The loss is read as a Python float once per
    step (one host sync on an accelerator), and the loss average is kept in float64 in the group.

    Args:
        params: iterable of parameters or of dicts defining parameter groups.
        lr: not used by the update (the step size comes from the loss); kept so that code and tools
            that expect an ``lr`` (schedulers, monitors) still work.
        betas: ``(beta1, beta2)``: coefficients of the gradient momentum and of the loss average.
        weight_decay: decoupled weight decay, multiplied by the loss-driven step size ``lr_t``.
        kappa: divides the loss average; larger means smaller steps.
        eps: the smallest step size.
        mode: ``"adversarial"`` (default) or ``"compliant"``, see above.
        compile: fuse each bucket's update with ``torch.compile`` (same numbers, faster steps).
        skip_nonfinite: leave a tensor untouched (with a warning) when its gradient has inf or NaN.
        grad_transforms: gradient transforms applied in order before the update, without changing
            ``p.grad``: ``"centralize"`` (arXiv:2004.01461), ``"adaptive_clip"`` (arXiv:2102.06171),
            ``"soft_clip"`` (the seed's per-unit RMS clip); see :mod:`lightning_opt.transforms.gradient`.
        agc_clipping: the largest unit-wise gradient-to-parameter norm ratio of ``"adaptive_clip"``.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> optimizer = AdaLo(model.parameters())
        >>> def closure():
        ...     optimizer.zero_grad()
        ...     loss = model(torch.randn(8, 4)).square().mean()
        ...     loss.backward()
        ...     return loss
        >>> loss = optimizer.step(closure)

    References:
        "AdaLo: Adaptive learning rate optimizer with loss for classification", Information Sciences
        (2024); the seed's implementation (github.com/cpuimage/AdaLo) for the loss transform, the modes
        and the defaults.
    """

    buffer_names = ("exp_avg",)

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-8,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 1e-2,
        kappa: float = 3.0,
        eps: float = 1e-8,
        mode: Literal["adversarial", "compliant"] = "adversarial",
        compile: bool = False,
        skip_nonfinite: bool = False,
        grad_transforms: Sequence[str] = (),
        agc_clipping: float = AGC_CLIPPING,
    ) -> None:
        defaults = dict(
            lr=check_float("lr", lr, low=0.0),
            betas=check_betas(betas),
            weight_decay=check_float("weight_decay", weight_decay, low=0.0),
            kappa=check_float("kappa", kappa, low=0.0, low_inclusive=False),
            eps=check_float("eps", eps, low=0.0),
            mode=check_choice("mode", mode, MODES),
        )
        super().__init__(
            params,
            defaults,
            compile=compile,
            skip_nonfinite=skip_nonfinite,
            grad_transforms=grad_transforms,
            agc_clipping=agc_clipping,
        )
        self._reset_pending()

    def _reset_pending(self) -> None:
        # Mutable and shared by reference: Lightning's LightningOptimizer wrapper copies this object's
        # attribute dict, so a loss fed through the wrapper must land in a container both can see.
        self._pending: dict[str, Any] = {"loss": None, "warned_distributed": False}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._reset_pending()  # a pending loss belongs to the next step of the original, not to a copy

    # ----------------------------------------------------------------- the loss
    def set_loss(self, loss: torch.Tensor | float) -> None:
        """Give the next :meth:`step` the loss to use; it wins over what the closure returns.

        Args:
            loss: the mean training loss of the batch (or accumulation window) that produced the
                current gradients, as a number or a 0-d tensor.
        """
        if isinstance(loss, torch.Tensor):
            if loss.numel() != 1:
                raise ValueError(f"Invalid loss: expected a single number, got a tensor of shape {tuple(loss.shape)}")
            loss = loss.detach()
        elif isinstance(loss, bool) or not isinstance(loss, (int, float)):
            raise ValueError(f"Invalid loss: {loss!r} (expected a number or a 0-d tensor)")
        self._pending["loss"] = loss

    def step(self, closure: Any = None, loss: torch.Tensor | float | None = None) -> Any:  # type: ignore[override]
        """Perform one optimization step.

        Args:
            closure: optional; re-evaluates the model and returns the loss.
            loss: optional; the loss to use for this step, as with :meth:`set_loss` (``GradScaler.step``
                forwards it: ``scaler.step(optimizer, loss=loss)``).

        Returns:
            What ``closure`` returned, or ``None``.
        """
        if loss is not None:
            self.set_loss(loss)
        return super().step(closure)

    def begin_step(self, closure_loss: torch.Tensor | None) -> None:
        fed, self._pending["loss"] = self._pending["loss"], None
        if fed is None and closure_loss is not None:
            self._warn_if_replicas_diverge()
        loss = fed if fed is not None else closure_loss
        value = None if loss is None else float(loss)
        if value is not None and not math.isfinite(value):
            warnings.warn(f"AdaLo got a non-finite loss ({value}); the loss average is left unchanged this step")
            value = None
        if value is not None and value <= -1.0:
            raise ValueError(f"Invalid loss: {value} (AdaLo's transform 1 / (2 + L) needs a loss > -1)")
        for group in self.param_groups:
            group.setdefault("loss_average", 0.0)
            group.setdefault("loss_count", 0)
            if value is not None:
                beta2 = group["betas"][1]
                group["loss_average"] += (1.0 - beta2) * (transform_loss(value) - group["loss_average"])
                group["loss_count"] += 1

    def _warn_if_replicas_diverge(self) -> None:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed and torch.distributed.get_world_size() > 1 and not self._pending["warned_distributed"]:
            self._pending["warned_distributed"] = True
            warnings.warn(
                "AdaLo is using each process's own closure loss, so data-parallel replicas take different "
                "steps and drift apart. Feed the all-reduced loss instead: add lightning_opt.LossFeeder() "
                "to the Trainer's callbacks, or call optimizer.set_loss(mean_loss_over_ranks) before step()."
            )

    # ----------------------------------------------------------------- the update
    def step_size(self, group: dict[str, Any]) -> float:
        """The loss-driven step size ``lr_t`` that the next update of ``group`` uses."""
        loss_average = group.get("loss_average", 0.0)
        scaled = loss_average if group["mode"] == "adversarial" else 1.0 - loss_average
        return max(scaled / group["kappa"], group["eps"])

    def group_hyperparameters(self, group: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
        if group.get("loss_count", 0) == 0 and any(p.grad is not None for p in group["params"]):
            raise RuntimeError(
                "AdaLo.step() was called but no training loss has ever reached the optimizer, so the step "
                "size would stay at eps and the model would not train. Pass a closure that returns the "
                "loss (optimizer.step(closure)), call optimizer.set_loss(loss) or optimizer.step(loss=loss) "
                "before stepping, or in Lightning add lightning_opt.LossFeeder() to the Trainer's callbacks "
                "(required under a GradScaler, where Lightning calls step() without a closure)."
            )
        step_size = self.step_size(group)
        numbers = {
            "beta1": group["betas"][0],
            "neg_step_size": -step_size,
            "decay_factor": 1.0 - step_size * group["weight_decay"],
        }
        return numbers, {"decay": group["weight_decay"] != 0.0}

    @staticmethod
    def update(
        param: torch.Tensor, grad: torch.Tensor, buffers: dict[str, torch.Tensor], hp: Hyperparameters, flags: Flags
    ) -> None:
        exp_avg = buffers["exp_avg"]
        ema_(exp_avg, grad, hp["beta1"])
        if flags["decay"]:
            decoupled_weight_decay_(param, hp["decay_factor"])
        add_scaled_(param, exp_avg, hp["neg_step_size"])
