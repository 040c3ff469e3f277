"""Muon: Newton-Schulz-orthogonalised momentum for hidden matrices, AdamW for everything else, in one optimizer.

Muon (Keller Jordan, 2024) replaces each hidden weight matrix's momentum by an approximation of its polar
factor ``U V^T`` (the nearest semi-orthogonal matrix), computed with a few Newton-Schulz iterations; Moonlight
(Liu et al., "Muon is Scalable for LLM Training", arXiv:2502.16982) adds decoupled weight decay and scales each
matrix's update by ``0.2 * sqrt(max(rows, cols))`` so that its RMS matches AdamW's, which lets one learning rate
and one weight decay serve the Muon part and the AdamW part (embeddings, output layer, biases, norms).

Which tensors take which update is decided per parameter group (``use_muon``) and, where the group leaves it
open, by the tensor's number of dimensions (:class:`Muon`); :func:`muon_param_groups` builds the groups from a
model (module types and names), and :func:`~lightning_opt.factories.build_optimizer` and ``lightning-opt fit
--optimizer Muon`` use it.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Optional, Union

import torch
from torch import nn

from lightning_opt.engine import BaseOptimizer, Flags, Hyperparameters
from lightning_opt.engine.base import ParamsT
from lightning_opt.transforms import add_scaled_, decoupled_weight_decay_, ema_, ema_sq_, eps_direction
from lightning_opt.transforms.gradient import AGC_CLIPPING, check_agc_clipping
from lightning_opt.transforms.reductions import PER_TENSOR, accumulation_dtype, norm_from
from lightning_opt.validation import (
    FLOAT32_MAX,
    check_betas,
    check_bool,
    check_choice,
    check_decay_factor,
    check_float,
    check_float32,
    check_positive_int,
    check_probability,
    check_step_size,
)

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
"""Keller Jordan's quintic Newton-Schulz coefficients ``(a, b, c)``: ``X <- a X + b (X X^T) X + c (X X^T)^2 X``."""

ADJUST_LR_FNS = ("match_rms_adamw", "original")
"""How a matrix's update is scaled by its shape: Moonlight's ``0.2 * sqrt(max(rows, cols))`` (the default), or
Keller Jordan's ``sqrt(max(1, rows / cols))``; the same names as ``torch.optim.Muon``'s ``adjust_lr_fn``."""

NS_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}
"""The dtypes the Newton-Schulz iteration may run in (``ns_dtype``)."""

MAX_NS_STEPS = 100
"""The most Newton-Schulz iterations allowed (``torch.optim.Muon`` refuses 100 or more too)."""


def check_hyperparameters(
    lr: Any,
    weight_decay: Any,
    momentum: Any,
    nesterov: Any,
    ns_coefficients: Any,
    eps: Any,
    ns_steps: Any,
    adjust_lr_fn: Any,
    ns_dtype: Any,
    adamw_betas: Any,
    adamw_eps: Any,
    agc_clipping: Any = AGC_CLIPPING,
) -> dict[str, Any]:
    """Validate Muon's hyper-parameters (one group's, or the defaults) and return them normalised.

    Example:
        >>> check_hyperparameters(1e-3, 0.1, 0.95, True, (3.4445, -4.775), 1e-7, 5, "original", "bfloat16",
        ...                       (0.9, 0.95), 1e-8)
        Traceback (most recent call last):
        ...
        ValueError: Invalid ns_coefficients: (3.4445, -4.775) (expected three numbers (a, b, c))
    """
    lr = check_float("lr", lr, low=0.0)
    check_step_size("lr", lr, lr, "lr")
    weight_decay = check_float("weight_decay", weight_decay, low=0.0)
    check_decay_factor("weight_decay", weight_decay, lr * weight_decay, "{lr:g} * weight_decay", lr=lr)
    coefficients = _check_coefficients(ns_coefficients)
    steps = check_positive_int("ns_steps", ns_steps)
    if steps >= MAX_NS_STEPS:
        raise ValueError(f"Invalid ns_steps: {ns_steps!r} (expected < {MAX_NS_STEPS})")
    try:
        betas = check_betas(adamw_betas)
    except ValueError as error:  # name the argument as the user wrote it
        raise ValueError(str(error).replace("Invalid beta", "Invalid adamw_beta", 1)) from None
    return dict(
        lr=lr,
        weight_decay=weight_decay,
        momentum=check_probability("momentum", momentum),
        nesterov=check_bool("nesterov", nesterov),
        ns_coefficients=coefficients,
        eps=check_float32("eps", eps),
        ns_steps=steps,
        adjust_lr_fn=check_choice("adjust_lr_fn", adjust_lr_fn, ADJUST_LR_FNS),
        ns_dtype=check_choice("ns_dtype", ns_dtype, tuple(NS_DTYPES)),
        adamw_betas=betas,
        adamw_eps=check_float32("adamw_eps", adamw_eps),
        agc_clipping=check_agc_clipping(agc_clipping),
    )


