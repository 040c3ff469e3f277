"""AdaLo: the step size is a running average of a transform of the training loss."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, Literal, Optional

import torch

from lightning_opt.engine import BaseOptimizer, Flags, Hyperparameters
from lightning_opt.engine.base import ParamsT
from lightning_opt.transforms import add_scaled_, decoupled_weight_decay_, ema_
from lightning_opt.transforms.gradient import AGC_CLIPPING, check_agc_clipping
from lightning_opt.validation import (
    check_betas,
    check_choice,
    check_decay_factor,
    check_float,
    check_step_size,
)

MODES = ("adversarial", "compliant")
LR_SCALES_STEP = "lr_scales_step"
"""The parameter-group key that says ``lr`` multiplies the step size. Groups saved before ``lr`` did so
(lightning-opt <= 0.1, default ``lr=1e-8``) lack it; they load with it set to ``False`` and keep ignoring
``lr``, so an old checkpoint resumes with the steps it was trained with."""


def transform_loss(loss: float) -> float:
    """The seed's loss transform ``(tanh(-log1p(L) / 2) + 1) / 2``, which equals ``1 / (2 + L)``.

    It maps a loss in ``[0, inf)`` to ``(0, 1/2]``: 1/2 for a perfect fit, towards 0 for a large loss.
    """
    return 1.0 / (2.0 + loss)


def check_hyperparameters(
    lr: Any, betas: Any, weight_decay: Any, kappa: Any, eps: Any, mode: Any, agc_clipping: Any = AGC_CLIPPING
) -> dict[str, Any]:
    """Validate AdaLo's hyper-parameters (one group's, or the defaults) and return them normalised.

    The bounds, explained in :class:`AdaLo` and :mod:`lightning_opt.validation`: ``1 / kappa`` and the
    largest step size ``lr / kappa`` below ``2**24``; ``0 <= eps < 1 / (2 * kappa)``; the decay factor
    ``1 - lr / kappa * weight_decay`` in ``[0, 1]``.

    Example:
        >>> values = dict(lr=1.0, betas=(0.9, 0.999), weight_decay=0.01, kappa=3.0, mode="compliant")
        >>> check_hyperparameters(eps=1e-8, **values)
        {'lr': 1.0, 'betas': (0.9, 0.999), 'weight_decay': 0.01, 'kappa': 3.0, 'eps': 1e-08, 'mode': 'compliant', \
'agc_clipping': 0.01}
        >>> check_hyperparameters(eps=0.5, **values)
        Traceback (most recent call last):
        ...
        ValueError: Invalid eps: 0.5 (expected < 1 / (2 * kappa) = 0.1667, the largest loss-driven step for a \
loss >= 0: a floor at or above it makes every step eps and the loss irrelevant)
    """
    lr = check_float("lr", lr, low=0.0)
    betas = check_betas(betas)
    kappa = check_float("kappa", kappa, low=0.0, low_inclusive=False)
    check_step_size("kappa", kappa, 1.0 / kappa, "1 / kappa")
    check_step_size("lr", lr, lr / kappa, "lr / kappa with kappa={kappa:g}", kappa=kappa)
    given_eps, eps = eps, check_float("eps", eps, low=0.0)
    if not eps < 0.5 / kappa:
        raise ValueError(
            f"Invalid eps: {given_eps!r} (expected < 1 / (2 * kappa) = {0.5 / kappa:.4g}, the largest loss-driven step "
            "for a loss >= 0: a floor at or above it makes every step eps and the loss irrelevant)"
        )
    weight_decay = check_float("weight_decay", weight_decay, low=0.0)
    check_decay_factor(
        "weight_decay", weight_decay, lr / kappa * weight_decay, "{lr:g} / {kappa:g} * weight_decay", lr=lr, kappa=kappa
    )
    mode = check_choice("mode", mode, MODES)
    checked = dict(lr=lr, betas=betas, weight_decay=weight_decay, kappa=kappa, eps=eps, mode=mode)
    return {**checked, "agc_clipping": check_agc_clipping(agc_clipping)}


class AdaLo(BaseOptimizer):
    r"""AdaLo: momentum SGD whose step size follows the training loss instead of a second moment.

    Per parameter group, once per step with the training loss ``L``::

        ell  <- beta2 * ell + (1 - beta2) * 1 / (2 + L)          (ell starts at 0: a built-in warm-up)
        lr_t  = lr * max(ell / kappa, eps)         mode="adversarial": smaller steps while the loss is high
        lr_t  = lr * max((1 - ell) / kappa, eps)   mode="compliant":   larger steps while the loss is high

    and per tensor::

        m <- beta1 * m + (1 - beta1) * g
        p <- p * (1 - lr_t * weight_decay) - lr_t * m

    ``lr`` is a multiplier of the loss-driven step, 1.0 by default (the method as published: nothing to
    tune). It is there for schedules: a scheduler or a warm-up that changes ``param_groups[i]["lr"]`` scales
    every step, eps floor included (``eps`` bounds the loss-driven part, so a schedule that anneals ``lr``
    to 0 really stops the steps). The step size actually taken, ``lr_t``, is :meth:`step_size` and, after a
    step, :attr:`last_step_sizes`; the :class:`~lightning_opt.callbacks.LossFeeder` callback logs it as
    ``AdaLo/step_size`` (``LearningRateMonitor`` shows only the multiplier ``lr``).

    The loss comes from, in order of precedence: a value fed with :meth:`set_loss` or ``step(loss=...)``
    (the :class:`~lightning_opt.callbacks.LossFeeder` callback does this in Lightning), then the value the
    closure returns. A step taken before any loss ever reached the optimizer raises ``RuntimeError``
    rather than silently taking eps-sized steps. A non-finite loss leaves ``ell`` unchanged (with a
    warning naming the value), so one bad batch cannot poison the step size: groups that already have a
    step size take it, and groups that have not yet seen a finite loss (on the very first step, say) have
    no step size to take and are left untouched, parameters and momentum, as if they had no gradient. The
    loss is read as a Python float once per step (one host sync on an accelerator), and the loss average
    is kept in float64 in the group.

    Hyper-parameters that cannot train a float32 model are refused, at construction, in
    ``add_param_group`` and, if a scheduler changes ``lr``, at the next step (see
    :mod:`lightning_opt.validation`). As ``ell < 1`` for every accepted loss (``L > -1``), the largest
    step size is ``lr / kappa``; so ``1 / kappa`` and ``lr / kappa`` must stay below ``2**24``,
    ``eps`` below ``1 / (2 * kappa)`` (the largest loss-driven step for a loss >= 0 in adversarial mode: a
    floor at or above it would make every step eps and the loss irrelevant), and the decay factor
    ``1 - lr / kappa * weight_decay`` in ``[0, 1]``.

    Args:
        params: iterable of parameters or of dicts defining parameter groups.
        lr: multiplier of the loss-driven step size (default 1.0); what schedulers and warm-ups change.
        betas: ``(beta1, beta2)``: coefficients of the gradient momentum and of the loss average.
        weight_decay: decoupled weight decay, multiplied by the step size ``lr_t``.
        kappa: divides the loss average; larger means smaller steps.
        eps: the smallest loss-driven step size (before the ``lr`` multiplier).
        mode: ``"adversarial"`` (default) or ``"compliant"``, see above.
        compile: fuse the update with ``torch.compile`` (same numbers, faster steps).
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
        >>> scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 0.5)  # lr = 1.0 * 0.5
        >>> group = optimizer.param_groups[0]
        >>> optimizer.step_size(group) == 0.5 * max(group["loss_average"] / group["kappa"], group["eps"])
        True

    References:
        "AdaLo: Adaptive learning rate optimizer with loss for classification", Information Sciences
        (2024); the seed's implementation (github.com/cpuimage/AdaLo) for the loss transform, the modes
        and the defaults.
    """

    buffer_names = ("exp_avg",)
    hyperparameter_check = staticmethod(check_hyperparameters)

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1.0,
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
        defaults = check_hyperparameters(lr, betas, weight_decay, kappa, eps, mode, agc_clipping)
        defaults[LR_SCALES_STEP] = True
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
        self._pending: dict[str, Any] = {
            "loss": None, "warned_distributed": False, "step_sizes": [], "nonfinite_loss": False
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        legacy = [i for i, group in enumerate(state.get("param_groups", ())) if LR_SCALES_STEP not in group]
        for index in legacy:
            state["param_groups"][index][LR_SCALES_STEP] = False
        defaults = state.get("defaults")
        if defaults is not None and LR_SCALES_STEP not in defaults:  # an optimizer pickled by an older version
            defaults.update({"lr": 1.0, LR_SCALES_STEP: True})
        if legacy:
            warnings.warn(
                f"AdaLo: parameter group(s) {legacy} were saved by a lightning-opt version in which lr did not "
                f"affect AdaLo's steps (lr={state['param_groups'][legacy[0]].get('lr')!r}); they keep ignoring "
                "lr, so the run continues with the steps it was trained with (a saved scheduler's base_lrs "
                "would otherwise scale them). To let lr and schedulers act on such a group, set its 'lr' "
                f"(1.0 = unchanged steps) and its {LR_SCALES_STEP!r} to True."
            )
        super().__setstate__(state)
        self._reset_pending()  # a pending loss belongs to the next step of the original, not to a copy

    @property
    def last_step_sizes(self) -> list[float | None]:
        """The step size ``lr_t`` each parameter group used at the most recent step (``None`` for a group that
        had no step size yet: no finite loss had reached it); empty before the first step."""
        return list(self._pending["step_sizes"])

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
        finite = value is not None and math.isfinite(value)
        if finite and value <= -1.0:
            raise ValueError(f"Invalid loss: {value} (AdaLo's transform 1 / (2 + L) needs a loss > -1)")
        for group in self.param_groups:
            group.setdefault("loss_average", 0.0)
            group.setdefault("loss_count", 0)
            if finite:
                beta2 = group["betas"][1]
                group["loss_average"] += (1.0 - beta2) * (transform_loss(value) - group["loss_average"])
                group["loss_count"] += 1
        self._pending["nonfinite_loss"] = value is not None and not finite
        if self._pending["nonfinite_loss"]:
            self._warn_nonfinite_loss(value)
        self._pending["step_sizes"] = [
            self.step_size(group) if group["loss_count"] else None for group in self.param_groups
        ]

    def _warn_nonfinite_loss(self, value: float) -> None:
        """Say that a non-finite loss leaves the loss average as it was and, this step, the groups that have
        never seen a finite loss untouched (they have no step size: :meth:`group_hyperparameters`)."""
        waiting = [i for i, group in enumerate(self.param_groups) if group["loss_count"] == 0]
        message = f"AdaLo got a non-finite loss ({value}); the loss average is left unchanged this step"
        if waiting:
            message += (
                f", and parameter group(s) {waiting} are left untouched (parameters and momentum): no finite "
                "loss has reached them yet, so they have no step size"
            )
        warnings.warn(message)

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
        """The step size ``lr_t = lr * max(ell / kappa, eps)`` (compliant: ``1 - ell``) that the next update
        of ``group`` uses, given its loss average so far."""
        loss_average = group.get("loss_average", 0.0)
        scaled = loss_average if group["mode"] == "adversarial" else 1.0 - loss_average
        multiplier = float(group["lr"]) if group.get(LR_SCALES_STEP, True) else 1.0
        return multiplier * max(scaled / group["kappa"], group["eps"])

    def group_hyperparameters(self, group: dict[str, Any]) -> Optional[tuple[dict[str, float], dict[str, Any]]]:
        if group.get("loss_count", 0) == 0 and self._pending["nonfinite_loss"]:
            return None  # no finite loss has reached this group yet: no step size to take (see begin_step)
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
