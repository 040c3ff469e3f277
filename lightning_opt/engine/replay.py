"""Compiled calls that skip dynamo's guards while the inputs keep the layout dynamo last checked.

Every call of a ``torch.compile``\\ d function first runs dynamo's guards: on a chunk of 8 stacks about 1,100
checks (each input's type, dtype, device, sizes and strides, those of the tensors it views, the sizes' relations,
no aliasing between inputs, the global state), 0.2-0.3 ms on this project's 2-core CPU, as long as a kernel over a
million elements. An optimizer's step calls the same compiled code with the same kind of inputs at every step: the
same stacks, state buffers and copies, only the gradients and the hyper-parameter tensors fresh.

A :class:`Replay` makes the first call of a chunk's phase (and any call after its inputs changed) through dynamo,
guards and all, and then finds the compiled code those guards chose. Later calls run that code directly, as a
plain function, as long as three cheap checks pass (about 25 us for a chunk of 8 stacks, against the guards'
200-300):

- every tensor input has the dtype, device, ``requires_grad``, dispatch keys, sizes and strides of the guarded
  call (torch's C++ ``TensorGuards``, the check dynamo's own ``TENSOR_MATCH`` guards are built on);
- the tensors the update writes (parameters, their stacked copies and state buffers) are at the same addresses,
  so no two of them overlap now that did not then (dynamo's no-aliasing guards);
- the global state dynamo guards (grad mode, autocast, deterministic algorithms, default dtype, threads...) is
  the same, no torch-function or dispatch mode is active, and nothing is being compiled around the step.

What else dynamo guards is fixed for a chunk and a runner: the structure of the arguments (number of stacks,
buffer names, flags, hyper-parameter names), which is the runner's key (:func:`~lightning_opt.engine.compiled.
runner_key`) and the chunk's plan. A failed check makes a guarded call again, which recompiles if dynamo's guards
fail too, and replays from there. The gradients are not checked for aliasing: the update only reads them.

Measured 2026-12-03 on this project's 2-core CPU, medians of 60 steps in one process, guarded and replayed
calls alternating: on the standard set, compiled AdaLo 15.9 -> 13.9 ms a step, NSGDA 25.4 -> 23.7, AdamAtan2
66.3 -> 64.0; on its host twin (``benchmarks/host_work.py``: the same stacks and calls, small tensors), 2.31 ->
1.59, 4.01 -> 3.04 and 4.80 -> 3.59. ``benchmarks/host_work.py --guarded`` measures both in one run.

Set :data:`ENABLED` to ``False`` to make every call through dynamo (to compare, or to rule this out).
"""

from __future__ import annotations

import types
from collections.abc import Callable, Sequence
from typing import Any, Optional

import torch

ENABLED = True
"""Whether :class:`Replay` skips dynamo's guards after a guarded call (``False``: every call is guarded)."""

_data_ptr = torch.Tensor.data_ptr
_eval_frame = getattr(torch._C, "_dynamo", None) and getattr(torch._C._dynamo, "eval_frame", None)
_guards = getattr(torch._C, "_dynamo", None) and getattr(torch._C._dynamo, "guards", None)
SUPPORTED = all(
    callable(getattr(module, name, None))
    for module, name in (
        (_eval_frame, "_debug_get_cache_entry_list"),
        (_eval_frame, "get_eval_frame_callback"),
        (_guards, "TensorGuards"),
        (_guards, "GlobalStateGuard"),
        (torch._C, "_len_torch_function_stack"),
        (torch._C, "_len_torch_dispatch_stack"),
    )
)
"""Whether this torch has what a replay reads (torch 2.13 has; without it every call is guarded, as before)."""


