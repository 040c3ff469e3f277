"""Stacks: the parameters of a group that one call of an update function handles together.

An update function sees every tensor as a stack of ``k`` parameters of one shape, a tensor of shape
``(k, units, width)``: a parameter of two or more dimensions has ``units = shape[0]`` output units of
``width`` elements each; a 0-d or 1-D one is one unit. Reductions per parameter run over dimensions 1 and 2,
per unit over dimension 2 (:mod:`lightning_opt.transforms.reductions`).

How a group's parameters are stacked, per device and dtype (:func:`plan_stacks`):

- a parameter of more than :data:`STACK_NUMEL` elements, contiguous, with contiguous state, runs alone and
  in place: the stack is a view of the parameter itself, so the step reads and writes each byte once;
- smaller parameters of one shape run together: they are copied into one stack with ``torch.stack`` and
  the results copied back, a few whole-stack operations instead of a few per parameter. On small tensors a
  step costs host time per operation, not memory traffic (500 tensors of 256 elements: about 2 ms instead
  of 20), and the compiled graph does not grow with the number of tensors;
- so do non-contiguous parameters (a transposed view, ``channels_last``): stacked alone, they are updated
  through a contiguous copy.

Tensors with no elements take no part in the maths; their step count still advances.

What the update sees of one parameter is its *view* (:data:`ViewFn`): by default ``(units, width)``
(:func:`units_view`); an optimizer that needs another layout (the last two dimensions as a matrix, the
parameter's own dimensions, the most square matrix) sets its own, and the stack is then ``(k, *view)``.
State buffers of the parameter's shape are seen in that view too; any other buffer (a factored second
moment, a per-tensor scalar, packed bits) is seen as it is stored, stacked: ``(k, *buffer.shape)``. So an
optimizer declares such a buffer in terms of the view, e.g. ``(rows, 1)`` for one value per row of a
``(rows, cols)`` view, or ``(1, 1)`` for one value per tensor, so that it broadcasts against the stack.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

STACK_NUMEL = 1 << 14
"""Parameters of at most this many elements are stacked with the others of their shape; larger ones run
alone, in place. On this project's 2-core CPU, a stacked tensor costs about 6 ns per element in copies and
a tensor run alone about 40 us in per-call host work (eager and compiled), which break even near 7,000
elements; 16,384 leaves every bias, norm gain and small matrix stacked and every large matrix in place."""


ViewFn = Callable[[torch.Size], tuple[int, ...]]
"""The shape (without ``k``) an update sees a parameter of the given shape as; a view of its elements in
order, so the product of the sizes is the parameter's number of elements."""


def units_view(shape: torch.Size) -> tuple[int, ...]:
    """The default view: ``(units, width)``, the output units (``shape[0]`` for two or more dimensions, else 1)
    and the elements of each.

    >>> units_view(torch.Size([64, 3, 3, 3])), units_view(torch.Size([10])), units_view(torch.Size([]))
    ((64, 27), (1, 10), (1, 1))
    """
    units = shape[0] if len(shape) >= 2 else 1
    return units, shape.numel() // max(units, 1)


def view_unit_start(shape: torch.Size, view: Sequence[int]) -> Optional[int]:
    """The first dimension of a unit (a slice along the parameter's first dimension; a 0-d or 1-D parameter
    is one unit) in a ``(k, *view)`` stack, or ``None`` if a unit is not a trailing block of dimensions of
    ``view``: the engine then applies gradient transforms before viewing the gradient so.

    >>> view_unit_start(torch.Size([8, 4]), (8, 4)), view_unit_start(torch.Size([8, 4]), (1, 8, 4))
    (2, 3)
    >>> view_unit_start(torch.Size([5]), (1, 5)), view_unit_start(torch.Size([8, 2, 3, 3]), (16, 3, 3))
    (1, None)
    """
    units = shape[0] if len(shape) >= 2 else 1
    size = 1
    for dim, extent in enumerate((1, *view)):
        size *= extent
        if size == units:
            return dim + 1
        if size > units:
            break
    return None


