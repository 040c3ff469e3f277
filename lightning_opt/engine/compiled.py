"""The update of one stack, run eagerly or fused by ``torch.compile``.

Both paths call the same update function, one phase at a time, on the ``(k, units, width)`` tensors of a
:class:`~lightning_opt.engine.stacks.Stack`. The compiled path receives the group's hyper-parameters as the
elements of one 1-D tensor and the per-tensor ones (bias corrections) as a ``(k, n)`` tensor, so a scheduler
that changes ``lr`` at every step changes data, not the graph, and never triggers a recompile.

Graphs are compiled with dynamic sizes: one graph serves stacks of any number of tensors and any units and
width, so the compile cost depends on the kinds of stacks (which sizes are 1, the flags, the transforms),
not on the number or the shapes of the tensors. Dynamo specialises a size of 0 or 1 and, by default,
assumes that sizes seen equal stay equal ("duck shaping"); the key of a runner (:func:`runner_key`) holds
which sizes are 1, and the graphs are traced without duck shaping, so each runner compiles exactly one
graph and dynamo's per-function recompile limit (a hard error under ``fullgraph=True``) is never reached.

Compiled runners are shared by every optimizer of the process through :func:`shared_runner`, keyed by
everything the graph specialises on: inductor never frees the code it generates, so an optimizer that
compiled its own runners cost about 0.8 MiB that outlived it. The cache keeps at most
:data:`MAX_SHARED_RUNNERS` runners (least recently used dropped first; an optimizer that still holds a
dropped runner keeps using it).
"""

from __future__ import annotations

import threading
import types
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from itertools import count
from typing import Any, Optional, Union

import torch

from lightning_opt.engine.replay import guard_chosen_code
from lightning_opt.transforms.constraints import BEFORE_UPDATE, apply_regularizer
from lightning_opt.transforms.gradient import apply_gradient_transforms

_runner_ids = count()

MAX_SHARED_RUNNERS = 256
"""The most compiled runners :func:`shared_runner` keeps (one per phase and kind of stack)."""

CompileFailure = str
"""What the shared cache keeps for a runner whose compile failed: the error, in one line."""

_shared_runners: OrderedDict[Hashable, Union[Callable[..., Any], CompileFailure]] = OrderedDict()
_shared_lock = threading.Lock()


TRANSFORMED_GRAD = "__transformed_grad__"
"""Under which name the first phase carries the transformed gradient to the later phases of an update."""


def run_stack(
    update: Callable[..., Any],
    param: torch.Tensor,
    grad: torch.Tensor,
    buffers: dict[str, torch.Tensor],
    numbers: Mapping[str, Any],
    flags: Mapping[str, Any],
    carried: Mapping[str, torch.Tensor],
    grad_transforms: Sequence[str],
    unit_start: int,
    keep_grad: bool = False,
    regularizers: Sequence[str] = (),
) -> dict[str, torch.Tensor]:
    """Apply one phase of an update to a stack; return what every phase so far returned (named tensors).

    ``numbers`` holds the hyper-parameters: the group's (Python floats on the eager path, 0-d tensors on the
    compiled path) and each tensor's own (bias corrections), as ``(k, 1, ..., 1)`` tensors (as many dimensions
    as the stack). ``carried`` holds what the earlier phases returned (a norm per tensor, say), added to the
    hyper-parameters. ``grad_transforms`` names gradient transforms applied, out of place, to the gradient
    before ``update`` reads it, with units starting at dimension ``unit_start``; with ``keep_grad`` (the first
    of several phases) the transformed gradient is carried too, and the later phases read it as their ``grad``
    (:data:`TRANSFORMED_GRAD`). ``regularizers`` names the parameter-side regularisers of
    :mod:`lightning_opt.transforms.constraints` this phase applies (the engine gives them to the last phase):
    those of :data:`~lightning_opt.transforms.constraints.BEFORE_UPDATE` after the gradient transforms and
    before ``update``, the others after it.
    """
    hyperparameters = {**numbers, **carried}
    grad = hyperparameters.pop(TRANSFORMED_GRAD, grad)
    grad = apply_gradient_transforms(grad, param, grad_transforms, hyperparameters, unit_start)
    for name in regularizers:
        if name in BEFORE_UPDATE:
            apply_regularizer(name, param, buffers, hyperparameters, unit_start)
    result = {**carried, **(update(param, grad, buffers, hyperparameters, flags) or {})}
    for name in regularizers:
        if name not in BEFORE_UPDATE:
            apply_regularizer(name, param, buffers, hyperparameters, unit_start)
    if keep_grad:
        result[TRANSFORMED_GRAD] = grad
    return result


