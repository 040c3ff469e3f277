"""Amos: Adam-style steps with one second moment per tensor and a weight decay that adapts towards a scale."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from lightning_opt.engine import BaseOptimizer, Flags, Hyperparameters, OptionalBuffer
from lightning_opt.engine.base import ParamsT
from lightning_opt.transforms import decoupled_weight_decay_
from lightning_opt.transforms.gradient import AGC_CLIPPING, check_agc_clipping
from lightning_opt.transforms.reductions import PER_TENSOR, count_from, sum_from
from lightning_opt.validation import (
    FLOAT32_MAX,
    check_decay_factor,
    check_float,
    check_float32,
    check_probability,
    check_step_size,
)

PER_TENSOR_STATE = ("exp_avg_sq", "decay", "target_scale")
"""Amos's state of one number per tensor: the second moment ``v``, the decay ``b`` and the target scale."""

MAX_TARGET_SCALE = math.sqrt(2.0)
"""The largest :func:`target_scale`: a 2-D weight with one input column."""


def target_scale(shape: torch.Size) -> float:
    """The model-oriented scale ``eta`` of a parameter of ``shape``, as pytorch_optimizer's ``Amos.get_scale``:
    0.5 for 0-d and 1-D parameters (biases, norm gains), ``sqrt(2 / shape[1])`` for a 2-D weight (He scale
    of a ``(out, in)`` linear layer), ``sqrt(1 / shape[1])`` for more dimensions (convolutions).

    Example:
        >>> target_scale(torch.Size([10])), target_scale(torch.Size([4, 8])), target_scale(torch.Size([4, 16, 3, 3]))
        (0.5, 0.5, 0.25)
    """
    if len(shape) <= 1:
        return 0.5
    if len(shape) == 2:
        return math.sqrt(2.0 / max(shape[1], 1))
    return math.sqrt(1.0 / max(shape[1], 1))


def check_hyperparameters(
    lr: Any,
    beta: Any,
    momentum: Any,
    extra_l2: Any,
    c_coef: Any,
    d_coef: Any,
    eps: Any,
    weight_decay: Any,
    agc_clipping: Any = AGC_CLIPPING,
) -> dict[str, Any]:
    """Validate Amos's hyper-parameters (one group's, or the defaults) and return them normalised.

    Example:
        >>> check_hyperparameters(2e7, 0.999, 0.0, 0.0, 0.25, 0.25, 1e-18, 0.0)
        Traceback (most recent call last):
        ...
        ValueError: Invalid lr: 20000000.0 (the largest step size lr * sqrt(2) (the largest target scale) = \
2.828e+07 must be below 2**24 = 16777216)
    """
    lr = check_float("lr", lr, low=0.0)
    check_step_size("lr", lr, lr * MAX_TARGET_SCALE, "lr * sqrt(2) (the largest target scale)")
    weight_decay = check_float("weight_decay", weight_decay, low=0.0)
    check_decay_factor("weight_decay", weight_decay, lr * weight_decay, "{lr:g} * weight_decay", lr=lr)
    return dict(
        lr=lr,
        beta=check_probability("beta", beta),
        momentum=check_probability("momentum", momentum),
        extra_l2=check_float("extra_l2", extra_l2, low=0.0, high=FLOAT32_MAX),
        c_coef=check_float("c_coef", c_coef, low=0.0, high=FLOAT32_MAX),
        d_coef=check_float("d_coef", d_coef, low=0.0, high=FLOAT32_MAX),
        eps=check_float32("eps", eps),
        weight_decay=weight_decay,
        agc_clipping=check_agc_clipping(agc_clipping),
    )


