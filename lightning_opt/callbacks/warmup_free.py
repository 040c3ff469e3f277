"""Warm-up-free training: bound each step by the weights' largest singular value (arXiv:2505.21910).

Qi et al. trace the crashes of Transformers trained without a learning-rate warm-up to the largest
singular value of a weight matrix growing too fast in a few steps. Weyl's inequality bounds that growth
by the step:

    sigma_1(W_t) <= sigma_1(W_{t-1}) + sigma_1(W_t - W_{t-1})                                        (1)

so a step ``alpha_t * U_t`` (``U_t`` the optimizer's update direction, the paper's ``nabla W_t``) whose
ratio ``alpha_t * sigma_1(U_t) / sigma_1(W_{t-1})`` stays below a threshold ``tau`` can grow
``sigma_1`` by at most a factor ``1 + tau``. Their AdamW^2 therefore bounds the learning rate by

    alpha_t = min(alpha, tau * sigma_1(W_{t-1}) / sigma_1(U_t))                                       (2)

with ``alpha`` the scheduled learning rate and ``sigma_1`` estimated by power iteration. Here the
bound is applied to the step any optimizer took, as a factor on that step:

    S_t = W_t - W_{t-1},   f_t = min(1, tau * sigma_1(W_{t-1}) / sigma_1(S_t)),
    W_t <- W_{t-1} + f_t * S_t                                                                      (3)

For a step ``S_t = -alpha * U_t`` (AdamW without weight decay, SGD, ...) ``f_t * alpha`` is exactly (2);
with decoupled weight decay ``S_t`` also holds ``-alpha * lambda * W_{t-1}``, so the bound is on the
whole change of the weights, which is what (1) is about, and the decay is scaled with the step as
AdamW's ``alpha_t`` scales it.

The paper speaks of *the* learning rate, one ``alpha_t`` per step; the seed blog post (section 5.5)
reads this as a single global factor drawn from the per-layer ratios and doubts it, since each layer's
scale and activation differ. Both are offered, so that they can be measured:

- ``mode="per_layer"``: each tensor ``i`` gets its own ``f_i`` from (3);
- ``mode="global"``: ``F = min_i f_i``, the largest single factor under which every measured tensor
  still satisfies its bound, scales the step of every parameter (biases and other unmeasured tensors
  too): it plays the part of the one learning rate ``alpha_t`` of (2).

A matrix is a parameter of two or more dimensions, viewed as ``(shape[0], -1)`` (a convolution's output
channels against the rest). Tensors of fewer dimensions (biases, norm gains) are left alone by default;
with ``matrices_only=False`` a 1-D tensor's ``sigma_1`` is its Euclidean norm (a one-row matrix) and a 0-d
tensor's its absolute value. A tensor whose ``sigma_1(W_{t-1})`` is 0 (a zero-initialised matrix) is not
bounded (its own factor is 1): (3) would freeze it for ever. Nor is a step that is zero or not finite (an
overflow stays visible: inf and NaN entries stay inf and NaN). Such tensors do not count in the global
minimum, but in the global mode they take the global factor as every other step does.

What is the paper's here: the bound (2) on a step's ``sigma_1`` relative to the weights', from Weyl's
inequality, and ``sigma_1`` estimated by warm-started power iteration. What is ours: ``tau``'s default, the
choice of tensors bounded (matrices by default), the global factor as a minimum, applying the bound to the
step of any optimizer after the fact, and the treatment of zero and non-finite steps; we worked from the
paper's abstract and its public reviews, not from the authors' code.

References:
    X. Qi, Y. He, J. Ye, C.-G. Li, B. Zi, X. Dai, Q. Zou, R. Xiao, "Taming Transformer Without Using
    Learning Rate Warmup", ICLR 2025, arXiv:2505.21910 (the bound (2) on the learning rate, AdamW^2).
    H. Weyl, "Das asymptotische Verteilungsgesetz der Eigenwerte linearer partieller
    Differentialgleichungen", Math. Ann. 71, 1912 (inequality (1)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from lightning_opt.callbacks.gradient_hooks import _default_name
from lightning_opt.callbacks.parameter_filter import ParameterFilter, Patterns
from lightning_opt.engine.base import _is_sharded_dtensor
from lightning_opt.transforms.reductions import accumulation_dtype
from lightning_opt.validation import check_bool, check_choice, check_float, check_positive_int

__all__ = [
    "MODES",
    "RATIOS",
    "WARMUP_FREE_TAU",
    "WarmupFreeScaling",
    "largest_singular_value",
    "power_iteration",
    "scale_steps_",
    "warmup_free_factors",
]

MODES = ("per_layer", "global")
"""``mode``: one factor per tensor, or one for all tensors stepped together (their minimum)."""
RATIOS = ("update", "gradient")
"""``ratio``: what ``sigma_1`` of the step is measured on: the step the optimizer took, or ``lr * grad``."""
WARMUP_FREE_TAU = 0.01
"""Default ``tau``: a step may grow a matrix's largest singular value by at most 1%. Our choice, not a value
taken from the paper; tune it (the ratio each tensor would have had is logged as ``ratio_max``)."""


def _matrix(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` as a matrix in at least float32: ``(shape[0], -1)``, one row for 1-D, ``(1, 1)`` for 0-d."""
    dtype = accumulation_dtype(tensor)
    if tensor.dim() >= 2:
        return tensor.reshape(tensor.shape[0], math.prod(tensor.shape[1:])).to(dtype)
    return tensor.reshape(1, -1).to(dtype)