def run_stacks(
    update: Callable[..., Any],
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    buffers: Sequence[dict[str, torch.Tensor]],
    group_values: Any,
    tensor_values: Optional[torch.Tensor],
    group_names: Sequence[str],
    tensor_names: Sequence[str],
    flags: Mapping[str, Any],
    carried: Sequence[Mapping[str, torch.Tensor]],
    grad_transforms: Sequence[str],
    unit_start: int,
    keep_grad: bool = False,
    regularizers: Sequence[str] = (),
) -> list[dict[str, torch.Tensor]]:
    """:func:`run_stack` over a chunk of stacks (the lists hold one entry per stack); returns what each
    returned. Compiled, one call runs the whole chunk.

    ``group_values`` holds the group's hyper-parameters (``group_names``): Python floats on the eager path, a
    1-D tensor on the compiled path. ``tensor_values`` is an ``(n, K)`` tensor of the ``n`` per-tensor numbers
    (``tensor_names``) of the ``K`` tensors of the chunk, in the order of the stacks: one input of the graph
    rather than one per stack (each costs the compiled call's prologue and guards some microseconds), cut into
    each stack's ``(k, 1, ..., 1)`` views once per call rather than once per stack and number.
    """
    group = {name: group_values[i] for i, name in enumerate(group_names)}
    per_stack: list[dict[str, Any]] = [{} for _ in params]
    if tensor_values is not None:
        sizes = [param.shape[0] for param in params]
        ones = [1] * (params[0].dim() - 1)
        for j, name in enumerate(tensor_names):
            for numbers, value in zip(per_stack, tensor_values[j].view(-1, *ones).split(sizes)):
                numbers[name] = value
    return [
        run_stack(
            update, params[i], grads[i], buffers[i], {**group, **per_stack[i]}, flags, carried[i], grad_transforms,
            unit_start, keep_grad, regularizers,
        )
        for i in range(len(params))
    ]


class CompiledRunner:
    """:func:`run_stacks` compiled under a code object of its own (see the module docstring).

    The first call, which traces and compiles, runs without duck shaping; later calls (the same kind of
    stack, so dynamo's guards pass) go straight to the compiled code: the configuration patch costs
    tens of microseconds, more than the rest of a small step's host work.

    The first call also builds the guards on the sizes in C++ (dynamo's ``enable_cpp_symbolic_shape_guards``;
    off by default in torch 2.13) instead of as a Python function that reads each input's sizes, strides and
    base at every call. Measured 2026-12-02 on this project's 2-core CPU: about 40 us less per call of 8 stacks
    (NSGDA on the standard set's structure with small tensors, 10 calls: 4.46 -> 4.08 ms a step), and one small
    C++ file more to compile per graph (compiled AdaLo's cold first step on 50 tensors: 6.5 -> 8.1 s). Without
    a C++ compiler dynamo keeps the Python guards.
    """

    def __init__(self) -> None:
        code = run_stacks.__code__
        code = code.replace(co_name=f"{code.co_name}_{next(_runner_ids)}")
        function = types.FunctionType(code, run_stacks.__globals__, code.co_name)
        self._code = code
        self._compiled = torch.compile(function, fullgraph=True, dynamic=True)
        self._traced = False
        self._functions: dict[types.CodeType, Callable[..., Any]] = {}

    def __call__(self, *args: Any) -> list[dict[str, torch.Tensor]]:
        if self._traced:
            return self._compiled(*args)
        from torch._dynamo import config as dynamo_config
        from torch.fx.experimental import _config as shape_config

        with shape_config.patch(use_duck_shape=False), dynamo_config.patch(enable_cpp_symbolic_shape_guards=True):
            result = self._compiled(*args)
        self._traced = True
        return result

    def compiled_code(self, args: Sequence[Any]) -> Optional[Callable[..., Any]]:
        """The compiled code dynamo's guards choose for ``args`` (those of a call just made), as a plain function
        that runs it without the guards (:func:`~lightning_opt.engine.replay.guard_chosen_code`); ``None`` if none."""
        return guard_chosen_code(self._code, run_stacks.__globals__, args, self._functions)


def runner_key(
    phase: Callable[..., Any],
    grad_transforms: Sequence[str],
    flags: Mapping[str, Any],
    group_names: Sequence[str],
    tensor_names: Sequence[str],
    carried_names: Sequence[str],
    kinds: Sequence[Hashable],
    device: torch.device,
    dtype: torch.dtype,
    keep_grad: bool = False,
    regularizers: Sequence[str] = (),
) -> tuple[Any, ...]:
    """The key under which :func:`shared_runner` keeps the compiled ``phase`` for a chunk of stacks: the
    phase function, the transforms, the flags, the names of the numbers it reads, the kind of each stack
    of the chunk (:attr:`~lightning_opt.engine.stacks.Stack.kind`: which sizes are 0 or 1, which dynamo
    specialises), the device, the dtype, whether the phase carries its transformed gradient on and the
    regularisers it applies. Two chunks with equal keys run the same graph."""
    return (
        phase,
        tuple(grad_transforms),
        tuple(flags.items()),
        tuple(group_names),
        tuple(tensor_names),
        tuple(carried_names),
        tuple(kinds),
        device,
        dtype,
        keep_grad,
        tuple(regularizers),
    )


def shared_runner(key: Hashable) -> Union[Callable[..., Any], CompileFailure]:
    """The process-wide compiled runner for ``key`` (see :func:`runner_key`), made on first use; or, if
    that runner failed to compile, the error (:data:`CompileFailure`), so that no optimizer compiles a
    failing one twice."""
    with _shared_lock:
        runner = _shared_runners.get(key)
        if runner is None:
            runner = _shared_runners[key] = CompiledRunner()
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
    """The dtype of the hyper-parameter tensors of a stack: float64 for float64 parameters, else float32."""
    return torch.float64 if param_dtype == torch.float64 else torch.float32
