"""The bucket update, run eagerly (a per-tensor loop) or fused by ``torch.compile``.

Both paths call the same per-tensor update function, one phase at a time. The compiled path receives
every hyper-parameter as an element of one 1-D tensor, so a scheduler that changes ``lr`` at every step
changes data, not the graph, and never triggers a recompile. Each compiled runner gets its own code
object (one per layout, see below), so no runner ever needs a second graph and dynamo's per-function
recompile limit, a hard error under ``fullgraph=True``, is never reached.

Compiled runners are shared by every optimizer of the process through :func:`shared_runner`, keyed by
everything the graph specialises on (:func:`layout_key`): inductor never frees the code it generates,
so an optimizer that compiled its own runners cost about 0.8 MiB that outlived it, and a sweep that
rebuilds 1,000 optimizers over one model grew by 878 MiB. With sharing, the first optimizer of a layout
compiles and every later one reuses its graphs. The cache keeps at most :data:`MAX_SHARED_RUNNERS`
runners (least recently used dropped first; an optimizer that still holds a dropped runner keeps using
it); a process that cycles through more layouts than that compiles the dropped ones again.
"""

from __future__ import annotations

import threading
import types
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from itertools import count
from typing import Any, Union

import torch

from lightning_opt.transforms.gradient import apply_gradient_transforms

_bucket_ids = count()

MAX_SHARED_RUNNERS = 256
"""The most compiled runners :func:`shared_runner` keeps (one per phase and layout)."""

CompileFailure = str
"""What the shared cache keeps for a layout whose compile failed: the error, in one line."""

_shared_runners: OrderedDict[Hashable, Union[Callable[..., Any], CompileFailure]] = OrderedDict()
_shared_lock = threading.Lock()


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


def tensor_layout(tensor: torch.Tensor) -> tuple[Any, ...]:
    """What a graph compiled with ``dynamic=False`` specialises on for one input tensor."""
    return (
        type(tensor), tuple(tensor.shape), tensor.stride(), tensor.storage_offset(), tensor.dtype, tensor.device,
        tensor.requires_grad,
    )


def layout_key(
    phase: Callable[..., Any],
    grad_transforms: Sequence[str],
    flags: Mapping[str, Any],
    group_names: Sequence[str],
    tensor_names: Sequence[str],
    scalars: torch.Tensor,
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    buffers: Sequence[Mapping[str, torch.Tensor]],
) -> tuple[Any, ...]:
    """The key under which :func:`shared_runner` keeps the compiled ``phase`` for these inputs: the phase
    function itself, the transforms, the flags, the hyper-parameter names, and the layout (shape, stride,
    storage offset, dtype, device) of the hyper-parameter tensor and of every parameter, gradient and
    buffer. Two buckets with equal keys run the same graph."""
    return (
        phase,
        tuple(grad_transforms),
        tuple(flags.items()),
        tuple(group_names),
        tuple(tensor_names),
        tensor_layout(scalars),
        tuple(tensor_layout(p) for p in params),
        tuple(tensor_layout(g) for g in grads),
        tuple(tuple((name, tensor_layout(b)) for name, b in per_tensor.items()) for per_tensor in buffers),
    )


def shared_runner(key: Hashable) -> Union[Callable[..., Any], CompileFailure]:
    """The process-wide compiled runner for ``key`` (see :func:`layout_key`), made on first use; or, if
    that runner failed to compile, the error (:data:`CompileFailure`), so that no optimizer compiles a
    failing layout twice."""
    with _shared_lock:
        runner = _shared_runners.get(key)
        if runner is None:
            runner = _shared_runners[key] = new_compiled_bucket_runner()
            while len(_shared_runners) > MAX_SHARED_RUNNERS:
                _shared_runners.popitem(last=False)
        else:
            _shared_runners.move_to_end(key)
        return runner


def record_compile_failure(key: Hashable, error: CompileFailure) -> None:
    """Remember that the runner for ``key`` failed to compile (it runs eagerly from now on)."""
    with _shared_lock:
        _shared_runners[key] = error


def clear_shared_runners() -> None:
    """Forget every shared runner (tests use it to count compiles; the compiled code itself stays in memory)."""
    with _shared_lock:
        _shared_runners.clear()


def scalar_dtype(param_dtype: torch.dtype) -> torch.dtype:
    """The dtype of the hyper-parameter tensor for a bucket: float64 for float64 parameters, else float32."""
    return torch.float64 if param_dtype == torch.float64 else torch.float32
