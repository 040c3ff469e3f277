"""Adaptive-memory momentum (AM): SGD and AdamW whose momentum coefficient is chosen at every step.

Both keep a direction ``d`` (the momentum, started at the first gradient) and replace its fixed coefficient by
``beta_t``, the closed-form solution of a proximal step on a model of the loss made of two planes, one from the
gradient and one from ``d`` (:func:`~lightning_opt.transforms.momentum.adaptive_memory_coefficient`, where the
model and the derivation are written out), then ``d <- ((beta_t + lam) d + (1 - beta_t) g) / (1 + lam)``
(:func:`~lightning_opt.transforms.momentum.adaptive_memory_momentum_`). ``beta_t`` needs two sums over each
tensor before ``d`` can change, so the update runs in two phases (the sums, then the step), as NSGDA's does.
The defaults ``lam = 0.1`` and ``beta_max = 0.9`` are the paper's settings for its deep-learning runs (as a public
re-implementation states them).

Deviations, stated:

- ``beta_t`` is computed per tensor (each tensor its own two-plane model). The paper's AM-SGD takes one
  coefficient for the whole model; its AdamW experiments use a per-layer coefficient, as here. The engine reduces
  per tensor, and a model-wide sum would need every tensor's gradient before any tensor could step.
- AM-AdamW: the paper's Algorithm 3 (as a public re-implementation describes it; the paper's full text was not
  available here) preconditions the memory's mixing, ``(I + lam P)^-1 [(1 - beta) g + (lam P + beta I) d]`` with
  ``P = (1 - beta_max prod(beta)) (sqrt(v_hat) + eps)``, and adds the weight decay to its loss estimate. Here the
  mixing is the scalar one above and the two sums are weighted by ``1 / (sqrt(v_hat) + eps)`` (the metric of the
  preconditioned step), whatever the ``denominator``; the weight decay stays outside the model (decoupled).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from lightning_opt.engine import BaseOptimizer, Flags, Hyperparameters
from lightning_opt.engine.base import ParamsT
from lightning_opt.optim.adam_family import check_hyperparameters as check_family
from lightning_opt.transforms import add_scaled_, cautious_mask_, cautious_weight_decay_, decoupled_weight_decay_
from lightning_opt.transforms import ema_sq_
from lightning_opt.transforms.denominators import adaptive_direction
from lightning_opt.transforms.gradient import AGC_CLIPPING
from lightning_opt.transforms.momentum import adaptive_memory_coefficient, adaptive_memory_momentum_
from lightning_opt.transforms.reductions import PER_TENSOR
from lightning_opt.validation import FLOAT32_MAX, check_float, check_probability


def check_hyperparameters(**values: Any) -> dict[str, Any]:
    """Validate the hyper-parameters of :class:`AdaptiveMemorySGD` or :class:`AdaptiveMemoryAdamW`: ``lam`` in
    ``[0, FLOAT32_MAX]``, ``beta_max`` and ``beta2`` in ``[0, 1)``, the rest as the Adam family's
    (:func:`lightning_opt.optim.adam_family.check_hyperparameters`).

    Example:
        >>> check_hyperparameters(lr=0.1, weight_decay=0.0, lam=-1.0, beta_max=0.9)
        Traceback (most recent call last):
        ...
        ValueError: Invalid lam: -1.0 (expected >= 0.0)
    """
    own = {
        "lam": check_float("lam", values.pop("lam"), low=0.0, high=FLOAT32_MAX),
        "beta_max": check_probability("beta_max", values.pop("beta_max")),
    }
    if "beta2" in values:
        own["beta2"] = check_probability("beta2", values.pop("beta2"))
    return {**check_family(**values), **own}


def check_sgd(
    lr: Any,
    beta_max: Any,
    lam: Any,
    weight_decay: Any,
    cautious: Any,
    cautious_weight_decay: Any,
    agc_clipping: Any = AGC_CLIPPING,
) -> dict[str, Any]:
    """:func:`check_hyperparameters` for :class:`AdaptiveMemorySGD` (the engine reads the argument names)."""
    return check_hyperparameters(**locals())


def check_adamw(
    lr: Any,
    beta_max: Any,
    beta2: Any,
    eps: Any,
    lam: Any,
    weight_decay: Any,
    denominator: Any,
    softplus_beta: Any,
    cautious: Any,
    cautious_weight_decay: Any,
    agc_clipping: Any = AGC_CLIPPING,
) -> dict[str, Any]:
    """:func:`check_hyperparameters` for :class:`AdaptiveMemoryAdamW` (the engine reads the argument names)."""
    return check_hyperparameters(**locals())


class _AdaptiveMemory(BaseOptimizer):
    """The update both variants share; :attr:`second_moment` tells AdamW's from SGD's."""

    second_moment: ClassVar[bool] = False
    whole_tensor_statistics = True
    phases = ("memory_coefficient", "update_param")

    def __init__(
        self,
        params: ParamsT,
        *,
        compile: bool,
        skip_nonfinite: bool,
        grad_transforms: Sequence[str],
        agc_clipping: float,
        **hyperparameters: Any,
    ) -> None:
        check = type(self).hyperparameter_check
        assert check is not None
        defaults = check(**hyperparameters, agc_clipping=agc_clipping)
        super().__init__(
            params,
            defaults,
            compile=compile,
            skip_nonfinite=skip_nonfinite,
            grad_transforms=grad_transforms,
            agc_clipping=agc_clipping,
        )

    def group_hyperparameters(self, group: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
        lr, weight_decay = group["lr"], group["weight_decay"]
        numbers = {
            "lam": group["lam"],
            "beta_max": group["beta_max"],
            "beta2": group.get("beta2", 0.0),
            "eps": group.get("eps", 0.0),
            "softplus_beta": group.get("softplus_beta", 1.0),
            "step_size": -lr,
            "decay_factor": 1.0 - lr * weight_decay,
            "lr_times_decay": lr * weight_decay,
        }
        flags = {
            "second_moment": type(self).second_moment,
            "denominator": group.get("denominator", "eps"),
            "cautious": group["cautious"],
            "cautious_weight_decay": group["cautious_weight_decay"],
            "decay": weight_decay != 0.0,
        }
        return numbers, flags

    def tensor_hyperparameters(self, group: dict[str, Any], steps: torch.Tensor) -> dict[str, torch.Tensor]:
        values = {"first": (steps == 1).to(steps.dtype)}
        if type(self).second_moment:
            values["root_scale"] = (1.0 - group["beta2"] ** steps).rsqrt()
        return values

    @staticmethod
    def memory_coefficient(
        param: torch.Tensor, grad: torch.Tensor, buffers: dict[str, torch.Tensor], hp: Hyperparameters, flags: Flags
    ) -> dict[str, torch.Tensor]:
        """First phase: the second moment (AdamW) and ``beta_t`` of each tensor; ``-lam`` at its first step, which
        makes ``d`` the gradient."""
        metric = None
        if flags["second_moment"]:
            second_moment = ema_sq_(buffers["exp_avg_sq"], grad, hp["beta2"])
            metric = (second_moment.sqrt() * hp["root_scale"] + hp["eps"]).reciprocal()
        beta = adaptive_memory_coefficient(grad, buffers["exp_avg"], hp["lam"], hp["beta_max"], PER_TENSOR, metric)
        first = hp["first"]
        return {"beta": beta * (1.0 - first) - first * hp["lam"]}

    @staticmethod
    def update_param(
        param: torch.Tensor, grad: torch.Tensor, buffers: dict[str, torch.Tensor], hp: Hyperparameters, flags: Flags
    ) -> None:
        """Second phase: the direction, the (preconditioned) step, cautious mask and weight decay."""
        memory = adaptive_memory_momentum_(buffers["exp_avg"], grad, hp["beta"], hp["lam"])
        if flags["second_moment"]:
            direction = adaptive_direction(
                str(flags["denominator"]),
                memory,
                buffers["exp_avg_sq"],
                hp["root_scale"],
                hp["eps"],
                hp["softplus_beta"],
            )
        else:
            direction = memory.clone() if flags["cautious"] else memory
        if flags["cautious"]:
            cautious_mask_(direction, grad, PER_TENSOR)
        if flags["decay"]:
            if flags["cautious_weight_decay"]:
                cautious_weight_decay_(param, direction, hp["lr_times_decay"])
            else:
                decoupled_weight_decay_(param, hp["decay_factor"])
        add_scaled_(param, direction, hp["step_size"])


class AdaptiveMemorySGD(_AdaptiveMemory):
    """SGD with adaptive-memory momentum (AM-SGD): the momentum coefficient is chosen per tensor at every step.

    Per tensor at step ``t`` (``d`` starts as the first gradient)::

        beta = clip(((1 + lam) <g, d> - <d - g, g + lam d>) / ||d - g||^2, 0, beta_max)   (0 where d = g)
        d   <- ((beta + lam) d + (1 - beta) g) / (1 + lam)
        d   =  cautious mask of d against g                  (cautious)
        p   <- p - lr * weight_decay * p                     (only where d p > 0: cautious_weight_decay)
        p   <- p - lr d

    ``beta`` is the weight the proximal step on the two-plane model of the loss gives the memory's plane (see
    :func:`~lightning_opt.transforms.momentum.adaptive_memory_coefficient`): large where the gradient agrees
    with the memory, small where it turns away from it. State: 1 tensor of the parameter's size (``exp_avg``,
    the direction ``d``), as SGD with momentum.

    Args:
        params: iterable of parameters or of dicts defining parameter groups.
        lr: learning rate.
        beta_max: the largest momentum coefficient, in ``[0, 1)``.
        lam: the weight of the proximal term around the heavy-ball point (the paper's ``lambda``), ``>= 0``.
        weight_decay: decoupled weight decay, multiplied by ``lr``.
        cautious: apply the cautious mask (arXiv:2411.16085) to the step.
        cautious_weight_decay: decay only where the step and the parameter agree in sign (arXiv:2510.12402).
        compile: fuse the update with ``torch.compile`` (same numbers, faster steps).
        skip_nonfinite: leave a tensor untouched (with a warning) when its gradient has inf or NaN.
        grad_transforms: gradient transforms applied in order before the update, without changing ``p.grad``:
            ``"centralize"``, ``"adaptive_clip"``, ``"soft_clip"`` (:mod:`lightning_opt.transforms.gradient`).
        agc_clipping: the largest unit-wise gradient-to-parameter norm ratio of ``"adaptive_clip"``.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> optimizer = AdaptiveMemorySGD(model.parameters(), lr=0.1, cautious=True)
        >>> model(torch.randn(8, 4)).square().mean().backward()
        >>> optimizer.step()

    References:
        Topollai & Choromanska, "Adaptive Memory Momentum via a Model-Based Framework for Deep Learning
        Optimization", arXiv:2510.04988.
    """

    buffer_names = ("exp_avg",)
    hyperparameter_check = staticmethod(check_sgd)

    def __init__(
        self,
        params: ParamsT,
        lr: float = 0.1,
        beta_max: float = 0.9,
        lam: float = 0.1,
        weight_decay: float = 0.0,
        cautious: bool = False,
        cautious_weight_decay: bool = False,
        compile: bool = False,
        skip_nonfinite: bool = False,
        grad_transforms: Sequence[str] = (),
        agc_clipping: float = AGC_CLIPPING,
    ) -> None:
        super().__init__(
            params, lr=lr, beta_max=beta_max, lam=lam, weight_decay=weight_decay, cautious=cautious,
            cautious_weight_decay=cautious_weight_decay, compile=compile, skip_nonfinite=skip_nonfinite,
            grad_transforms=grad_transforms, agc_clipping=agc_clipping,
        )


class AdaptiveMemoryAdamW(_AdaptiveMemory):
    """AdamW with adaptive-memory momentum (AM-AdamW): Adam's first moment with a coefficient chosen per tensor at
    every step.

    Per tensor at step ``t`` (``m`` starts as the first gradient, so it needs no bias correction)::

        v   <- beta2 v + (1 - beta2) g^2,   w = 1 / (sqrt(v / (1 - beta2**t)) + eps)
        beta = clip(((1 + lam) <g, w m> - <m - g, w (g + lam m)>) / <m - g, w (m - g)>, 0, beta_max)
        m   <- ((beta + lam) m + (1 - beta) g) / (1 + lam)
        u    = m / (sqrt(v / (1 - beta2**t)) + eps)         (or atan2 / softplus: ``denominator``)
        u    = cautious mask of u against g                 (cautious)
        p   <- p - lr * weight_decay * p                    (only where u p > 0: cautious_weight_decay)
        p   <- p - lr u

    ``beta`` as in :class:`AdaptiveMemorySGD`, with the sums in the metric of Adam's preconditioned step (see the
    module docstring for how this differs from the paper's Algorithm 3). State: 2 tensors of the parameter's
    size (``exp_avg``, ``exp_avg_sq``), as AdamW.

    Args:
        params: iterable of parameters or of dicts defining parameter groups.
        lr: learning rate.
        beta_max: the largest momentum coefficient, in ``[0, 1)``.
        beta2: coefficient of the running average of the squared gradient.
        eps: added to ``sqrt(v_hat)`` (``"eps"`` and ``"softplus"`` denominators; unused by ``"atan2"``).
        lam: the weight of the proximal term around the heavy-ball point (the paper's ``lambda``), ``>= 0``.
        weight_decay: decoupled weight decay (AdamW), multiplied by ``lr``.
        denominator: ``"eps"`` (``m / (sqrt(v_hat) + eps)``), ``"atan2"`` (``1.27 * atan2(m, sqrt(v_hat))``,
            eps-free, arXiv:2407.05872) or ``"softplus"`` (``m / softplus_beta(sqrt(v_hat) + eps)``, Sadam,
            arXiv:1908.00700).
        softplus_beta: the ``beta`` of the softplus denominator.
        cautious: apply the cautious mask (arXiv:2411.16085) to the update.
        cautious_weight_decay: decay only where the update and the parameter agree in sign (arXiv:2510.12402).
        compile: fuse the update with ``torch.compile`` (same numbers, faster steps).
        skip_nonfinite: leave a tensor untouched (with a warning) when its gradient has inf or NaN.
        grad_transforms: gradient transforms applied in order before the update, without changing ``p.grad``:
            ``"centralize"``, ``"adaptive_clip"``, ``"soft_clip"`` (:mod:`lightning_opt.transforms.gradient`).
        agc_clipping: the largest unit-wise gradient-to-parameter norm ratio of ``"adaptive_clip"``.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> optimizer = AdaptiveMemoryAdamW(model.parameters(), denominator="atan2", cautious_weight_decay=True)
        >>> model(torch.randn(8, 4)).square().mean().backward()
        >>> optimizer.step()

    References:
        Topollai & Choromanska, "Adaptive Memory Momentum via a Model-Based Framework for Deep Learning
        Optimization", arXiv:2510.04988; Loshchilov & Hutter, "Decoupled Weight Decay Regularization",
        arXiv:1711.05101.
    """

    second_moment = True
    buffer_names = ("exp_avg", "exp_avg_sq")
    hyperparameter_check = staticmethod(check_adamw)

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        beta_max: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        lam: float = 0.1,
        weight_decay: float = 1e-2,
        denominator: str = "eps",
        softplus_beta: float = 50.0,
        cautious: bool = False,
        cautious_weight_decay: bool = False,
        compile: bool = False,
        skip_nonfinite: bool = False,
        grad_transforms: Sequence[str] = (),
        agc_clipping: float = AGC_CLIPPING,
    ) -> None:
        super().__init__(
            params, lr=lr, beta_max=beta_max, beta2=beta2, eps=eps, lam=lam, weight_decay=weight_decay,
            denominator=denominator,
            softplus_beta=softplus_beta, cautious=cautious, cautious_weight_decay=cautious_weight_decay,
            compile=compile, skip_nonfinite=skip_nonfinite, grad_transforms=grad_transforms,
            agc_clipping=agc_clipping,
        )