def largest_singular_value(tensor: torch.Tensor) -> torch.Tensor:
    """``sigma_1`` of ``tensor`` viewed as ``(shape[0], -1)``: the spectral norm, computed exactly (SVD).

    A 1-D tensor is one row (its Euclidean norm), a 0-d tensor its absolute value, an empty tensor 0; a
    matrix with an inf or NaN gives NaN. Returned as a 0-d tensor in at least float32, on the tensor's device.

    Example:
        >>> largest_singular_value(torch.tensor([[3.0, 0.0], [0.0, -4.0]]))
        tensor(4.)
        >>> largest_singular_value(torch.tensor([3.0, 4.0]))
        tensor(5.)
    """
    matrix = _matrix(tensor)
    if matrix.numel() == 0:
        return matrix.new_zeros(())
    if matrix.shape[0] == 1 or matrix.shape[1] == 1:
        return torch.linalg.vector_norm(matrix)
    matrix, finite = _finite(matrix)
    return torch.where(finite, torch.linalg.matrix_norm(matrix, ord=2), math.nan)


def _finite(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(matrix with its non-finite entries zeroed, whether it had none)``, without a device sync: the SVD
    refuses non-finite input, and a power-iteration vector must not turn NaN for good."""
    finite = torch.isfinite(matrix).all()
    return torch.where(finite, matrix, torch.nan_to_num(matrix, nan=0.0, posinf=0.0, neginf=0.0)), finite


def power_iteration(
    tensor: torch.Tensor, vector: torch.Tensor | None, iterations: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Estimate ``sigma_1`` of ``tensor`` (viewed as in :func:`largest_singular_value`) by power iteration.

    ``vector`` is the previous step's estimate of the top right singular vector (of the matrix or of its
    transpose, whichever has fewer columns); warm-starting from it, as the paper does, makes a few
    iterations per step enough. Each iteration is ``v <- A^T A v / ||A^T A v||``; the estimate is
    ``||A v||``, a lower bound of ``sigma_1``. Tensors of fewer than two dimensions have an exact norm and
    need no vector (``None`` in and out). A tensor with an inf or NaN gives NaN, and the vector is then
    iterated on its finite entries only.

    Args:
        tensor: the weights or the step.
        vector: the vector to start from, or ``None`` to start from a fixed pseudo-random one (its own
            generator: the training's random stream is not touched).
        iterations: how many iterations (at least 1).

    Returns:
        ``(sigma, vector)``: the estimate (0-d, at least float32) and the vector to start from next time.

    Example:
        >>> a = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
        >>> sigma, v = power_iteration(a, None, 20)
        >>> round(float(sigma), 5)
        2.0
    """
    matrix = _matrix(tensor)
    if matrix.numel() == 0 or matrix.shape[0] == 1 or matrix.shape[1] == 1:
        return largest_singular_value(tensor), None
    if matrix.shape[1] > matrix.shape[0]:
        matrix = matrix.T
    matrix, finite = _finite(matrix)
    if vector is None or vector.shape != (matrix.shape[1],):
        generator = torch.Generator().manual_seed(matrix.shape[1])
        vector = torch.randn(matrix.shape[1], generator=generator, dtype=torch.float64)
    vector = vector.to(device=matrix.device, dtype=matrix.dtype)
    vector = vector / torch.linalg.vector_norm(vector).clamp_min(torch.finfo(matrix.dtype).tiny)
    for _ in range(iterations):
        product = matrix.T @ (matrix @ vector)
        norm = torch.linalg.vector_norm(product)
        # A matrix with A v = 0 (a zero step) keeps the old vector rather than dividing by zero.
        vector = torch.where(norm > 0, product / norm.clamp_min(torch.finfo(matrix.dtype).tiny), vector)
    return torch.where(finite, torch.linalg.vector_norm(matrix @ vector), math.nan), vector


def _factors_from_sigmas(
    sigma_weights: torch.Tensor, sigma_steps: torch.Tensor, tau: float, mode: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(factors, ratios)`` of (3) from the stacked ``sigma_1`` values, one entry per tensor; a zero step's
    ratio is 0 (also on zero weights), a step on zero weights has ratio inf, a non-finite step NaN."""
    ratios = torch.where(sigma_steps == 0, torch.zeros_like(sigma_steps), sigma_steps / sigma_weights)
    bounded = (sigma_weights > 0) & (sigma_steps > 0) & torch.isfinite(sigma_steps) & torch.isfinite(ratios)
    safe_steps = torch.where(bounded, sigma_steps, torch.ones_like(sigma_steps))
    factors = torch.where(bounded, (tau * sigma_weights / safe_steps).clamp(max=1.0), torch.ones_like(ratios))
    if mode == "global" and factors.numel():
        factors = factors.min().expand_as(factors).clone()
    return factors, ratios


def warmup_free_factors(
    weights: Sequence[torch.Tensor],
    steps: Sequence[torch.Tensor],
    tau: float = WARMUP_FREE_TAU,
    mode: str = "per_layer",
) -> torch.Tensor:
    """The factors (3) of the module docstring, one per tensor, from exact ``sigma_1`` values.

    Args:
        weights: the weights before the step, ``W_{t-1}``, one tensor per layer.
        steps: the steps, ``W_t - W_{t-1}`` as the optimizer made them (or ``lr * grad``), same shapes.
        tau: the largest allowed ``sigma_1(step) / sigma_1(W_{t-1})``; positive and finite.
        mode: ``"per_layer"`` (each tensor its own factor) or ``"global"`` (every tensor the minimum).

    Returns:
        A 1-D tensor of factors in ``(0, 1]``, in at least float32 (float64 for float64 inputs), on the
        device of the first weight.

    Example:
        >>> w = [torch.eye(2), 2 * torch.eye(2)]
        >>> s = [torch.eye(2), 0.01 * torch.eye(2)]
        >>> warmup_free_factors(w, s, tau=0.1)
        tensor([0.1000, 1.0000])
        >>> warmup_free_factors(w, s, tau=0.1, mode="global")
        tensor([0.1000, 0.1000])
    """
    tau = _check_tau(tau)
    check_choice("mode", mode, MODES)
    if len(weights) != len(steps):
        raise ValueError(f"Invalid steps: {len(steps)} tensors for {len(weights)} weights (expected one per weight)")
    for index, (weight, step) in enumerate(zip(weights, steps)):
        if weight.shape != step.shape:
            raise ValueError(
                f"Invalid steps: tensor {index} has shape {tuple(step.shape)}, its weight {tuple(weight.shape)}"
            )
    if not weights:
        return torch.ones(0)
    sigma_weights = torch.stack([largest_singular_value(w) for w in weights])
    sigma_steps = torch.stack([largest_singular_value(s).to(sigma_weights) for s in steps])
    return _factors_from_sigmas(sigma_weights, sigma_steps, tau, mode)[0]


def scale_steps_(
    params: Sequence[torch.Tensor], previous: Sequence[torch.Tensor], factors: Sequence[float] | torch.Tensor
) -> None:
    """Rescale steps already taken, in place: ``p <- previous + f * (p - previous)`` for each tensor.

    A factor of exactly 1 leaves its tensor untouched (bit for bit). Low-precision tensors are
    interpolated in float32 and rounded once.

    Example:
        >>> p, old = torch.tensor([1.0, 3.0]), torch.tensor([1.0, 1.0])
        >>> scale_steps_([p], [old], [0.25])
        >>> p
        tensor([1.0000, 1.5000])
    """
    values = factors.tolist() if isinstance(factors, torch.Tensor) else list(factors)
    with torch.no_grad():
        for param, old, factor in zip(params, previous, values):
            if factor == 1.0:
                continue
            dtype = accumulation_dtype(param)
            param.copy_(torch.lerp(old.to(dtype), param.to(dtype), factor))


class WarmupFreeScaling(Callback):
    """Bound every optimizer step by ``tau`` times the weights' largest singular value (arXiv:2505.21910).

    After each optimizer step, the step each selected tensor took is rescaled by the factor (3) of
    :mod:`lightning_opt.callbacks.warmup_free`: ``f = min(1, tau * sigma_1(W_{t-1}) / sigma_1(step))``,
    per tensor (``mode="per_layer"``) or the minimum over the tensors (``mode="global"``).

    It works with any optimizer, torch's included, because it reads and rescales the step the optimizer
    made (through ``register_step_pre_hook`` / ``register_step_post_hook`` on each of the Trainer's
    optimizers): the optimizer's own state (Adam's moments) is not touched, as in the paper, where the
    bound changes only the learning rate. LR schedulers compose: they set ``group["lr"]``, the optimizer
    steps with it, and the factor then shrinks that step, so the effective learning rate is
    ``min(lr_t, tau * sigma_1(W) / sigma_1(U))`` as in (2), with ``lr_t`` the scheduler's.
    ``LearningRateMonitor`` still shows ``lr_t``; the factors are logged separately. A step that a
    GradScaler skips never reaches the optimizer, so nothing is measured or changed. Manual optimization
    is bounded too (the hooks fire on ``optimizer.step()`` whoever calls it). Around a wrapper such as
    :class:`~lightning_opt.Lookahead` the step measured is the wrapper's, its synchronisation with the slow
    weights included.

    Cost per optimizer step: one copy of the selected parameters (kept between steps), ``sigma_1`` of each
    measured weight and step (an SVD each, or ``power_iterations`` matrix-vector products each), one
    device-to-host transfer of the factors, and a rewrite of the tensors whose factor is below 1.

    Under DDP the step is the same on every rank (the gradients are all-reduced before the step and every
    replica runs the same optimizer), so the factors are too, and nothing is communicated. Sharded
    parameters (FSDP, DeepSpeed, DTensor shards) are refused: a shard's ``sigma_1`` is not the matrix's.

    Logged after each optimizer step with ``pl_module.log`` (so on the Trainer's ``log_every_n_steps``
    cadence, into ``trainer.callback_metrics`` and every logger), prefixed with :attr:`name`:
    ``factor_min`` and ``factor_mean`` over the selected tensors, ``bounded`` (the share of them whose
    factor was below 1) and ``ratio_max`` (the largest ``sigma_1(step) / sigma_1(W_{t-1})`` before
    scaling); with ``log_per_layer``, also ``factor/<parameter name>`` and ``ratio/<parameter name>``.

    Args:
        tau: the largest allowed ``sigma_1(step) / sigma_1(W_{t-1})`` of a step; positive and finite.
            The default :data:`WARMUP_FREE_TAU` (0.01) is ours; the paper leaves it a hyper-parameter.
        mode: ``"per_layer"`` or ``"global"`` (see :mod:`lightning_opt.callbacks.warmup_free`).
        ratio: ``"update"`` (default, the paper's): ``sigma_1`` of the step the optimizer took;
            ``"gradient"``: of ``lr * grad`` (the weight-to-gradient ratio; the same for plain SGD). A
            parameter without a gradient is not bounded under ``"gradient"``.
        power_iterations: ``None`` (default) computes ``sigma_1`` exactly (an SVD per tensor); an integer
            ``k`` runs ``k`` power iterations per tensor per step, warm-started from the previous step's
            vectors (kept in the checkpoint), as the paper does for large models.
        matrices_only: measure only tensors of two or more dimensions (default); ``False`` also bounds
            1-D tensors (by their Euclidean norm) and 0-d ones (by their absolute value). In the global
            mode the unmeasured tensors still take the global factor.
        include: ``fnmatch`` patterns of the parameter names to bound (default: all).
        exclude: patterns of parameter names to leave alone (``"head.*"``...).
        log_per_layer: also log each tensor's factor and ratio.
        name: the prefix of the logged keys and the checkpoint ``state_key``; by default
            ``WarmupFreeScaling``, plus the filter if any. Two instances in one Trainer need different names.

    Raises:
        ValueError: an argument is out of range or of the wrong type; the message names it and its value.

    Example::

        from lightning.pytorch import Trainer
        from lightning_opt.callbacks import WarmupFreeScaling

        # torch.optim.AdamW(lr=1e-3) in configure_optimizers, no warm-up in the schedule
        trainer = Trainer(callbacks=[WarmupFreeScaling(tau=0.01)])
        trainer = Trainer(callbacks=[WarmupFreeScaling(tau=0.01, mode="global", exclude="head.*")])

    References:
        X. Qi et al., "Taming Transformer Without Using Learning Rate Warmup", ICLR 2025, arXiv:2505.21910.
    """

    def __init__(
        self,
        tau: float = WARMUP_FREE_TAU,
        mode: str = "per_layer",
        ratio: str = "update",
        power_iterations: int | None = None,
        matrices_only: bool = True,
        include: Patterns = None,
        exclude: Patterns = None,
        log_per_layer: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__()
        self.tau = _check_tau(tau)
        self.mode = check_choice("mode", mode, MODES)
        self.ratio = check_choice("ratio", ratio, RATIOS)
        self.power_iterations = None if power_iterations is None else check_positive_int(
            "power_iterations", power_iterations
        )
        self.matrices_only = check_bool("matrices_only", matrices_only)
        self.parameter_filter = ParameterFilter(include, exclude)
        self.log_per_layer = check_bool("log_per_layer", log_per_layer)
        if name is not None and not (isinstance(name, str) and name.strip()):
            raise ValueError(f"Invalid name: {name!r} (expected a non-empty string, or None for the default)")
        self.name: str = name if name is not None else _default_name(type(self).__name__, self.parameter_filter)
        """The prefix of the logged keys and of the checkpoint ``state_key``."""
        self.steps = 0
        """Optimizer steps measured, over the whole run (resumes included)."""
        self.scaled_steps = 0
        """Of those, the steps in which at least one tensor's factor was below 1."""
        self.last_factors: dict[str, float] = {}
        """Each bounded tensor's factor at the latest step, by parameter name."""
        self.last_ratios: dict[str, float] = {}
        """Each bounded tensor's ``sigma_1(step) / sigma_1(W_{t-1})`` at the latest step, before scaling."""
        self._vectors: dict[str, torch.Tensor] = {}
        self._selected: dict[int, str] = {}
        self._previous: dict[int, torch.Tensor] = {}
        self._handles: list[Any] = []
        self._log_pending = False

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(name=self.name)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "scaled_steps": self.scaled_steps,
            "last_factors": dict(self.last_factors),
            "last_ratios": dict(self.last_ratios),
            "vectors": {key: vector.detach().cpu() for key, vector in self._vectors.items()},
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.steps = int(state_dict.get("steps", 0))
        self.scaled_steps = int(state_dict.get("scaled_steps", 0))
        self.last_factors = {str(k): float(v) for k, v in state_dict.get("last_factors", {}).items()}
        self.last_ratios = {str(k): float(v) for k, v in state_dict.get("last_ratios", {}).items()}
        self._vectors = {str(k): v.detach().clone() for k, v in state_dict.get("vectors", {}).items()}

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        strategy = type(trainer.strategy).__name__
        if any(sharded in strategy for sharded in ("FSDP", "DeepSpeed", "ModelParallel")):
            raise RuntimeError(
                f"{type(self).__name__} needs whole weight matrices, but the {strategy} shards them: each rank "
                "would bound its shard's singular value. Use DDP, or leave this callback out."
            )
        self._selected = self.parameter_filter.selected_ids(pl_module)
        if not self._selected:
            rank_zero_warn(
                f"{type(self).__name__}: {self.parameter_filter} selects no parameter of "
                f"{type(pl_module).__name__}; it will do nothing"
            )

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_hooks()
        names = dict(self.parameter_filter.selected_ids(pl_module))
        for name, param in pl_module.named_parameters():
            if id(param) in names and _is_sharded_dtensor(param):
                raise RuntimeError(
                    f"{type(self).__name__} needs whole weight matrices, but {name!r} is a DTensor sharded as "
                    f"{tuple(param.placements)}; exclude it (exclude=[...]) or keep it unsharded"
                )
        self._selected = names
        for optimizer in trainer.optimizers:
            self._handles.append(optimizer.register_step_pre_hook(self._before_step))
            self._handles.append(optimizer.register_step_post_hook(self._after_step))

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_hooks()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._remove_hooks()

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._log_pending or not self.last_factors:
            return
        self._log_pending = False
        factors = list(self.last_factors.values())
        metrics = {
            "factor_min": min(factors),
            "factor_mean": math.fsum(factors) / len(factors),
            "bounded": sum(f < 1.0 for f in factors) / len(factors),
            "ratio_max": max((r for r in self.last_ratios.values() if not math.isnan(r)), default=math.nan),
        }
        if self.log_per_layer:
            metrics.update({f"factor/{name}": value for name, value in self.last_factors.items()})
            metrics.update({f"ratio/{name}": value for name, value in self.last_ratios.items()})
        for key, value in metrics.items():
            pl_module.log(f"{self.name}/{key}", value, on_step=True, on_epoch=False, batch_size=1)

    # ------------------------------------------------------------------ the optimizer's step hooks
    def _stepped(self, optimizer: torch.optim.Optimizer) -> list[tuple[str, torch.Tensor, dict[str, Any], bool]]:
        """``(name, parameter, group, measured)`` of each parameter whose step this callback may rescale in
        ``optimizer``: the measured ones (``sigma_1`` taken) and, in the global mode, every other selected one
        too, since the global factor plays the part of the one learning rate."""
        stepped = []
        for group in optimizer.param_groups:
            for param in group["params"]:
                name = self._selected.get(id(param))
                if name is None or param.numel() == 0:
                    continue
                measured = not (self.matrices_only and param.dim() < 2)
                if measured or self.mode == "global":
                    stepped.append((name, param, group, measured))
        return stepped

    def _before_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        with torch.no_grad():
            for _, param, _, _ in self._stepped(optimizer):
                previous = self._previous.get(id(param))
                if previous is None or previous.shape != param.shape or previous.dtype != param.dtype or (
                    previous.device != param.device
                ):
                    self._previous[id(param)] = param.detach().clone()
                else:
                    previous.copy_(param.detach())

    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        with torch.no_grad():
            stepped, measured = [], []
            for name, param, group, is_measured in self._stepped(optimizer):
                previous = self._previous.get(id(param))
                if previous is None:
                    continue
                stepped.append((name, param, previous))
                if not is_measured:
                    continue
                if self.ratio == "gradient":
                    if param.grad is None or param.grad.is_sparse:
                        continue
                    step = param.grad.to(accumulation_dtype(param)) * float(group["lr"])
                else:
                    step = param.to(accumulation_dtype(param)) - previous.to(accumulation_dtype(param))
                measured.append((name, previous, step))
            if not measured:
                return
            sigma_weights = torch.stack([self._sigma(f"{name}:weight", prev) for name, prev, _ in measured])
            sigma_steps = torch.stack([self._sigma(f"{name}:step", step) for name, _, step in measured])
            factors, ratios = _factors_from_sigmas(sigma_weights, sigma_steps.to(sigma_weights), self.tau, self.mode)
            factor_values = factors.tolist()
            ratio_values = ratios.tolist()  # after factors.tolist(): the device is already synchronised
            if self.mode == "global":
                targets, factors_applied = stepped, [factor_values[0]] * len(stepped)
            else:
                by_name = {name: (name, param, previous) for name, param, previous in stepped}
                targets, factors_applied = [by_name[name] for name, _, _ in measured], factor_values
            scale_steps_([param for _, param, _ in targets], [prev for _, _, prev in targets], factors_applied)
        self.steps += 1
        self.scaled_steps += any(f < 1.0 for f in factor_values)
        self.last_factors = {entry[0]: factor for entry, factor in zip(measured, factor_values)}
        self.last_ratios = {entry[0]: ratio for entry, ratio in zip(measured, ratio_values)}
        self._log_pending = True

    def _sigma(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        if self.power_iterations is None:
            return largest_singular_value(tensor)
        sigma, vector = power_iteration(tensor, self._vectors.get(key), self.power_iterations)
        if vector is not None:
            self._vectors[key] = vector
        return sigma

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._previous = {}


def _check_tau(tau: Any) -> float:
    return check_float("tau", tau, low=0.0, low_inclusive=False)
