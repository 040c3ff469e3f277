"""The Adam family as one configurable update and named presets of its pieces.

One update (:meth:`AdamFamily.update`) composes the pieces of :mod:`lightning_opt.transforms`:

- first moment: an EMA of the gradient (with the NAdam look-ahead as the ``nesterov`` option), or PNM's two
  momenta alternating by step parity (:func:`~lightning_opt.transforms.momentum.positive_negative_momentum_`);
- second moment: of the gradient (Adam), of the momentum (AdaMomentum), or none (PNM), optionally with a
  running maximum (AMSGrad, as AdaPNM uses it);
- denominator: ``"eps"``, ``"atan2"`` or ``"softplus"``
  (:func:`~lightning_opt.transforms.denominators.adaptive_direction`);
- accelerators: diffGrad's friction, AdaNorm's gradient-norm correction
  (:mod:`lightning_opt.transforms.acceleration`);
- the cautious mask and cautious (or decoupled) weight decay, on every preset.

The presets (:class:`DiffGrad`, :class:`AdaMomentum`, :class:`AdaNorm`, :class:`PNM`, :class:`AdaPNM`,
:class:`SAdam`) are thin subclasses: which pieces they use (class attributes, constant per compiled graph) and
their defaults. The numbers follow ``torch.optim.Adam``'s placement of eps, ``m_hat / (sqrt(v_hat) + eps)``;
pytorch_optimizer, whose DiffGrad, AdaNorm, PNM and AdaPNM are the oracles, divides by ``(sqrt(v + 1e-15) + eps)
/ sqrt(1 - beta2**t)`` instead: the same update but for eps, which it scales by ``1 / sqrt(1 - beta2**t)``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any, Callable, ClassVar

import torch

from lightning_opt.engine import BaseOptimizer, Flags, Hyperparameters
from lightning_opt.engine.base import ParamsT
from lightning_opt.transforms import (
    add_scaled_,
    cautious_mask_,
    cautious_weight_decay_,
    decoupled_weight_decay_,
    ema_,
    ema_sq_,
)
from lightning_opt.transforms.acceleration import friction_, gradient_norm_correction_, momentum_second_moment_
from lightning_opt.transforms.denominators import ATAN2_SCALE, DENOMINATORS, adaptive_direction
from lightning_opt.transforms.gradient import (
    AGC_CLIPPING,
    apply_gradient_transforms,
    check_agc_clipping,
    check_grad_transforms,
)
from lightning_opt.transforms.momentum import (
    nesterov_coefficients,
    nesterov_numerator,
    pnm_noise_norm,
    positive_negative_momentum_,
)
from lightning_opt.transforms.reductions import PER_TENSOR, sum_from
from lightning_opt.transforms.trust_ratio import trust_ratio
from lightning_opt.transforms.weight_decay import SWD_EPS, stable_weight_decay_, stable_weight_decay_scale_of_sums
from lightning_opt.validation import (
    FLOAT32_MAX,
    check_betas,
    check_bool,
    check_choice,
    check_decay_factor,
    check_float,
    check_float32,
    check_probability,
    check_step_size,
)

_CHECKS: dict[str, Callable[[Any], Any]] = {
    "betas": check_betas,
    "momentum": lambda value: check_probability("momentum", value),
    "eps": lambda value: check_float32("eps", value),
    "denominator": lambda value: check_choice("denominator", value, DENOMINATORS),
    "softplus_beta": lambda value: check_float32("softplus_beta", value),
    "beta0": lambda value: check_float("beta0", value, low=0.0, high=FLOAT32_MAX),
    "norm_beta": lambda value: check_probability("norm_beta", value),
    "cautious": lambda value: check_bool("cautious", value),
    "cautious_weight_decay": lambda value: check_bool("cautious_weight_decay", value),
    "nesterov": lambda value: check_bool("nesterov", value),
    "trust_ratio": lambda value: check_bool("trust_ratio", value),
    "stable_weight_decay": lambda value: check_bool("stable_weight_decay", value),
    "agc_clipping": check_agc_clipping,
}


def check_hyperparameters(**values: Any) -> dict[str, Any]:
    """Validate the hyper-parameters of a preset of the family (one group's, or the defaults); return them
    normalised. Each preset validates exactly its own arguments (:meth:`AdamFamily.hyperparameter_names`).

    The step-size bound: with ``denominator="atan2"`` a coordinate moves by at most ``lr * 1.27 * pi / 2``
    (before the cautious rescale); the other denominators have no such bound, and ``lr``, the scale of every
    coordinate's step, must itself stay below ``2**24``. The decay factor ``1 - lr * weight_decay`` must stay in
    ``[0, 1]``.

    Example:
        >>> check_hyperparameters(lr=1e7, weight_decay=0.0, denominator="atan2")
        Traceback (most recent call last):
        ...
        ValueError: Invalid lr: 10000000.0 (the largest step size lr * 1.27 * pi / 2 = 1.995e+07 must be below \
2**24 = 16777216)
    """
    lr = check_float("lr", values["lr"], low=0.0)
    if values.get("denominator") == "atan2":
        check_step_size("lr", lr, lr * ATAN2_SCALE * math.pi / 2, "lr * 1.27 * pi / 2")
    else:
        check_step_size("lr", lr, lr, "lr")
    weight_decay = check_float("weight_decay", values["weight_decay"], low=0.0)
    check_decay_factor("weight_decay", weight_decay, lr * weight_decay, "{lr:g} * weight_decay", lr=lr)
    checked = {"lr": lr, "weight_decay": weight_decay}
    for name, value in values.items():
        if name not in checked:
            checked[name] = _CHECKS[name](value)
    return checked


def _check_for(names: Sequence[str]) -> Callable[..., dict[str, Any]]:
    """:func:`check_hyperparameters` with a signature of exactly ``names`` (the engine passes a group's values
    by the names of the check's arguments)."""

    def check(**values: Any) -> dict[str, Any]:
        return check_hyperparameters(**values)

    check.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY) for name in names]
    )
    check.__doc__ = check_hyperparameters.__doc__
    return check


