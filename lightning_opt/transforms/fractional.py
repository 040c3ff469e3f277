"""The Grunwald-Letnikov fractional-order gradient: a weighted sum of the current and the last ``K`` gradients.

``D^alpha g_t = sum_{j=0..K} c_j g_{t-j}`` with ``c_j = (-1)**j * binom(alpha, j)``: ``c_0 = 1``, ``c_1 = -alpha``,
``c_2 = alpha (alpha - 1) / 2``... (computed by the recurrence ``c_j = c_{j-1} (j - 1 - alpha) / j``). For
``0 < alpha < 1`` it is a fractional *difference* (every older gradient is subtracted, with weights that fade
as ``j**(-1 - alpha)``); for ``-1 < alpha < 0`` a fractional *sum* (every older gradient is added, with weights
that fade as ``j**(-1 - alpha)`` too); ``alpha = 0`` is the gradient itself. For ``|alpha| < 1`` each weight is
smaller in magnitude than the one before, so an older gradient always counts for less.

Before step ``K + 1`` there are fewer than ``K`` past gradients: the sum then runs over those there are, which
is the Grunwald-Letnikov derivative with its lower terminal at the first step (the gradient is taken as zero
before training starts). So the first step's fractional gradient is the gradient itself.

References:
    The Grunwald-Letnikov fractional-order gradient inside an Adam-type step, as the project's design notes cite
    it (a Neural Processing Letters paper); Podlubny, "Fractional Differential Equations", Academic Press 1999,
    section 2.2, for the Grunwald-Letnikov definition and its coefficients.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lightning_opt.transforms.arith import Scalar, add_scaled


def grunwald_letnikov_coefficients(alpha: float, history: int) -> list[float]:
    """The ``history + 1`` coefficients ``c_j = (-1)**j * binom(alpha, j)``, ``j = 0..history``, as floats.

    Example:
        >>> grunwald_letnikov_coefficients(0.5, 3)
        [1.0, -0.5, -0.125, -0.0625]
        >>> grunwald_letnikov_coefficients(-0.5, 2)
        [1.0, 0.5, 0.375]
    """
    coefficients = [1.0]
    for j in range(1, history + 1):
        coefficients.append(coefficients[-1] * (j - 1 - alpha) / j)
    return coefficients


def grunwald_letnikov(grad: torch.Tensor, past: torch.Tensor, alpha: Scalar) -> torch.Tensor:
    """The fractional-order gradient ``sum_{j=0..K} c_j g_{t-j}`` of one tensor, as a new tensor.

    Args:
        grad: the current gradient ``g_t``.
        past: the last ``K`` gradients, newest first: ``past[j - 1]`` is ``g_{t-j}``; shape ``(K, *grad.shape)``.
            Zeros stand for the gradients before the first step.
        alpha: the order (a float, or a 0-d tensor on the compiled path).

    Example:
        >>> grunwald_letnikov(torch.tensor([1.0]), torch.tensor([[1.0], [1.0]]), 0.5)
        tensor([0.3750])
    """
    out = grad.clone()
    coefficient: Scalar = 1.0
    for j in range(1, past.shape[0] + 1):
        coefficient = coefficient * (j - 1 - alpha) / j
        out = add_scaled(out, past[j - 1], coefficient)
    return out


def grunwald_letnikov_ring_(
    history: torch.Tensor, grad: torch.Tensor, weights: Sequence[Scalar], slot: torch.Tensor
) -> torch.Tensor:
    """The fractional-order gradient of a stack of ``k`` tensors whose past gradients sit in a ring buffer;
    then ``grad`` is written over the oldest. Returns the fractional gradient as a new tensor.

    A ring buffer moves one gradient per step (the new one, over the oldest) instead of shifting all ``K``; which
    past step each slot holds depends on each tensor's step count, so the caller passes each slot's coefficient
    per tensor (:func:`ring_weights`).

    Args:
        history: ``(k, K, *rest)``: slot ``s`` of tensor ``i`` is ``history[i, s]``, of ``grad[i]``'s shape;
            changed in place (one slot per tensor).
        grad: ``(k, *rest)``, the current gradients.
        weights: ``K`` per-tensor coefficients, one per slot, each a number or a ``(k, 1, ...)`` tensor.
        slot: ``(k, 1, ...)``: the slot each tensor's gradient is written to (a whole number, in any dtype).

    Example:
        >>> history = torch.tensor([[[2.0], [4.0]]])              # one tensor, K = 2, holding g_1 = 2, g_2 = 4
        >>> weights = [torch.tensor([[-0.125]]), torch.tensor([[-0.5]])]   # step 3: slot 0 is g_1, slot 1 is g_2
        >>> grunwald_letnikov_ring_(history, torch.tensor([[8.0]]), weights, torch.tensor([[0.0]]))
        tensor([[5.7500]])
        >>> history                                               # g_3 = 8 written over g_1
        tensor([[[8.],
                 [4.]]])
    """
    out = grad.clone()
    for s, weight in enumerate(weights):
        out = add_scaled(out, history[:, s], weight)
    if torch.compiler.is_compiling():
        # Compiled, an index_put_ on a buffer the graph also reads is staged: inductor copied the whole history
        # (K times the parameter) into a temporary, wrote the slot there and copied it back, every step. A
        # select-and-copy of every slot is updated in place (same numbers: each value is copied, not computed).
        slots = torch.arange(history.shape[1], device=history.device, dtype=slot.dtype)
        mask = slots.view(1, -1, *([1] * (history.dim() - 2))) == slot.unsqueeze(1)
        history.copy_(torch.where(mask, grad.unsqueeze(1), history))
    else:  # eagerly, the masked copy would allocate a temporary of the history's size instead
        rows = torch.arange(history.shape[0], device=history.device)
        history.index_put_((rows, slot.reshape(-1).long()), grad)
    return out


def ring_weights(alpha: float, history: int, steps: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per tensor at step ``t`` (1-based, ``steps``): the coefficient of each slot of a ring buffer of ``history``
    gradients, and the slot this step's gradient goes to (``(t - 1) mod history``).

    Slot ``s`` holds ``g_{t-j}`` with ``j = ((t - 2 - s) mod history) + 1``; its coefficient is ``c_j``. A slot
    not yet written holds zeros, so its coefficient does not matter.

    Example:
        >>> weights, slot = ring_weights(0.5, 2, torch.tensor([3.0], dtype=torch.float64))
        >>> [w.item() for w in weights], slot.item()
        ([-0.125, -0.5], 0.0)
    """
    coefficients = torch.tensor(grunwald_letnikov_coefficients(alpha, history), dtype=steps.dtype)
    weights = []
    for s in range(history):
        lag = torch.remainder(steps - 2 - s, history).long() + 1
        weights.append(coefficients[lag])
    return weights, torch.remainder(steps - 1, history)
