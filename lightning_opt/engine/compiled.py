"""The bucket update, run eagerly (a per-tensor loop) or fused by ``torch.compile``.

Both paths call the same per-tensor update function, one phase at a time. The compiled path receives every hyper-parameter
as an element of one 1-D tensor, so a scheduler that changes ``lr`` at every step changes data, not the
graph, and never triggers a recompile. Each compiled runner gets its own code object (the engine makes
one per bucket, phase and set of tensors), so no runner ever needs a second graph and dynamo's
per-function recompile limit, a hard error under ``fullgraph=True``, is never reached.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping, Sequence
from itertools import count
from typing import Any

import torch

from lightning_opt.transforms.gradient import apply_gradient_transforms

_bucket_ids = count()


def run_bucket(
    update: Callable[..., Any],
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    buffers: Sequence[dict[str, torch.Tensor]],
    scalars: Any,
    group_names: Sequence[str],
    tensor_names: Sequence[str],
    flags: Mapping[str, Any],
    carried: Sequence[Mapping[str, torch.Tensor]],
    grad_transforms: Sequence[str] = (),
) -> list[dict[str, torch.Tensor]]:
    """Apply one phase of an update to every tensor of a bucket; return what it returned per tensor.

    ``scalars`` holds the group's hyper-parameters (``group_names``) followed by each tensor's own
    (``tensor_names``, e.g. bias corrections that depend on that tensor's step). It is a list of floats
    on the eager path and a 1-D tensor on the compiled path; the indexing below serves both.
    ``carried[i]`` holds what the previous phase returned for tensor ``i`` (a norm, say); it is added
    to that tensor's hyper-parameters. ``grad_transforms`` names gradient transforms applied, out of
    place, to each gradient before ``update`` reads it.
    """
    n_group, n_tensor = len(group_names), len(tensor_names)
    shared = {name: scalars[i] for i, name in enumerate(group_names)}
    results = []
    for i in range(len(params)):
        offset = n_group + i * n_tensor
        hyperparameters = dict(shared)
        for j, name in enumerate(tensor_names):
            hyperparameters[name] = scalars[offset + j]
        hyperparameters.update(carried[i])
        grad = apply_gradient_transforms(grads[i], params[i], grad_transforms, hyperparameters)
        results.append(update(params[i], grad, buffers[i], hyperparameters, flags) or {})
    return results


def new_compiled_bucket_runner() -> Callable[..., None]:
    """Return ``run_bucket`` compiled under a code object of its own (see the module docstring)."""
    code = run_bucket.__code__
    code = code.replace(co_name=f"{code.co_name}_{next(_bucket_ids)}")
    function = types.FunctionType(code, run_bucket.__globals__, code.co_name)
    return torch.compile(function, fullgraph=True, dynamic=False)


def scalar_dtype(param_dtype: torch.dtype) -> torch.dtype:
    """The dtype of the hyper-parameter tensor for a bucket: float64 for float64 parameters, else float32."""
    return torch.float64 if param_dtype == torch.float64 else torch.float32