class Stack:
    """Parameters of one group, device, dtype and shape that run through the update together.

    A copied stack keeps, between steps, a ``(k, *shape)`` copy of its parameters and of their gradients
    (refreshed at every step with ``torch.stack(..., out=...)``) and holds its state buffers stacked: each
    tensor's ``state[name]`` is a view of the stacked buffer, so the update changes them in place and
    nothing is copied back but the parameters. Before each step :meth:`bind` checks that the state still
    holds these views (``load_state_dict``, or a user, may have replaced them) and stacks the state again
    if not.
    """

    def __init__(
        self,
        params: list[torch.Tensor],
        copied: bool,
        view: Optional[tuple[int, ...]] = None,
        buffer_shapes: Optional[dict[str, torch.Size]] = None,
    ) -> None:
        self.params = params
        self.shape = params[0].shape
        self.view = units_view(self.shape) if view is None else tuple(view)
        """What the update sees of each parameter (:data:`ViewFn`)."""
        self.buffer_shapes = dict(buffer_shapes or {})
        """The shapes of the state buffers not of the parameter's shape (seen as ``(k, *shape)``)."""
        self.copied = copied
        """Gathered with ``torch.stack`` and copied back after the update (else: one parameter, in place)."""
        self._buffers: dict[str, torch.Tensor] = {}
        self._buffer_views: dict[str, list[torch.Tensor]] = {}
        self._param_copy: torch.Tensor | None = None
        self._param_copy_views: list[torch.Tensor] = []
        self._grad_copy: torch.Tensor | None = None

    def add(self, param: torch.Tensor) -> None:
        """Add a parameter of the same shape (before the first :meth:`bind`); the stack becomes a copy."""
        self.params.append(param)
        self.copied = True
        for name in _CACHED:  # read at every step, so cached; a stack changes only while it is planned
            self.__dict__.pop(name, None)

    @functools.cached_property
    def stacked_shape(self) -> tuple[int, ...]:
        """``(k, *view)``, the shape the update functions see (``(k, units, width)`` by default)."""
        return len(self.params), *self.view

    @functools.cached_property
    def kind(self) -> tuple[Any, ...]:
        """What a compiled graph specialises on: which of the stacked sizes (and of the sizes of the buffers
        not of the parameter's shape) are 0 or 1, the unit start, and whether the stack is a copy (a view of
        a parameter requires grad); sizes above 1 are dynamic."""
        def ones(sizes: Sequence[int]) -> tuple[Optional[int], ...]:
            return tuple(size if size <= 1 else None for size in sizes)

        buffers = tuple((name, ones(shape)) for name, shape in self.buffer_shapes.items())
        return ones(self.stacked_shape), buffers, self.unit_start, self.copied

    @functools.cached_property
    def unit_start(self) -> Optional[int]:
        """The first dimension of a unit in the stacked tensors (:func:`view_unit_start`): in the default view,
        2 for weights of two or more dimensions (a unit is a row) and 1 for 0-d and 1-D parameters (a unit
        is the whole tensor); ``None`` when the view splits units."""
        return view_unit_start(self.shape, self.view)

    def units_shape(self) -> tuple[int, int, int]:
        """``(k, units, width)``: the stack seen in the default view, where every unit is a row."""
        units, width = units_view(self.shape)
        return len(self.params), units, width

    def bind(self, states: Sequence[dict[str, Any]], buffer_names: Sequence[str]) -> None:
        """For a copied stack, make ``states``' buffers views of this stack's tensors, stacking their current
        values again if anything replaced them since the last step (the step counts are the
        :class:`Chunk`'s)."""
        if not self.copied:
            return
        for name in buffer_names:
            views = self._buffer_views.get(name)
            if views is None or not all(map(operator.is_, (s[name] for s in states), views)):
                # contiguous, so that it views as (k, units, width) whatever the buffers' memory format was
                self._buffers[name] = torch.stack([state[name] for state in states]).contiguous()
                self._buffer_views[name] = views = list(self._buffers[name].unbind(0))
                for state, view in zip(states, views):
                    state[name] = view

    def gather(self, states: Sequence[dict[str, Any]], buffer_names: Sequence[str]) -> StackedTensors:
        """The ``(k, units, width)`` parameter, gradient and buffers of this step: views of the parameter and
        its state for a stack run in place (a reshaped copy of a non-contiguous gradient, which is only
        read); for a copied stack, fresh copies of the parameters and gradients, and the stacked buffers."""
        shape = self.stacked_shape
        if not self.copied:
            param = self.params[0]
            buffers = {name: self._in_place_buffer(states[0][name], name) for name in buffer_names}
            return param.view(shape), param.grad.reshape(shape), buffers  # type: ignore[union-attr]
        if self._param_copy is None:
            self._param_copy = torch.empty((len(self.params), *self.shape), dtype=self.params[0].dtype,
                                           device=self.params[0].device)
            self._param_copy_views = list(self._param_copy.unbind(0))
            self._grad_copy = torch.empty_like(self._param_copy)
        torch.stack(self.params, out=self._param_copy)
        torch.stack([p.grad for p in self.params], out=self._grad_copy)  # type: ignore[misc]
        buffers = {
            name: self._buffers[name] if name in self.buffer_shapes else self._buffers[name].view(shape)
            for name in buffer_names
        }
        return self._param_copy.view(shape), self._grad_copy.view(shape), buffers  # type: ignore[union-attr]

    def _in_place_buffer(self, buffer: torch.Tensor, name: str) -> torch.Tensor:
        """The stacked view of the one parameter's buffer ``name`` of a stack run in place."""
        return buffer.unsqueeze(0) if name in self.buffer_shapes else buffer.view(self.stacked_shape)

    def scatter(self) -> None:
        """Copy a copied stack's updated parameters back into the parameters (nothing for one in place)."""
        if self.copied:
            torch._foreach_copy_(self.params, self._param_copy_views)


