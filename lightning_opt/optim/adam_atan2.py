"""Adam-atan2: Adam without eps, with optional cautious mask, cautious weight decay, Nesterov momentum, LAMB's
trust ratio and stable weight decay."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from lightning_opt.engine import BaseOptimizer, Flags, Hyperparameters
from lightning_opt.engine.base import ParamsT
from lightning_opt.optim.adam_family import decay_and_step_, stable_weight_decay_statistics
from lightning_opt.transforms import (
    add_scaled,
    atan2_direction,
    cautious_mask_,
    ema_,
    ema_sq_,
)
from lightning_opt.transforms.arith import scaled
from lightning_opt.transforms.gradient import AGC_CLIPPING, check_agc_clipping
from lightning_opt.transforms.reductions import PER_TENSOR
from lightning_opt.validation import (
    check_betas,
    check_bool,
    check_decay_factor,
    check_float,
    check_float32,
    check_step_size,
)


def check_hyperparameters(
    lr: Any,
    betas: Any,
    weight_decay: Any,
    a: Any,
    b: Any,
    cautious: Any,
    cautious_weight_decay: Any,
    nesterov: Any,
    agc_clipping: Any = AGC_CLIPPING,
    trust_ratio: Any = False,
    stable_weight_decay: Any = False,
) -> dict[str, Any]:
    """Validate AdamAtan2's hyper-parameters (one group's, or the defaults) and return them normalised.

    Example:
        >>> check_hyperparameters(1e300, (0.9, 0.999), 0.0, 1.27, 1.0, False, False, False)
        Traceback (most recent call last):
        ...
        ValueError: Invalid lr: 1e+300 (the largest step size lr * a * pi / 2 with a=1.27 = 1.995e+300 must be \
below 2**24 = 16777216)
    """
    lr = check_float("lr", lr, low=0.0)
    a = check_float32("a", a)
    check_step_size("lr", lr, lr * a * math.pi / 2, "lr * a * pi / 2 with a={a:g}", a=a)
    weight_decay = check_float("weight_decay", weight_decay, low=0.0)
    check_decay_factor("weight_decay", weight_decay, lr * weight_decay, "{lr:g} * weight_decay", lr=lr)
    return dict(
        lr=lr,
        betas=check_betas(betas),
        weight_decay=weight_decay,
        a=a,
        b=check_float32("b", b),
        cautious=check_bool("cautious", cautious),
        cautious_weight_decay=check_bool("cautious_weight_decay", cautious_weight_decay),
        nesterov=check_bool("nesterov", nesterov),
        agc_clipping=check_agc_clipping(agc_clipping),
        trust_ratio=check_bool("trust_ratio", trust_ratio),
        stable_weight_decay=check_bool("stable_weight_decay", stable_weight_decay),
    )


class AdamAtan2(BaseOptimizer):
    r"""Adam with ``atan2`` in place of ``m / (sqrt(v) + eps)``: no eps, bounded and NaN-free steps.

    For each tensor, with bias corrections ``bc1 = 1 - beta1**t`` and ``bc2 = 1 - beta2**t``::

        m <- beta1 m + (1 - beta1) g           v <- beta2 v + (1 - beta2) g^2
        u  = a * atan2(m / bc1, b * sqrt(v / bc2))
        p <- p (1 - lr * weight_decay) - lr * u

    ``nesterov`` replaces ``m / bc1`` by the NAdam look-ahead
    ``beta1 m / (1 - beta1**(t+1)) + (1 - beta1) g / bc1``; ``cautious`` zeroes the coordinates of ``u``
    whose sign disagrees with ``g`` and rescales the rest; ``cautious_weight_decay`` decays only the
    coordinates where ``u`` and ``p`` share a sign. ``stable_weight_decay`` and ``trust_ratio`` are the Adam family's
    (:class:`~lightning_opt.optim.adam_family.AdamFamily`): the decay divided by ``sqrt(mean(v_hat)) + 1e-8`` over
    the whole model (SWD), and LAMB's ``u <- u + weight_decay * p`` rescaled per tensor to ``min(||p||, 10) / ||u||``
    (with ``u = a * atan2(...)``).

    Args:
        params: iterable of parameters or of dicts defining parameter groups.
        lr: learning rate.
        betas: coefficients of the running averages of the gradient and of its square.
        weight_decay: decoupled weight decay (AdamW style), multiplied by ``lr``.
        a: scale of the ``atan2`` output (1.27 in the paper, so small updates match Adam's).
        b: scale of the denominator inside ``atan2`` (1 in the paper).
        cautious: apply the cautious mask (arXiv:2411.16085) to the update.
        cautious_weight_decay: apply weight decay only where update and parameter agree in sign
            (arXiv:2510.12402).
        nesterov: use Nesterov momentum (NAdam look-ahead) in the numerator.
        trust_ratio: LAMB's layer-wise trust ratio (arXiv:1904.00962).
        stable_weight_decay: stable weight decay (SWD, arXiv:2011.11152), once per step over the whole model.
        compile: fuse the update with ``torch.compile`` (same numbers, faster steps).
        skip_nonfinite: leave a tensor untouched (with a warning) when its gradient has inf or NaN.
        grad_transforms: gradient transforms applied in order before the update, without changing
            ``p.grad``: ``"centralize"`` (arXiv:2004.01461), ``"adaptive_clip"`` (arXiv:2102.06171),
            ``"soft_clip"`` (the seed's per-unit RMS clip), ``"normalize"`` (``g / (||g|| + eps)`` per tensor); see
            :mod:`lightning_opt.transforms.gradient`.
        agc_clipping: the largest unit-wise gradient-to-parameter norm ratio of ``"adaptive_clip"``.

    Bounds (see :mod:`lightning_opt.validation`): ``|atan2| <= pi / 2`` (its second argument is >= 0), so a
    coordinate moves by at most ``lr * a * pi / 2`` (before the cautious rescale), which must stay below
    ``2**24``; the decay factor ``1 - lr * weight_decay`` must stay in ``[0, 1]``; ``a`` and ``b`` must be
    representable in float32. They hold for every parameter group, at construction, in ``add_param_group``
    and at each step (a scheduler may change ``lr``).

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> optimizer = AdamAtan2(model.parameters(), lr=1e-3, cautious=True)
        >>> model(torch.randn(8, 4)).square().mean().backward()
        >>> optimizer.step()

    References:
        Everett et al., "Scaling Exponents Across Parameterizations and Optimizers", arXiv:2407.05872.
        Liang et al., "Cautious Optimizers", arXiv:2411.16085. Chen et al., "Cautious Weight Decay",
        arXiv:2510.12402. Dozat, "Incorporating Nesterov Momentum into Adam", ICLR 2016 workshop.
    """

    buffer_names = ("exp_avg", "exp_avg_sq")
    hyperparameter_check = staticmethod(check_hyperparameters)

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 1e-2,
        a: float = 1.27,
        b: float = 1.0,
        cautious: bool = False,
        cautious_weight_decay: bool = False,
        nesterov: bool = False,
        trust_ratio: bool = False,
        stable_weight_decay: bool = False,
        compile: bool = False,
        skip_nonfinite: bool = False,
        grad_transforms: Sequence[str] = (),
        agc_clipping: float = AGC_CLIPPING,
    ) -> None:
        defaults = check_hyperparameters(
            lr, betas, weight_decay, a, b, cautious, cautious_weight_decay, nesterov, agc_clipping, trust_ratio,
            stable_weight_decay,
        )
        if defaults["trust_ratio"]:  # per-tensor norms: a sharded (FSDP2) tensor is refused
            self.whole_tensor_statistics = True
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
            "beta1": group["betas"][0],
            "beta2": group["betas"][1],
            "step_size": -lr * group["a"],
            "decay_factor": 1.0 - lr * weight_decay,
            "lr_times_decay": lr * weight_decay,
            "a": group["a"],
            "weight_decay": weight_decay,  # inside u under the trust ratio, where u = a * atan2(...) + wd * p
            "trust_step_size": -lr,
        }
        flags = {
            "cautious": group["cautious"],
            "cautious_weight_decay": group["cautious_weight_decay"],
            "nesterov": _uses_nesterov(group),
            "decay": weight_decay != 0.0,
            "trust_ratio": group.get("trust_ratio", False),
            "stable_weight_decay": bool(group.get("stable_weight_decay")) and weight_decay != 0.0,
        }
        return numbers, flags

    def step_statistics(self) -> dict[str, torch.Tensor]:
        """SWD's ``swd_scale`` over the whole model when a group uses ``stable_weight_decay``
        (:func:`~lightning_opt.optim.adam_family.stable_weight_decay_statistics`)."""
        return stable_weight_decay_statistics(self)

    def tensor_hyperparameters(self, group: dict[str, Any], steps: torch.Tensor) -> dict[str, torch.Tensor]:
        beta1, beta2 = group["betas"]
        bias_correction1 = 1.0 - beta1**steps
        bias_correction2 = 1.0 - beta2**steps
        # atan2(k y, k x) = atan2(y, x) for k > 0: divide both arguments by the numerator's coefficient
        # on m, so the numerator is m itself (plus a multiple of g with Nesterov).
        if _uses_nesterov(group):
            m_coef = beta1 / (1.0 - beta1 ** (steps + 1))
            g_coef = (1.0 - beta1) / bias_correction1
        else:
            m_coef, g_coef = 1.0 / bias_correction1, torch.zeros_like(steps)
        return {"denominator_scale": group["b"] / (bias_correction2.sqrt() * m_coef), "grad_ratio": g_coef / m_coef}

    @staticmethod
    def update(
        param: torch.Tensor, grad: torch.Tensor, buffers: dict[str, torch.Tensor], hp: Hyperparameters, flags: Flags
    ) -> None:
        exp_avg, exp_avg_sq = buffers["exp_avg"], buffers["exp_avg_sq"]
        ema_(exp_avg, grad, hp["beta1"])
        ema_sq_(exp_avg_sq, grad, hp["beta2"])
        numerator = add_scaled(exp_avg, grad, hp["grad_ratio"]) if flags["nesterov"] else exp_avg
        direction = atan2_direction(numerator, exp_avg_sq, hp["denominator_scale"])
        if flags["cautious"]:
            cautious_mask_(direction, grad, PER_TENSOR)
        if flags["trust_ratio"]:  # LAMB's u is the whole step: a included (a ratio of 1 keeps it)
            direction = scaled(direction, hp["a"])
        decay_and_step_(param, direction, hp, flags)


def _uses_nesterov(group: dict[str, Any]) -> bool:
    # With beta1 = 0 the first moment is the gradient itself and the look-ahead changes nothing.
    return group["nesterov"] and group["betas"][0] > 0.0