class AdamFamily(BaseOptimizer):
    r"""The configurable update of the Adam family; with no piece switched on, Adam (AdamW's decoupled decay).

    For each tensor at step ``t``, ``bc1 = 1 - beta1**t``, ``bc2 = 1 - beta2**t``::

        s  = AdaNorm factor (norm_correction) or 1        m <- beta1 m + (1 - beta1) s g
        n  = m / bc1   (nesterov: beta1 m / (1 - beta1**(t+1)) + (1 - beta1) s g / bc1)
        v <- beta2 v + (1 - beta2) g^2                   (second_moment "momentum": m^2, plus eps)
        u  = n / (sqrt(v / bc2) + eps)                   (or atan2 / softplus: ``denominator``)
        u  = u * sigmoid(|g_prev - g|)                   (friction)
        u  = cautious mask of u against g                (cautious)
        p <- p - lr * weight_decay * p                   (only where u p > 0: cautious_weight_decay)
        p <- p - lr * u

    ``stable_weight_decay`` (SWD, arXiv:2011.11152) divides the decay by ``sqrt(mean(v_hat)) + eps``, the mean
    over every element of the whole model (all groups; all ranks under torch.distributed) of the second moment
    this step divides by, computed once per step before any update (:meth:`step_statistics`); the coefficient
    ``lr * weight_decay / (sqrt(mean(v_hat)) + eps)`` is capped at 1. ``trust_ratio`` (LAMB, arXiv:1904.00962)
    moves the decay inside the update, ``u <- u + weight_decay * p``, and rescales it per tensor,
    ``u <- u * min(||p||, 10) / ||u||`` (1 where either norm is 0), before ``p <- p - lr * u``.

    Use a preset (:class:`DiffGrad`, :class:`AdaMomentum`, :class:`AdaNorm`, :class:`PNM`, :class:`AdaPNM`,
    :class:`SAdam`); a subclass chooses its pieces with the class attributes below and its arguments with
    :meth:`hyperparameter_names` and its ``__init__``.

    Args:
        params: iterable of parameters or of dicts defining parameter groups.
        lr: learning rate.
        weight_decay: decoupled weight decay (AdamW style), multiplied by ``lr``.
        compile: fuse the update with ``torch.compile`` (same numbers, faster steps).
        skip_nonfinite: leave a tensor untouched (with a warning) when its gradient has inf or NaN.
        grad_transforms: gradient transforms applied in order before the update, without changing ``p.grad``
            (see :mod:`lightning_opt.transforms.gradient`).
        agc_clipping: the largest unit-wise gradient-to-parameter norm ratio of ``"adaptive_clip"``.
        **hyperparameters: the preset's own (``betas``, ``eps``, ``denominator``, ``cautious``...), validated by
            :func:`check_hyperparameters`.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> optimizer = DiffGrad(model.parameters(), denominator="atan2", cautious=True)
        >>> model(torch.randn(8, 4)).square().mean().backward()
        >>> optimizer.step()

    References:
        Kingma & Ba, "Adam", arXiv:1412.6980; and those of the presets and of the pieces.
    """

    momentum_kind: ClassVar[str] = "ema"
    """``"ema"`` (one momentum, ``betas[0]``) or ``"pnm"`` (two momenta by step parity, ``momentum`` or
    ``betas[0]`` squared as their coefficient, mixed by ``beta0``)."""
    second_moment: ClassVar[str] = "grad"
    """``"grad"`` (Adam), ``"momentum"`` (AdaMomentum) or ``"none"`` (SGD-type: no denominator)."""
    amsgrad: ClassVar[bool] = False
    """Divide by the running maximum of the second moment (AdaPNM)."""
    friction: ClassVar[bool] = False
    """diffGrad's friction (keeps the previous gradient)."""
    norm_correction: ClassVar[bool] = False
    """AdaNorm's gradient-norm correction (keeps one running norm per tensor)."""
    pnm_bias_correction: ClassVar[bool] = True
    """Whether PNM's mix of momenta is divided by ``1 - beta1**t`` (AdaPNM: yes; PNM: no)."""

    def __init__(
        self,
        params: ParamsT,
        *,
        compile: bool = False,
        skip_nonfinite: bool = False,
        grad_transforms: Sequence[str] = (),
        agc_clipping: float = AGC_CLIPPING,
        **hyperparameters: Any,
    ) -> None:
        check = type(self).hyperparameter_check
        if check is None:
            raise TypeError("AdamFamily is the family's configurable update: use a preset (DiffGrad, AdaMomentum, "
                            "AdaNorm, PNM, AdaPNM, SAdam) or a subclass with its own __init__")
        defaults = check(**hyperparameters, agc_clipping=agc_clipping)
        if defaults.get("trust_ratio"):  # per-tensor norms: a sharded (FSDP2) tensor is refused
            self.whole_tensor_statistics = True
        super().__init__(
            params,
            defaults,
            compile=compile,
            skip_nonfinite=skip_nonfinite,
            grad_transforms=grad_transforms,
            agc_clipping=agc_clipping,
        )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        arguments = inspect.signature(cls.__init__).parameters
        names = [name for name in arguments if name in _CHECKS or name in ("lr", "weight_decay")]
        cls.hyperparameter_check = staticmethod(_check_for(names))
        buffers = ["exp_avg"]
        if cls.momentum_kind == "pnm":
            buffers.append("neg_exp_avg")
        if cls.second_moment != "none":
            buffers.append("exp_avg_sq")
            if cls.amsgrad:
                buffers.append("max_exp_avg_sq")
        if cls.friction:
            buffers.append("previous_grad")
        if cls.norm_correction:
            buffers.append("exp_grad_norm")
        cls.buffer_names = tuple(buffers)
        cls.whole_tensor_statistics = cls.norm_correction

    def buffer_shapes(self, shape: torch.Size) -> dict[str, tuple[int, ...]]:
        """The parameter's shape for every buffer but AdaNorm's running norm: one number per tensor.

        Example:
            >>> AdaNorm([torch.zeros(2)]).buffer_shapes(torch.Size([3, 4]))["exp_grad_norm"]
            (1, 1)
        """
        shapes: dict[str, tuple[int, ...]] = dict(super().buffer_shapes(shape))
        if "exp_grad_norm" in shapes:
            shapes["exp_grad_norm"] = (1,) * len(type(self).stack_view(shape))
        return shapes

    # ------------------------------------------------------------------ the numbers of a step
    @staticmethod
    def _betas(group: dict[str, Any]) -> tuple[float, float]:
        if "betas" in group:
            return group["betas"]
        return group["momentum"], 0.0

    def group_hyperparameters(self, group: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
        cls = type(self)
        lr, weight_decay = group["lr"], group["weight_decay"]
        beta1, beta2 = self._betas(group)
        denominator = group.get("denominator", "eps")
        numbers = {
            "beta1": beta1**2 if cls.momentum_kind == "pnm" else beta1,
            "beta2": beta2,
            "eps": group.get("eps", 0.0),
            "softplus_beta": group.get("softplus_beta", 1.0),
            "norm_beta": group.get("norm_beta", 0.0),
            "step_size": -lr,
            "decay_factor": 1.0 - lr * weight_decay,
            "lr_times_decay": lr * weight_decay,
            "weight_decay": weight_decay,
        }
        flags = {
            "momentum": cls.momentum_kind,
            "second_moment": cls.second_moment,
            "amsgrad": cls.amsgrad,
            "friction": cls.friction,
            "norm_correction": cls.norm_correction,
            "denominator": denominator,
            "nesterov": _uses_nesterov(group),
            "cautious": group["cautious"],
            "cautious_weight_decay": group["cautious_weight_decay"],
            "decay": weight_decay != 0.0,
            "trust_ratio": group.get("trust_ratio", False),
            "stable_weight_decay": _uses_stable_weight_decay(cls, group),
        }
        return numbers, flags

    def tensor_hyperparameters(self, group: dict[str, Any], steps: torch.Tensor) -> dict[str, torch.Tensor]:
        cls = type(self)
        beta1, beta2 = self._betas(group)
        values: dict[str, torch.Tensor] = {}
        if cls.momentum_kind == "pnm":
            beta0 = group["beta0"]
            correction = 1.0 - beta1**steps if cls.pnm_bias_correction else torch.ones_like(steps)
            noise_norm = pnm_noise_norm(beta0)
            values["pos_coef"] = (1.0 + beta0) / noise_norm / correction
            values["neg_coef"] = beta0 / noise_norm / correction
            values["odd"] = torch.remainder(steps, 2.0)
        elif _uses_nesterov(group):
            values["m_scale"], values["g_scale"] = nesterov_coefficients(beta1, steps)
        else:
            values["m_scale"] = 1.0 / (1.0 - beta1**steps)
        if cls.second_moment != "none":
            values["root_scale"] = (1.0 - beta2**steps).rsqrt()
        return values

    def step_statistics(self) -> dict[str, torch.Tensor]:
        """SWD's ``swd_scale``, ``1 / (sqrt(mean(v_hat)) + eps)`` over the whole model, when a group uses
        ``stable_weight_decay`` (:func:`stable_weight_decay_statistics`)."""
        cls = type(self)
        return stable_weight_decay_statistics(self, cls.second_moment, cls.amsgrad)

    # ------------------------------------------------------------------ the update
    @staticmethod
    def update(
        param: torch.Tensor, grad: torch.Tensor, buffers: dict[str, torch.Tensor], hp: Hyperparameters, flags: Flags
    ) -> None:
        momentum_input = grad
        if flags["norm_correction"]:
            scale = gradient_norm_correction_(buffers["exp_grad_norm"], grad, hp["norm_beta"], PER_TENSOR)
            momentum_input = grad * scale
        exp_avg = buffers["exp_avg"]
        if flags["momentum"] == "pnm":
            numerator = positive_negative_momentum_(
                exp_avg, buffers["neg_exp_avg"], momentum_input, 1.0 - hp["beta1"], hp["odd"], hp["pos_coef"],
                hp["neg_coef"],
            )
        else:
            ema_(exp_avg, momentum_input, hp["beta1"])
            if flags["nesterov"]:
                numerator = nesterov_numerator(exp_avg, momentum_input, hp["m_scale"], hp["g_scale"])
            else:
                numerator = exp_avg * hp["m_scale"]
        if flags["second_moment"] == "none":
            direction = numerator
        else:
            second_moment = buffers["exp_avg_sq"]
            if flags["second_moment"] == "momentum":
                momentum_second_moment_(second_moment, exp_avg, hp["beta2"], hp["eps"])
            else:
                ema_sq_(second_moment, grad, hp["beta2"])
            if flags["amsgrad"]:
                second_moment = buffers["max_exp_avg_sq"].clamp_min_(second_moment)
            direction = adaptive_direction(
                str(flags["denominator"]), numerator, second_moment, hp["root_scale"], hp["eps"], hp["softplus_beta"]
            )
        if flags["friction"]:
            direction.mul_(friction_(buffers["previous_grad"], grad))
        if flags["cautious"]:
            cautious_mask_(direction, grad, PER_TENSOR)
        decay_and_step_(param, direction, hp, flags)


def _uses_nesterov(group: dict[str, Any]) -> bool:
    # With beta1 = 0 the first moment is the gradient itself and the look-ahead changes nothing.
    return bool(group.get("nesterov", False)) and AdamFamily._betas(group)[0] > 0.0


def decay_and_step_(param: torch.Tensor, direction: torch.Tensor, hp: Hyperparameters, flags: Flags) -> None:
    """The end of an Adam-type update: the weight decay (decoupled, cautious, stable) and ``p <- p + step_size * u``;
    or, with the ``trust_ratio`` flag, LAMB's ``u <- u + weight_decay * p`` (cautious: where ``u p > 0``) rescaled
    per tensor by :func:`~lightning_opt.transforms.trust_ratio.trust_ratio` and ``p <- p + trust_step_size * u``.

    Reads ``step_size``, ``decay_factor``, ``lr_times_decay``, ``weight_decay``, ``swd_scale`` (with the
    ``stable_weight_decay`` flag; from :func:`stable_weight_decay_statistics`) and ``trust_step_size`` (where the
    direction's own scale cancels in the ratio; ``step_size`` if absent) from ``hp``; the flags ``decay``,
    ``cautious_weight_decay``, ``stable_weight_decay`` and ``trust_ratio``. Shared by the family and
    :class:`~lightning_opt.optim.adam_atan2.AdamAtan2`.
    """
    if flags["trust_ratio"]:
        if flags["decay"]:  # LAMB: the decay inside the update, then one ratio per tensor
            weight_decay = hp["weight_decay"]
            if flags["stable_weight_decay"]:
                weight_decay = weight_decay * hp["swd_scale"]
            decayed = param * (direction * param > 0) if flags["cautious_weight_decay"] else param
            direction = direction + decayed * weight_decay
        step_size = hp["trust_step_size"] if "trust_step_size" in hp else hp["step_size"]
        add_scaled_(param, trust_ratio(direction, param, start=PER_TENSOR), step_size)
        return
    if flags["decay"] and flags["stable_weight_decay"]:
        if flags["cautious_weight_decay"]:
            cautious_weight_decay_(param, direction, (hp["lr_times_decay"] * hp["swd_scale"]).clamp_max(1.0))
        else:
            stable_weight_decay_(param, hp["lr_times_decay"], hp["swd_scale"])
    elif flags["decay"]:
        if flags["cautious_weight_decay"]:
            cautious_weight_decay_(param, direction, hp["lr_times_decay"])
        else:
            decoupled_weight_decay_(param, hp["decay_factor"])
    add_scaled_(param, direction, hp["step_size"])


def stable_weight_decay_statistics(
    optimizer: BaseOptimizer, second_moment: str = "grad", amsgrad: bool = False
) -> dict[str, torch.Tensor]:
    """SWD's ``swd_scale`` for an Adam-type optimizer whose groups have ``betas`` (or ``momentum``),
    ``weight_decay``, ``stable_weight_decay`` and ``grad_transforms``: ``1 / (sqrt(mean(v_hat)) + eps)``
    (:func:`~lightning_opt.transforms.weight_decay.stable_weight_decay_scale_of_sums`), or nothing when no group
    uses it. ``eps`` is the optimizer's default ``eps`` (``1e-8`` without one).

    ``v_hat`` is the second moment this step's update divides by (after this step's transformed gradient entered
    it; ``second_moment="momentum"``: AdaMomentum's; ``amsgrad``: the running maximum), over every tensor with a
    gradient in every group, computed before any update, out of place (the update computes it again): for a
    second moment of ``g`` without transforms or AMSGrad, from two multi-tensor norms; otherwise one sum per
    tensor. The sums stay on the device, the step counts are read once on the host, and one all-reduce runs under
    torch.distributed (:func:`~lightning_opt.transforms.weight_decay.whole_model_mean`).
    """
    if second_moment == "none" or not any(_swd_group(group) for group in optimizer.param_groups):
        return {}
    sums, counts, steps, beta2s = [], [], [], []
    for group in optimizer.param_groups:
        beta1, beta2 = AdamFamily._betas(group)
        transforms = check_grad_transforms(group["grad_transforms"])
        stepping = [param for param in group["params"] if param.grad is not None]
        states = [optimizer.state.get(param, {}) for param in stepping]
        if second_moment == "grad" and not amsgrad and not transforms:
            # sum(v_t) = beta2 sum(v) + (1 - beta2) ||g||^2: two multi-tensor norms, no temporary
            sums.append(_ema_sq_sums([param.grad for param in stepping], states, beta2))
        elif stepping:
            group_sums = []
            for param, state in zip(stepping, states):
                grad = apply_gradient_transforms(param.grad, param, transforms, group)
                moment = _next_second_moment(second_moment, amsgrad, grad, state, beta1, beta2, group.get("eps", 0.0))
                group_sums.append(sum_from(moment, 0).reshape(()))
            sums.append(torch.stack(group_sums))
        for param, state in zip(stepping, states):
            counts.append(param.numel())
            steps.append(state["step"] if "step" in state else torch.zeros((), dtype=torch.float32))
            beta2s.append(beta2)
    sums = [group_sums for group_sums in sums if len(group_sums)]
    if not sums:
        return {}
    device = sums[0].device
    corrections = 1.0 - torch.tensor(beta2s, dtype=torch.float64) ** (torch.stack(steps).double() + 1.0)
    totals = torch.cat([group_sums.to(device) for group_sums in sums])
    totals = totals / corrections.to(totals.dtype).to(device, non_blocking=True)
    return {"swd_scale": stable_weight_decay_scale_of_sums(totals, counts, optimizer.defaults.get("eps", SWD_EPS))}


def _swd_group(group: dict[str, Any]) -> bool:
    # SWD does nothing without weight decay.
    return bool(group.get("stable_weight_decay")) and group["weight_decay"] != 0.0


def _uses_stable_weight_decay(cls: type[AdamFamily], group: dict[str, Any]) -> bool:
    # SWD needs a second moment, and does nothing without weight decay.
    return cls.second_moment != "none" and _swd_group(group)


def _ema_sq_sums(grads: list[torch.Tensor], states: list[dict[str, Any]], beta2: float) -> torch.Tensor:
    """Each tensor's ``sum(beta2 v + (1 - beta2) g^2)`` from its state before the step (no state: ``v = 0``), as
    one vector, from two multi-tensor norms (``v >= 0``, so its L1 norm is its sum)."""
    if not grads:
        return torch.zeros(0)
    device = grads[0].device
    dtype = torch.float64 if any(grad.dtype == torch.float64 for grad in grads) else torch.float32
    squares = torch.stack([norm.to(device) for norm in torch._foreach_norm(grads, 2, dtype=dtype)])
    moments = [state.get("exp_avg_sq", grad.new_zeros(0)) for grad, state in zip(grads, states)]
    previous = torch.stack([norm.to(device) for norm in torch._foreach_norm(moments, 1, dtype=dtype)])
    return previous * beta2 + squares.square() * (1.0 - beta2)


def _next_second_moment(
    second_moment: str,
    amsgrad: bool,
    grad: torch.Tensor,
    state: dict[str, Any],
    beta1: float,
    beta2: float,
    eps: float,
) -> torch.Tensor:
    """The second moment the update of this step will divide by, computed out of place with the update's own
    pieces (state before the step; an empty state is zeros)."""
    def buffer(name: str) -> torch.Tensor:
        return state[name].clone() if name in state else torch.zeros_like(grad)

    if second_moment == "momentum":
        moment = momentum_second_moment_(buffer("exp_avg_sq"), ema_(buffer("exp_avg"), grad, beta1), beta2, eps)
    else:
        moment = ema_sq_(buffer("exp_avg_sq"), grad, beta2)
    if amsgrad:
        moment = torch.maximum(buffer("max_exp_avg_sq"), moment)
    return moment


def _hyperparameters(arguments: dict[str, Any]) -> dict[str, Any]:
    """A preset's ``locals()`` at the top of ``__init__``, without ``self``, ``params`` and ``__class__``."""
    return {name: value for name, value in arguments.items() if name not in ("self", "params", "__class__")}



class DiffGrad(AdamFamily):
    """diffGrad: Adam whose step is damped by the friction ``sigmoid(|g_prev - g|)`` of each coordinate.

    ``u = sigmoid(|g_prev - g|) * m_hat / (sqrt(v_hat) + eps)`` (see :class:`AdamFamily` for the whole update):
    a coordinate whose gradient barely changes takes about half of Adam's step. State: 3 tensors of the
    parameter's size (``exp_avg``, ``exp_avg_sq``, ``previous_grad``).

    Matches pytorch_optimizer's ``DiffGrad`` (its default ``weight_decouple=True``, no ``rectify``,
    ``ams_bound``) up to the placement of eps (module docstring).

    Args:
        params: iterable of parameters or of dicts defining parameter groups.
        lr: learning rate.
        betas: coefficients of the running averages of the gradient and of its square.
        eps: added to ``sqrt(v_hat)`` (``"eps"`` and ``"softplus"`` denominators; unused by ``"atan2"``).
        denominator: ``"eps"`` (``m_hat / (sqrt(v_hat) + eps)``), ``"atan2"`` (``1.27 * atan2(m_hat, sqrt(v_hat))``,
            eps-free, arXiv:2407.05872) or ``"softplus"`` (``m_hat / softplus_beta(sqrt(v_hat) + eps)``, Sadam,
            arXiv:1908.00700).
        softplus_beta: the ``beta`` of the softplus denominator.
        nesterov: the NAdam look-ahead ``beta1 m / (1 - beta1**(t+1)) + (1 - beta1) g / (1 - beta1**t)`` in place
            of ``m / (1 - beta1**t)`` (``torch.optim.NAdam`` without its momentum schedule).
        weight_decay: decoupled weight decay (AdamW style), multiplied by ``lr``.
        cautious: apply the cautious mask (arXiv:2411.16085) to the update.
        cautious_weight_decay: decay only where the update and the parameter agree in sign (arXiv:2510.12402).
        trust_ratio: LAMB's layer-wise trust ratio (arXiv:1904.00962): the decay ``weight_decay * p`` inside the
            update, then each tensor's update rescaled to ``min(||p||, 10) / ||u||`` (1 where either norm is 0).
        stable_weight_decay: stable weight decay (SWD, arXiv:2011.11152): the decay divided by
            ``sqrt(mean(v_hat)) + eps``, the mean over the whole model (every group, every rank), once per step.
        compile: fuse the update with ``torch.compile`` (same numbers, faster steps).
        skip_nonfinite: leave a tensor untouched (with a warning) when its gradient has inf or NaN.
        grad_transforms: gradient transforms applied in order before the update, without changing ``p.grad``:
            ``"centralize"``, ``"adaptive_clip"``, ``"soft_clip"``, ``"normalize"``
            (:mod:`lightning_opt.transforms.gradient`).
        agc_clipping: the largest unit-wise gradient-to-parameter norm ratio of ``"adaptive_clip"``.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> optimizer = DiffGrad(model.parameters(), denominator="atan2", cautious=True)
        >>> model(torch.randn(8, 4)).square().mean().backward()
        >>> optimizer.step()

    References:
        Dubey et al., "diffGrad: An Optimization Method for Convolutional Neural Networks", arXiv:1909.11015.
    """

    friction = True

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        denominator: str = "eps",
        softplus_beta: float = 50.0,
        nesterov: bool = False,
        cautious: bool = False,
        cautious_weight_decay: bool = False,
        trust_ratio: bool = False,
        stable_weight_decay: bool = False,
        compile: bool = False,
        skip_nonfinite: bool = False,
        grad_transforms: Sequence[str] = (),
        agc_clipping: float = AGC_CLIPPING,
    ) -> None:
        super().__init__(params, **_hyperparameters(locals()))