def _check_coefficients(value: Any) -> tuple[float, float, float]:
    """``value`` as three float32-representable numbers ``(a, b, c)``, or ``ValueError`` quoting it whole."""
    problem = "expected three numbers (a, b, c)"
    if not isinstance(value, (str, bytes)) and isinstance(value, Iterable):
        numbers = tuple(value)
        if len(numbers) == 3:
            try:
                a, b, c = (check_float("ns_coefficients", x, low=-FLOAT32_MAX, high=FLOAT32_MAX) for x in numbers)
                return a, b, c
            except ValueError as error:
                problem = str(error).split(" (", 1)[-1].rstrip(")") + " for each"
    raise ValueError(f"Invalid ns_coefficients: {value!r} ({problem})")


def muon_view(shape: torch.Size) -> tuple[int, ...]:
    """How :class:`Muon`'s update sees a parameter: a tensor of two or more dimensions as a ``(rows, cols)``
    matrix (``rows = shape[0]``, the rest flattened: a conv weight ``(out, in, kh, kw)`` is ``(out, in*kh*kw)``),
    with a trailing 1 when it is tall (``rows > cols``); a 0-d or 1-D tensor as one flat ``(numel,)`` vector.

    The number of dimensions tells the update, without looking at any size, whether it has vectors (AdamW
    only), wide or square matrices (``X X^T`` is the smaller Gram matrix) or tall ones (``X^T X``): the compiled
    graph then holds no size comparison that a new shape could invalidate.

    >>> muon_view(torch.Size([4, 8])), muon_view(torch.Size([8, 4])), muon_view(torch.Size([16, 3, 3, 3]))
    ((4, 8), (8, 4, 1), (16, 27))
    >>> muon_view(torch.Size([5])), muon_view(torch.Size([]))
    ((5,), (1,))
    """
    if len(shape) < 2:
        return (shape.numel(),)
    rows = shape[0]
    cols = shape.numel() // rows if rows else 0
    return (rows, cols, 1) if rows > cols else (rows, cols)