class Amos(BaseOptimizer):
    r"""Amos (Tian & Parikh): Adam-style steps with one second moment per tensor, and a weight decay that grows
    adaptively and pulls each tensor towards a model-oriented scale ``eta`` (:func:`target_scale`).

    For each tensor, with ``g2 = mean(g^2)`` over the tensor, ``bc = 1 - beta**t`` and ``init_lr = lr * eta``::

        v  <- beta v + (1 - beta) g2                         (one number per tensor)
        r   = bc / (v + eps)
        c   = 1 / sqrt(1 + c_coef sqrt(lr) b)                d = 1 / (1 + d_coef sqrt(init_lr) b)
        gamma = c lr^2 r g2
        u   = d (init_lr sqrt(r) g + (gamma / 2 + extra_l2) p)
        b  <- b (1 + gamma) + gamma                          (one number per tensor)
        m  <- momentum m + (1 - momentum) u,  u = m          (if momentum > 0)
        p  <- p (1 - lr weight_decay) - u

    This is ``pytorch_optimizer.Amos``'s rule with its defaults (``lr=1e-3``, ``beta=0.999``, no momentum,
    ``extra_l2=0``, ``c_coef = d_coef = 0.25``, ``eps=1e-18``), to float32 rounding, with one deviation:
    ``extra_l2`` adds to the decay as in the authors' code (jestimator: ``(gamma / 2 + extra_l2) p``), where
    pytorch_optimizer subtracts half of it (``(gamma - extra_l2) / 2 * p``, a growth of the weights); with the
    default ``extra_l2 = 0`` both are the same. Also: ``eps`` must be positive (with 0, a tensor whose gradients
    have all been 0 gets ``0 * inf``), ``weight_decay`` (decoupled, as AdamW's; 0 by default: Amos decays by
    itself) is ours, there is no ``maximize``, and sparse gradients are refused.

    **Memory**: three numbers per tensor (``exp_avg_sq``, ``decay``, and ``target_scale``, the tensor's
    ``eta``, kept in the state so that the update can read it), plus, only if the constructor's ``momentum``
    is above 0, an ``exp_avg`` of the parameter's shape: about 0 bytes per parameter without momentum, 4
    (float32) with it, against AdamW's 8. A 0-d or 1-D parameter has ``eta = 0.5`` and the same per-tensor
    second moment as any other (for a 0-d one, ``g2 = g^2``).

    The second moment is a mean over the whole tensor, so Amos refuses DTensor-sharded (FSDP2) parameters
    (``whole_tensor_statistics``).

    Args:
        params: iterable of parameters or of dicts defining parameter groups.
        lr: learning rate (the paper's ``xi``; the authors suggest about ``1 / sqrt(number of batches)``).
        beta: coefficient of the running average of ``mean(g^2)``, in [0, 1); ``1 - beta`` should be of the
            order of ``lr``.
        momentum: coefficient of a running average of the updates, in [0, 1); 0 keeps no buffer. A group may
            set its own momentum only if the constructor's is above 0 (only then are ``exp_avg`` buffers kept).
        extra_l2: additional L2 decay towards 0 (>= 0).
        c_coef: how fast the decay's growth slows down as ``b`` grows (>= 0).
        d_coef: how fast the step shrinks as ``b`` grows (>= 0).
        eps: added to ``v`` (> 0).
        weight_decay: decoupled weight decay (AdamW style), multiplied by ``lr``, on top of Amos's own decay;
            not in the paper.
        compile: fuse the update with ``torch.compile`` (same numbers, faster steps).
        skip_nonfinite: leave a tensor untouched (with a warning) when its gradient has inf or NaN.
        grad_transforms: gradient transforms applied in order before the update, without changing
            ``p.grad``: ``"centralize"`` (arXiv:2004.01461), ``"adaptive_clip"`` (arXiv:2102.06171),
            ``"soft_clip"`` (the seed's per-unit RMS clip); see :mod:`lightning_opt.transforms.gradient`.
        agc_clipping: the largest unit-wise gradient-to-parameter norm ratio of ``"adaptive_clip"``.

    Bounds (see :mod:`lightning_opt.validation`): the gradient term is ``lr * eta`` times a direction of
    RMS about 1 per tensor; ``lr * sqrt(2)`` (the largest ``eta``) must stay below ``2**24``; ``extra_l2``,
    ``c_coef`` and ``d_coef`` must be representable in float32; the decay factor ``1 - lr * weight_decay`` must
    stay in ``[0, 1]``.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> optimizer = Amos(model.parameters(), lr=1e-2)
        >>> model(torch.randn(8, 4)).square().mean().backward()
        >>> optimizer.step()
        >>> sorted(optimizer.state[model.weight])
        ['decay', 'exp_avg_sq', 'step', 'target_scale']

    References:
        Tian & Parikh, "Amos: An Adam-style Optimizer with Adaptive Weight Decay towards Model-Oriented Scale",
        arXiv:2210.11693.
    """

    hyperparameter_check = staticmethod(check_hyperparameters)
    whole_tensor_statistics = True

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        beta: float = 0.999,
        momentum: float = 0.0,
        extra_l2: float = 0.0,
        c_coef: float = 0.25,
        d_coef: float = 0.25,
        eps: float = 1e-18,
        weight_decay: float = 0.0,
        compile: bool = False,
        skip_nonfinite: bool = False,
        grad_transforms: Sequence[str] = (),
        agc_clipping: float = AGC_CLIPPING,
    ) -> None:
        defaults = check_hyperparameters(lr, beta, momentum, extra_l2, c_coef, d_coef, eps, weight_decay, agc_clipping)
        super().__init__(
            params,
            defaults,
            compile=compile,
            skip_nonfinite=skip_nonfinite,
            grad_transforms=grad_transforms,
            agc_clipping=agc_clipping,
        )

    buffer_names = PER_TENSOR_STATE
    optional_buffers = {"exp_avg": OptionalBuffer("momentum", lambda momentum: momentum > 0.0, "momentum buffer")}

    def buffer_shapes(self, shape: torch.Size) -> dict[str, tuple[int, ...]]:
        one = (1,) * len(self.stack_view(shape))
        return {name: one for name in PER_TENSOR_STATE}

    def init_state(self, param: torch.Tensor, state: dict[str, Any]) -> None:
        """Zero buffers (:meth:`BaseOptimizer.init_state`), and ``target_scale`` filled with the tensor's eta."""
        super().init_state(param, state)
        state["target_scale"].fill_(target_scale(param.shape))

    def group_hyperparameters(self, group: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
        lr, momentum = group["lr"], group["momentum"]
        numbers = {
            "one_minus_beta": 1.0 - group["beta"],
            "eps": group["eps"],
            "lr": lr,
            "lr_squared": lr * lr,
            "c_scale": group["c_coef"] * math.sqrt(lr),
            "d_scale": group["d_coef"] * math.sqrt(lr),
            "extra_l2": group["extra_l2"],
            "momentum": momentum,
            "decay_factor": 1.0 - lr * group["weight_decay"],
        }
        flags = {
            "momentum": momentum > 0.0,
            "decay": group["weight_decay"] != 0.0,
        }
        return numbers, flags

    def tensor_hyperparameters(self, group: dict[str, Any], steps: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"bias_correction": 1.0 - group["beta"] ** steps}

    @staticmethod
    def second_moment(
        param: torch.Tensor, grad: torch.Tensor, buffers: dict[str, torch.Tensor], hp: Hyperparameters, flags: Flags
    ) -> dict[str, torch.Tensor]:
        """First pass: ``mean(g^2)`` of each tensor."""
        g2 = sum_from(grad * grad, PER_TENSOR, by_rows=True) / count_from(grad, PER_TENSOR)
        return {"g2": g2}

    @staticmethod
    def update_param(
        param: torch.Tensor, grad: torch.Tensor, buffers: dict[str, torch.Tensor], hp: Hyperparameters, flags: Flags
    ) -> None:
        """Second pass: the per-tensor numbers, then the step."""
        v, b, eta = buffers["exp_avg_sq"], buffers["decay"], buffers["target_scale"]
        g2 = hp["g2"].to(v.dtype)
        v.lerp_(g2, hp["one_minus_beta"])
        r = hp["bias_correction"] / (v + hp["eps"])
        init_lr = eta * hp["lr"]
        decay_c = torch.rsqrt(1.0 + b * hp["c_scale"])
        decay_d = torch.reciprocal(1.0 + eta.sqrt() * b * hp["d_scale"])
        gamma = decay_c * hp["lr_squared"] * r * g2
        update = (param * (gamma * 0.5 + hp["extra_l2"]) + grad * (r.sqrt() * init_lr)) * decay_d
        b.mul_(1.0 + gamma).add_(gamma)
        if flags["momentum"]:
            exp_avg = buffers["exp_avg"]
            exp_avg.lerp_(update.to(exp_avg.dtype), 1.0 - hp["momentum"])  # bf16: numbers in float32
            update = exp_avg
        if flags["decay"]:
            decoupled_weight_decay_(param, hp["decay_factor"])
        param.sub_(update)

    # mean(g^2) of the whole tensor is needed before any element can move: two passes over the gradient.
    phases = ("second_moment", "update_param")