class SAdam(AdamFamily):
    """Sadam: Adam with the calibrated denominator ``softplus_beta(sqrt(v_hat) + eps)`` (arXiv:1908.00700).

    ``u = m_hat / softplus_beta(sqrt(v_hat) + eps)``: the denominator never falls below ``log(2) / beta``, so a
    coordinate with a tiny second moment no longer takes a huge step; where ``sqrt(v_hat)`` is large it is Adam.
    The softplus is written as in pytorch_optimizer's Ranger21 ``use_softplus`` (``beta_softplus=50``). State:
    2 tensors of the parameter's size (``exp_avg``, ``exp_avg_sq``).

    Args:
        params: iterable of parameters or of dicts defining parameter groups.
        lr: learning rate.
        betas: coefficients of the running averages of the gradient and of its square.
        eps: added to ``sqrt(v_hat)`` (``"eps"`` and ``"softplus"`` denominators; unused by ``"atan2"``).
        denominator: ``"eps"`` (``m_hat / (sqrt(v_hat) + eps)``), ``"atan2"`` (``1.27 * atan2(m_hat, sqrt(v_hat))``,
            eps-free, arXiv:2407.05872) or ``"softplus"`` (``m_hat / softplus_beta(sqrt(v_hat) + eps)``, Sadam,
            arXiv:1908.00700).
        softplus_beta: the ``beta`` of the softplus denominator.
        nesterov: the NAdam look-ahead ``beta1 m / (1 - beta1**(t+1)) + (1 - beta1) g / (1 - beta1**t)`` in place
            of ``m / (1 - beta1**t)`` (``torch.optim.NAdam`` without its momentum schedule).
        weight_decay: decoupled weight decay (AdamW style), multiplied by ``lr``.
        cautious: apply the cautious mask (arXiv:2411.16085) to the update.
        cautious_weight_decay: decay only where the update and the parameter agree in sign (arXiv:2510.12402).
        trust_ratio: LAMB's layer-wise trust ratio (arXiv:1904.00962): the decay ``weight_decay * p`` inside the
            update, then each tensor's update rescaled to ``min(||p||, 10) / ||u||`` (1 where either norm is 0).
        stable_weight_decay: stable weight decay (SWD, arXiv:2011.11152): the decay divided by
            ``sqrt(mean(v_hat)) + eps``, the mean over the whole model (every group, every rank), once per step.
        compile: fuse the update with ``torch.compile`` (same numbers, faster steps).
        skip_nonfinite: leave a tensor untouched (with a warning) when its gradient has inf or NaN.
        grad_transforms: gradient transforms applied in order before the update, without changing ``p.grad``:
            ``"centralize"``, ``"adaptive_clip"``, ``"soft_clip"``, ``"normalize"``
            (:mod:`lightning_opt.transforms.gradient`).
        agc_clipping: the largest unit-wise gradient-to-parameter norm ratio of ``"adaptive_clip"``.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> optimizer = SAdam(model.parameters(), softplus_beta=10.0, nesterov=True)
        >>> model(torch.randn(8, 4)).square().mean().backward()
        >>> optimizer.step()

    References:
        Tong, Liang & Bi, "Calibrating the Adaptive Learning Rate to Improve Convergence of ADAM",
        arXiv:1908.00700.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        denominator: str = "softplus",
        softplus_beta: float = 50.0,
        nesterov: bool = False,
        cautious: bool = False,
        cautious_weight_decay: bool = False,
        trust_ratio: bool = False,
        stable_weight_decay: bool = False,
        compile: bool = False,
        skip_nonfinite: bool = False,
        grad_transforms: Sequence[str] = (),
        agc_clipping: float = AGC_CLIPPING,
    ) -> None:
        super().__init__(params, **_hyperparameters(locals()))


class AdaMomentum(AdamFamily):
    """AdaMomentum: Adam whose second moment averages the squared *momentum* instead of the squared gradient.

    ``m <- beta1 m + (1 - beta1) g``, ``v <- beta2 v + (1 - beta2) m^2 + eps`` (the paper adds eps to ``v`` at
    every step), ``u = m_hat / (sqrt(v_hat) + eps)``. The momentum is smoother than the gradient, so ``v`` is
    smaller and the steps larger and steadier. State: 2 tensors of the parameter's size (``exp_avg``,
    ``exp_avg_sq``).

    Args:
        params: iterable of parameters or of dicts defining parameter groups.
        lr: learning rate.
        betas: coefficients of the running averages of the gradient and of the squared momentum.
        eps: added to ``v`` at every step (the paper's), and to ``sqrt(v_hat)`` (``"eps"`` and ``"softplus"``
            denominators).
        denominator: ``"eps"`` (``m_hat / (sqrt(v_hat) + eps)``), ``"atan2"`` (``1.27 * atan2(m_hat, sqrt(v_hat))``,
            eps-free, arXiv:2407.05872) or ``"softplus"`` (``m_hat / softplus_beta(sqrt(v_hat) + eps)``, Sadam,
            arXiv:1908.00700).
        softplus_beta: the ``beta`` of the softplus denominator.
        nesterov: the NAdam look-ahead ``beta1 m / (1 - beta1**(t+1)) + (1 - beta1) g / (1 - beta1**t)`` in place
            of ``m / (1 - beta1**t)`` (``torch.optim.NAdam`` without its momentum schedule).
        weight_decay: decoupled weight decay (AdamW style), multiplied by ``lr``.
        cautious: apply the cautious mask (arXiv:2411.16085) to the update.
        cautious_weight_decay: decay only where the update and the parameter agree in sign (arXiv:2510.12402).
        trust_ratio: LAMB's layer-wise trust ratio (arXiv:1904.00962): the decay ``weight_decay * p`` inside the
            update, then each tensor's update rescaled to ``min(||p||, 10) / ||u||`` (1 where either norm is 0).
        stable_weight_decay: stable weight decay (SWD, arXiv:2011.11152): the decay divided by
            ``sqrt(mean(v_hat)) + eps``, the mean over the whole model (every group, every rank), once per step.
        compile: fuse the update with ``torch.compile`` (same numbers, faster steps).
        skip_nonfinite: leave a tensor untouched (with a warning) when its gradient has inf or NaN.
        grad_transforms: gradient transforms applied in order before the update, without changing ``p.grad``:
            ``"centralize"``, ``"adaptive_clip"``, ``"soft_clip"``, ``"normalize"``
            (:mod:`lightning_opt.transforms.gradient`).
        agc_clipping: the largest unit-wise gradient-to-parameter norm ratio of ``"adaptive_clip"``.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> optimizer = AdaMomentum(model.parameters(), cautious=True)
        >>> model(torch.randn(8, 4)).square().mean().backward()
        >>> optimizer.step()

    References:
        Wang et al., "Rethinking Adam: A Twofold Exponential Moving Average Approach", arXiv:2106.11514.
    """

    second_moment = "momentum"

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        denominator: str = "eps",
        softplus_beta: float = 50.0,
        nesterov: bool = False,
        cautious: bool = False,
        cautious_weight_decay: bool = False,
        trust_ratio: bool = False,
        stable_weight_decay: bool = False,
        compile: bool = False,
        skip_nonfinite: bool = False,
        grad_transforms: Sequence[str] = (),
        agc_clipping: float = AGC_CLIPPING,
    ) -> None:
        super().__init__(params, **_hyperparameters(locals()))


class AdaNorm(AdamFamily):
    """AdaNorm: Adam whose momentum is fed gradients rescaled up to their running norm.

    Per tensor, ``e <- norm_beta e + (1 - norm_beta) ||g||``; where ``e > ||g|| > 0`` the momentum averages
    ``(e / ||g||) g`` instead of ``g``; the second moment still averages ``g^2``. A gradient smaller than usual
    (late in training, in a flat region) so keeps its weight in the momentum. State: 2 tensors of the parameter's
    size (``exp_avg``, ``exp_avg_sq``) and one number per tensor (``exp_grad_norm``). The norm is over the
    whole tensor, so AdaNorm refuses DTensor-sharded (FSDP2) parameters.

    Matches pytorch_optimizer's ``AdaNorm`` (``r`` is ``norm_beta``; defaults ``betas=(0.9, 0.99)``,
    ``r=0.95``) up to the placement of eps (module docstring).

    Args:
        params: iterable of parameters or of dicts defining parameter groups.
        lr: learning rate.
        betas: coefficients of the running averages of the gradient and of its square.
        eps: added to ``sqrt(v_hat)`` (``"eps"`` and ``"softplus"`` denominators; unused by ``"atan2"``).
        denominator: ``"eps"`` (``m_hat / (sqrt(v_hat) + eps)``), ``"atan2"`` (``1.27 * atan2(m_hat, sqrt(v_hat))``,
            eps-free, arXiv:2407.05872) or ``"softplus"`` (``m_hat / softplus_beta(sqrt(v_hat) + eps)``, Sadam,
            arXiv:1908.00700).
        softplus_beta: the ``beta`` of the softplus denominator.
        nesterov: the NAdam look-ahead ``beta1 m / (1 - beta1**(t+1)) + (1 - beta1) g / (1 - beta1**t)`` in place
            of ``m / (1 - beta1**t)`` (``torch.optim.NAdam`` without its momentum schedule).
        norm_beta: coefficient of the running average of the gradient norm (``gamma`` in the paper).
        weight_decay: decoupled weight decay (AdamW style), multiplied by ``lr``.
        cautious: apply the cautious mask (arXiv:2411.16085) to the update.
        cautious_weight_decay: decay only where the update and the parameter agree in sign (arXiv:2510.12402).
        trust_ratio: LAMB's layer-wise trust ratio (arXiv:1904.00962): the decay ``weight_decay * p`` inside the
            update, then each tensor's update rescaled to ``min(||p||, 10) / ||u||`` (1 where either norm is 0).
        stable_weight_decay: stable weight decay (SWD, arXiv:2011.11152): the decay divided by
            ``sqrt(mean(v_hat)) + eps``, the mean over the whole model (every group, every rank), once per step.
        compile: fuse the update with ``torch.compile`` (same numbers, faster steps).
        skip_nonfinite: leave a tensor untouched (with a warning) when its gradient has inf or NaN.
        grad_transforms: gradient transforms applied in order before the update, without changing ``p.grad``:
            ``"centralize"``, ``"adaptive_clip"``, ``"soft_clip"``, ``"normalize"``
            (:mod:`lightning_opt.transforms.gradient`).
        agc_clipping: the largest unit-wise gradient-to-parameter norm ratio of ``"adaptive_clip"``.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> optimizer = AdaNorm(model.parameters(), denominator="softplus")
        >>> model(torch.randn(8, 4)).square().mean().backward()
        >>> optimizer.step()

    References:
        Dubey et al., "AdaNorm: Adaptive Gradient Norm Correction based Optimizer for CNNs", arXiv:2210.06364.
    """

    norm_correction = True

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.99),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        denominator: str = "eps",
        softplus_beta: float = 50.0,
        nesterov: bool = False,
        norm_beta: float = 0.95,
        cautious: bool = False,
        cautious_weight_decay: bool = False,
        trust_ratio: bool = False,
        stable_weight_decay: bool = False,
        compile: bool = False,
        skip_nonfinite: bool = False,
        grad_transforms: Sequence[str] = (),
        agc_clipping: float = AGC_CLIPPING,
    ) -> None:
        super().__init__(params, **_hyperparameters(locals()))


class PNM(AdamFamily):
    """PNM: SGD with positive-negative momentum, two momenta that alternate by step parity.

    Each momentum averages every other gradient, ``m <- momentum**2 m + (1 - momentum**2) g`` (the one of this
    step's parity), and the step mixes them: ``p <- p - lr ((1 + beta0) m_this - beta0 m_other) / sqrt((1 +
    beta0)**2 + beta0**2)``, which enlarges the gradient noise (for generalisation) without changing the mean.
    No bias correction, as in the paper's SGD variant. State: 2 tensors of the parameter's size (``exp_avg``,
    ``neg_exp_avg``): one more than SGD with momentum. Both are written at each step (one unchanged), since the
    tensors stepped together may differ in parity.

    Matches pytorch_optimizer's ``PNM`` (``betas=(momentum, beta0)``).

    Args:
        params: iterable of parameters or of dicts defining parameter groups.
        lr: learning rate (0.1 here, against pytorch_optimizer's 1e-3: an SGD-type step; the paper trains with
            0.1 to 1).
        momentum: the coefficient ``beta1`` of each momentum, used squared.
        beta0: how much of the other momentum is subtracted (1 in the paper).
        weight_decay: decoupled weight decay (AdamW style), multiplied by ``lr``.
        cautious: apply the cautious mask (arXiv:2411.16085) to the update.
        cautious_weight_decay: decay only where the update and the parameter agree in sign (arXiv:2510.12402).
        trust_ratio: LAMB's layer-wise trust ratio (arXiv:1904.00962): the decay ``weight_decay * p`` inside the
            update, then each tensor's update rescaled to ``min(||p||, 10) / ||u||`` (1 where either norm is 0).
        compile: fuse the update with ``torch.compile`` (same numbers, faster steps).
        skip_nonfinite: leave a tensor untouched (with a warning) when its gradient has inf or NaN.
        grad_transforms: gradient transforms applied in order before the update, without changing ``p.grad``:
            ``"centralize"``, ``"adaptive_clip"``, ``"soft_clip"``, ``"normalize"``
            (:mod:`lightning_opt.transforms.gradient`).
        agc_clipping: the largest unit-wise gradient-to-parameter norm ratio of ``"adaptive_clip"``.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> optimizer = PNM(model.parameters(), lr=0.1, cautious_weight_decay=True, weight_decay=1e-3)
        >>> model(torch.randn(8, 4)).square().mean().backward()
        >>> optimizer.step()

    References:
        Xie et al., "Positive-Negative Momentum: Manipulating Stochastic Gradient Noise to Improve
        Generalization", arXiv:2103.17182.
    """

    momentum_kind = "pnm"
    second_moment = "none"
    pnm_bias_correction = False

    def __init__(
        self,
        params: ParamsT,
        lr: float = 0.1,
        momentum: float = 0.9,
        beta0: float = 1.0,
        weight_decay: float = 0.0,
        cautious: bool = False,
        cautious_weight_decay: bool = False,
        trust_ratio: bool = False,
        compile: bool = False,
        skip_nonfinite: bool = False,
        grad_transforms: Sequence[str] = (),
        agc_clipping: float = AGC_CLIPPING,
    ) -> None:
        super().__init__(params, **_hyperparameters(locals()))


class AdaPNM(AdamFamily):
    """AdaPNM: positive-negative momentum over an AMSGrad denominator.

    The two momenta of :class:`PNM` (coefficient ``beta1**2``), their mix divided by ``1 - beta1**t``, over
    ``sqrt(max_t v_hat) + eps``: ``v`` is Adam's second moment and the denominator uses its running maximum, as
    the paper's Algorithm and pytorch_optimizer's default (``ams_bound=True``) do. State: 4 tensors of the
    parameter's size (``exp_avg``, ``neg_exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``): two more than Adam.

    Matches pytorch_optimizer's ``AdaPNM`` (``betas=(beta1, beta2, beta0)``) up to the placement of eps (module
    docstring).

    Args:
        params: iterable of parameters or of dicts defining parameter groups.
        lr: learning rate.
        betas: the coefficient ``beta1`` of each momentum (used squared) and ``beta2`` of the second moment.
        beta0: how much of the other momentum is subtracted (1 in the paper).
        eps: added to ``sqrt(v_hat)`` (``"eps"`` and ``"softplus"`` denominators; unused by ``"atan2"``).
        denominator: ``"eps"`` (``m_hat / (sqrt(v_hat) + eps)``), ``"atan2"`` (``1.27 * atan2(m_hat, sqrt(v_hat))``,
            eps-free, arXiv:2407.05872) or ``"softplus"`` (``m_hat / softplus_beta(sqrt(v_hat) + eps)``, Sadam,
            arXiv:1908.00700).
        softplus_beta: the ``beta`` of the softplus denominator.
        weight_decay: decoupled weight decay (AdamW style), multiplied by ``lr``.
        cautious: apply the cautious mask (arXiv:2411.16085) to the update.
        cautious_weight_decay: decay only where the update and the parameter agree in sign (arXiv:2510.12402).
        trust_ratio: LAMB's layer-wise trust ratio (arXiv:1904.00962): the decay ``weight_decay * p`` inside the
            update, then each tensor's update rescaled to ``min(||p||, 10) / ||u||`` (1 where either norm is 0).
        stable_weight_decay: stable weight decay (SWD, arXiv:2011.11152): the decay divided by
            ``sqrt(mean(v_hat)) + eps``, the mean over the whole model (every group, every rank), once per step.
        compile: fuse the update with ``torch.compile`` (same numbers, faster steps).
        skip_nonfinite: leave a tensor untouched (with a warning) when its gradient has inf or NaN.
        grad_transforms: gradient transforms applied in order before the update, without changing ``p.grad``:
            ``"centralize"``, ``"adaptive_clip"``, ``"soft_clip"``, ``"normalize"``
            (:mod:`lightning_opt.transforms.gradient`).
        agc_clipping: the largest unit-wise gradient-to-parameter norm ratio of ``"adaptive_clip"``.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> optimizer = AdaPNM(model.parameters(), denominator="atan2")
        >>> model(torch.randn(8, 4)).square().mean().backward()
        >>> optimizer.step()

    References:
        Xie et al., "Positive-Negative Momentum", arXiv:2103.17182 (AdaPNM).
    """

    momentum_kind = "pnm"
    amsgrad = True

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        beta0: float = 1.0,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        denominator: str = "eps",
        softplus_beta: float = 50.0,
        cautious: bool = False,
        cautious_weight_decay: bool = False,
        trust_ratio: bool = False,
        stable_weight_decay: bool = False,
        compile: bool = False,
        skip_nonfinite: bool = False,
        grad_transforms: Sequence[str] = (),
        agc_clipping: float = AGC_CLIPPING,
    ) -> None:
        super().__init__(params, **_hyperparameters(locals()))


class Lamb(AdamFamily):
    """LAMB: Adam whose update, weight decay included, is rescaled per tensor to the tensor's own norm.

    ``u = m_hat / (sqrt(v_hat) + eps) + weight_decay * p``, then ``p <- p - lr * u * min(||p||, 10) / ||u||`` for
    each tensor (the ratio is 1 where either norm is 0, so a zero-initialised bias moves by Adam's step): every
    layer moves by ``lr`` times its own size, which lets one learning rate serve layers of very different
    scales at large batch sizes. This is the family's update with ``trust_ratio=True`` (any preset can turn it
    on); the other pieces combine with it. State: 2 tensors of the parameter's size (``exp_avg``,
    ``exp_avg_sq``). The norms are over whole tensors, so Lamb refuses DTensor-sharded (FSDP2) parameters.

    As the paper's Algorithm 2: bias-corrected moments, the weight decay inside ``u``, the ceiling 10 on
    ``||p||`` (pytorch_optimizer's). pytorch_optimizer's ``Lamb`` (the tests' oracle) differs by default: it
    divides the step by ``1 - beta1**t`` after the ratio (unless ``adam_debias=True``), decays the parameter
    outside ``u`` (unless ``weight_decouple=False``), leaves ``v`` uncorrected and divides by ``||u|| + eps``.
    With those two options, a negligible ``eps``, and no decay or ``betas = (0, 0)`` (where the corrections
    are 1), it takes the same steps.

    Args:
        params: iterable of parameters or of dicts defining parameter groups.
        lr: learning rate: each tensor moves by about ``lr * min(||p||, 10)`` per step.
        betas: coefficients of the running averages of the gradient and of its square.
        eps: added to ``sqrt(v_hat)`` (the paper's and pytorch_optimizer's ``1e-6``).
        weight_decay: the decay ``weight_decay * p`` added to the update before the trust ratio (the paper's
            0.01).
        denominator: ``"eps"`` (``m_hat / (sqrt(v_hat) + eps)``), ``"atan2"`` (``1.27 * atan2(m_hat, sqrt(v_hat))``,
            eps-free, arXiv:2407.05872) or ``"softplus"`` (``m_hat / softplus_beta(sqrt(v_hat) + eps)``, Sadam,
            arXiv:1908.00700).
        softplus_beta: the ``beta`` of the softplus denominator.
        nesterov: the NAdam look-ahead ``beta1 m / (1 - beta1**(t+1)) + (1 - beta1) g / (1 - beta1**t)`` in place
            of ``m / (1 - beta1**t)`` (``torch.optim.NAdam`` without its momentum schedule).
        cautious: apply the cautious mask (arXiv:2411.16085) to the update.
        cautious_weight_decay: add the decay only where the update and the parameter agree in sign
            (arXiv:2510.12402).
        trust_ratio: the layer-wise trust ratio; ``False`` leaves AdamW (decoupled decay, no ratio).
        stable_weight_decay: stable weight decay (SWD, arXiv:2011.11152): the decay divided by
            ``sqrt(mean(v_hat)) + eps``, the mean over the whole model (every group, every rank), once per step.
        compile: fuse the update with ``torch.compile`` (same numbers, faster steps).
        skip_nonfinite: leave a tensor untouched (with a warning) when its gradient has inf or NaN.
        grad_transforms: gradient transforms applied in order before the update, without changing ``p.grad``:
            ``"centralize"``, ``"adaptive_clip"``, ``"soft_clip"``, ``"normalize"``
            (:mod:`lightning_opt.transforms.gradient`).
        agc_clipping: the largest unit-wise gradient-to-parameter norm ratio of ``"adaptive_clip"``.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> optimizer = Lamb(model.parameters(), lr=1e-2, weight_decay=0.01)
        >>> model(torch.randn(8, 4)).square().mean().backward()
        >>> optimizer.step()

    References:
        You et al., "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes", ICLR 2020,
        arXiv:1904.00962.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.01,
        denominator: str = "eps",
        softplus_beta: float = 50.0,
        nesterov: bool = False,
        cautious: bool = False,
        cautious_weight_decay: bool = False,
        trust_ratio: bool = True,
        stable_weight_decay: bool = False,
        compile: bool = False,
        skip_nonfinite: bool = False,
        grad_transforms: Sequence[str] = (),
        agc_clipping: float = AGC_CLIPPING,
    ) -> None:
        super().__init__(params, **_hyperparameters(locals()))