def newton_schulz(
    matrices: torch.Tensor,
    coefficients: Sequence[Any],
    steps: int,
    eps: Any,
    dtype: torch.dtype,
    tall: bool = False,
) -> torch.Tensor:
    """Approximately orthogonalise each matrix of a ``(k, rows, cols)`` stack: ``steps`` quintic Newton-Schulz
    iterations on the matrix divided by its Frobenius norm (at least ``eps``).

    Each iteration maps ``X`` to ``a X + (b A + c A^2) X`` with ``A = X X^T`` (``tall``: ``X (b B + c B^2)`` with
    ``B = X^T X``, the same polynomial of the smaller Gram matrix). It acts on the singular values alone,
    ``s <- a s + b s^3 + c s^5``: with Keller Jordan's coefficients they end up near 1 (roughly within 0.7 to
    1.2) after 5 steps, without converging exactly; the singular vectors are kept.

    Args:
        matrices: ``(k, rows, cols)``; any floating dtype.
        coefficients: ``(a, b, c)``, numbers (constants of a compiled graph).
        steps: the number of iterations.
        eps: the least norm divided by (a zero matrix stays zero).
        dtype: the dtype of the iterations (the normalisation is computed in at least float32).
        tall: use the ``cols x cols`` Gram matrix (cheaper when ``rows > cols``; same result in exact arithmetic).

    Returns:
        The ``(k, rows, cols)`` result, in ``dtype``.

    Example:
        >>> q = newton_schulz(torch.tensor([[[3.0, 0.0], [0.0, 1e-3]]]), NS_COEFFICIENTS, 5, 1e-7, torch.float32)
        >>> # singular values 1 and 3e-4 (after the norm) become about 0.7 and 0.16 (a tiny one grows fast)
        >>> [round(v, 2) for v in q.diagonal(dim1=1, dim2=2).flatten().tolist()]
        [0.7, 0.16]
    """
    wide_dtype = torch.promote_types(dtype, accumulation_dtype(matrices))
    norm = norm_from(matrices, PER_TENSOR).to(wide_dtype)
    x = (matrices.to(wide_dtype) / norm.clamp_min(eps)).to(dtype)
    a, b, c = (float(value) for value in coefficients)
    for _ in range(steps):  # each product and sum in one call, rounded once (as torch.addmm is in bfloat16)
        if tall:
            gram = x.transpose(-2, -1) @ x
            x = torch.baddbmm(x, x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), beta=a)
        else:
            gram = x @ x.transpose(-2, -1)
            x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x


def shape_scale(rows: Any, cols: Any, adjust_lr_fn: str, tall: Optional[bool] = None) -> Any:
    """The factor a matrix's orthogonalised update is multiplied by, besides ``lr``.

    ``"match_rms_adamw"`` (Moonlight, arXiv:2502.16982): ``0.2 * sqrt(max(rows, cols))``, which gives the update
    an RMS of about 0.2, AdamW's typical update RMS, so that AdamW's lr and weight decay carry over;
    ``"original"`` (Keller Jordan): ``sqrt(max(1, rows / cols))``. ``tall`` (``rows > cols``) may be given, so
    that symbolic sizes (under ``torch.compile``) are never compared.

    >>> shape_scale(256, 1024, "match_rms_adamw"), shape_scale(1024, 256, "original")
    (6.4, 2.0)
    """
    if tall is None:
        tall = rows > cols
    if adjust_lr_fn == "original":
        return math.sqrt(rows / cols) if tall else 1.0
    return 0.2 * math.sqrt(rows if tall else cols)


