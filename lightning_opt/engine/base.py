"""``BaseOptimizer``: validation, lazy state, device/dtype buckets, closures, eager and compiled steps.

A concrete optimizer declares its per-tensor state (``buffer_names``), the hyper-parameters it derives
from a parameter group (:meth:`BaseOptimizer.group_hyperparameters`) and from a tensor's step count
(:meth:`BaseOptimizer.tensor_hyperparameters`), and one per-tensor ``update`` function built from
:mod:`lightning_opt.transforms`. Everything else -- closures, skipping parameters without gradients,
rejecting sparse gradients, bucketing, the compiled path, checkpoints -- lives here once.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, Optional, Union

import torch

from lightning_opt.engine.buckets import Bucket, collect_buckets, reject_sparse_grads
from lightning_opt.engine.compiled import (
    layout_key,
    record_compile_failure,
    run_bucket,
    scalar_dtype,
    shared_runner,
)
from lightning_opt.transforms.arith import Scalar
from lightning_opt.transforms.gradient import AGC_CLIPPING, GradTransformsArg, check_grad_transforms
from lightning_opt.validation import check_bool, check_float, check_param_group, check_param_groups

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


class BaseOptimizer(torch.optim.Optimizer):
    """Base class of every optimizer in this package.

    Subclasses set ``buffer_names`` and ``update`` and override the two ``*_hyperparameters`` methods.
    An update that needs a reduction over a whole tensor before it can finish (a norm, say) is better
    written as ``phases``, names of static methods run one after the other over the bucket: on the
    compiled path each phase is its own graph, which lets inductor update the state buffers in place
    instead of staging them in a temporary (NSGDA: 41 -> 18 ms per step on the standard benchmark).

    Args:
        params: iterable of parameters or of dicts defining parameter groups.
        defaults: the hyper-parameters of every group, already validated by the subclass. Only numbers,
            strings, bools and tuples: nothing callable (checkpoints load with ``weights_only=True``).
        compile: fuse each bucket's whole update with ``torch.compile``. Same numbers as the eager
            path; the first step of each bucket compiles (tens of seconds), later steps are fast. The
            compiled graphs are shared by every optimizer of the process whose buckets have the same
            layout (see :mod:`lightning_opt.engine.compiled`): rebuilding an optimizer does not recompile.
        skip_nonfinite: leave a tensor (its value, state and step count) untouched, with a warning, when
            its gradient holds an inf or NaN, instead of letting it corrupt the parameter and its state.
            Costs one extra read of the gradients and one host sync per device per step. Off by default,
            as in torch.optim; Lightning's GradScaler path already skips such steps as a whole.
        grad_transforms: names from :data:`~lightning_opt.transforms.gradient.GRADIENT_TRANSFORMS`
            (``"centralize"``, ``"adaptive_clip"``, ``"soft_clip"``) applied in that order to each
            gradient before the update, without changing ``p.grad``; stored per group, so a group may
            override it. Fused into the update under ``compile=True``.
        agc_clipping: the ``clipping`` of ``"adaptive_clip"``.

    ``compile``, ``skip_nonfinite`` and ``nonfinite_skips`` survive ``copy.deepcopy`` and pickling, and
    :meth:`load_state_dict` (a Lightning ``ckpt_path`` resume) keeps those of the optimizer it loads into:
    a checkpoint holds only ``state`` and ``param_groups``.
    """

    buffer_names: ClassVar[tuple[str, ...]] = ()
    update: ClassVar[UpdateFn]
    phases: ClassVar[tuple[str, ...]] = ("update",)
    """The names of the update functions (static methods) run in turn over each bucket."""
    hyperparameter_check: ClassVar[Optional[Callable[..., dict[str, Any]]]] = None
    """Validates one group's hyper-parameters and returns them normalised; its arguments are named like the
    group's keys (``lr``, ``betas``...). Wrap it in ``staticmethod``. The engine runs it on every group
    added (``__init__`` and ``add_param_group``, the group's own values or the defaults) and, before each
    step, on the groups whose values changed since (a scheduler's ``lr``); see
    :func:`~lightning_opt.validation.check_param_group`."""
    max_compiled_layouts: ClassVar[int] = 8
    """Compiled graphs kept per bucket for different sets of tensors with gradients (parameters that get
    no gradient on some steps change the set); a further set runs eagerly, with the same numbers."""

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
        self._compiled_runners: dict[tuple[int, torch.device, torch.dtype], dict[tuple[Any, ...], list[Any]]] = {}
        self._eager_fallback_warned: set[tuple[int, torch.device, torch.dtype]] = set()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group (``torch.optim.Optimizer.__init__`` adds the first ones through here too).

        Raises:
            ValueError: if :attr:`hyperparameter_check` refuses the group's values (the message names the
                argument, the value, the bound and the group), or if a parameter of the group is complex
                (the updates are written for real tensors); the optimizer is left as it was.
        """
        check = type(self).hyperparameter_check
        if check is not None and isinstance(param_group, dict):
            checked = check_param_group(len(self.param_groups), param_group, self.defaults, check)
            param_group.update({name: value for name, value in checked.items() if name in param_group})
        super().add_param_group(param_group)
        for param in self.param_groups[-1]["params"]:
            if param.is_complex():
                self.param_groups.pop()
                raise ValueError(
                    f"Invalid params: {type(self).__name__} does not support complex parameters (got one of "
                    f"dtype {param.dtype} and shape {tuple(param.shape)}); view it as real with "
                    "torch.view_as_real and optimize that"
                )

    # ----------------------------------------------------------------- what a subclass provides
    def group_hyperparameters(self, group: dict[str, Any]) -> Optional[tuple[dict[str, float], dict[str, Any]]]:
        """Return ``(numbers, flags)`` for one step of ``group``; the numbers should be folded as far as
        possible (``1 - lr * weight_decay`` rather than ``lr`` and ``weight_decay``) to save work per element.
        Return ``None`` when the group has no step to take now: its parameters, state and step counts are
        then left untouched, as if none had a gradient (AdaLo before its first finite loss)."""
        raise NotImplementedError

    def tensor_hyperparameters(self, group: dict[str, Any], step: int) -> dict[str, float]:
        """Return the numbers that depend on one tensor's step count (bias corrections); none by default."""
        return {}

    def begin_step(self, closure_loss: torch.Tensor | None) -> None:
        """Called once per step, before any group, with what the closure returned (loss-driven optimizers)."""

    def init_state(self, param: torch.Tensor, state: dict[str, Any]) -> None:
        """Fill the empty state of ``param``: a CPU step counter, as torch.optim keeps it, and zero buffers."""
        state["step"] = torch.tensor(0.0, dtype=torch.float32)
        for name in self.buffer_names:
            state[name] = torch.zeros_like(param, memory_format=torch.preserve_format)

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
        for index, group in enumerate(self.param_groups):
            hyperparameters = self.group_hyperparameters(group)
            if hyperparameters is None:
                continue
            numbers, flags = hyperparameters
            transforms = check_grad_transforms(group["grad_transforms"])
            if "adaptive_clip" in transforms:
                numbers = {**numbers, "agc_clipping": group["agc_clipping"]}
            buckets, skipped = collect_buckets(
                group["params"], self.state.__getitem__, self.init_state, self.buffer_names, self._skip_nonfinite
            )
            if skipped:
                self._report_nonfinite(skipped)
            for (device, dtype), bucket in buckets.items():
                self._step_bucket(index, device, dtype, bucket, group, numbers, flags, transforms)
        return loss

    def _report_nonfinite(self, skipped: int) -> None:
        self.nonfinite_skips += skipped
        warnings.warn(
            f"{type(self).__name__} left parameter tensors untouched because their gradient has inf or NaN "
            "(skip_nonfinite=True); optimizer.nonfinite_skips counts them"
        )

    def _step_bucket(
        self,
        index: int,
        device: torch.device,
        dtype: torch.dtype,
        bucket: Bucket,
        group: dict[str, Any],
        numbers: dict[str, float],
        flags: dict[str, Any],
        transforms: tuple[str, ...],
    ) -> None:
        group_names = tuple(numbers)
        per_tensor = [self.tensor_hyperparameters(group, step) for step in bucket.steps]
        tensor_names = tuple(per_tensor[0])
        values = list(numbers.values())
        for tensor_numbers in per_tensor:
            values.extend(tensor_numbers.values())
        phases = [getattr(type(self), name) for name in self.phases]
        # The gradient transforms run inside the first phase, the only one that reads the gradient.
        phase_transforms = [transforms] + [()] * (len(phases) - 1)
        carried: list[dict[str, torch.Tensor]] = [{} for _ in bucket.params]
        layouts = self._compiled_layouts(index, device, dtype) if self._compile else None
        if layouts is None:
            for phase, names in zip(phases, phase_transforms):
                carried = run_bucket(
                    phase, bucket.params, bucket.grads, bucket.buffers, values, group_names, tensor_names, flags,
                    carried, names,
                )
            return
        scalars = torch.tensor(values, dtype=scalar_dtype(dtype), device=device)
        params, grads = [_at_least_1d(p) for p in bucket.params], [_at_least_1d(g) for g in bucket.grads]
        buffers = [{name: _at_least_1d(b) for name, b in per_tensor.items()} for per_tensor in bucket.buffers]
        signature = (transforms, *(id(p) for p in bucket.params))
        runners = layouts.get(signature)
        if runners is None:
            runners = self._new_layout(
                index, device, dtype, layouts, signature,
                lambda: [
                    layout_key(phase, names, flags, group_names, tensor_names, scalars, params, grads, buffers)
                    for phase, names in zip(phases, phase_transforms)
                ],
            )
        for k, (phase, names) in enumerate(zip(phases, phase_transforms)):
            entry = runners[k] if runners else None
            if entry is not None:
                key, runner = entry
                try:
                    carried = runner(
                        phase, params, grads, buffers, scalars, group_names, tensor_names, flags, carried, names
                    )
                    continue
                except _dynamo_exception() as error:  # raised while compiling, before the graph changes anything
                    runners[k] = None
                    message = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error) else ''}"
                    record_compile_failure(key, message)
                    self._warn_compile_failed(k, index, device, dtype, message)
            carried = run_bucket(
                phase, bucket.params, bucket.grads, bucket.buffers, values, group_names, tensor_names, flags,
                carried, names,
            )

    def _compiled_layouts(
        self, index: int, device: torch.device, dtype: torch.dtype
    ) -> dict[tuple[Any, ...], list[Any]]:
        """This bucket's runners, by set of tensors with gradients (the ids of the parameters)."""
        return self._compiled_runners.setdefault((index, device, dtype), {})

    def _new_layout(
        self,
        index: int,
        device: torch.device,
        dtype: torch.dtype,
        layouts: dict[tuple[Any, ...], list[Any]],
        signature: tuple[Any, ...],
        keys: Callable[[], list[tuple[Any, ...]]],
    ) -> list[tuple[tuple[Any, ...], Callable[..., Any]] | None]:
        """One ``(key, compiled runner)`` per phase for a set of tensors the bucket has not stepped yet,
        taken from the process-wide cache (``None`` for a phase whose compile failed: it runs eagerly,
        with one warning); or an empty list (run eagerly) once the bucket has ``max_compiled_layouts``
        sets. Keying by the set, rather than recompiling one function, keeps dynamo's recompile limit (a
        hard error under ``fullgraph=True``) out of reach."""
        if len(layouts) >= self.max_compiled_layouts:
            if (index, device, dtype) not in self._eager_fallback_warned:
                self._eager_fallback_warned.add((index, device, dtype))
                warnings.warn(
                    f"{type(self).__name__}: parameter group {index} ({device}, {dtype}) has had {len(layouts)} "
                    "different sets of parameters with gradients; further sets run eagerly"
                )
            return []
        runners: list[tuple[tuple[Any, ...], Callable[..., Any]] | None] = []
        for k, key in enumerate(keys()):
            runner = shared_runner(key)
            if isinstance(runner, str):  # another optimizer already failed to compile this layout
                self._warn_compile_failed(k, index, device, dtype, runner)
                runners.append(None)
            else:
                runners.append((key, runner))
        layouts[signature] = runners
        return runners

    def _warn_compile_failed(
        self, phase: int, index: int, device: torch.device, dtype: torch.dtype, error: str
    ) -> None:
        warnings.warn(
            f"{type(self).__name__}: torch.compile failed for phase {self.phases[phase]!r} of parameter "
            f"group {index} ({device}, {dtype}); that phase runs eagerly from now on, with the same "
            f"numbers. {error}"
        )

    # ----------------------------------------------------------------- pickling and old checkpoints
    _OPTIONS: ClassVar[dict[str, Any]] = {"_compile": False, "_skip_nonfinite": False, "nonfinite_skips": 0}
    """Attributes that pickling carries and :meth:`load_state_dict` keeps, with their defaults for a
    pickle made before they existed."""

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
        self._compiled_runners = {}
        self._eager_fallback_warned = set()
        for group in self.param_groups:  # groups saved before a hyper-parameter was added get its default
            for key, value in self.defaults.items():
                group.setdefault(key, value)


def _dynamo_exception() -> type[Exception]:
    """``torch._dynamo``'s base exception, imported only once a compiled runner has run (importing
    ``torch._dynamo`` costs about 2 s, which a program that never compiles should not pay)."""
    from torch._dynamo.exc import TorchDynamoException

    return TorchDynamoException


def _at_least_1d(tensor: torch.Tensor) -> torch.Tensor:
    """A 1-element view of a 0-d tensor (the tensor itself otherwise).

    Inductor (torch 2.13, CPU) drops in-place updates of 0-d float64 graph inputs; a view of shape (1,)
    shares the storage and is updated correctly.
    """
    return tensor.view(1) if tensor.dim() == 0 else tensor

