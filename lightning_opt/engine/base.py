"""``BaseOptimizer``: validation, lazy state, stacks, closures, eager and compiled steps.

A concrete optimizer declares its per-tensor state (``buffer_names``), the hyper-parameters it derives
from a parameter group (:meth:`BaseOptimizer.group_hyperparameters`) and from the tensors' step counts
(:meth:`BaseOptimizer.tensor_hyperparameters`), and one ``update`` function built from
:mod:`lightning_opt.transforms`, written for a stack of tensors (:mod:`lightning_opt.engine.stacks`).
Everything else -- closures, skipping parameters without gradients, rejecting sparse gradients,
stacking, the compiled path, checkpoints -- lives here once.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Optional, Union

import torch

from lightning_opt.engine.compiled import (
    record_compile_failure,
    run_stacks,
    runner_key,
    scalar_dtype,
    shared_runner,
)
from lightning_opt.engine.replay import Replay
from lightning_opt.engine.stacks import Chunk, Plan, ViewFn, all_finite, plan_stacks, reject_sparse_grads, units_view
from lightning_opt.transforms.arith import Scalar
from lightning_opt.transforms.constraints import (
    BEFORE_UPDATE,
    REGULARIZER_BUFFERS,
    REGULARIZER_DEFAULTS,
    REGULARIZER_STATE,
    STEP,
    apply_regularizer,
    check_regularizer,
    init_regularizer_state,
    regularizer_numbers,
)
from lightning_opt.transforms.gradient import (
    AGC_CLIPPING,
    GradTransformsArg,
    apply_gradient_transforms,
    check_grad_transforms,
)
from lightning_opt.validation import (
    check_bool,
    check_float,
    check_param_group,
    check_param_groups,
    in_parameter_group,
)

Hyperparameters = Mapping[str, Scalar]
"""Numbers an update reads: Python floats on the eager path, 0-d tensors on the compiled path."""

Flags = Mapping[str, Union[bool, str]]
"""Switches an update reads (``cautious``, ``nesterov``...): constant for the compiled graph."""

UpdateFn = Callable[
    [torch.Tensor, torch.Tensor, dict[str, torch.Tensor], Hyperparameters, Flags], Optional[dict[str, torch.Tensor]]
]
"""``update(param, grad, buffers, hyperparameters, flags)`` changes ``param`` and ``buffers`` in place. A phase
may return named tensors (a norm, say) that the next phase of the same tensor reads as hyper-parameters."""

ParamsT = Union[Iterable[torch.Tensor], Iterable[dict[str, Any]]]


@dataclass(frozen=True)
class OptionalBuffer:
    """A state buffer of the parameter's shape that an optimizer keeps only if its constructor's value of one
    hyper-parameter asks for it (Adafactor's first moment with ``beta1``, SM3's momentum with ``momentum``).

    Whether it is kept is decided once, for the whole optimizer, by the constructor's value: a parameter group
    may change the value, and may switch the buffer off (it is then kept but neither read nor written), but
    not on, since its tensors have none. The engine refuses such a group when it is added and before each step
    (:meth:`BaseOptimizer.add_param_group`).

    Args:
        switch: the hyper-parameter (a key of the groups and the defaults).
        kept_for: whether a value of ``switch`` keeps the buffer.
        holds: what the buffer holds, for messages (``"first moment"``).
    """

    switch: str
    kept_for: Callable[[Any], bool]
    holds: str


class BaseOptimizer(torch.optim.Optimizer):
    """Base class of every optimizer in this package.

    Subclasses set ``buffer_names`` and ``update`` and override the two ``*_hyperparameters`` methods.
    ``update(param, grad, buffers, hyperparameters, flags)`` sees a stack: ``k`` parameters of one shape
    as tensors of shape ``(k, units, width)``, with the group's numbers as scalars and the per-tensor ones
    as ``(k, 1, 1)`` tensors; elementwise code is written as for one tensor, and a reduction per tensor
    uses :func:`~lightning_opt.transforms.reductions.sum_from` (or ``norm_from``) with
    :data:`~lightning_opt.transforms.reductions.PER_TENSOR`. An optimizer that needs another layout sets
    :attr:`stack_view` (the stack is then ``(k, *view)``), and one whose state is not of the parameter's
    shape (factored moments, one number per tensor, packed bits) overrides :meth:`buffer_shapes` (and
    :meth:`init_state` for a dtype other than the parameter's). The same function runs eagerly and compiled,
    on the CPU and on CUDA. An update that needs a reduction over a whole tensor before it can finish (a
    norm, say) is better written as ``phases``, names of static methods run one after the other over the
    stack: on the compiled path each phase is its own graph, which lets inductor update the state buffers
    in place instead of staging them in a temporary (NSGDA: 41 -> 18 ms per step on the standard benchmark).
    A phase reads what every earlier phase returned as hyper-parameters, and the gradient transforms'
    result (computed once, in the first phase) as its ``grad``.

    Args:
        params: iterable of parameters or of dicts defining parameter groups.
        defaults: the hyper-parameters of every group, already validated by the subclass. Only numbers,
            strings, bools and tuples: nothing callable (checkpoints load with ``weights_only=True``).
        compile: fuse each stack's whole update with ``torch.compile``. Same numbers as the eager
            path; the first step compiles one graph per kind of stack (seconds each, whatever the number
            of tensors), later steps are fast. The graphs have dynamic sizes and are shared by every
            optimizer of the process (see :mod:`lightning_opt.engine.compiled`): more tensors, a changing
            set of gradients or a rebuilt optimizer compile nothing again.
        skip_nonfinite: leave a tensor (its value, state and step count) untouched, with a warning, when
            its gradient holds an inf or NaN, instead of letting it corrupt the parameter and its state.
            Costs one extra read of the gradients and one host sync per device per step. Off by default,
            as in torch.optim; Lightning's GradScaler path already skips such steps as a whole.
        grad_transforms: names from :data:`~lightning_opt.transforms.gradient.GRADIENT_TRANSFORMS`
            (``"centralize"``, ``"adaptive_clip"``, ``"soft_clip"``) applied in that order to each
            gradient before the update, without changing ``p.grad``; stored per group, so a group may
            override it. Fused into the update under ``compile=True``.
        agc_clipping: the ``clipping`` of ``"adaptive_clip"``.

    A parameter group may also choose a parameter-side regulariser, run with every optimizer of the package
    (:mod:`lightning_opt.transforms.constraints`): ``"regularizer": "norm_loss"`` (with ``norm_loss_factor``)
    or ``"cpr"`` (with ``cpr_mu`` and ``cpr_warm_start``), validated when the group is added.

    ``compile``, ``skip_nonfinite`` and ``nonfinite_skips`` survive ``copy.deepcopy`` and pickling, and
    :meth:`load_state_dict` (a Lightning ``ckpt_path`` resume) keeps those of the optimizer it loads into:
    a checkpoint holds only ``state`` and ``param_groups``.
    """

    buffer_names: ClassVar[tuple[str, ...]] = ()
    """The names of the state buffers each parameter keeps; of the parameter's shape unless
    :meth:`buffer_shapes` says otherwise."""
    optional_buffers: ClassVar[Mapping[str, OptionalBuffer]] = {}
    """Buffers (of the parameter's shape) kept only if the constructor's value of a hyper-parameter asks for them,
    by name; see :class:`OptionalBuffer` and :meth:`kept_buffer_names`."""
    stack_view: ClassVar[ViewFn] = staticmethod(units_view)
    """How the update sees each parameter (:data:`~lightning_opt.engine.stacks.ViewFn`): ``(units, width)``
    by default; ``k`` parameters of one shape are then one ``(k, *view)`` tensor."""
    update: ClassVar[UpdateFn]
    phases: ClassVar[tuple[str, ...]] = ("update",)
    """The names of the update functions (static methods) run in turn over each stack."""
    eager_phases: ClassVar[frozenset[str]] = frozenset()
    """Phases that run eagerly even under ``compile=True``, unless they apply gradient transforms or a regulariser
    (those stay fused in the graph): a phase that is one in-place operation per stack, which torch's own kernel
    runs faster than a compiled call does (NSGDA's parameter step, ``p += s * m``: a whole step on the standard
    benchmark took 21.2 ms instead of 23.5)."""
    hyperparameter_check: ClassVar[Optional[Callable[..., dict[str, Any]]]] = None
    """Validates one group's hyper-parameters and returns them normalised; its arguments are named like the
    group's keys (``lr``, ``betas``...). Wrap it in ``staticmethod``. The engine runs it on every group
    added (``__init__`` and ``add_param_group``, the group's own values or the defaults) and, before each
    step, on the groups whose values changed since (a scheduler's ``lr``); see
    :func:`~lightning_opt.validation.check_param_group`."""
    whole_tensor_statistics: ClassVar[bool] = False
    """Whether the update reduces over a whole tensor or over whole rows and columns (a norm, a factored
    moment): such an optimizer refuses DTensor-sharded parameters (FSDP2), whose local shard would give
    statistics of the shard instead of the tensor."""
    max_kept_plans: ClassVar[int] = 8
    """How many stack plans (:func:`~lightning_opt.engine.stacks.plan_stacks`) are kept, one per parameter
    group and set of parameters with gradients (parameters that get no gradient on some steps change the
    set); the oldest is dropped and made again when needed. Plans are cheap; graphs do not depend on them."""

    def __init__(
        self,
        params: ParamsT,
        defaults: dict[str, Any],
        *,
        compile: bool = False,
        skip_nonfinite: bool = False,
        grad_transforms: GradTransformsArg = (),
        agc_clipping: float = AGC_CLIPPING,
    ) -> None:
        check_bool("compile", compile)
        check_bool("skip_nonfinite", skip_nonfinite)
        defaults = {
            **defaults,
            "grad_transforms": check_grad_transforms(grad_transforms),
            "agc_clipping": check_float("agc_clipping", agc_clipping, low=0.0, low_inclusive=False),
        }
        super().__init__(params, defaults)
        self._compile = compile
        self._skip_nonfinite = skip_nonfinite
        self.nonfinite_skips = 0
        """How many times a tensor was left untouched because its gradient was not finite, since this
        optimizer was built (copied along by ``copy.deepcopy`` and pickling; not part of ``state_dict``)."""
        self._plans: dict[tuple[int, ...], Plan] = {}
        self._eager_fallback_warned: set[tuple[Any, ...]] = set()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group (``torch.optim.Optimizer.__init__`` adds the first ones through here too).

        Raises:
            ValueError: if :attr:`hyperparameter_check` refuses the group's values (the message names the
                argument, the value, the bound and the group), if a value would switch on one of the
                :attr:`optional_buffers` that the optimizer does not keep, or if a parameter of the group is
                complex (the updates are written for real tensors); the optimizer is left as it was.
        """
        check = type(self).hyperparameter_check
        if check is not None and isinstance(param_group, dict):
            checked = check_param_group(len(self.param_groups), param_group, self.defaults, check)
            param_group.update({name: value for name, value in checked.items() if name in param_group})
        if isinstance(param_group, dict):
            checked = self._check_regularizer(len(self.param_groups), param_group)
            param_group.update({name: value for name, value in checked.items() if name in param_group})
            self._check_optional_buffers(len(self.param_groups), param_group)
        super().add_param_group(param_group)
        for param in self.param_groups[-1]["params"]:
            if param.is_complex():
                self.param_groups.pop()
                raise ValueError(
                    f"Invalid params: {type(self).__name__} does not support complex parameters (got one of "
                    f"dtype {param.dtype} and shape {tuple(param.shape)}); view it as real with "
                    "torch.view_as_real and optimize that"
                )
            regularized = self.param_groups[-1].get("regularizer") is not None  # norms of rows or tensors too
            if (self.whole_tensor_statistics or regularized) and _is_sharded_dtensor(param):
                self.param_groups.pop()
                raise ValueError(
                    f"Invalid params: {type(self).__name__} computes statistics over whole tensors (norms, or "
                    f"factored moments over whole rows and columns), but a parameter of shape {tuple(param.shape)} "
                    f"is a DTensor sharded as {tuple(param.placements)} (FSDP2): each rank would see only its "
                    "shard. Keep these parameters unsharded (FSDP2's ignored_params, or DDP), or use an "
                    "elementwise optimizer such as AdaLo or AdamAtan2"
                )

    # ----------------------------------------------------------------- what a subclass provides
    def group_hyperparameters(self, group: dict[str, Any]) -> Optional[tuple[dict[str, float], dict[str, Any]]]:
        """Return ``(numbers, flags)`` for one step of ``group``; the numbers should be folded as far as
        possible (``1 - lr * weight_decay`` rather than ``lr`` and ``weight_decay``) to save work per element.
        Return ``None`` when the group has no step to take now: its parameters, state and step counts are
        then left untouched, as if none had a gradient (AdaLo before its first finite loss)."""
        raise NotImplementedError

    def tensor_hyperparameters(self, group: dict[str, Any], steps: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return the numbers that depend on each tensor's step count (bias corrections); none by default.

        Args:
            group: the parameter group.
            steps: the step count (this step included) of each of the group's ``K`` tensors of one device and
                dtype that take this step, a float64 CPU tensor of shape ``(K,)``; write the numbers with tensor
                operations (``beta ** steps``), in float64.

        Returns:
            Named float64 tensors of shape ``(K,)``; the update of a stack of ``k`` tensors reads its elements of
            each as a ``(k, 1, ..., 1)`` tensor.
        """
        return {}

    def begin_step(self, closure_loss: torch.Tensor | None) -> None:
        """Called once per step, before any group, with what the closure returned (loss-driven optimizers)."""

    def step_statistics(self) -> dict[str, torch.Tensor]:
        """Numbers of the whole model for this step, computed once before any group's update: named 0-d tensors
        that every phase of every stack reads as hyper-parameters (SWD's mean second moment, over all groups and,
        under torch.distributed, all ranks). None by default. Keep them on the device (no host sync); they are
        copied to each stack's device."""
        return {}

    def buffer_shapes(self, shape: torch.Size) -> dict[str, tuple[int, ...]]:
        """The shape of each state buffer of a parameter of ``shape``: the parameter's own by default.

        A buffer of the parameter's shape is seen by the update in :attr:`stack_view`; any other (a factored
        moment, one number per tensor) is seen as stored, stacked: ``(k, *shape)``. Declare such shapes in
        terms of the view, so that they broadcast against the stack: ``(1,) * len(view)`` for one number per
        tensor, ``(rows, 1)`` for one per row of a ``(rows, cols)`` view.

        Example:
            >>> from lightning_opt import AdamAtan2
            >>> AdamAtan2([torch.zeros(2)]).buffer_shapes(torch.Size([3, 4]))
            {'exp_avg': torch.Size([3, 4]), 'exp_avg_sq': torch.Size([3, 4])}
        """
        return {name: shape for name in self.buffer_names}

    def kept_buffer_names(self) -> tuple[str, ...]:
        """Every state buffer a parameter keeps: :attr:`buffer_names`, then the :attr:`optional_buffers` that
        the constructor's values switched on.

        Example:
            >>> from lightning_opt import SM3
            >>> SM3([torch.zeros(2)]).kept_buffer_names()
            ('accumulator_0', 'accumulator_1', 'accumulator_2', 'accumulator_3')
            >>> SM3([torch.zeros(2)], momentum=0.9).kept_buffer_names()[-1]
            'momentum_buffer'
        """
        kept = (name for name, buffer in self.optional_buffers.items() if buffer.kept_for(self.defaults[buffer.switch]))
        return (*self.buffer_names, *kept)

    def init_state(self, param: torch.Tensor, state: dict[str, Any]) -> None:
        """Fill the empty state of ``param``: a CPU step counter, as torch.optim keeps it, and zero buffers of
        :meth:`buffer_shapes` and of the kept :attr:`optional_buffers` (in the parameter's dtype; override to keep
        another)."""
        state["step"] = torch.tensor(0.0, dtype=torch.float32)
        optional = {name: param.shape for name in self.kept_buffer_names() if name in self.optional_buffers}
        for name, shape in {**self.buffer_shapes(param.shape), **optional}.items():
            if tuple(shape) == tuple(param.shape):
                state[name] = torch.zeros_like(param, memory_format=torch.preserve_format)
            else:
                state[name] = torch.zeros(shape, dtype=param.dtype, device=param.device)

    # ----------------------------------------------------------------- the step
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Perform one optimization step.

        Args:
            closure: optional; re-evaluates the model and returns the loss. Called with gradients enabled.

        Returns:
            What ``closure`` returned, or ``None``.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        reject_sparse_grads((p for group in self.param_groups for p in group["params"]), type(self).__name__)
        check = type(self).hyperparameter_check
        if check is not None:  # a scheduler (or the user) may have changed a group's lr since the last step
            check_param_groups(self, check)
        self.begin_step(loss)
        statistics = self.step_statistics()
        for index, group in enumerate(self.param_groups):
            self._check_optional_buffers(index, group)  # the user may have changed the group since it was added
            hyperparameters = self.group_hyperparameters(group)
            if hyperparameters is None:
                continue
            numbers, flags = hyperparameters
            transforms = check_grad_transforms(group["grad_transforms"])
            if "adaptive_clip" in transforms:
                numbers = {**numbers, "agc_clipping": group["agc_clipping"]}
            self._check_regularizer(index, group)  # the user may have changed the group since it was added
            numbers = {**numbers, **regularizer_numbers(group)}
            plan = self._plan(index, group)
            if plan is None:
                continue
            for (device, dtype), chunks in plan.chunks.items():
                # compiled: the group's numbers as one tensor per device and dtype (eager: Python floats)
                group_values = (
                    host_to_device(torch.tensor(list(numbers.values()), dtype=scalar_dtype(dtype)), device)
                    if self._compile
                    else None
                )
                # every tensor's step count and per-tensor numbers at once; each chunk reads its columns
                counts = plan.counts[(device, dtype)]
                counts.bind([self.state[param] for param in plan.params((device, dtype))])
                tensor_names, tensor_values = self._tensor_values(
                    group, counts.advance(), dtype, device, group.get("regularizer") == "cpr"
                )
                for chunk in chunks:
                    chunk_values = None if tensor_values is None else tensor_values[:, chunk.start : chunk.stop]
                    self._step_chunk(
                        chunk, group, numbers, group_values, tensor_names, chunk_values, flags, transforms, statistics
                    )
            if plan.empty:
                torch._foreach_add_([self.state[p]["step"] for p in plan.empty], 1)
        return loss

    def _plan(self, index: int, group: dict[str, Any]) -> Optional[Plan]:
        """The stacks of ``group``'s parameters that take a step now (those with a finite gradient), made
        once per set of such parameters and kept; ``None`` if there are none."""
        stepping = [param for param in group["params"] if param.grad is not None]
        if self._skip_nonfinite and stepping:
            finite = all_finite([param.grad for param in stepping])  # type: ignore[misc]
            skipped = len(stepping) - sum(finite)
            if skipped:
                stepping = [param for param, ok in zip(stepping, finite) if ok]
                self._report_nonfinite(skipped)
        if not stepping:
            return None
        regularizer = group.get("regularizer")
        key = (index, regularizer, *map(id, stepping))
        plan = self._plans.get(key)
        if plan is None:
            for param in stepping:
                state = self.state[param]
                if not state:
                    self.init_state(param, state)
                init_regularizer_state(regularizer, param, state, type(self).stack_view(param.shape))
            if len(self._plans) >= self.max_kept_plans:
                self._plans.pop(next(iter(self._plans)))
            plan = self._plans[key] = plan_stacks(
                stepping, self.state.__getitem__, self._state_names(group), type(self).stack_view
            )
        return plan

    def _state_names(self, group: dict[str, Any]) -> tuple[str, ...]:
        """The state buffers a step of ``group`` reads: the optimizer's and its regulariser's."""
        return (*self.kept_buffer_names(), *REGULARIZER_BUFFERS.get(group.get("regularizer") or "", ()))

    def _check_regularizer(self, index: int, group: Mapping[str, Any]) -> dict[str, Any]:
        """Validate ``group``'s regulariser keys (:func:`~lightning_opt.transforms.constraints.check_regularizer`);
        the error names the group."""
        values = {name: group.get(name, default) for name, default in REGULARIZER_DEFAULTS.items()}
        return in_parameter_group(index, check_regularizer, {**values, "lr": group.get("lr", self.defaults.get("lr"))})

    def _check_optional_buffers(self, index: int, group: Mapping[str, Any]) -> None:
        """Refuse a group value that would switch on one of the :attr:`optional_buffers` that are not kept."""
        for name, buffer in self.optional_buffers.items():
            if buffer.switch not in group:
                continue
            value, built = group[buffer.switch], self.defaults[buffer.switch]
            if buffer.kept_for(value) and not buffer.kept_for(built):
                raise ValueError(
                    f"Invalid {buffer.switch}: {value!r} (this {type(self).__name__} was built with "
                    f"{buffer.switch}={built!r} and keeps no {buffer.holds} ({name}); a parameter group may change "
                    f"{buffer.switch} but not switch the {buffer.holds} on: pass such a {buffer.switch} to the "
                    f"constructor) [parameter group {index}]"
                )

    def _report_nonfinite(self, skipped: int) -> None:
        self.nonfinite_skips += skipped
        warnings.warn(
            f"{type(self).__name__} left parameter tensors untouched because their gradient has inf or NaN "
            "(skip_nonfinite=True); optimizer.nonfinite_skips counts them"
        )

    def _step_chunk(
        self,
        chunk: Chunk,
        group: dict[str, Any],
        numbers: dict[str, float],
        group_values: Optional[torch.Tensor],
        tensor_names: tuple[str, ...],
        tensor_values: Optional[torch.Tensor],
        flags: dict[str, Any],
        transforms: tuple[str, ...],
        statistics: Optional[Mapping[str, torch.Tensor]] = None,
    ) -> None:
        """One step of a chunk of stacks of one kind: every phase of the update, compiled (one call for the
        whole chunk) or eagerly, then the copied stacks' parameters written back. ``tensor_values`` are the
        chunk's columns of :meth:`_tensor_values`; ``statistics`` (:meth:`step_statistics`) start what the phases
        carry."""
        params, grads, buffers = [], [], []
        names = self._state_names(group)
        states = [[self.state[param] for param in stack.params] for stack in chunk]
        for stack, stack_states in zip(chunk, states):
            stack.bind(stack_states, names)
            param, grad, stack_buffers = stack.gather(stack_states, names)
            params.append(param)
            grads.append(grad)
            buffers.append(stack_buffers)
        regularizer = group.get("regularizer")
        group_names = tuple(numbers)
        unit_start = chunk[0].unit_start
        regularizers = (regularizer,) if regularizer else ()
        if transforms and unit_start is None:  # the view splits units: transform in the units view first
            grads = [
                apply_gradient_transforms(
                    grad.reshape(stack.units_shape()), param.reshape(stack.units_shape()), transforms, numbers, 2
                ).view(grad.shape)
                for stack, param, grad in zip(chunk, params, grads)
            ]
            transforms, unit_start = (), 1
        units_first = regularizer in BEFORE_UPDATE and chunk[0].unit_start is None  # likewise, before the update
        device = chunk[0].params[0].device
        carried: list[dict[str, torch.Tensor]] = [
            {name: value.to(device) for name, value in (statistics or {}).items()} for _ in chunk
        ]
        # One call per phase, not one graph for all phases: in one graph inductor stages NSGDA's new momentum
        # (read by more than ``realize_reads_threshold`` inputs, needed after the norm) in a fresh full-size
        # buffer (45 ms a step against 32 on the standard set, 2026-12-02); raising that threshold removes the
        # buffer but recomputes the momentum after every reduction of the chunk (input mutations come last in
        # the graph), and recomputes atan2 and softplus in the other optimizers.
        for k, name in enumerate(self.phases):
            phase = getattr(type(self), name)
            # the first phase transforms the gradient; with later phases, it carries the result to them
            phase_transforms = transforms if k == 0 else ()
            keep_grad = bool(phase_transforms) and k < len(self.phases) - 1
            # regularisers run in the last phase, the one that writes the parameter: a compiled phase that wrote
            # it would leave the next phase's graph untraceable on a parameter updated in place
            phase_regularizers = regularizers if k == len(self.phases) - 1 else ()
            if phase_regularizers and units_first:
                for i, stack in enumerate(chunk):
                    target = params[i] if stack.copied else stack.params[0]
                    apply_regularizer(regularizer, target.view(stack.units_shape()), {}, numbers, 2)  # type: ignore
                    if not stack.copied:  # a fresh view: the graph cannot take one made before the change
                        params[i] = stack.params[0].view(stack.stacked_shape)
                phase_regularizers = ()
            args = (
                phase, params, grads, buffers, group_values, tensor_values, group_names, tensor_names, flags,
                carried, phase_transforms, unit_start, keep_grad, phase_regularizers,
            )
            runner = None
            if name not in self.eager_phases or phase_transforms or phase_regularizers:
                runner = self._runner(
                    chunk, k, phase, phase_transforms, flags, group_names, tensor_names, carried[0], keep_grad,
                    phase_regularizers,
                )
            if runner is not None:
                key, replay = runner
                written = [*params, *(buffer for named in buffers for buffer in named.values())]
                inputs = [*written, *grads, group_values, *([] if tensor_values is None else [tensor_values])]
                inputs += [value for named in carried for value in named.values()]
                try:
                    carried = replay(args, inputs, written)
                    continue
                except _dynamo_exception() as error:  # raised while compiling, before the graph changes anything
                    message = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error) else ''}"
                    record_compile_failure(key, message)
                    self._eager_fallback_warned.add(key)
                    self._warn_compile_failed(k, chunk[0].params[0].device, chunk[0].params[0].dtype, message)
            carried = run_stacks(*args[:4], list(numbers.values()), *args[5:])
        for stack in chunk:
            stack.scatter()

    def _tensor_values(
        self,
        group: dict[str, Any],
        steps: torch.Tensor,
        dtype: torch.dtype,
        device: torch.device,
        with_steps: bool = False,
    ) -> tuple[tuple[str, ...], Optional[torch.Tensor]]:
        """The names of the ``n`` per-tensor hyper-parameters and an ``(n, K)`` tensor of their values for ``K``
        tensors of parameters of ``dtype`` on ``device`` (``steps``: their step counts, in order), on ``device``
        (``None`` if there are none); :func:`~lightning_opt.engine.compiled.run_stacks` gives each stack its
        columns. ``with_steps`` adds each tensor's step count (for CPR), named
        :data:`~lightning_opt.transforms.constraints.STEP`."""
        own = type(self).tensor_hyperparameters is not BaseOptimizer.tensor_hyperparameters
        if not own and not with_steps:
            return (), None
        all_steps = steps.to(torch.float64)
        per_tensor = self.tensor_hyperparameters(group, all_steps) if own else {}
        if with_steps:
            per_tensor = {**per_tensor, STEP: all_steps}
        values = torch.stack(list(per_tensor.values())).to(scalar_dtype(dtype))
        values = host_to_device(values, device)
        return tuple(per_tensor), values

    def _runner(
        self,
        chunk: Chunk,
        phase_index: int,
        phase: Callable[..., Any],
        transforms: tuple[str, ...],
        flags: Mapping[str, Any],
        group_names: tuple[str, ...],
        tensor_names: tuple[str, ...],
        carried: Mapping[str, torch.Tensor],
        keep_grad: bool,
        regularizers: tuple[str, ...] = (),
    ) -> Optional[tuple[tuple[Any, ...], Replay]]:
        """The compiled runner of this phase for this chunk of stacks, as the chunk's :class:`~lightning_opt.engine.
        replay.Replay` of it, with its key; ``None`` on the eager path, or if that runner failed to compile (it then
        runs eagerly, with one warning per optimizer)."""
        if not self._compile:
            return None
        param = chunk[0].params[0]
        kinds = tuple(stack.kind for stack in chunk)
        key = runner_key(
            phase, transforms, flags, group_names, tensor_names, tuple(carried), kinds, param.device, param.dtype,
            keep_grad, regularizers,
        )
        runner = shared_runner(key)
        if isinstance(runner, str):  # this or another optimizer already failed to compile it
            if key not in self._eager_fallback_warned:
                self._eager_fallback_warned.add(key)
                self._warn_compile_failed(phase_index, param.device, param.dtype, runner)
            return None
        replay = chunk.replays.get(key)
        if replay is None or replay.runner is not runner:  # the shared cache may have dropped and remade it
            replay = chunk.replays[key] = Replay(runner)
        return key, replay

    def _warn_compile_failed(self, phase: int, device: torch.device, dtype: torch.dtype, error: str) -> None:
        warnings.warn(
            f"{type(self).__name__}: torch.compile failed for phase {self.phases[phase]!r} on {device} ({dtype}); "
            f"that phase runs eagerly from now on, with the same numbers. {error}"
        )

    # ----------------------------------------------------------------- pickling and old checkpoints
    _OPTIONS: ClassVar[dict[str, Any]] = {"_compile": False, "_skip_nonfinite": False, "nonfinite_skips": 0}
    """Attributes that pickling carries and :meth:`load_state_dict` keeps, with their defaults for a
    pickle made before they existed."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict (a Lightning ``ckpt_path`` resume); see ``torch.optim.Optimizer.load_state_dict``.

        torch casts every loaded state tensor but ``step`` to its parameter's floating dtype; state that is
        not floating (packed sign bits, counts) is given its saved dtype back, and a regulariser's float32
        state (CPR's ``lambda`` and ``kappa`` beside bfloat16 parameters) its saved values, so a resume is
        bit-identical.
        """
        saved_ids = [index for group in state_dict["param_groups"] for index in group["params"]]
        kept = {
            (position, name): value.dtype
            for position, index in enumerate(saved_ids)
            for name, value in state_dict["state"].get(index, {}).items()
            if isinstance(value, torch.Tensor) and name != "step" and not value.is_floating_point()
        }
        exact = {
            (position, name): value
            for position, index in enumerate(saved_ids)
            for name, value in state_dict["state"].get(index, {}).items()
            if isinstance(value, torch.Tensor) and name in REGULARIZER_STATE
        }
        super().load_state_dict(state_dict)
        params = [param for group in self.param_groups for param in group["params"]]
        for (position, name), dtype in kept.items():
            state = self.state[params[position]]
            state[name] = state[name].to(dtype)
        for (position, name), value in exact.items():
            self.state[params[position]][name] = value.detach().to(params[position].device, copy=True)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        for name in self._OPTIONS:
            state[name] = getattr(self, name)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # torch's load_state_dict calls this on the live optimizer with only "state" and "param_groups":
        # an option missing from ``state`` keeps the value it has here, and a fresh copy gets the default.
        options = {name: state.pop(name, getattr(self, name, default)) for name, default in self._OPTIONS.items()}
        super().__setstate__(state)
        for name, value in options.items():
            setattr(self, name, value)
        self._plans = {}  # the state's tensors may have been replaced
        self._eager_fallback_warned = set()
        for group in self.param_groups:  # groups saved before a hyper-parameter was added get its default
            for key, value in self.defaults.items():
                group.setdefault(key, value)


def host_to_device(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a few numbers made on the host (hyper-parameters, bias corrections) to ``device`` without
    waiting for it.

    A copy from ordinary (pageable) host memory to a CUDA device returns only once the device has run every
    kernel queued before it, so one such copy per chunk would keep the host from running ahead of the GPU and
    add the step's host work to its kernel time. Through pinned memory (torch's caching host allocator, which
    does not reuse the block before the copy has run) the copy is queued like a kernel. On the CPU, nothing
    to copy.

    Example:
        >>> host_to_device(torch.tensor([0.9, 0.999]), torch.device("cpu"))
        tensor([0.9000, 0.9990])
    """
    if device.type != "cuda":
        return values.to(device)
    return values.pin_memory().to(device, non_blocking=True)


def _is_sharded_dtensor(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a ``DTensor`` not replicated on every rank (checked without importing
    ``torch.distributed.tensor``: a program that holds one has imported it)."""
    module = sys.modules.get("torch.distributed.tensor")
    if module is None or not isinstance(tensor, module.DTensor):
        return False
    return not all(placement.is_replicate() for placement in tensor.placements)


def _dynamo_exception() -> type[Exception]:
    """``torch._dynamo``'s base exception, imported only once a compiled runner has run (importing
    ``torch._dynamo`` costs about 2 s, which a program that never compiles should not pay)."""
    from torch._dynamo.exc import TorchDynamoException

    return TorchDynamoException