class Muon(BaseOptimizer):
    r"""Muon (Keller Jordan 2024; Moonlight, arXiv:2502.16982) with its auxiliary AdamW, in one optimizer.

    Hidden weight matrices take the Muon update; every other tensor (embeddings, the output layer, biases,
    norm gains) takes AdamW's. For a matrix ``W`` of shape ``(rows, cols)`` (a tensor of more dimensions is
    flattened from its second dimension on: a conv weight ``(out, in, kh, kw)`` is ``(out, in*kh*kw)``, as in
    Keller Jordan's and pytorch_optimizer's Muon; torch.optim.Muon takes 2-D tensors only)::

        m <- momentum m + (1 - momentum) g                    (an EMA, as torch.optim.Muon keeps it)
        u  = (1 - momentum) g + momentum m  if nesterov  else m
        O  = NS(u)                                            (ns_steps quintic Newton-Schulz iterations)
        W <- W (1 - lr weight_decay) - lr s O
        s  = 0.2 sqrt(max(rows, cols))   (adjust_lr_fn="match_rms_adamw")  or  sqrt(max(1, rows / cols))  ("original")

    and for every other tensor, AdamW with ``adamw_betas`` and ``adamw_eps``, the same ``lr`` and
    ``weight_decay``: ``p <- p (1 - lr weight_decay) - lr m_hat / (sqrt(v_hat) + adamw_eps)``.

    **Which tensors are matrices.** A parameter group may say ``"use_muon": True`` (every tensor of it takes
    Muon: they must have two or more dimensions) or ``"use_muon": False`` (AdamW for all, matrices too); a group
    without the key (``Muon(model.parameters())``) sends tensors of two or more dimensions to Muon and the
    others to AdamW. Embeddings and the output layer are matrices too, but the paper and Keller Jordan give them
    to AdamW: only the model can tell them apart, so build the groups with :func:`muon_param_groups` (which
    :func:`~lightning_opt.factories.build_optimizer` and ``lightning-opt fit --optimizer Muon`` do). The route
    of a tensor is fixed by its first step: changing a group's ``use_muon`` afterwards is refused.

    **Precision.** The Newton-Schulz iterations run in ``ns_dtype``: ``"bfloat16"`` (default, as in Keller
    Jordan's, Moonlight's, torch's and pytorch_optimizer's code; a matrix's motion over a few steps lands about
    1% from the float64 iteration's, as with torch.optim.Muon's own bfloat16 iteration, which the method does not
    mind: the iteration leaves the singular values only roughly in [0.7, 1.2] anyway), ``"float32"`` (about
    2e-5) or ``"float64"``. The normalisation by the Frobenius norm is computed in at least float32, and each
    step's products and sums are fused (``torch.baddbmm``, one rounding each, as ``torch.addmm`` in torch's).
    Stacks of same-shaped matrices are orthogonalised as one batch of matrix products ``(k, rows, cols)``,
    eagerly and under ``compile=True``; the coefficients and ``ns_steps`` are constants of the compiled graph.

    How it relates to the public implementations (checked in ``tests/test_muon.py``):

    - ``torch.optim.Muon(lr, weight_decay, momentum, nesterov, ns_coefficients, eps, ns_steps, adjust_lr_fn)``
      takes the steps of the Muon part, with the same option names; its default ``adjust_lr_fn=None`` means
      ``"original"``, here the default is the paper's ``"match_rms_adamw"``. It has no AdamW part and refuses
      tensors that are not 2-D.
    - pytorch_optimizer's ``Muon`` takes the same steps with ``use_adjusted_lr=True`` (``"match_rms_adamw"``) or
      ``False`` (``"original"``) and the same lr and weight decay for its AdamW groups (its ``adamw_lr``,
      ``adamw_wd``, ``adamw_betas``, ``adamw_eps``); it requires ``use_muon`` in every group.

    State per tensor: ``exp_avg`` (the momentum; AdamW's first moment) and ``exp_avg_sq`` (AdamW's second
    moment), both of the parameter's shape; for a tensor that takes Muon ``exp_avg_sq`` is an empty tensor
    (the engine keeps one set of state names per optimizer). The update reads whole matrices:
    DTensor-sharded parameters (FSDP2) are refused.

    Args:
        params: iterable of parameters or of dicts defining parameter groups (optionally with ``use_muon``).
        lr: learning rate of both parts (with the default ``adjust_lr_fn``, an AdamW learning rate).
        weight_decay: decoupled weight decay of both parts, multiplied by ``lr``.
        momentum: coefficient of the Muon part's momentum (an EMA of the gradient), in ``[0, 1)``.
        nesterov: orthogonalise ``(1 - momentum) g + momentum m`` instead of ``m``.
        ns_coefficients: ``(a, b, c)`` of the quintic Newton-Schulz iteration.
        eps: the least Frobenius norm the momentum is divided by before the iterations.
        ns_steps: the number of Newton-Schulz iterations (below 100).
        adjust_lr_fn: ``"match_rms_adamw"`` (default: ``0.2 * sqrt(max(rows, cols))``, the paper's) or
            ``"original"`` (``sqrt(max(1, rows / cols))``, Keller Jordan's, with a Muon lr around 0.02).
        ns_dtype: ``"bfloat16"``, ``"float32"`` or ``"float64"``: the dtype of the Newton-Schulz iterations.
        adamw_betas: the AdamW part's ``(beta1, beta2)``.
        adamw_eps: the AdamW part's eps, added to ``sqrt(v_hat)``.
        compile: fuse the update with ``torch.compile`` (Newton-Schulz included).
        skip_nonfinite: leave a tensor untouched (with a warning) when its gradient has inf or NaN.
        grad_transforms: gradient transforms applied in order before the update, without changing ``p.grad``:
            ``"centralize"``, ``"adaptive_clip"``, ``"soft_clip"`` (:mod:`lightning_opt.transforms.gradient`).
        agc_clipping: the largest unit-wise gradient-to-parameter norm ratio of ``"adaptive_clip"``.

    Bounds (see :mod:`lightning_opt.validation`): ``lr`` below ``2**24``; the decay factor
    ``1 - lr * weight_decay`` in ``[0, 1]``.

    In a ``LightningCLI``, ``--optimizer Muon`` is ambiguous with ``torch.optim.Muon``: give ``--optimizer
    lightning_opt.Muon``; LightningCLI then passes ``model.parameters()`` (the dimension rule above, which sends
    embeddings and the head to Muon). ``lightning-opt fit --optimizer Muon`` and ``build_optimizer(model, "Muon")``
    mean this class and build the groups with :func:`muon_param_groups`.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> optimizer = Muon(muon_param_groups(model), lr=1e-3)
        >>> [(len(group["params"]), group["use_muon"]) for group in optimizer.param_groups]
        [(1, True), (3, False)]
        >>> model(torch.randn(16, 4)).square().mean().backward()
        >>> optimizer.step()
        >>> optimizer.state[model[0].weight]["exp_avg_sq"].shape, optimizer.state[model[0].bias]["exp_avg_sq"].shape
        (torch.Size([0]), torch.Size([8]))

    References:
        Jordan et al., "Muon: An optimizer for hidden layers in neural networks", kellerjordan.github.io/posts/muon,
        2024. Liu et al., "Muon is Scalable for LLM Training", arXiv:2502.16982.
    """

    buffer_names = ("exp_avg", "exp_avg_sq")
    hyperparameter_check = staticmethod(check_hyperparameters)
    stack_view = staticmethod(muon_view)
    whole_tensor_statistics = True

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
        eps: float = 1e-7,
        ns_steps: int = 5,
        adjust_lr_fn: str = "match_rms_adamw",
        ns_dtype: str = "bfloat16",
        adamw_betas: tuple[float, float] = (0.9, 0.95),
        adamw_eps: float = 1e-8,
        compile: bool = False,
        skip_nonfinite: bool = False,
        grad_transforms: Sequence[str] = (),
        agc_clipping: float = AGC_CLIPPING,
    ) -> None:
        defaults = check_hyperparameters(
            lr, weight_decay, momentum, nesterov, ns_coefficients, eps, ns_steps, adjust_lr_fn, ns_dtype,
            adamw_betas, adamw_eps, agc_clipping,
        )
        self._routes: dict[int, tuple[torch.Tensor, bool]] = {}
        super().__init__(
            params,
            defaults,
            compile=compile,
            skip_nonfinite=skip_nonfinite,
            grad_transforms=grad_transforms,
            agc_clipping=agc_clipping,
        )

    # ----------------------------------------------------------------- routes
    @staticmethod
    def module_param_groups(
        module: nn.Module, groups: Optional[Sequence[dict[str, Any]]] = None
    ) -> list[dict[str, Any]]:
        """This optimizer's parameter groups for a model (:func:`muon_param_groups`): what
        :func:`~lightning_opt.factories.build_optimizer` and ``lightning-opt fit`` give it instead of the plain
        parameters, ``groups`` being the weight-decay split (or ``None``)."""
        return muon_param_groups(module, groups)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group; ``use_muon`` must be ``True``, ``False`` or absent (``None``), and a group with
        ``use_muon=True`` may hold only tensors of two or more dimensions."""
        index = len(getattr(self, "param_groups", []))
        if isinstance(param_group, dict):
            use_muon = param_group.get("use_muon")
            if use_muon is not None and not isinstance(use_muon, bool):
                raise ValueError(
                    f"Invalid use_muon: {use_muon!r} (expected True, False or None) [parameter group {index}]"
                )
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if group.get("use_muon") is True:
            for param in group["params"]:
                if param.dim() < 2:
                    self.param_groups.pop()
                    raise ValueError(
                        f"Invalid use_muon: True for a parameter of shape {tuple(param.shape)} (Muon orthogonalises "
                        f"matrices: give 0-d and 1-D tensors a group with use_muon=False, or leave use_muon out to "
                        f"route them by their number of dimensions) [parameter group {index}]"
                    )

    def takes_muon(self, param: torch.Tensor) -> bool:
        """Whether ``param`` (of this optimizer) takes the Muon update rather than AdamW's.

        Example:
            >>> w, b = torch.nn.Parameter(torch.zeros(3, 4)), torch.nn.Parameter(torch.zeros(3))
            >>> optimizer = Muon([w, b])
            >>> optimizer.takes_muon(w), optimizer.takes_muon(b)
            (True, False)
        """
        cached = self._routes.get(id(param))
        if cached is None or cached[0] is not param:
            self._routes = {
                id(p): (p, group.get("use_muon") is not False and p.dim() >= 2)
                for group in self.param_groups
                for p in group["params"]
            }
            cached = self._routes.get(id(param))
            if cached is None:
                raise KeyError(f"a parameter of shape {tuple(param.shape)} is not one of this optimizer's")
        return cached[1]

    def init_state(self, param: torch.Tensor, state: dict[str, Any]) -> None:
        """The momentum ``exp_avg`` of the parameter's shape; ``exp_avg_sq`` too for AdamW, empty for Muon."""
        state["step"] = torch.tensor(0.0, dtype=torch.float32)
        state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        if self.takes_muon(param):
            state["exp_avg_sq"] = torch.zeros(0, dtype=param.dtype, device=param.device)
        else:
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)

    # ----------------------------------------------------------------- the numbers of a step
    def group_hyperparameters(self, group: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
        use_muon = group.get("use_muon")
        seen = self.__dict__.setdefault("_use_muon_seen", {})  # id(group) -> (group, its use_muon at first step)
        first = seen.get(id(group))
        if first is not None and first[0] is group and first[1] is not use_muon:
            index = next(i for i, g in enumerate(self.param_groups) if g is group)
            raise ValueError(
                f"Invalid use_muon: {use_muon!r} (was {first[1]!r} when the group first stepped; a tensor's route "
                f"is fixed with its state: build a new optimizer to change it) [parameter group {index}]"
            )
        seen[id(group)] = (group, use_muon)
        lr, weight_decay = group["lr"], group["weight_decay"]
        a, b, c = group["ns_coefficients"]
        beta1, beta2 = group["adamw_betas"]
        numbers = {
            "momentum": group["momentum"],
            "beta1": beta1,
            "beta2": beta2,
            "adamw_eps": group["adamw_eps"],
            "eps": group["eps"],
            "neg_lr": -lr,
            "decay_factor": 1.0 - lr * weight_decay,
        }
        flags = {
            "muon": use_muon is not False,
            "nesterov": group["nesterov"],
            "ns_steps": group["ns_steps"],
            "ns_coefficients": (a, b, c),  # constants of the graph: rarely changed, and fused into the products
            "adjust_lr_fn": group["adjust_lr_fn"],
            "ns_dtype": group["ns_dtype"],
            "decay": weight_decay != 0.0,
        }
        return numbers, flags

    def tensor_hyperparameters(self, group: dict[str, Any], steps: torch.Tensor) -> dict[str, torch.Tensor]:
        beta1, beta2 = group["adamw_betas"]
        return {"m_scale": 1.0 / (1.0 - beta1**steps), "root_scale": (1.0 - beta2**steps).rsqrt()}

    # ----------------------------------------------------------------- the update
    @staticmethod
    def update(
        param: torch.Tensor, grad: torch.Tensor, buffers: dict[str, torch.Tensor], hp: Hyperparameters, flags: Flags
    ) -> None:
        """One step of a stack: Muon for matrices (a 3-D or, tall, 4-D stack) of a Muon route, else AdamW."""
        exp_avg = buffers["exp_avg"]
        if flags["muon"] and param.dim() >= 3:
            tall = param.dim() == 4
            ema_(exp_avg, grad, hp["momentum"])
            direction = grad.lerp(exp_avg, hp["momentum"]) if flags["nesterov"] else exp_avg
            if tall:
                direction = direction.squeeze(-1)
            orthogonal = newton_schulz(
                direction, flags["ns_coefficients"], int(flags["ns_steps"]), hp["eps"],  # type: ignore[arg-type]
                NS_DTYPES[str(flags["ns_dtype"])], tall,
            )
            rows, cols = orthogonal.shape[-2], orthogonal.shape[-1]
            step_size = hp["neg_lr"] * shape_scale(rows, cols, str(flags["adjust_lr_fn"]), tall)
            update = orthogonal.view(param.shape).to(param.dtype)
        else:
            ema_(exp_avg, grad, hp["beta1"])
            exp_avg_sq = ema_sq_(buffers["exp_avg_sq"], grad, hp["beta2"])
            update = eps_direction(exp_avg * hp["m_scale"], exp_avg_sq, hp["root_scale"], hp["adamw_eps"])
            step_size = hp["neg_lr"]
        if flags["decay"]:
            decoupled_weight_decay_(param, hp["decay_factor"])
        add_scaled_(param, update, step_size)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._routes = {}
        self.__dict__.pop("_use_muon_seen", None)


# ----------------------------------------------------------------------------------------------- param groups
AdamWRule = Callable[[str, nn.Parameter, nn.Module], bool]
"""``rule(parameter_name, parameter, owning_module) -> True`` to give the parameter to AdamW."""

MATRIX_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Bilinear,
    nn.modules.conv._ConvNd,
    nn.MultiheadAttention,
    nn.RNNBase,
)
"""Modules whose parameters of two or more dimensions are hidden weight matrices (unless the module is the
output layer): linear and convolution layers, attention projections, recurrent weights."""

