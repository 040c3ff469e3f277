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
from torch._dynamo.exc import TorchDynamoException

from lightning_opt.engine.buckets import Bucket, collect_buckets, reject_sparse_grads
from lightning_opt.engine.compiled import new_compiled_bucket_runner, run_bucket, scalar_dtype
from lightning_opt.transforms.arith import Scalar
from lightning_opt.transforms.gradient import AGC_CLIPPING, GradTransformsArg, check_grad_transforms
from lightning_opt.validation import check_bool, check_float

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
            path; the first step of each bucket compiles (tens of seconds), later steps are fast.
        skip_nonfinite: leave a tensor (its value, state and step count) untouched, with a warning, when
            its gradient holds an inf or NaN, instead of letting it corrupt the parameter and its state.
            Costs one extra read of the gradients and one host sync per device per step. Off by default,
            as in torch.optim; Lightning's GradScaler path already skips such steps as a whole.
        grad_transforms: names from :data:`~lightning_opt.transforms.gradient.GRADIENT_TRANSFORMS`
            (``"centralize"``, ``"adaptive_clip"``, ``"soft_clip"``) applied in that order to each
            gradient before the update, without changing ``p.grad``; stored per group, so a group may
            override it. Fused into the update under ``compile=True``.
        agc_clipping: the ``clipping`` of ``"adaptive_clip"``.
    """

    buffer_names: ClassVar[tuple[str, ...]] = ()
    update: ClassVar[UpdateFn]
    phases: ClassVar[tuple[str, ...]] = ("update",)
    """The names of the update functions (static methods) run in turn over each bucket."""
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
        """How many times a tensor was left untouched because its gradient was not finite."""
        self._compiled_runners: dict[tuple[int, torch.device, torch.dtype], dict[tuple[Any, ...], list[Any]]] = {}
        self._eager_fallback_warned: set[tuple[int, torch.device, torch.dtype]] = set()
        for group in self.param_groups:
            for param in group["params"]:
                if param.is_complex():
                    raise ValueError(f"Invalid params: {type(self).__name__} does not support complex parameters")

    # ----------------------------------------------------------------- what a subclass provides
    def group_hyperparameters(self, group: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
        """Return ``(numbers, flags)`` for one step of ``group``; the numbers should be folded as far as
        possible (``1 - lr * weight_decay`` rather than ``lr`` and ``weight_decay``) to save work per element."""
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
        self.begin_step(loss)
        for index, group in enumerate(self.param_groups):
            numbers, flags = self.group_hyperparameters(group)
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
        runners = self._compiled_runners_for(index, device, dtype, bucket, transforms) if self._compile else None
        if runners is None:
            for phase, names in zip(phases, phase_transforms):
                carried = run_bucket(
                    phase, bucket.params, bucket.grads, bucket.buffers, values, group_names, tensor_names, flags,
                    carried, names,
                )
            return
        scalars = torch.tensor(values, dtype=scalar_dtype(dtype), device=device)
        params, grads = [_at_least_1d(p) for p in bucket.params], [_at_least_1d(g) for g in bucket.grads]
        buffers = [{name: _at_least_1d(b) for name, b in per_tensor.items()} for per_tensor in bucket.buffers]
        for k, (runner, phase, names) in enumerate(zip(runners, phases, phase_transforms)):
            if runner is not None:
                try:
                    carried = runner(
                        phase, params, grads, buffers, scalars, group_names, tensor_names, flags, carried, names
                    )
                    continue
                except TorchDynamoException as error:  # raised while compiling, before the graph changes anything
                    runners[k] = None
                    warnings.warn(
                        f"{type(self).__name__}: torch.compile failed for phase {self.phases[k]!r} of parameter "
                        f"group {index} ({device}, {dtype}); that phase runs eagerly from now on, with the same "
                        f"numbers. {type(error).__name__}: {str(error).strip().splitlines()[0] if str(error) else ''}"
                    )
            carried = run_bucket(
                phase, bucket.params, bucket.grads, bucket.buffers, values, group_names, tensor_names, flags,
                carried, names,
            )

    def _compiled_runners_for(
        self, index: int, device: torch.device, dtype: torch.dtype, bucket: Bucket, transforms: tuple[str, ...]
    ) -> list[Callable[..., Any] | None] | None:
        """One compiled runner per phase for this exact set of tensors (``None`` for a phase whose compile
        failed: it runs eagerly), or ``None`` (run eagerly) once the bucket has ``max_compiled_layouts`` of
        them. Keying by the set, rather than recompiling one function, keeps dynamo's recompile limit (a
        hard error under ``fullgraph=True``) out of reach."""
        layouts = self._compiled_runners.setdefault((index, device, dtype), {})
        signature = (transforms, *(id(p) for p in bucket.params))
        runners = layouts.get(signature)
        if runners is not None:
            return runners
        if len(layouts) >= self.max_compiled_layouts:
            if (index, device, dtype) not in self._eager_fallback_warned:
                self._eager_fallback_warned.add((index, device, dtype))
                warnings.warn(
                    f"{type(self).__name__}: parameter group {index} ({device}, {dtype}) has had {len(layouts)} "
                    "different sets of parameters with gradients; further sets run eagerly"
                )
            return None
        runners = layouts[signature] = [new_compiled_bucket_runner() for _ in self.phases]
        return runners

    # ----------------------------------------------------------------- pickling and old checkpoints
    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_compile"] = self._compile
        state["_skip_nonfinite"] = self._skip_nonfinite
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        compile_flag = state.pop("_compile", False)
        skip_nonfinite = state.pop("_skip_nonfinite", False)
        super().__setstate__(state)
        self._compile = compile_flag
        self._skip_nonfinite = skip_nonfinite
        self.nonfinite_skips = 0
        self._compiled_runners = {}
        self._eager_fallback_warned = set()
        for group in self.param_groups:  # groups saved before a hyper-parameter was added get its default
            for key, value in self.defaults.items():
                group.setdefault(key, value)


def _at_least_1d(tensor: torch.Tensor) -> torch.Tensor:
    """A 1-element view of a 0-d tensor (the tensor itself otherwise).

    Inductor (torch 2.13, CPU) drops in-place updates of 0-d float64 graph inputs; a view of shape (1,)
    shares the storage and is updated correctly.
    """
    return tensor.view(1) if tensor.dim() == 0 else tensor

