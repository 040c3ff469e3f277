"""Gather one parameter group's tensors that take a step, bucketed by device and dtype."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch


@dataclass
class Bucket:
    """The tensors of one parameter group that share a device and a dtype and have a gradient."""

    params: list[torch.Tensor] = field(default_factory=list)
    grads: list[torch.Tensor] = field(default_factory=list)
    buffers: list[dict[str, torch.Tensor]] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)


BucketKey = tuple[torch.device, torch.dtype]


def collect_buckets(
    params: Iterable[torch.Tensor],
    state_of: Callable[[torch.Tensor], dict],
    init_state: Callable[[torch.Tensor, dict], None],
    buffer_names: tuple[str, ...],
    optimizer_name: str,
) -> dict[BucketKey, Bucket]:
    """Bucket the parameters that have a gradient and advance their step counters.

    Args:
        params: the group's parameters; those whose ``grad`` is ``None`` are skipped.
        state_of: maps a parameter to its (possibly empty) state dict.
        init_state: fills an empty state dict for a parameter (lazy state).
        buffer_names: the state entries passed to the update function, in order.
        optimizer_name: used in the error raised for sparse gradients.

    Returns:
        One :class:`Bucket` per ``(device, dtype)``, in first-seen order.
    """
    buckets: dict[BucketKey, Bucket] = {}
    for param in params:
        grad = param.grad
        if grad is None:
            continue
        if grad.is_sparse:
            raise RuntimeError(
                f"{optimizer_name} does not support sparse gradients (parameter of shape {tuple(param.shape)}); "
                "use torch.optim.SparseAdam or a dense embedding"
            )
        state = state_of(param)
        if not state:
            init_state(param, state)
        state["step"] += 1
        bucket = buckets.setdefault((param.device, param.dtype), Bucket())
        bucket.params.append(param)
        bucket.grads.append(grad)
        bucket.buffers.append({name: state[name] for name in buffer_names})
        bucket.steps.append(int(state["step"].item()))
    return buckets