_HEAD_WORD = re.compile(r"(?:^|_)heads?(?:$|_)")


def output_layer(module: nn.Module) -> Optional[nn.Module]:
    """The model's output layer as :func:`muon_param_groups` finds it: the last ``nn.Linear`` registered (a
    classifier or language-model head is the last layer of most models), or ``None``.

    >>> output_layer(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
    Linear(in_features=8, out_features=2, bias=True)
    """
    last = None
    for child in module.modules():
        if isinstance(child, nn.Linear):
            last = child
    return last


def default_adamw_rule(name: str, param: nn.Parameter, module: nn.Module) -> bool:
    """Whether a parameter goes to AdamW by default (before the output layer is considered): fewer than two
    dimensions, an owner that is not a layer of :data:`MATRIX_TYPES` (embeddings, norms, a model's own
    ``pos_embed`` or ``cls_token``), or a name with ``head`` as a word of a component (``lm_head.weight``,
    ``heads.0.weight``; not ``multihead_attn``).

    >>> default_adamw_rule("0.weight", nn.Parameter(torch.zeros(3, 3)), nn.Linear(3, 3))
    False
    >>> default_adamw_rule("lm_head.weight", nn.Parameter(torch.zeros(3, 3)), nn.Linear(3, 3))
    True
    """
    if param.dim() < 2 or not isinstance(module, MATRIX_TYPES):
        return True
    return any(_HEAD_WORD.search(part) for part in name.split(".")[:-1])