_CACHED = ("stacked_shape", "kind", "unit_start")
"""The properties of a :class:`Stack` that are computed once."""


StackedTensors = tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]
"""A stack's parameter, gradient and named state buffers, each of shape ``(k, units, width)``."""


CHUNK = 8
"""The most stacks one call of the update runs (:func:`chunk_stacks`)."""


class StepCounts:
    """The step counts of the tensors of one ``(device, dtype)`` bucket of a :class:`Plan`, as views of one vector,
    in the order of its chunks, their stacks and their parameters: one operation advances them all, and the
    per-tensor hyper-parameters (bias corrections) are computed from it at once, each chunk reading its slice
    (:attr:`Chunk.start`, :attr:`Chunk.stop`). Before each step :meth:`bind` checks that the states still hold these
    views (``load_state_dict``, or a user, may have replaced them) and stacks the counts again if not."""

    def __init__(self) -> None:
        self._steps: torch.Tensor | None = None
        self._step_views: list[torch.Tensor] = []

    def bind(self, states: Sequence[dict[str, Any]]) -> None:
        """Make the step counts of ``states`` (those of every parameter of the bucket, in order) views of this
        vector."""
        if self._steps is None or not all(map(operator.is_, (s["step"] for s in states), self._step_views)):
            self._steps = torch.stack([state["step"] for state in states]).to(torch.float32)
            self._step_views = list(self._steps.unbind(0))
            for state, view in zip(states, self._step_views):
                state["step"] = view

    def advance(self) -> torch.Tensor:
        """Add one to every tensor's step count; return the counts (a float32 CPU tensor, one per parameter of
        the bucket, in order)."""
        assert self._steps is not None, "bind() first"
        return self._steps.add_(1)


class Chunk(list[Stack]):
    """Stacks of one kind that one call of the update runs (a list of :class:`Stack`); its tensors are those from
    :attr:`start` to :attr:`stop` of its bucket (:class:`StepCounts`)."""

    def __init__(self, stacks: Iterable[Stack] = ()) -> None:
        super().__init__(stacks)
        self.start = 0
        """The position of the chunk's first tensor among the tensors of its bucket (set by :class:`Plan`)."""
        self.stop = self.tensors()
        """The position after its last tensor (set by :class:`Plan`)."""
        self.replays: dict[tuple[Any, ...], Any] = {}
        """The :class:`~lightning_opt.engine.replay.Replay` of each compiled phase run on this chunk, by the
        runner's key (:func:`~lightning_opt.engine.compiled.runner_key`)."""

    def tensors(self) -> int:
        """How many tensors the chunk's stacks hold."""
        return sum(len(stack.params) for stack in self)