class Replay:
    """Calls ``runner`` (a :class:`~lightning_opt.engine.compiled.CompiledRunner`) for one phase of one chunk:
    through dynamo when needed, else its compiled code directly (see the module docstring).

    Args:
        runner: the compiled runner; its :meth:`~lightning_opt.engine.compiled.CompiledRunner.compiled_code`
            gives the code dynamo's guards chose for the arguments of a call.

    Example:
        >>> import torch
        >>> from lightning_opt.engine.compiled import CompiledRunner
        >>> replay = Replay(CompiledRunner())  # what the engine keeps per chunk and phase
        >>> replay.guarded_calls, replay.replayed_calls
        (0, 0)
    """

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self.guarded_calls = 0
        """Calls made through dynamo's guards (the first, and each after the inputs changed)."""
        self.replayed_calls = 0
        """Calls that ran the compiled code directly."""
        self._code: Optional[Callable[..., Any]] = None
        self._tensor_guard: Any = None
        self._global_guard: Any = None
        self._addresses: list[int] = []

    def __call__(self, args: Sequence[Any], tensors: Sequence[torch.Tensor], written: Sequence[torch.Tensor]) -> Any:
        """Run the runner on ``args``; ``tensors`` are every tensor in ``args`` (in a fixed order), ``written``
        those the update changes in place."""
        code = self._code
        if (
            code is not None
            and ENABLED
            and self._global_guard.check()
            and self._tensor_guard.check(*tensors)
            and list(map(_data_ptr, written)) == self._addresses
            and _plain_context()
        ):
            self.replayed_calls += 1
            return code(*args)
        result = self.runner(*args)
        self.guarded_calls += 1
        self._code = self.runner.compiled_code(args) if ENABLED and SUPPORTED and _plain_context() else None
        if self._code is not None:
            self._tensor_guard = _guards.TensorGuards(
                *tensors,
                dynamic_dims_sizes=[list(tensor.shape) for tensor in tensors],
                dynamic_dims_strides=[list(tensor.stride()) for tensor in tensors],
            )
            self._global_guard = _guards.GlobalStateGuard()
            self._addresses = list(map(_data_ptr, written))
        return result


def _plain_context() -> bool:
    """Nothing compiled around the step (a step traced by an outer ``torch.compile``, or run from one, goes through
    dynamo) and no torch-function or dispatch mode active (dynamo's guards check the modes)."""
    return (
        not torch.compiler.is_compiling()
        and _eval_frame.get_eval_frame_callback() is None
        and torch._C._len_torch_function_stack() == 0
        and torch._C._len_torch_dispatch_stack() == 0
    )


_DYNAMO_UTILS = "torch._dynamo.utils"
_DYNAMO_DISABLED_HELPERS = (
    "call_size", "call_stride", "call_storage_offset", "record_pregraph_bytecode_enter", "record_pregraph_bytecode_exit"
)
"""What the code dynamo generates calls before the graph (reading the dynamic sizes), each wrapped so that dynamo
does not trace it: a wrapper that costs about 7 us a call (20 calls for a chunk of 8 stacks) and does nothing when,
as on a replay, no dynamo callback is set."""


def _plain_namespace(namespace: dict[str, Any], code: types.CodeType) -> dict[str, Any]:
    """A copy of ``namespace`` (the globals of ``code``, compiled by dynamo) in which the compiled graph and the
    helpers of :data:`_DYNAMO_DISABLED_HELPERS` that ``code`` calls are their functions without dynamo's disabling
    wrapper (kept where this torch has no such wrapper)."""
    plain = dict(namespace)
    for name in code.co_names:
        value = namespace.get(name)
        if name.startswith("__compiled_fn") and callable(getattr(value, "__wrapped__", None)):
            plain[name] = value.__wrapped__  # type: ignore[union-attr]
        elif isinstance(value, types.ModuleType) and value.__name__ == _DYNAMO_UTILS:
            helpers = {
                helper: getattr(getattr(value, helper), "__wrapped__", getattr(value, helper))
                for helper in _DYNAMO_DISABLED_HELPERS
                if hasattr(value, helper)
            }
            plain[name] = types.SimpleNamespace(**{**vars(value), **helpers})
    return plain


def guard_chosen_code(
    code: types.CodeType,
    namespace: dict[str, Any],
    args: Sequence[Any],
    functions: dict[types.CodeType, Callable[..., Any]],
) -> Optional[Callable[..., Any]]:
    """The compiled code that dynamo's guards choose for calling the function of ``code`` (whose globals are
    ``namespace``) with ``args``, as a plain function (made once per compiled entry and kept in ``functions``), or
    ``None`` if no entry's guards pass (or this torch's entries have no guard manager to ask).

    The function runs on a copy of ``namespace`` made then (:func:`_plain_namespace`), which holds the compiled
    graph: dynamo stores each graph in ``namespace`` under a name of its own, with a fresh uuid.
    """
    frame_locals = dict(zip(code.co_varnames[: code.co_argcount], args))
    for entry in _eval_frame._debug_get_cache_entry_list(code):
        check = getattr(getattr(entry, "guard_manager", None), "check", None)
        if check is not None and check(frame_locals):
            function = functions.get(entry.code)
            if function is None:
                function = functions[entry.code] = types.FunctionType(
                    entry.code, _plain_namespace(namespace, entry.code), entry.code.co_name
                )
            return function
    return None