def muon_param_groups(
    module: nn.Module,
    groups: Optional[Sequence[dict[str, Any]]] = None,
    *,
    adamw: Union[AdamWRule, Sequence[str], None] = None,
) -> list[dict[str, Any]]:
    """Split a model's trainable parameters into hidden matrices (``"use_muon": True``) and the rest
    (``"use_muon": False``), for :class:`Muon`.

    A parameter goes to AdamW when :func:`default_adamw_rule` says so (fewer than two dimensions; embeddings,
    norms and other non-layer owners; ``head`` in its module's name), when its owner is the output layer
    (:func:`output_layer`), or when ``adamw`` matches it; a parameter with several owners (a head tied to an
    embedding) goes to AdamW if any owner sends it there. Every other parameter of two or more dimensions
    (linear, convolution, attention and recurrent weights) takes Muon.

    Args:
        module: the model; parameters with ``requires_grad=False`` are left out.
        groups: parameter groups of ``module``'s parameters to split (each into up to two, keeping its other
            keys: e.g. :func:`~lightning_opt.factories.param_groups_for_weight_decay`'s); ``None`` for one
            group of all trainable parameters.
        adamw: more parameters for AdamW: ``fnmatch`` patterns of qualified names (``["pos_embed", "*.gate"]``)
            or a rule ``(name, param, owning_module) -> bool``.

    Returns:
        The groups, each split into its Muon part then its AdamW part, empty ones dropped.

    Example:
        >>> model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 10))
        >>> [(len(g["params"]), g["use_muon"]) for g in muon_param_groups(model)]
        [(1, True), (6, False)]
        >>> [(len(g["params"]), g["use_muon"]) for g in muon_param_groups(model, adamw=["1.*"])]
        [(7, False)]
    """
    extra = _as_rule(adamw)
    head = output_layer(module)
    to_adamw: dict[int, bool] = {}
    trainable: dict[int, nn.Parameter] = {}
    for module_name, child in module.named_modules(remove_duplicate=False):
        for param_name, param in child.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            name = f"{module_name}.{param_name}" if module_name else param_name
            trainable.setdefault(id(param), param)
            says = child is head or default_adamw_rule(name, param, child) or extra(name, param, child)
            to_adamw[id(param)] = to_adamw.get(id(param), False) or says
    if groups is None:
        groups = [{"params": list(trainable.values())}]
    split = []
    for group in groups:
        params = list(group["params"])
        unknown = [tuple(p.shape) for p in params if id(p) not in to_adamw]
        if unknown:
            raise ValueError(
                f"Invalid groups: parameters of shapes {unknown} are not trainable parameters of the module"
            )
        options = {key: value for key, value in group.items() if key != "params"}
        muon = [p for p in params if not to_adamw[id(p)]]
        rest = [p for p in params if to_adamw[id(p)]]
        split += [{**options, "params": muon, "use_muon": True}, {**options, "params": rest, "use_muon": False}]
    return [group for group in split if group["params"]]


def _as_rule(adamw: Union[AdamWRule, Sequence[str], None]) -> AdamWRule:
    if adamw is None:
        return lambda name, param, module: False
    if callable(adamw):
        return adamw
    if isinstance(adamw, str) or not all(isinstance(pattern, str) for pattern in adamw):
        raise ValueError(f"Invalid adamw: {adamw!r} (expected a rule function or a list of name patterns)")
    patterns = list(adamw)
    return lambda name, param, module: any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)
