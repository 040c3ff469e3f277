"""FractionalAdam: the Adam family's update run on the Grunwald-Letnikov fractional-order gradient.

A preset of :class:`~lightning_opt.optim.adam_family.AdamFamily` whose gradient is first replaced by
``sum_{j=0..K} c_j g_{t-j}``, ``c_j = (-1)**j * binom(alpha, j)``
(:mod:`lightning_opt.transforms.fractional`); everything after that is the family's (moments, denominator,
Nesterov, cautious mask, cautious weight decay).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, Callable

import torch

from lightning_opt.engine import Flags, Hyperparameters
from lightning_opt.engine.base import ParamsT
from lightning_opt.optim.adam_family import AdamFamily, _hyperparameters, check_hyperparameters
from lightning_opt.transforms.fractional import grunwald_letnikov_ring_, ring_weights
from lightning_opt.transforms.gradient import AGC_CLIPPING
from lightning_opt.validation import check_float, check_positive_int

MAX_HISTORY = 64
"""The most past gradients :class:`FractionalAdam` keeps: the update unrolls one term per gradient (one fused
graph), and each costs 4 bytes per float32 parameter."""


def check_fractional(values: dict[str, Any]) -> dict[str, Any]:
    """Validate ``alpha`` (in ``(-1, 1)``, where every coefficient is smaller in magnitude than the one before)
    and ``history`` (an integer in ``[1, MAX_HISTORY]``); return them.

    Example:
        >>> check_fractional({"alpha": 1.0, "history": 4})
        Traceback (most recent call last):
        ...
        ValueError: Invalid alpha: 1.0 (expected < 1.0)
    """
    alpha = check_float("alpha", values["alpha"], low=-1.0, high=1.0, low_inclusive=False, high_inclusive=False)
    history = check_positive_int("history", values["history"])
    if history > MAX_HISTORY:
        raise ValueError(f"Invalid history: {history} (expected <= {MAX_HISTORY}: each past gradient is one more "
                         "parameter-sized buffer and one more term of the update)")
    return {"alpha": alpha, "history": history}


def _check_for(cls: type[AdamFamily]) -> Callable[..., dict[str, Any]]:
    """The family's check of ``cls``'s arguments plus ``alpha`` and ``history``, with a signature naming them all
    (the engine passes a group's values by the names of the check's arguments)."""
    family_check = cls.hyperparameter_check
    assert family_check is not None
    names = [*inspect.signature(family_check).parameters, "alpha", "history"]

    def check(**values: Any) -> dict[str, Any]:
        fractional = check_fractional(values)
        rest = {name: value for name, value in values.items() if name not in fractional}
        return {**check_hyperparameters(**rest), **fractional}

    check.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY) for name in names]
    )
    return check


class FractionalAdam(AdamFamily):
    """Adam on the Grunwald-Letnikov fractional-order gradient of the last ``history`` gradients.

    Per tensor at step ``t``: ``f = sum_{j=0..K} c_j g_{t-j}`` with ``c_j = (-1)**j * binom(alpha, j)``
    (``c_0 = 1``, ``c_1 = -alpha``, ``c_j = c_{j-1} (j - 1 - alpha) / j``), then the family's Adam step with ``f``
    in place of the gradient: ``m <- beta1 m + (1 - beta1) f``, ``v <- beta2 v + (1 - beta2) f^2``, ``u = m_hat /
    (sqrt(v_hat) + eps)`` (or the ``atan2`` / ``softplus`` denominator), the cautious mask of ``u`` against ``f``,
    decoupled (or cautious) weight decay, ``p <- p - lr u``. ``0 < alpha < 1`` subtracts a fading memory of past
    gradients (a fractional difference: it damps what persists and keeps what changes), ``-1 < alpha < 0`` adds
    one (a fractional sum, akin to a longer momentum), ``alpha = 0`` is Adam.

    The first steps: before step ``K + 1`` fewer than ``K`` past gradients exist, and the sum runs over those there
    are (the gradients before the first step count as zero: the Grunwald-Letnikov derivative with its lower
    terminal at the first step). So step 1 is Adam's first step on ``g_1``, step 2 uses ``g_2 - alpha g_1``, and so
    on; ``m`` and ``v`` keep Adam's bias corrections.

    State: 2 tensors of the parameter's size (``exp_avg``, ``exp_avg_sq``) and the ``history`` past gradients
    (``grad_history``, ``history`` times the parameter's size, a ring buffer in the update's ``(units, width)``
    view: one slot written per step, the oldest gradient replaced): ``(history + 2) * 4`` bytes per float32
    parameter, of which ``history * 4`` for the gradients (16 with the default ``history=4``).

    Args:
        params: iterable of parameters or of dicts defining parameter groups.
        lr: learning rate.
        betas: coefficients of the running averages of the fractional gradient and of its square.
        eps: added to ``sqrt(v_hat)`` (``"eps"`` and ``"softplus"`` denominators; unused by ``"atan2"``).
        weight_decay: decoupled weight decay (AdamW style), multiplied by ``lr``.
        alpha: the fractional order, in ``(-1, 1)``.
        history: ``K``, how many past gradients the sum reaches back (1 to 64); each costs a buffer of the
            parameter's size.
        denominator: ``"eps"`` (``m_hat / (sqrt(v_hat) + eps)``), ``"atan2"`` (``1.27 * atan2(m_hat, sqrt(v_hat))``,
            eps-free, arXiv:2407.05872) or ``"softplus"`` (``m_hat / softplus_beta(sqrt(v_hat) + eps)``, Sadam,
            arXiv:1908.00700).
        softplus_beta: the ``beta`` of the softplus denominator.
        nesterov: the NAdam look-ahead ``beta1 m / (1 - beta1**(t+1)) + (1 - beta1) f / (1 - beta1**t)`` in place
            of ``m / (1 - beta1**t)``.
        cautious: apply the cautious mask (arXiv:2411.16085) to the update, against the fractional gradient.
        cautious_weight_decay: decay only where the update and the parameter agree in sign (arXiv:2510.12402).
        compile: fuse the update with ``torch.compile`` (same numbers, faster steps).
        skip_nonfinite: leave a tensor untouched (with a warning) when its gradient has inf or NaN.
        grad_transforms: gradient transforms applied in order before the update, without changing ``p.grad``:
            ``"centralize"``, ``"adaptive_clip"``, ``"soft_clip"`` (:mod:`lightning_opt.transforms.gradient`); the
            history keeps the transformed gradients.
        agc_clipping: the largest unit-wise gradient-to-parameter norm ratio of ``"adaptive_clip"``.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> optimizer = FractionalAdam(model.parameters(), alpha=0.3, history=3, cautious=True)
        >>> for _ in range(2):
        ...     model.zero_grad()
        ...     model(torch.randn(8, 4)).square().mean().backward()
        ...     optimizer.step()
        >>> tuple(optimizer.state[model.weight]["grad_history"].shape)   # 3 past gradients of the (2, 4) weight
        (3, 2, 4)

    References:
        The Grunwald-Letnikov fractional-order gradient in an Adam-type step (Neural Processing Letters, as the
        project's design notes cite it); Podlubny, "Fractional Differential Equations" (1999), section 2.2;
        Kingma & Ba, "Adam", arXiv:1412.6980.
    """

    phases = ("update",)

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        alpha: float = 0.2,
        history: int = 4,
        denominator: str = "eps",
        softplus_beta: float = 50.0,
        nesterov: bool = False,
        cautious: bool = False,
        cautious_weight_decay: bool = False,
        compile: bool = False,
        skip_nonfinite: bool = False,
        grad_transforms: Sequence[str] = (),
        agc_clipping: float = AGC_CLIPPING,
    ) -> None:
        super().__init__(params, **_hyperparameters(locals()))

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _add_history(cls)

    def buffer_shapes(self, shape: torch.Size, history: int | None = None) -> dict[str, tuple[int, ...]]:
        """The family's shapes, and ``(history, *view)`` for the past gradients (``history``: the defaults' if
        not given).

        Example:
            >>> FractionalAdam([torch.zeros(2)], history=3).buffer_shapes(torch.Size([5, 2, 2]))["grad_history"]
            (3, 5, 4)
        """
        shapes = super().buffer_shapes(shape)
        count = self.defaults["history"] if history is None else history
        shapes["grad_history"] = (count, *type(self).stack_view(shape))
        return shapes

    def init_state(self, param: torch.Tensor, state: dict[str, Any]) -> None:
        """The family's state, with ``history`` (of the parameter's group) slots of past gradients."""
        super().init_state(param, state)
        history = next(g["history"] for g in self.param_groups if any(p is param for p in g["params"]))
        shape = self.buffer_shapes(param.shape, history)["grad_history"]
        if tuple(state["grad_history"].shape) != shape:
            state["grad_history"] = torch.zeros(shape, dtype=param.dtype, device=param.device)

    def group_hyperparameters(self, group: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
        numbers, flags = super().group_hyperparameters(group)
        history = group["history"]
        # ``self.state`` is a defaultdict: reading a parameter's entry before its first step leaves an empty dict.
        kept = next(
            (self.state[p]["grad_history"] for p in group["params"] if "grad_history" in self.state.get(p, {})), None
        )
        if kept is not None and kept.shape[0] != history:
            raise ValueError(
                f"Invalid history: {history} (this group keeps {kept.shape[0]} past gradients "
                "already; history cannot change after the first step)"
            )
        return numbers, {**flags, "history": history}

    def tensor_hyperparameters(self, group: dict[str, Any], steps: torch.Tensor) -> dict[str, torch.Tensor]:
        values = super().tensor_hyperparameters(group, steps)
        weights, slot = ring_weights(group["alpha"], group["history"], steps)
        values.update({f"slot_weight_{s}": weight for s, weight in enumerate(weights)})
        values["write_slot"] = slot
        return values

    @staticmethod
    def update(  # type: ignore[override]
        param: torch.Tensor, grad: torch.Tensor, buffers: dict[str, torch.Tensor], hp: Hyperparameters, flags: Flags
    ) -> None:
        weights = [hp[f"slot_weight_{s}"] for s in range(int(flags["history"]))]
        fractional = grunwald_letnikov_ring_(buffers["grad_history"], grad, weights, hp["write_slot"])  # type: ignore[arg-type]
        AdamFamily.update(param, fractional, buffers, hp, flags)


def _add_history(cls: type[FractionalAdam]) -> None:
    """Add the past gradients to ``cls``'s buffers and ``alpha`` / ``history`` to its check (the family's
    ``__init_subclass__`` knows only the family's own arguments)."""
    if "grad_history" not in cls.buffer_names:
        cls.buffer_names = (*cls.buffer_names, "grad_history")
    cls.hyperparameter_check = staticmethod(_check_for(cls))


_add_history(FractionalAdam)
