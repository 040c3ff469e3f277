"""Gather one parameter group's tensors that take a step, bucketed by device and dtype."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
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
    skip_nonfinite: bool = False,
) -> tuple[dict[BucketKey, Bucket], int]:
    """Bucket the parameters that take a step and advance their step counters.

    Args:
        params: the group's parameters; those whose ``grad`` is ``None`` are skipped.
        state_of: maps a parameter to its (possibly empty) state dict.
        init_state: fills an empty state dict for a parameter (lazy state).
        buffer_names: the state entries passed to the update function, in order.
        skip_nonfinite: also skip the parameters whose gradient holds an inf or NaN.

    Returns:
        One :class:`Bucket` per ``(device, dtype)``, in first-seen order, and the number of
        parameters skipped for a non-finite gradient.
    """
    stepping = [param for param in params if param.grad is not None]
    skipped = 0
    if skip_nonfinite:
        finite = all_finite([param.grad for param in stepping])  # type: ignore[misc]
        skipped = len(stepping) - sum(finite)
        stepping = [param for param, ok in zip(stepping, finite) if ok]
    buckets: dict[BucketKey, Bucket] = {}
    for param in stepping:
        state = state_of(param)
        if not state:
            init_state(param, state)
        state["step"] += 1
        bucket = buckets.setdefault((param.device, param.dtype), Bucket())
        bucket.params.append(param)
        bucket.grads.append(param.grad)  # type: ignore[arg-type]
        bucket.buffers.append({name: state[name] for name in buffer_names})
        bucket.steps.append(int(state["step"].item()))
    return buckets, skipped


def reject_sparse_grads(params: Iterable[torch.Tensor], optimizer_name: str) -> None:
    """Raise ``RuntimeError`` if any parameter has a sparse gradient (checked before a step changes anything)."""
    for param in params:
        if param.grad is not None and param.grad.is_sparse:
            raise RuntimeError(
                f"{optimizer_name} does not support sparse gradients (parameter of shape {tuple(param.shape)}); "
                "use torch.optim.SparseAdam or a dense embedding"
            )


def all_finite(tensors: Sequence[torch.Tensor]) -> list[bool]:
    """Whether each tensor is free of inf and NaN, with one host sync per device."""
    by_device: dict[torch.device, list[int]] = {}
    for index, tensor in enumerate(tensors):
        by_device.setdefault(tensor.device, []).append(index)
    result = [True] * len(tensors)
    for indices in by_device.values():
        flags = torch.stack([torch.isfinite(tensors[i]).all() for i in indices]).tolist()
        for i, flag in zip(indices, flags):
            result[i] = flag
    return result