@dataclass
class Plan:
    """How one group's parameters with gradients are stepped: per ``(device, dtype)``, chunks of stacks of
    one kind (:func:`chunk_stacks`) and the step counts of their tensors, and the parameters without elements
    (only their step count advances)."""

    chunks: dict[tuple[torch.device, torch.dtype], list[Chunk]]
    empty: list[torch.Tensor]
    counts: dict[tuple[torch.device, torch.dtype], StepCounts] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for bucket, chunks in self.chunks.items():
            self.counts.setdefault(bucket, StepCounts())
            position = 0
            for chunk in chunks:
                chunk.start, chunk.stop = position, position + chunk.tensors()
                position = chunk.stop

    def params(self, bucket: tuple[torch.device, torch.dtype]) -> list[torch.Tensor]:
        """The parameters of ``bucket``, in the order of its step counts."""
        return [param for chunk in self.chunks[bucket] for stack in chunk for param in stack.params]


def chunk_stacks(stacks: Sequence[Stack], size: int = CHUNK) -> list[Chunk]:
    """Group ``stacks`` by :attr:`Stack.kind` into chunks of at most ``size``, each run by one call of the
    update. A compiled call costs about 100-200 us of host work on this project's CPU (dynamo's entry and
    guards), as much as updating 50,000 elements: a model with 26 large tensors pays it 4 times, not 26.
    A chunk's graph unrolls its stacks, so ``size`` also bounds the graph: chunks of 1 to ``size`` stacks
    of one kind need at most ``size`` graphs, whatever the number of tensors."""
    by_kind: dict[tuple[Any, ...], list[Stack]] = {}
    for stack in stacks:
        by_kind.setdefault(stack.kind, []).append(stack)
    return [Chunk(group[i : i + size]) for group in by_kind.values() for i in range(0, len(group), size)]


def plan_stacks(
    params: Sequence[torch.Tensor],
    state_of: Callable[[torch.Tensor], dict[str, Any]],
    buffer_names: Sequence[str],
    view_of: ViewFn = units_view,
) -> Plan:
    """Sort ``params`` (all with state already) into :class:`Stack`\\ s (see the module docstring), each
    seen by the update in the view ``view_of`` gives (:data:`ViewFn`)."""
    stacks: dict[tuple[torch.device, torch.dtype], list[Stack]] = {}
    by_shape: dict[tuple[Any, ...], Stack] = {}
    empty = []
    for param in params:
        if param.numel() == 0:
            empty.append(param)
            continue
        bucket = stacks.setdefault((param.device, param.dtype), [])
        state = state_of(param)
        view = tuple(view_of(param.shape))
        buffer_shapes = {name: state[name].shape for name in buffer_names if state[name].shape != param.shape}
        if math.prod(view) != param.numel():
            raise ValueError(
                f"Invalid view: {view} does not hold the {param.numel()} elements of a {tuple(param.shape)} parameter"
            )
        contiguous = param.is_contiguous() and all(state[name].is_contiguous() for name in buffer_names)
        if contiguous and param.numel() > STACK_NUMEL:
            bucket.append(Stack([param], False, view, buffer_shapes))
            continue
        if not contiguous:
            bucket.append(Stack([param], True, view, buffer_shapes))
            continue
        key = (param.device, param.dtype, param.shape, tuple(buffer_shapes.items()))
        stack = by_shape.get(key)
        if stack is None:
            stack = by_shape[key] = Stack([param], False, view, buffer_shapes)
            bucket.append(stack)
        else:
            stack.add(param)
    return Plan({bucket: chunk_stacks(members) for bucket, members in stacks.items()}, empty)


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
