"""The one table of every optimizer in the package.

The registry drives the registry-wide test suite (every entry must pass it), the
:func:`~lightning_opt.factories.build_optimizer` factory, the ``lightning-opt optimizers`` listing and
the benchmarks. Adding an optimizer means one module in :mod:`lightning_opt.optim` and one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from lightning_opt.optim import NSGDA, AdaLo, Adafactor, AdamAtan2
from lightning_opt.optim.adam_family import PNM, AdaMomentum, AdaNorm, AdaPNM, DiffGrad, Lamb, SAdam
from lightning_opt.optim.adaptive_memory import AdaptiveMemoryAdamW, AdaptiveMemorySGD
from lightning_opt.optim.amos import Amos
from lightning_opt.optim.fractional_adam import FractionalAdam
from lightning_opt.optim.muon import Muon
from lightning_opt.optim.sm3 import SM3
from lightning_opt.optim.smmf import SMMF


@dataclass(frozen=True)
class OptimizerSpec:
    """What the package knows about one optimizer.

    Args:
        name: the class name, which is also the short name used by ``LightningCLI`` and the factory.
        cls: the optimizer class.
        summary: one line for listings.
        test_kwargs: keyword sets the common tests run, covering every flag (each is checked against
            the float64 reference in the tests).
        invalid_kwargs: ``(kwargs, argument name)`` pairs that must raise ``ValueError`` naming it.
        state_buffers: parameter-sized state tensors kept per parameter (Adam: 2).
        memory_accesses: parameter-sized reads plus writes of an ideal fused step (parameter, gradient
            and state); times the element size, the bytes each element moves: the bandwidth floor.
        loss_driven: the step size depends on the training loss (needs a closure or the LossFeeder).
        paper: where the method comes from.
    """

    name: str
    cls: type[torch.optim.Optimizer]
    summary: str
    test_kwargs: tuple[dict[str, Any], ...] = ({},)
    invalid_kwargs: tuple[tuple[dict[str, Any], str], ...] = ()
    state_buffers: int = 0
    memory_accesses: int = 0
    loss_driven: bool = False
    paper: str = ""
    tags: tuple[str, ...] = field(default=())


_COMMON_INVALID: tuple[tuple[dict[str, Any], str], ...] = (
    ({"lr": -1.0}, "lr"),
    ({"lr": float("nan")}, "lr"),
    ({"lr": "0.1"}, "lr"),  # a string is not a number, even one float() accepts
    ({"lr": 10**400}, "lr"),  # an int too large for a float: not OverflowError
    ({"weight_decay": -0.1}, "weight_decay"),
    ({"compile": "yes"}, "compile"),
    ({"grad_transforms": ("clip",)}, "grad_transforms"),
    ({"grad_transforms": ("soft_clip", "soft_clip")}, "grad_transforms"),
    ({"grad_transforms": [["soft_clip"]]}, "grad_transforms"),  # not a TypeError that names nothing
    ({"agc_clipping": 0.0}, "agc_clipping"),
    ({"agc_clipping": 3.5e38}, "agc_clipping"),  # beyond float32, the precision of the norms it scales
)

# The Adam family's presets (lightning_opt.optim.adam_family) validate alike.
_FAMILY_INVALID: tuple[tuple[dict[str, Any], str], ...] = (
    ({"betas": (1.5, 0.999)}, "beta1"),
    ({"betas": (0.9, 1.0)}, "beta2"),
    ({"eps": 0.0}, "eps"),
    ({"denominator": "sqrt"}, "denominator"),
    ({"softplus_beta": 0.0}, "softplus_beta"),
    ({"cautious": 1}, "cautious"),
    ({"cautious_weight_decay": "yes"}, "cautious_weight_decay"),
    ({"lr": 1e8}, "lr"),  # the scale of every coordinate's step beyond 2**24
    ({"lr": 1e7, "denominator": "atan2"}, "lr"),  # lr * 1.27 * pi / 2 beyond 2**24
    ({"lr": 1.0, "weight_decay": 2.0}, "weight_decay"),  # decay factor 1 - lr * weight_decay < 0
)

REGISTRY: dict[str, OptimizerSpec] = {
    spec.name: spec
    for spec in (
        OptimizerSpec(
            name="AdaLo",
            cls=AdaLo,
            summary="momentum SGD whose step size is a running average of 1/(2+loss); no second moment",
            test_kwargs=(
                {},
                {"mode": "compliant", "kappa": 2.0, "betas": (0.8, 0.9), "weight_decay": 0.1},
                {"weight_decay": 0.0, "eps": 1e-3, "lr": 0.5},  # the eps floor acts, and lr scales it too
                {"grad_transforms": ("centralize", "soft_clip")},
            ),
            invalid_kwargs=_COMMON_INVALID
            + (
                ({"betas": (1.5, 0.999)}, "beta1"),
                ({"betas": (0.9, 1.0)}, "beta2"),
                ({"betas": 0.9}, "betas"),
                ({"kappa": 0.0}, "kappa"),
                ({"eps": -1e-8}, "eps"),
                ({"mode": "aggressive"}, "mode"),
                # Legal numbers that cannot train (bounds in AdaLo's docstring and lightning_opt.validation):
                ({"kappa": 1e-320}, "kappa"),  # 1 / kappa is not a step size
                ({"lr": 1e8}, "lr"),  # the largest step size lr / kappa beyond 2**24
                ({"eps": 6557}, "eps"),  # a floor above every loss-driven step
                ({"eps": 0.2}, "eps"),  # above 1 / (2 * kappa) = 1/6 already
                ({"weight_decay": 3.97e6}, "weight_decay"),  # decay factor 1 - lr / kappa * weight_decay < 0
            ),
            state_buffers=1,
            memory_accesses=5,
            loss_driven=True,
            paper="AdaLo, Information Sciences 2024",
            tags=("loss-driven", "memory-light"),
        ),
        OptimizerSpec(
            name="NSGDA",
            cls=NSGDA,
            summary="normalised SGD with momentum: each tensor moves by lr along its momentum direction",
            test_kwargs=(
                {"lr": 1e-2},
                {"lr": 3e-2, "momentum": 0.0, "weight_decay": 0.0, "eps": 1e-3},
                {"lr": 1e-2, "eps": 0.5},  # an eps large enough that the bias correction inside it matters
                {"lr": 1e-2, "grad_transforms": ("adaptive_clip", "centralize"), "agc_clipping": 0.05},
            ),
            invalid_kwargs=_COMMON_INVALID
            + (
                ({"momentum": 1.0}, "momentum"),
                ({"momentum": -0.1}, "momentum"),
                ({"eps": -1.0}, "eps"),
                ({"eps": 0.0}, "eps"),
                ({"lr": 1.5e16}, "lr"),  # a tensor moves by lr: beyond 2**24
                ({"eps": 3.5e38}, "eps"),  # beyond float32
            ),
            state_buffers=1,
            memory_accesses=7,
            paper="Jelassi et al., OpenReview 2021",
            tags=("normalised",),
        ),
        OptimizerSpec(
            name="Adafactor",
            cls=Adafactor,
            summary="factored second moment (row and column averages), relative step, update clipping; "
            "sqrt taken last",
            test_kwargs=(
                {"lr": 5e-2},  # a number, for the common suite's LambdaLR (lr=None is the default)
                # the relative step; clipping acts; eps2 above the RMS of the bf16 test's parameters (0.02)
                {"weight_decay": 0.1, "decay_rate": -0.5, "clip_threshold": 0.5, "eps2": 0.3},
                {"beta1": 0.9, "scale_parameter": False, "lr": 3e-3, "eps2": 1e-2, "eps1": 1e-3},
                {"beta1": 0.5, "weight_decay": 0.05, "eps2": 0.1, "grad_transforms": ("centralize", "soft_clip")},
            ),
            invalid_kwargs=_COMMON_INVALID
            + (
                ({"beta1": 1.0}, "beta1"),
                ({"beta1": "0.9"}, "beta1"),
                ({"decay_rate": 0.8}, "decay_rate"),  # beta2_t = 1 - t**0.8 < 0
                ({"decay_rate": -1.5}, "decay_rate"),
                ({"eps1": 0.0}, "eps1"),  # a row without gradient would divide 0 by 0
                ({"eps1": 1e-40}, "eps1"),  # a float32 subnormal
                ({"eps2": 0.0}, "eps2"),
                ({"clip_threshold": 0.0}, "clip_threshold"),
                ({"clip_threshold": float("inf")}, "clip_threshold"),
                ({"scale_parameter": 1}, "scale_parameter"),
                ({"lr": 1e7, "clip_threshold": 2.0}, "lr"),  # lr * clip_threshold beyond 2**24
                ({"weight_decay": 200.0}, "weight_decay"),  # decay factor 1 - 1e-2 * weight_decay < 0
            ),
            state_buffers=0,
            memory_accesses=6,
            paper="arXiv:1804.04235",
            tags=("memory-light", "factored"),
        ),
        OptimizerSpec(
            name="AdamAtan2",
            cls=AdamAtan2,
            summary="Adam with atan2 instead of eps; optional cautious mask, cautious weight decay, Nesterov",
            test_kwargs=(
                {},
                {"cautious": True, "betas": (0.8, 0.95)},
                {"cautious_weight_decay": True, "weight_decay": 0.1, "lr": 3e-2},
                {"nesterov": True, "a": 2.0, "b": 0.5},
                {"nesterov": True, "cautious": True, "cautious_weight_decay": True, "weight_decay": 0.1, "lr": 1e-2},
                {"nesterov": True, "cautious": True, "cautious_weight_decay": True, "betas": (0.0, 0.9)},
                {"grad_transforms": ("soft_clip", "adaptive_clip", "centralize"), "agc_clipping": 0.02, "lr": 1e-2},
                {"stable_weight_decay": True, "weight_decay": 0.1, "lr": 1e-2, "cautious_weight_decay": True},
                {"trust_ratio": True, "stable_weight_decay": True, "weight_decay": 0.1, "lr": 0.1, "a": 2.0},
            ),
            invalid_kwargs=_COMMON_INVALID
            + (
                ({"betas": (1.5, 0.999)}, "beta1"),
                ({"betas": (0.9, -0.1)}, "beta2"),
                ({"a": 0.0}, "a"),
                ({"b": -1.0}, "b"),
                ({"cautious": 1}, "cautious"),
                ({"nesterov": "true"}, "nesterov"),
                ({"cautious_weight_decay": None}, "cautious_weight_decay"),
                ({"lr": 1e300}, "lr"),  # lr * a * pi / 2 beyond 2**24 (and beyond float32)
                ({"lr": 1e7}, "lr"),  # lr * a * pi / 2 = 2e7, beyond 2**24
                ({"a": 1e39}, "a"),  # beyond float32
                ({"lr": 1.0, "weight_decay": 2.0}, "weight_decay"),  # decay factor 1 - lr * weight_decay < 0
                ({"trust_ratio": "yes"}, "trust_ratio"),
                ({"stable_weight_decay": 1}, "stable_weight_decay"),
            ),
            state_buffers=2,
            memory_accesses=7,
            paper="arXiv:2407.05872",
            tags=("eps-free", "cautious"),
        ),
        OptimizerSpec(
            name="SM3",
            cls=SM3,
            summary="AdaGrad bounded by one accumulator per slice of every dimension (cover sets); momentum optional",
            test_kwargs=(
                {},
                {"momentum": 0.9, "beta": 0.95, "lr": 0.05, "weight_decay": 0.1},
                {"lr": 0.05, "eps": 1e-3, "grad_transforms": ("centralize", "adaptive_clip"), "agc_clipping": 0.05},
            ),
            invalid_kwargs=_COMMON_INVALID
            + (
                ({"momentum": 1.0}, "momentum"),
                ({"beta": 1.0}, "beta"),  # accumulates nothing: steps of g / sqrt(eps)
                ({"beta": -0.1}, "beta"),
                ({"eps": 0.0}, "eps"),  # an entry never seen with a gradient would step by 0 / 0
                ({"eps": 3.5e38}, "eps"),
                ({"lr": 1e8}, "lr"),  # beyond 2**24
                ({"lr": 1e5, "beta": 0.9999999}, "lr"),  # lr / sqrt(1 - beta) beyond 2**24
                ({"weight_decay": 20.0}, "weight_decay"),  # decay factor 1 - lr * weight_decay < 0
            ),
            state_buffers=0,
            memory_accesses=3,
            paper="arXiv:1901.11150",
            tags=("memory-light", "factored"),
        ),
        OptimizerSpec(
            name="Amos",
            cls=Amos,
            summary="Adam-style steps with one second moment per tensor and adaptive decay towards a target scale",
            test_kwargs=(
                {},
                {"momentum": 0.9, "beta": 0.99, "lr": 0.05, "extra_l2": 0.01, "weight_decay": 0.1},
                {"lr": 0.3, "beta": 0.9, "c_coef": 0.5, "d_coef": 0.1, "grad_transforms": ("soft_clip",)},
            ),
            invalid_kwargs=_COMMON_INVALID
            + (
                ({"beta": 1.0}, "beta"),
                ({"momentum": 1.0}, "momentum"),
                ({"extra_l2": -1.0}, "extra_l2"),
                ({"c_coef": -0.1}, "c_coef"),
                ({"d_coef": float("inf")}, "d_coef"),
                ({"eps": 0.0}, "eps"),  # a tensor whose gradients were all 0 would get 0 * inf
                ({"lr": 2e7}, "lr"),  # lr * sqrt(2) beyond 2**24
                ({"lr": 0.5, "weight_decay": 3.0}, "weight_decay"),  # decay factor 1 - lr * weight_decay < 0
            ),
            state_buffers=0,
            memory_accesses=3,
            paper="arXiv:2210.11693",
            tags=("memory-light", "adaptive-decay"),
        ),
        OptimizerSpec(
            name="SMMF",
            cls=SMMF,
            summary="Adam-like moments as rank-1 factors of the most square matricization plus 1-bit signs",
            test_kwargs=(
                {"lr": 1e-2},  # no bias correction: the default 1e-3 moves bf16 weights by too few ulps in 12 steps
                {"weight_decay": 0.1, "lr": 1e-2, "beta": 0.8, "decay_rate": -0.8, "growth_rate": 0.99, "eps": 1e-3},
                {"lr": 1e-2, "beta": 0.0, "grad_transforms": ("centralize", "soft_clip")},
            ),
            invalid_kwargs=_COMMON_INVALID
            + (
                ({"beta": 1.0}, "beta"),
                ({"beta": -0.1}, "beta"),
                ({"eps": 0.0}, "eps"),  # a coordinate whose gradients were all 0 would step by 0 / 0
                ({"eps": 3.5e38}, "eps"),
                ({"decay_rate": 0.5}, "decay_rate"),  # beta_v = 1 - t**0.5 < 0
                ({"decay_rate": -1.5}, "decay_rate"),
                ({"growth_rate": 1.5}, "growth_rate"),
                ({"growth_rate": -0.1}, "growth_rate"),
                ({"lr": 1e8}, "lr"),  # beyond 2**24
                ({"lr": 1.0, "weight_decay": 2.0}, "weight_decay"),  # decay factor 1 - lr * weight_decay < 0
            ),
            state_buffers=0,
            memory_accesses=3,
            paper="arXiv:2412.08894",
            tags=("memory-light", "factored"),
        ),
        OptimizerSpec(
            name="DiffGrad",
            cls=DiffGrad,
            summary="Adam whose step is damped by diffGrad's friction sigmoid(|g_prev - g|); Adam-family pieces",
            test_kwargs=(  # lr 1e-2: the bfloat16 test needs tensors that move by many ulps in 12 steps
                {"lr": 1e-2},
                {"denominator": "atan2", "cautious": True, "weight_decay": 0.1, "lr": 1e-2},
                {"nesterov": True, "cautious_weight_decay": True, "weight_decay": 0.1, "betas": (0.8, 0.95),
                 "lr": 1e-2},
                {"stable_weight_decay": True, "weight_decay": 0.1, "lr": 1e-2},
            ),
            invalid_kwargs=_COMMON_INVALID + _FAMILY_INVALID + (({"nesterov": "true"}, "nesterov"),),
            state_buffers=3,
            memory_accesses=9,
            paper="arXiv:1909.11015",
            tags=("adam-family", "cautious"),
        ),
        OptimizerSpec(
            name="SAdam",
            cls=SAdam,
            summary="Adam with the calibrated denominator softplus_beta(sqrt(v_hat) + eps) (Sadam)",
            test_kwargs=(
                {},
                {"softplus_beta": 5.0, "eps": 0.05, "nesterov": True, "cautious": True, "lr": 1e-2},
                {"denominator": "eps", "grad_transforms": ("centralize",), "weight_decay": 0.1, "lr": 1e-2},
            ),
            invalid_kwargs=_COMMON_INVALID + _FAMILY_INVALID,
            state_buffers=2,
            memory_accesses=7,
            paper="arXiv:1908.00700",
            tags=("adam-family", "cautious"),
        ),
        OptimizerSpec(
            name="AdaMomentum",
            cls=AdaMomentum,
            summary="Adam whose second moment averages the squared momentum (twofold EMA)",
            test_kwargs=(
                {},
                {"eps": 1e-3, "denominator": "softplus", "cautious_weight_decay": True, "weight_decay": 0.1},
                {"nesterov": True, "denominator": "atan2", "cautious": True, "betas": (0.0, 0.9)},
                {"stable_weight_decay": True, "weight_decay": 0.1, "lr": 1e-2, "eps": 1e-3},
            ),
            invalid_kwargs=_COMMON_INVALID + _FAMILY_INVALID,
            state_buffers=2,
            memory_accesses=7,
            paper="arXiv:2106.11514",
            tags=("adam-family", "cautious"),
        ),
        OptimizerSpec(
            name="AdaNorm",
            cls=AdaNorm,
            summary="Adam whose momentum sees gradients rescaled up to their running norm, per tensor",
            test_kwargs=(
                {},
                {"norm_beta": 0.5, "nesterov": True, "cautious": True, "denominator": "atan2", "lr": 1e-2},
            ),
            invalid_kwargs=_COMMON_INVALID + _FAMILY_INVALID + (({"norm_beta": 1.0}, "norm_beta"),),
            state_buffers=2,  # and one number per tensor, the running norm
            memory_accesses=8,
            paper="arXiv:2210.06364",
            tags=("adam-family", "cautious"),
        ),
        OptimizerSpec(
            name="PNM",
            cls=PNM,
            summary="SGD with positive-negative momentum: two momenta alternating by step parity",
            test_kwargs=(
                {"lr": 1e-2},
                {"lr": 1e-2, "momentum": 0.5, "beta0": 0.5, "cautious": True, "cautious_weight_decay": True,
                 "weight_decay": 0.1},
                {"lr": 0.1, "trust_ratio": True, "weight_decay": 0.1},
            ),
            invalid_kwargs=_COMMON_INVALID
            + (
                ({"momentum": 1.0}, "momentum"),
                ({"beta0": -1.0}, "beta0"),
                ({"cautious": 1}, "cautious"),
                ({"lr": 1e8}, "lr"),
            ),
            state_buffers=2,
            memory_accesses=7,
            paper="arXiv:2103.17182",
            tags=("adam-family", "cautious"),
        ),
        OptimizerSpec(
            name="AdaPNM",
            cls=AdaPNM,
            summary="positive-negative momentum over an AMSGrad second moment",
            test_kwargs=(
                {"lr": 1e-2},  # the bfloat16 test needs tensors that move by many ulps in 12 steps
                {"beta0": 0.5, "denominator": "softplus", "cautious": True, "cautious_weight_decay": True,
                 "weight_decay": 0.1, "lr": 1e-2},
                {"stable_weight_decay": True, "trust_ratio": True, "weight_decay": 0.1, "lr": 0.1},
            ),
            invalid_kwargs=_COMMON_INVALID + _FAMILY_INVALID + (({"beta0": float("inf")}, "beta0"),),
            state_buffers=4,
            memory_accesses=11,
            paper="arXiv:2103.17182",
            tags=("adam-family", "cautious"),
        ),
        OptimizerSpec(
            name="Lamb",
            cls=Lamb,
            summary="Adam whose update (weight decay inside) is rescaled per tensor to min(||p||, 10) / ||u|| (LAMB)",
            test_kwargs=(  # lr 0.1: the bfloat16 test needs tensors that move by many ulps in 12 steps
                {"lr": 0.1},
                {"lr": 0.1, "stable_weight_decay": True, "weight_decay": 0.1, "betas": (0.8, 0.95)},
                {"lr": 0.1, "denominator": "atan2", "nesterov": True, "cautious": True, "cautious_weight_decay": True,
                 "weight_decay": 0.1},
                {"lr": 1e-2, "trust_ratio": False, "stable_weight_decay": True, "weight_decay": 0.1},
                {"lr": 1e-2, "trust_ratio": False, "stable_weight_decay": True, "cautious_weight_decay": True,
                 "weight_decay": 0.1, "grad_transforms": ("normalize", "centralize")},
                {"lr": 0.1, "weight_decay": 0.0, "denominator": "softplus", "grad_transforms": ("normalize",)},
            ),
            invalid_kwargs=_COMMON_INVALID
            + _FAMILY_INVALID
            + (
                ({"nesterov": "true"}, "nesterov"),
                ({"trust_ratio": 1}, "trust_ratio"),
                ({"stable_weight_decay": "yes"}, "stable_weight_decay"),
            ),
            state_buffers=2,
            memory_accesses=10,  # a second pass over p, m and v after the two norms
            paper="arXiv:1904.00962",
            tags=("adam-family", "cautious", "normalised"),
        ),
        OptimizerSpec(
            name="Muon",
            cls=Muon,
            summary="Newton-Schulz-orthogonalised momentum for hidden matrices (update RMS matched to AdamW's), "
            "AdamW for the other tensors",
            test_kwargs=(  # Newton-Schulz in float64 here, so that the float64 reference's tolerance applies
                {"ns_dtype": "float64", "lr": 1e-2},  # lr 1e-2: the bfloat16 test needs motion of many ulps
                {"ns_dtype": "float64", "adjust_lr_fn": "original", "nesterov": False, "lr": 1e-2, "momentum": 0.9,
                 "weight_decay": 0.0},
                {"ns_dtype": "float64", "ns_steps": 3, "ns_coefficients": (2.0, -1.5, 0.5), "adamw_betas": (0.8, 0.99),
                 "adamw_eps": 1e-3, "lr": 1e-2, "grad_transforms": ("centralize", "soft_clip")},
            ),
            invalid_kwargs=_COMMON_INVALID
            + (
                ({"momentum": 1.0}, "momentum"),
                ({"nesterov": "yes"}, "nesterov"),
                ({"ns_coefficients": (3.4, -4.7)}, "ns_coefficients"),
                ({"ns_coefficients": (3.4, float("nan"), 2.0)}, "ns_coefficients"),
                ({"ns_coefficients": "quintic"}, "ns_coefficients"),
                ({"ns_steps": 0}, "ns_steps"),
                ({"ns_steps": 100}, "ns_steps"),
                ({"ns_steps": 2.5}, "ns_steps"),
                ({"eps": 0.0}, "eps"),
                ({"adjust_lr_fn": None}, "adjust_lr_fn"),  # torch's None means "original": say which
                ({"ns_dtype": "float16"}, "ns_dtype"),
                ({"adamw_betas": (1.5, 0.95)}, "adamw_beta1"),
                ({"adamw_betas": 0.9}, "adamw_betas"),
                ({"adamw_eps": 0.0}, "adamw_eps"),
                ({"lr": 1e8}, "lr"),  # beyond 2**24
                ({"lr": 1.0, "weight_decay": 2.0}, "weight_decay"),  # decay factor 1 - lr * weight_decay < 0
            ),
            state_buffers=2,  # AdamW's tensors; a matrix that takes Muon keeps one (its exp_avg_sq is empty)
            memory_accesses=5,  # a matrix: read p, g, m; write m, p (plus the Newton-Schulz matrix products)
            paper="arXiv:2502.16982",
            tags=("orthogonalised", "matrix"),
        ),
        OptimizerSpec(
            name="FractionalAdam",
            cls=FractionalAdam,
            summary="Adam on the Grunwald-Letnikov fractional-order gradient of the last K gradients",
            test_kwargs=(
                {"lr": 1e-2},  # the bfloat16 test needs tensors that move by many ulps in 12 steps
                {"alpha": -0.6, "history": 3, "denominator": "atan2", "cautious": True, "weight_decay": 0.1,
                 "lr": 1e-2},
                {"alpha": 0.7, "history": 1, "nesterov": True, "denominator": "softplus",
                 "cautious_weight_decay": True, "weight_decay": 0.1, "lr": 1e-2},
            ),
            invalid_kwargs=_COMMON_INVALID
            + _FAMILY_INVALID
            + (
                ({"alpha": 1.0}, "alpha"),
                ({"alpha": -1.5}, "alpha"),
                ({"alpha": float("nan")}, "alpha"),
                ({"history": 0}, "history"),
                ({"history": 2.0}, "history"),
                ({"history": True}, "history"),
                ({"history": 65}, "history"),
                ({"nesterov": "true"}, "nesterov"),
            ),
            state_buffers=6,  # exp_avg, exp_avg_sq and the K = 4 past gradients (one (K, units, width) buffer)
            memory_accesses=12,  # read p, g, m, v and the K past gradients; write p, m, v and one slot
            paper="Grunwald-Letnikov fractional-order gradient (Neural Processing Letters)",
            tags=("adam-family", "cautious"),
        ),
        OptimizerSpec(
            name="AdaptiveMemorySGD",
            cls=AdaptiveMemorySGD,
            summary="SGD whose momentum coefficient comes from a two-plane proximal model at every step (AM)",
            test_kwargs=(
                {"lr": 1e-2},
                {"lr": 1e-2, "lam": 0.5, "cautious": True, "cautious_weight_decay": True, "weight_decay": 0.1},
                {"lr": 1e-2, "lam": 0.0, "beta_max": 0.5, "weight_decay": 0.1, "grad_transforms": ("centralize",)},
            ),
            invalid_kwargs=_COMMON_INVALID
            + (
                ({"lam": -0.5}, "lam"),
                ({"lam": float("inf")}, "lam"),
                ({"beta_max": 1.0}, "beta_max"),
                ({"beta_max": -0.1}, "beta_max"),
                ({"cautious": 1}, "cautious"),
                ({"cautious_weight_decay": "yes"}, "cautious_weight_decay"),
                ({"lr": 1e8}, "lr"),
                ({"lr": 1.0, "weight_decay": 2.0}, "weight_decay"),
            ),
            state_buffers=1,
            memory_accesses=5,  # read p, g, d; write d, p (the two sums of the first phase read g and d again)
            paper="arXiv:2510.04988",
            tags=("adaptive-memory", "cautious"),
        ),
        OptimizerSpec(
            name="AdaptiveMemoryAdamW",
            cls=AdaptiveMemoryAdamW,
            summary="AdamW whose first moment's coefficient comes from a two-plane proximal model at every step (AM)",
            test_kwargs=(
                {"lr": 1e-2},
                {"lr": 1e-2, "lam": 0.5, "denominator": "atan2", "cautious": True, "weight_decay": 0.1},
                {"lr": 1e-2, "denominator": "softplus", "eps": 1e-3, "cautious_weight_decay": True, "beta2": 0.9,
                 "beta_max": 0.99, "weight_decay": 0.1},
            ),
            invalid_kwargs=_COMMON_INVALID
            + (
                ({"lam": -0.5}, "lam"),
                ({"beta_max": 1.0}, "beta_max"),
                ({"beta2": 1.0}, "beta2"),
                ({"eps": 0.0}, "eps"),
                ({"denominator": "sqrt"}, "denominator"),
                ({"softplus_beta": 0.0}, "softplus_beta"),
                ({"cautious": 1}, "cautious"),
                ({"cautious_weight_decay": "yes"}, "cautious_weight_decay"),
                ({"lr": 1e8}, "lr"),
                ({"lr": 1e7, "denominator": "atan2"}, "lr"),
                ({"lr": 1.0, "weight_decay": 2.0}, "weight_decay"),
            ),
            state_buffers=2,
            memory_accesses=7,  # read p, g, m, v; write m, v, p (the first phase's sums read g, m, v again)
            paper="arXiv:2510.04988",
            tags=("adaptive-memory", "cautious"),
        ),
    )
}


def find_spec(name: str) -> OptimizerSpec | None:
    """Return the registry entry for ``name`` (case-insensitive), or ``None``."""
    wanted = str(name).lower()
    return next((spec for spec in REGISTRY.values() if spec.name.lower() == wanted), None)


def get_spec(name: str) -> OptimizerSpec:
    """Return the registry entry for ``name`` (case-insensitive), or raise ``ValueError`` listing the names."""
    spec = find_spec(name)
    if spec is None:
        raise ValueError(f"Invalid optimizer: {name!r} (expected one of {', '.join(REGISTRY)})")
    return spec
