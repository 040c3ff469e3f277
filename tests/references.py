"""Float64 reference implementations of every registered optimizer, for the common test suite.

Written from the formulas in ``design/ALGORITHMS.md`` and the optimizers' docstrings, *not* from the
package's code: every update is spelled out in its textbook form (bias corrections applied to the
moments, the seed's ``tanh`` loss transform, the mask built from the gradient...) rather than in the
folded forms the package uses for speed. Nothing here imports :mod:`lightning_opt`.

A reference mirrors the ``torch.optim`` calling convention::

    ref = AdamAtan2Reference([{"params": [w, b]}, {"params": [e], "lr": 1e-2}], lr=1e-3, cautious=True)
    ref.step([[gw, gb], [None]])          # one gradient (or None: no step for that tensor) per parameter
    ref.params[0][1]                       # the float64 value of ``b`` after the step
    ref.state[(0, 1)]["exp_avg"]           # its state, under torch's names, with an int "step"

Hyper-parameters may be changed between steps by editing ``ref.groups[i]`` (as a scheduler edits an
optimizer's ``param_groups``). Unknown hyper-parameter names raise ``TypeError``, so that a flag added
to an optimizer cannot be silently ignored by its reference.

``mutation`` deliberately breaks one detail of an update; the suite uses it to prove that its tolerances
detect that kind of mistake. It is never set when checking the package.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch

F64 = torch.float64


# ---------------------------------------------------------------------------------- gradient transforms
def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """The tensor as a matrix with one row per output unit (a 0-d or 1-D tensor is one unit)."""
    if x.dim() <= 1:
        return x.reshape(1, -1)
    return x.reshape(x.shape[0], math.prod(x.shape[1:]))


def centralize_reference(g: torch.Tensor, mutation: str | None = None) -> torch.Tensor:
    """Gradient centralisation (2004.01461): rows minus their mean, for tensors of dimension > 1."""
    if g.dim() <= 1 and mutation != "gc_on_vectors":
        return g
    rows = unit_rows(g)
    if mutation == "gc_global_mean":
        return g - g.mean()
    return (rows - rows.mean(dim=1, keepdim=True)).reshape(g.shape)


def soft_clip_reference(
    g: torch.Tensor, p: torch.Tensor, eps: float = 1e-12, mutation: str | None = None
) -> torch.Tensor:
    """The seed's soft clip: each row's gradient RMS clamped to the row's parameter RMS."""
    rows, prow = unit_rows(g), unit_rows(p)
    if mutation == "soft_clip_tensor_rms":
        rows, prow = g.reshape(1, -1), p.reshape(1, -1)
    count = max(rows.shape[1], 1)
    g_rms = ((rows**2).sum(dim=1, keepdim=True) / count).sqrt().clamp_min(eps)
    p_rms = ((prow**2).sum(dim=1, keepdim=True) / count).sqrt().clamp_min(eps)
    target = torch.where(g_rms > p_rms, p_rms, g_rms)
    return (rows * target / g_rms).reshape(g.shape)


def adaptive_clip_reference(
    g: torch.Tensor, p: torch.Tensor, clipping: float, eps: float = 1e-3, mutation: str | None = None
) -> torch.Tensor:
    """AGC (2102.06171, section 4.1): if ||g_i|| / max(||p_i||, eps) > clipping, rescale row i to the bound."""
    rows, prow = unit_rows(g), unit_rows(p)
    g_norm = rows.norm(dim=1, keepdim=True)
    p_norm = prow.norm(dim=1, keepdim=True)
    if mutation == "agc_tensor_norm":
        g_norm, p_norm = g_norm.norm().expand_as(g_norm), p_norm.norm().expand_as(p_norm)
    bound = clipping * p_norm.clamp_min(eps)
    scale = torch.where(g_norm > bound, bound / g_norm.clamp_min(1e-6), torch.ones_like(g_norm))
    return (rows * scale).reshape(g.shape)


def normalize_reference(g: torch.Tensor, eps: float = 1e-8, mutation: str | None = None) -> torch.Tensor:
    """Gradient normalisation: the whole tensor divided by its Euclidean norm plus eps."""
    if mutation == "normalize_rows":
        rows = unit_rows(g)
        return (rows / (rows.norm(dim=1, keepdim=True) + eps)).reshape(g.shape)
    return g / (torch.sqrt(torch.sum(g * g)) + eps)


def transform_gradient_reference(g: torch.Tensor, p: torch.Tensor, group: dict[str, Any], mutation: str | None):
    names = list(group["grad_transforms"])
    if mutation == "transforms_reversed":
        names.reverse()
    for name in names:
        if name == "centralize":
            g = centralize_reference(g, mutation)
        elif name == "soft_clip":
            g = soft_clip_reference(g, p, mutation=mutation)
        elif name == "adaptive_clip":
            g = adaptive_clip_reference(g, p, group["agc_clipping"], mutation=mutation)
        elif name == "normalize":
            g = normalize_reference(g, mutation=mutation)
        else:
            raise ValueError(name)
    return g


GRADIENT_TRANSFORM_DEFAULTS: dict[str, Any] = {"grad_transforms": (), "agc_clipping": 0.01}
GRADIENT_TRANSFORM_MUTATIONS = (
    "transforms_reversed",  # grad_transforms applied in the reverse order
    "gc_on_vectors",  # centralisation of biases too
    "gc_global_mean",  # one mean over the whole tensor instead of one per output unit
    "soft_clip_tensor_rms",  # soft clip with whole-tensor instead of unit-wise RMS
    "agc_tensor_norm",  # AGC with whole-tensor instead of unit-wise norms
    "normalize_rows",  # gradient normalisation per output unit instead of per tensor
)


class Reference:
    """A float64, one-tensor-at-a-time optimizer with the ``torch.optim`` group semantics.

    Every reference also takes the package-wide ``grad_transforms`` / ``agc_clipping`` and applies the
    named transforms (written out above) to each gradient before its update.
    """

    name: ClassVar[str]
    defaults: ClassVar[dict[str, Any]]
    mutations: ClassVar[tuple[str, ...]] = ()
    loss_driven: ClassVar[bool] = False

    def __init__(self, param_groups: Sequence[Any], *, mutation: str | None = None, **hyperparameters: Any) -> None:
        defaults = self.all_defaults()
        unknown = set(hyperparameters) - set(defaults)
        if unknown:
            raise TypeError(f"{self.name} reference has no hyper-parameter(s) {sorted(unknown)}")
        if mutation is not None and mutation not in self.mutations + GRADIENT_TRANSFORM_MUTATIONS:
            raise ValueError(f"unknown mutation {mutation!r} for {self.name}")
        self.mutation = mutation
        base = {**defaults, **hyperparameters}
        groups = list(param_groups)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self.groups: list[dict[str, Any]] = []
        for group in groups:
            unknown = set(group) - set(defaults) - {"params"}
            if unknown:
                raise TypeError(f"{self.name} reference has no hyper-parameter(s) {sorted(unknown)}")
            params = [torch.as_tensor(p).detach().to(F64).clone() for p in group["params"]]
            self.groups.append({**base, **{k: v for k, v in group.items() if k != "params"}, "params": params})
        self.state: dict[tuple[int, int], dict[str, Any]] = {}
        self.group_state: list[dict[str, Any]] = [self.init_group_state(g) for g in self.groups]

    @classmethod
    def all_defaults(cls) -> dict[str, Any]:
        """The optimizer's own defaults and the package-wide gradient-transform ones."""
        return {**cls.defaults, **GRADIENT_TRANSFORM_DEFAULTS}

    @property
    def params(self) -> list[list[torch.Tensor]]:
        return [group["params"] for group in self.groups]

    # ------------------------------------------------------------------ what a reference provides
    def init_group_state(self, group: dict[str, Any]) -> dict[str, Any]:
        return {}

    def init_state(self, p: torch.Tensor) -> dict[str, Any]:
        raise NotImplementedError

    def begin_step(self, loss: float | None) -> None:
        """Called once per step, before any tensor, with the loss fed for this step (or None)."""

    def update(
        self, p: torch.Tensor, g: torch.Tensor, state: dict[str, Any], group: dict[str, Any], group_state: dict
    ) -> torch.Tensor:
        """Return the new value of ``p``; ``state["step"]`` is already the 1-based step of this tensor."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the step
    def step(self, grads: Sequence[Sequence[torch.Tensor | None]], loss: float | None = None) -> None:
        if len(grads) != len(self.groups):
            raise ValueError("one list of gradients per group expected")
        self.begin_step(None if loss is None else float(loss))
        for gi, (group, group_grads) in enumerate(zip(self.groups, grads)):
            if len(group_grads) != len(group["params"]):
                raise ValueError("one gradient (or None) per parameter expected")
            for pi, grad in enumerate(group_grads):
                if grad is None:
                    continue
                p = group["params"][pi]
                state = self.state.get((gi, pi))
                if state is None:
                    state = self.state[(gi, pi)] = {"step": 0, **self.init_state(p)}
                state["step"] += 1
                g = transform_gradient_reference(grad.detach().to(F64), p, group, self.mutation)
                group["params"][pi] = self.update(p, g, state, group, self.group_state[gi])


# ---------------------------------------------------------------------------------- SWD and LAMB's trust ratio
class StableDecayReference(Reference):
    r"""Stable weight decay and LAMB's trust ratio at the end of an Adam-type update (AdamAtan2, the Adam family).

    SWD (2011.11152, the authors' AdamS): wd is multiplied by s = 1 / (sqrt(mean v_hat) + eps), the mean over every
    element of every tensor with a gradient in every group of the v_hat this step divides by (found by running the
    step on a copy of the state first; a tensor whose v_hat sums to a non-finite number is left out); the decay
    lr wd s p is capped at p (coefficient at most 1). eps: the first group's, or 1e-8.
    Trust ratio (LAMB, 1904.00962): u = u + wd p (cautious: only where u p > 0); r = min(||p||, 10) / ||u||, 1 if
    either norm is 0; p = p - lr r u.
    """

    swd_scales: dict[int, float] | None = None

    def uses_second_moment(self) -> bool:
        return True

    def record_second_moment(self, group: dict[str, Any], v_hat: torch.Tensor) -> None:
        if self.swd_scales == {}:  # the dry run of SWD
            self.seen_second_moments.append((self.groups.index(group), v_hat))

    def step(self, grads, loss=None):
        """With SWD, first the same step on a copy of the state, to collect this step's v_hat of every tensor."""
        self.swd_scales = None
        swd = any(g.get("stable_weight_decay") and g["weight_decay"] for g in self.groups)
        if swd and self.uses_second_moment():
            saved_state = {key: dict(value) for key, value in self.state.items()}
            saved_params = [list(group["params"]) for group in self.groups]
            self.seen_second_moments: list[tuple[int, torch.Tensor]] = []
            self.swd_scales = {}
            super().step(grads, loss)  # a dry run: decays use a scale of 0 here
            self.state = saved_state
            for group, params in zip(self.groups, saved_params):
                group["params"] = params
            seen = self.seen_second_moments
            if self.mutation == "swd_previous_second_moment":
                seen = getattr(self, "previous_second_moments", seen)
                self.previous_second_moments = self.seen_second_moments
            scales = {}
            for gi in range(len(self.groups)):
                chosen = [v for i, v in seen if i == gi or self.mutation != "swd_per_group_mean"]
                chosen = [v for v in chosen if bool(v.sum().isfinite())]  # a non-finite tensor is left out
                total = sum(float(v.sum()) for v in chosen)
                count = sum(v.numel() for v in chosen)
                scales[gi] = 1.0 / (math.sqrt(total / count) + self.groups[0].get("eps", 1e-8)) if count else 0.0
            self.swd_scales = scales
            self.seen_second_moments = []
        super().step(grads, loss)

    def decayed_step(self, p: torch.Tensor, u: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        """The new p from the update u (after the cautious mask) and the group's decay options."""
        lr, wd = group["lr"], group["weight_decay"]
        if group.get("stable_weight_decay") and self.uses_second_moment():
            wd = wd * (self.swd_scales or {}).get(self.groups.index(group), 0.0)
            if not group.get("trust_ratio") and lr:
                wd = min(wd, 1.0 / lr)  # the coefficient lr wd s at most 1
        if group["cautious_weight_decay"]:
            decay = wd * (u * p > 0).to(F64) * p
        else:
            decay = wd * p
        if group.get("trust_ratio"):
            if self.mutation != "trust_ratio_decay_outside":
                u, decay = u + decay, torch.zeros_like(p)
            weight_norm = torch.sqrt(torch.sum(p * p))
            if self.mutation != "trust_ratio_unclamped":
                weight_norm = torch.clamp(weight_norm, max=10.0)
            update_norm = torch.sqrt(torch.sum(u * u))
            if weight_norm > 0 and update_norm > 0:
                u = u * weight_norm / update_norm
        return p - lr * decay - lr * u


# ---------------------------------------------------------------------------------------------- AdamAtan2
class AdamAtan2Reference(StableDecayReference):
    r"""Adam-atan2 (arXiv:2407.05872) with optional cautious mask, cautious weight decay and Nesterov.

    m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  m_hat = m / (1-b1^t)  (Nesterov: b1 m / (1-b1^(t+1))
    + (1-b1) g / (1-b1^t));  v_hat = v / (1-b2^t);  u = a atan2(m_hat, b sqrt(v_hat));
    cautious (2411.16085): mask = [u g > 0], u = u mask numel / (sum(mask) + 1);
    decay: p = p - lr wd p  (cautious weight decay, 2510.12402 as written in ALGORITHMS.md:
    only where u p > 0, u being the (masked) update);  then p = p - lr u.  With stable_weight_decay or trust_ratio:
    StableDecayReference's end of the update.
    """

    name = "AdamAtan2"
    defaults = {
        "lr": 1e-3,
        "betas": (0.9, 0.999),
        "weight_decay": 1e-2,
        "a": 1.27,
        "b": 1.0,
        "cautious": False,
        "cautious_weight_decay": False,
        "nesterov": False,
        "trust_ratio": False,
        "stable_weight_decay": False,
    }
    mutations = (
        "no_bias_correction1",  # m_hat = m
        "no_bias_correction2",  # v_hat = v
        "no_decay",  # weight decay forgotten
        "decay_after_update",  # p = (p - lr u)(1 - lr wd): decay of the already-updated parameter
        "mask_against_momentum",  # cautious mask built from u * m instead of u * g
        "mask_without_rescale",  # cautious mask without the numel / (sum + 1) factor
        "cwd_unmasked_update",  # cautious weight decay decided on the update before the cautious mask
        "cwd_greater_equal",  # the paper's 1[u p >= 0] instead of ALGORITHMS.md's 1[u p > 0]
        "no_nesterov",  # nesterov flag ignored
    )

    def init_state(self, p: torch.Tensor) -> dict[str, Any]:
        return {"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}

    def update(self, p, g, state, group, group_state):
        mutation = self.mutation
        beta1, beta2 = group["betas"]
        t = state["step"]
        m = state["exp_avg"] = beta1 * state["exp_avg"] + (1.0 - beta1) * g
        v = state["exp_avg_sq"] = beta2 * state["exp_avg_sq"] + (1.0 - beta2) * g * g
        bc1 = 1.0 - beta1**t
        bc2 = 1.0 - beta2**t
        if mutation == "no_bias_correction1":
            bc1 = 1.0
        if mutation == "no_bias_correction2":
            bc2 = 1.0
        if group["nesterov"] and mutation != "no_nesterov":
            m_hat = beta1 * m / (1.0 - beta1 ** (t + 1)) + (1.0 - beta1) * g / bc1
        else:
            m_hat = m / bc1
        v_hat = v / bc2
        self.record_second_moment(group, v / (1.0 - beta2**t))
        u = group["a"] * torch.atan2(m_hat, group["b"] * torch.sqrt(v_hat))
        unmasked = u
        if group["cautious"]:
            agree = (u * (m if mutation == "mask_against_momentum" else g) > 0).to(F64)
            scale = 1.0 if mutation == "mask_without_rescale" else u.numel() / (agree.sum() + 1.0)
            u = u * agree * scale
        if group["trust_ratio"] or group["stable_weight_decay"]:
            return self.decayed_step(p, u, group)
        lr, wd = group["lr"], group["weight_decay"]
        if mutation == "no_decay":
            wd = 0.0
        if group["cautious_weight_decay"]:
            decider = unmasked if mutation == "cwd_unmasked_update" else u
            same_sign = (decider * p >= 0) if mutation == "cwd_greater_equal" else (decider * p > 0)
            decay = lr * wd * same_sign.to(F64) * p
        else:
            decay = lr * wd * p
        if mutation == "decay_after_update":
            return (p - lr * u) * (1.0 - lr * wd)
        return p - decay - lr * u


# ---------------------------------------------------------------------------------------------- nSGDA
class NSGDAReference(Reference):
    r"""nSGDA: d = g + wd p;  m = mu m + (1-mu) d;  m_hat = m / (1-mu^t);  p = p - lr m_hat / (||m_hat|| + eps)."""

    name = "NSGDA"
    defaults = {"lr": 1e-2, "momentum": 0.9, "eps": 1e-8, "weight_decay": 1e-2}
    mutations = ("no_bias_correction", "decoupled_decay", "global_norm_per_element")

    def init_state(self, p):
        return {"momentum_buffer": torch.zeros_like(p)}

    def update(self, p, g, state, group, group_state):
        mu, lr, wd, eps = group["momentum"], group["lr"], group["weight_decay"], group["eps"]
        t = state["step"]
        d = g if self.mutation == "decoupled_decay" else g + wd * p
        m = state["momentum_buffer"] = mu * state["momentum_buffer"] + (1.0 - mu) * d
        bc = 1.0 if self.mutation == "no_bias_correction" else 1.0 - mu**t
        m_hat = m / bc
        if self.mutation == "global_norm_per_element":
            norm = m_hat.abs()
        else:
            norm = torch.sqrt(torch.sum(m_hat * m_hat))
        new_p = p - lr * m_hat / (norm + eps)
        if self.mutation == "decoupled_decay":
            new_p = new_p - lr * wd * p
        return new_p


# ---------------------------------------------------------------------------------------------- AdaLo
def seed_loss_transform(loss: float) -> float:
    """The seed's T(L) = (tanh(-log1p(L) / 2) + 1) / 2, written as the seed writes it."""
    return (math.tanh(-math.log1p(loss) / 2.0) + 1.0) / 2.0


class AdaLoReference(Reference):
    r"""AdaLo, per group once per step: ell = b2 ell + (1-b2) T(L) (ell starts at 0; no loss: unchanged);
    lr_t = lr * max(ell / kappa, eps) ("adversarial") or lr * max((1 - ell) / kappa, eps) ("compliant");
    per tensor: m = b1 m + (1-b1) g;  p = p (1 - lr_t wd) - lr_t m.  ``lr`` multiplies the whole step."""

    name = "AdaLo"
    defaults = {
        "lr": 1.0,
        "betas": (0.9, 0.999),
        "weight_decay": 1e-2,
        "kappa": 3.0,
        "eps": 1e-8,
        "mode": "adversarial",
        "lr_scales_step": True,  # False only for groups loaded from a checkpoint in which lr was not used
    }
    mutations = ("no_decay", "loss_average_after_step", "loss_transform_1_over_1_plus_l", "lr_ignored", "lr_inside_max")
    loss_driven = True

    def init_group_state(self, group):
        return {"loss_average": 0.0, "loss_count": 0, "step_size": None}

    def init_state(self, p):
        return {"exp_avg": torch.zeros_like(p)}

    def begin_step(self, loss):
        for group, group_state in zip(self.groups, self.group_state):
            old_average = group_state["loss_average"]
            if loss is not None and math.isfinite(loss):
                if self.mutation == "loss_transform_1_over_1_plus_l":
                    target = 1.0 / (1.0 + loss)
                else:
                    target = seed_loss_transform(loss)
                beta2 = group["betas"][1]
                group_state["loss_average"] = beta2 * old_average + (1.0 - beta2) * target
                group_state["loss_count"] += 1
            ell = old_average if self.mutation == "loss_average_after_step" else group_state["loss_average"]
            scaled = ell if group["mode"] == "adversarial" else 1.0 - ell
            if self.mutation == "lr_ignored" or not group["lr_scales_step"]:
                step_size = max(scaled / group["kappa"], group["eps"])
            elif self.mutation == "lr_inside_max":  # the eps floor not scaled by lr
                step_size = max(group["lr"] * scaled / group["kappa"], group["eps"])
            else:
                step_size = group["lr"] * max(scaled / group["kappa"], group["eps"])
            group_state["step_size"] = step_size

    def update(self, p, g, state, group, group_state):
        beta1 = group["betas"][0]
        lr_t = group_state["step_size"]
        m = state["exp_avg"] = beta1 * state["exp_avg"] + (1.0 - beta1) * g
        wd = 0.0 if self.mutation == "no_decay" else group["weight_decay"]
        return p * (1.0 - lr_t * wd) - lr_t * m


REFERENCES: dict[str, type[Reference]] = {
    cls.name: cls for cls in (AdamAtan2Reference, NSGDAReference, AdaLoReference)
}
"""Registered optimizer name -> its float64 reference."""


# ---------------------------------------------------------------------------------------------- Adafactor
class AdafactorReference(Reference):
    r"""Adafactor (arXiv:1804.04235: Algorithm 4 with eps1 added to G^2, the relative step and parameter scale
    of section 8, update clipping of section 6), per tensor at step t, in the paper's form:

    beta2_t = 1 - t^decay_rate;  rho = lr, or min(1e-2, 1/sqrt(t)) if lr is None;
    alpha = max(eps2, RMS(p)) rho if scale_parameter else rho  (RMS of p before this step);
    >= 2-D, each matrix G of the last two dims: R = b R + (1-b) mean_cols(G^2 + eps1),
        C = b C + (1-b) mean_rows(G^2 + eps1), V = R C / mean(R)  (the paper's sums, as means);
    0-d and 1-D: V = b V + (1-b)(g^2 + eps1), unfactored (reported as the package stores it: exp_avg_sq_col
        = V as (1, 1, n), exp_avg_sq_row = mean(V) as (1, 1, 1));
    U = G / sqrt(V);  U = U / max(1, RMS(U) / clip_threshold);
    beta1: m = b1 m + (1-b1) alpha U, step = m;  else step = alpha U;   p = p (1 - rho wd) - step.
    """

    name = "Adafactor"
    defaults = {
        "lr": None,
        "beta1": None,
        "decay_rate": -0.8,
        "eps1": 1e-30,
        "eps2": 1e-3,
        "clip_threshold": 1.0,
        "scale_parameter": True,
        "weight_decay": 0.0,
    }
    mutations = (
        "no_update_clipping",  # u not clipped to RMS clip_threshold
        "decay_by_alpha",  # transformers' weight decay: alpha * wd (with the parameter scale), not rho * wd
        "factor_first_two_dims",  # a 4-D tensor factored over its first two dimensions
        "no_parameter_scaling",  # alpha = rho even with scale_parameter
        "relative_step_uncapped",  # rho = 1 / sqrt(t): the 1e-2 cap forgotten
        "beta2_shifted",  # beta2_t = 1 - (t + 1)^decay_rate: the first step no longer takes g^2 whole
    )

    def init_state(self, p):
        state: dict[str, Any] = {}
        if self.mutation == "factor_first_two_dims" and p.dim() == 4:
            batch, rows, cols = math.prod(p.shape[2:]), p.shape[0], p.shape[1]
        elif p.dim() >= 2:
            batch, rows, cols = math.prod(p.shape[:-2]), p.shape[-2], p.shape[-1]
        else:
            batch, rows, cols = 1, 1, p.numel()
        state["exp_avg_sq_row"] = torch.zeros(batch, rows, 1, dtype=F64)
        state["exp_avg_sq_col"] = torch.zeros(batch, 1, cols, dtype=F64)
        if self.groups[0]["beta1"] is not None:
            state["exp_avg"] = torch.zeros_like(p)
        return state

    def update(self, p, g, state, group, group_state):
        mutation = self.mutation
        if p.numel() == 0:
            return p
        t = state["step"]
        shift = 1 if mutation == "beta2_shifted" else 0
        one_minus_beta2 = float(t + shift) ** group["decay_rate"]
        beta2 = 1.0 - one_minus_beta2
        if group["lr"] is not None:
            rho = group["lr"]
        else:
            rho = 1.0 / math.sqrt(t) if mutation == "relative_step_uncapped" else min(1e-2, 1.0 / math.sqrt(t))
        rms_p = torch.sqrt(torch.mean(p * p))
        if group["scale_parameter"] and mutation != "no_parameter_scaling":
            alpha = torch.clamp(rms_p, min=group["eps2"]) * rho  # NaN stays NaN (Python's max would drop it)
        else:
            alpha = rho
        square = g * g + group["eps1"]
        if p.dim() >= 2:
            if mutation == "factor_first_two_dims" and p.dim() == 4:
                moved = square.permute(2, 3, 0, 1)  # the first two dims last
                matrices = moved.reshape(-1, p.shape[0], p.shape[1])
            else:
                matrices = square.reshape(-1, p.shape[-2], p.shape[-1])
            r = state["exp_avg_sq_row"] = beta2 * state["exp_avg_sq_row"] + one_minus_beta2 * matrices.mean(
                dim=2, keepdim=True
            )
            c = state["exp_avg_sq_col"] = beta2 * state["exp_avg_sq_col"] + one_minus_beta2 * matrices.mean(
                dim=1, keepdim=True
            )
            v = r * c / r.mean(dim=1, keepdim=True)
            if mutation == "factor_first_two_dims" and p.dim() == 4:
                v = v.reshape(p.shape[2], p.shape[3], p.shape[0], p.shape[1]).permute(2, 3, 0, 1)
            v = v.reshape(p.shape)
        else:
            v = beta2 * state["exp_avg_sq_col"].reshape(p.shape) + one_minus_beta2 * square
            state["exp_avg_sq_col"] = v.reshape(1, 1, -1)
            state["exp_avg_sq_row"] = v.mean().reshape(1, 1, 1)
        u = g / torch.sqrt(v)
        rms_u = torch.sqrt(torch.mean(u * u))
        if mutation != "no_update_clipping":
            u = u / torch.clamp(rms_u / group["clip_threshold"], min=1.0)
        if group["beta1"] is not None:
            step = state["exp_avg"] = group["beta1"] * state["exp_avg"] + (1.0 - group["beta1"]) * alpha * u
        else:
            step = alpha * u
        decay = alpha if mutation == "decay_by_alpha" else rho
        return p * (1.0 - decay * group["weight_decay"]) - step


REFERENCES[AdafactorReference.name] = AdafactorReference


# ---------------------------------------------------------------------------------------------- SMMF
def smmf_shape_reference(numel: int) -> tuple[int, int]:
    """SMMF's square matricization (arXiv:2412.08894): (numel / c, c) with c the largest divisor of numel
    that is at most sqrt(numel); a prime numel gives one column, 0 elements give (0, 0)."""
    for c in range(math.isqrt(numel), 0, -1):
        if numel % c == 0:
            return numel // c, c
    return 0, 0


def smmf_nnmf_reference(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The seed's ``_nnmf``: row sums and column sums; the shorter side's factor divided by its sum (if not 0)."""
    rows, cols = matrix.sum(dim=1), matrix.sum(dim=0)
    if matrix.shape[0] < matrix.shape[1]:
        scale = rows.sum()
        rows = rows / scale if scale != 0 else rows
    else:
        scale = cols.sum()
        cols = cols / scale if scale != 0 else cols
    return rows, cols


class SMMFReference(Reference):
    r"""SMMF (arXiv:2412.08894, Algorithms 1-4), per tensor at step t, the tensor seen as the (r, c) matrix of
    :func:`smmf_shape_reference`: M = s * outer(r_m, c_m) (s = +1 where the stored sign bit is set, else -1),
    V = outer(r_v, c_v) (the seed's ``_unnmf``); beta_m = beta growth_rate^(t-1), beta_v = 1 - t^decay_rate;
    M = beta_m M + (1 - beta_m) g;  V = beta_v V + (1 - beta_v) g^2;
    p = p (1 - lr wd) - lr M / (sqrt(V) + eps);  then the bits [M > 0], packed 8 rows per byte (bit j of byte
    (i, col): row 8 i + j), and (r_m, c_m) = nnmf(|M|), (r_v, c_v) = nnmf(V) (the seed's ``_nnmf``)."""

    name = "SMMF"
    defaults = {"lr": 1e-3, "beta": 0.9, "eps": 1e-8, "weight_decay": 0.0, "decay_rate": -0.5, "growth_rate": 0.999}
    mutations = (
        "no_sign",  # the first moment restored as |M|, its sign forgotten
        "update_from_compressed",  # the step reads the recompressed moments instead of this step's M and V
        "no_growth",  # beta_m = beta at every step
        "decay_rate_shifted",  # beta_v = 1 - (t + 1)^decay_rate
        "l2_decay",  # weight decay added to the gradient instead of decoupled
    )

    def init_state(self, p):
        r, c = smmf_shape_reference(p.numel())
        return {
            "exp_avg_row": torch.zeros(r, 1, dtype=F64),
            "exp_avg_col": torch.zeros(1, c, dtype=F64),
            "exp_avg_sign": torch.zeros(-(-r // 8), c, dtype=torch.uint8),
            "exp_avg_sq_row": torch.zeros(r, 1, dtype=F64),
            "exp_avg_sq_col": torch.zeros(1, c, dtype=F64),
        }

    def update(self, p, g, state, group, group_state):
        mutation = self.mutation
        t = state["step"]
        r, c = smmf_shape_reference(p.numel())
        lr, wd = group["lr"], group["weight_decay"]
        if mutation == "l2_decay":
            g, wd = g + wd * p, 0.0
        g = g.reshape(r, c)
        row_index = torch.arange(r).view(r, 1)
        bits = (state["exp_avg_sign"].long()[row_index // 8, torch.arange(c)] >> (row_index % 8)) & 1
        magnitude = torch.outer(state["exp_avg_row"].view(r), state["exp_avg_col"].view(c))
        m = magnitude if mutation == "no_sign" else torch.where(bits == 1, magnitude, -magnitude)
        v = torch.outer(state["exp_avg_sq_row"].view(r), state["exp_avg_sq_col"].view(c))
        beta_m = group["beta"] * (1.0 if mutation == "no_growth" else group["growth_rate"] ** (t - 1))
        beta_v = 1.0 - (t + 1 if mutation == "decay_rate_shifted" else t) ** group["decay_rate"]
        m = beta_m * m + (1.0 - beta_m) * g
        v = beta_v * v + (1.0 - beta_v) * g * g
        packed = torch.zeros(-(-r // 8), c, dtype=torch.long)
        for i in range(r):
            packed[i // 8] += (m[i] > 0).long() << (i % 8)
        state["exp_avg_sign"] = packed.to(torch.uint8)
        row_m, col_m = smmf_nnmf_reference(m.abs())
        row_v, col_v = smmf_nnmf_reference(v)
        state["exp_avg_row"], state["exp_avg_col"] = row_m.view(r, 1), col_m.view(1, c)
        state["exp_avg_sq_row"], state["exp_avg_sq_col"] = row_v.view(r, 1), col_v.view(1, c)
        if mutation == "update_from_compressed":
            m = torch.where(m > 0, 1.0, -1.0) * torch.outer(row_m, col_m)
            v = torch.outer(row_v, col_v)
        direction = (m / (v.sqrt() + group["eps"])).reshape(p.shape)
        return p * (1.0 - lr * wd) - lr * direction


REFERENCES[SMMFReference.name] = SMMFReference


# ---------------------------------------------------------------------------------------------- the Adam family
class AdamFamilyReference(StableDecayReference):
    r"""The Adam family (lightning_opt.optim.adam_family), per tensor at step t, in textbook form:

    AdaNorm (2210.06364): e = r e + (1-r) ||g||; s = g e / ||g|| if e > ||g|| > 0 else g  (else s = g).
    EMA momentum: m = b1 m + (1-b1) s; n = m / (1-b1^t), or NAdam's b1 m / (1-b1^(t+1)) + (1-b1) s / (1-b1^t).
    PNM (2103.17182): the momentum of this step's parity (odd: exp_avg, even: neg_exp_avg) is
    m+ = b1^2 m+ + (1-b1^2) s; n = ((1+b0) m+ - b0 m-) / sqrt((1+b0)^2 + b0^2), over (1-b1^t) for AdaPNM.
    Second moment: v = b2 v + (1-b2) g^2, or AdaMomentum's (2106.11514) v = b2 v + (1-b2) m^2 + eps;
    AdaPNM: v_max = max(v_max, v) in place of v.  v_hat = v / (1-b2^t).
    u = n / (sqrt(v_hat) + eps) | 1.27 atan2(n, sqrt(v_hat)) | n / softplus_beta(sqrt(v_hat) + eps)
    (Ranger21's torch.nn.functional.softplus, threshold 20); SGD-type PNM: u = n.
    diffGrad (1909.11015): u = u sigmoid(|g_prev - g|), g_prev = 0 at the first step.
    Cautious mask, cautious weight decay and the update as in AdamAtan2Reference.
    SWD and the trust ratio: StableDecayReference.
    """

    momentum_kind: ClassVar[str] = "ema"
    second_moment: ClassVar[str] = "grad"
    amsgrad: ClassVar[bool] = False
    friction: ClassVar[bool] = False
    norm_correction: ClassVar[bool] = False
    pnm_bias_correction: ClassVar[bool] = True
    mutations = (
        "no_friction",  # diffGrad's friction forgotten
        "second_moment_of_gradient",  # AdaMomentum's v from g^2
        "no_eps_in_second_moment",  # AdaMomentum's v without the eps added at each step
        "no_norm_correction",  # AdaNorm's rescale forgotten
        "norm_corrected_second_moment",  # AdaNorm's v from the rescaled gradient
        "pnm_no_swap",  # one momentum updated at every step
        "no_amsgrad",  # AdaPNM divides by v, not its running maximum
        "softplus_of_root_only",  # softplus(sqrt(v_hat)) without eps inside (matters only for a large eps)
        "swd_previous_second_moment",  # SWD's mean from the v_hat of the previous step
        "swd_per_group_mean",  # SWD's mean over the tensor's own group only
        "trust_ratio_unclamped",  # no ceiling on ||p||
        "trust_ratio_decay_outside",  # the decay applied to p outside the ratio (decoupled), not inside u
    )

    def uses_second_moment(self) -> bool:
        return self.second_moment != "none"
    def init_state(self, p):
        state = {"exp_avg": torch.zeros_like(p)}
        if self.momentum_kind == "pnm":
            state["neg_exp_avg"] = torch.zeros_like(p)
        if self.second_moment != "none":
            state["exp_avg_sq"] = torch.zeros_like(p)
            if self.amsgrad:
                state["max_exp_avg_sq"] = torch.zeros_like(p)
        if self.friction:
            state["previous_grad"] = torch.zeros_like(p)
        if self.norm_correction:
            state["exp_grad_norm"] = torch.zeros(1, 1, dtype=F64)  # one number, in the (units, width) view
        return state

    def update(self, p, g, state, group, group_state):
        mutation = self.mutation
        t = state["step"]
        beta1, beta2 = group["betas"] if "betas" in group else (group["momentum"], 0.0)
        s = g
        if self.norm_correction and mutation != "no_norm_correction":
            norm = torch.sqrt(torch.sum(g * g))
            r = group["norm_beta"]
            e = state["exp_grad_norm"] = r * state["exp_grad_norm"] + (1.0 - r) * norm
            if norm > 0 and e.item() > norm:
                s = g * e.item() / norm
        if self.momentum_kind == "pnm":
            beta0 = group["beta0"]
            odd = t % 2 == 1 or mutation == "pnm_no_swap"
            pos, neg = ("exp_avg", "neg_exp_avg") if odd else ("neg_exp_avg", "exp_avg")
            m = state[pos] = beta1**2 * state[pos] + (1.0 - beta1**2) * s
            n = ((1.0 + beta0) * m - beta0 * state[neg]) / math.sqrt((1.0 + beta0) ** 2 + beta0**2)
            if self.pnm_bias_correction:
                n = n / (1.0 - beta1**t)
        else:
            # the EMA in lerp form, as the package (and torch's Adam) computes it, so that infinities behave alike
            m = state["exp_avg"] = state["exp_avg"] + (1.0 - beta1) * (s - state["exp_avg"])
            if group["nesterov"] and beta1 > 0:
                n = beta1 * m / (1.0 - beta1 ** (t + 1)) + (1.0 - beta1) * s / (1.0 - beta1**t)
            else:
                n = m / (1.0 - beta1**t)
        if self.second_moment == "none":
            u = n
        else:
            if self.second_moment == "momentum" and mutation != "second_moment_of_gradient":
                added = 0.0 if mutation == "no_eps_in_second_moment" else group["eps"]
                v = state["exp_avg_sq"] = beta2 * state["exp_avg_sq"] + (1.0 - beta2) * m * m + added
            else:
                x = s if mutation == "norm_corrected_second_moment" else g
                v = state["exp_avg_sq"] = beta2 * state["exp_avg_sq"] + (1.0 - beta2) * x * x
            if self.amsgrad:
                state["max_exp_avg_sq"] = torch.maximum(state["max_exp_avg_sq"], v)
                if mutation != "no_amsgrad":
                    v = state["max_exp_avg_sq"]
            root = torch.sqrt(v / (1.0 - beta2**t))
            self.record_second_moment(group, v / (1.0 - beta2**t))
            eps = group["eps"]
            if group["denominator"] == "atan2":
                u = 1.27 * torch.atan2(n, root)
            elif group["denominator"] == "softplus":
                inner = root if mutation == "softplus_of_root_only" else root + eps
                u = n / torch.nn.functional.softplus(inner, beta=group["softplus_beta"])
            else:
                u = n / (root + eps)
        if self.friction:
            if mutation != "no_friction":
                u = u * torch.sigmoid((state["previous_grad"] - g).abs())
            state["previous_grad"] = g.clone()
        if group["cautious"]:
            agree = (u * g > 0).to(F64)
            u = u * agree * (u.numel() / (agree.sum() + 1.0))
        return self.decayed_step(p, u, group)


_ADAPTIVE_DEFAULTS = {
    "lr": 1e-3,
    "betas": (0.9, 0.999),
    "eps": 1e-8,
    "weight_decay": 0.0,
    "denominator": "eps",
    "softplus_beta": 50.0,
    "nesterov": False,
    "cautious": False,
    "cautious_weight_decay": False,
    "trust_ratio": False,
    "stable_weight_decay": False,
}


class DiffGradReference(AdamFamilyReference):
    name = "DiffGrad"
    defaults = dict(_ADAPTIVE_DEFAULTS)
    friction = True


class SAdamReference(AdamFamilyReference):
    name = "SAdam"
    defaults = {**_ADAPTIVE_DEFAULTS, "denominator": "softplus"}


class AdaMomentumReference(AdamFamilyReference):
    name = "AdaMomentum"
    defaults = dict(_ADAPTIVE_DEFAULTS)
    second_moment = "momentum"


class AdaNormReference(AdamFamilyReference):
    name = "AdaNorm"
    defaults = {**_ADAPTIVE_DEFAULTS, "betas": (0.9, 0.99), "norm_beta": 0.95}
    norm_correction = True


class PNMReference(AdamFamilyReference):
    name = "PNM"
    defaults = {
        "lr": 0.1,
        "momentum": 0.9,
        "beta0": 1.0,
        "weight_decay": 0.0,
        "cautious": False,
        "cautious_weight_decay": False,
        "trust_ratio": False,
    }
    momentum_kind = "pnm"
    second_moment = "none"
    pnm_bias_correction = False


class LambReference(AdamFamilyReference):
    name = "Lamb"
    defaults = {**_ADAPTIVE_DEFAULTS, "eps": 1e-6, "weight_decay": 0.01, "trust_ratio": True}


class AdaPNMReference(AdamFamilyReference):
    name = "AdaPNM"
    defaults = {k: v for k, v in {**_ADAPTIVE_DEFAULTS, "beta0": 1.0}.items() if k != "nesterov"}
    momentum_kind = "pnm"
    amsgrad = True


REFERENCES.update(
    {
        cls.name: cls
        for cls in (
            DiffGradReference,
            SAdamReference,
            AdaMomentumReference,
            AdaNormReference,
            PNMReference,
            AdaPNMReference,
            LambReference,
        )
    }
)


# ---------------------------------------------------------------------------------------------- SM3
SM3_DIMS = 4


def sm3_view_reference(shape: torch.Size) -> tuple[int, ...]:
    """SM3's layout: the shape padded with leading 1s to four dimensions (more: the leading ones merged)."""
    dims = tuple(shape)
    while len(dims) > SM3_DIMS:
        dims = (dims[0] * dims[1], *dims[2:])
    return (1,) * (SM3_DIMS - len(dims)) + dims


class SM3Reference(Reference):
    r"""SM3 (1901.11150), per tensor x = g in the four-dimensional layout, one accumulator a_i per dimension i
    (shaped (d0,1,1,1), (1,d1,1,1)...):  nu = min_i a_i (entry by entry);  nu = nu + x^2 if beta == 0, else
    beta nu + (1-beta) x^2;  a_i = max of nu over every slice of dimension i (beta > 0: and of a_i itself);
    u = x / sqrt(nu + eps);  momentum (if the constructor's momentum > 0): m = mu m + (1-mu) u, u = m;
    p = p (1 - lr wd) - lr u.
    """

    name = "SM3"
    defaults = {"lr": 0.1, "momentum": 0.0, "beta": 0.0, "eps": 1e-30, "weight_decay": 0.0}
    mutations = ("max_over_covers", "accumulators_not_kept")

    def __init__(self, param_groups: Sequence[Any], **kwargs: Any) -> None:
        self.keeps_momentum = kwargs.get("momentum", self.defaults["momentum"]) > 0.0
        super().__init__(param_groups, **kwargs)

    def init_state(self, p):
        view = sm3_view_reference(p.shape)
        state = {
            f"accumulator_{i}": torch.zeros([size if j == i else 1 for j, size in enumerate(view)], dtype=F64)
            for i in range(SM3_DIMS)
        }
        if self.keeps_momentum:
            state["momentum_buffer"] = torch.zeros_like(p)
        return state

    def update(self, p, g, state, group, group_state):
        if p.numel() == 0:
            return p
        beta = group["beta"]
        x = g.reshape(sm3_view_reference(p.shape))
        accumulators = [state[f"accumulator_{i}"] for i in range(SM3_DIMS)]
        # a dimension of size 1 has one slice, the whole tensor: its accumulator (the max of all) never wins the
        # min; left out of it, as the package does, so that a NaN spreads alike (0-d: the last accumulator)
        covering = [a for i, a in enumerate(accumulators) if x.shape[i] > 1] or accumulators[-1:]
        nu = covering[0]
        for a in covering[1:]:
            nu = torch.maximum(nu, a) if self.mutation == "max_over_covers" else torch.minimum(nu, a)
        nu = (nu if beta == 0.0 else beta * nu) + (1.0 - beta) * x * x
        for i, a in enumerate(accumulators):
            slice_max = nu.amax(dim=[j for j in range(SM3_DIMS) if j != i], keepdim=True)
            if self.mutation != "accumulators_not_kept":
                state[f"accumulator_{i}"] = torch.maximum(a, slice_max) if beta > 0.0 else slice_max
        u = (x / torch.sqrt(nu + group["eps"])).reshape(p.shape)
        if group["momentum"] > 0.0:
            mu = group["momentum"]
            u = state["momentum_buffer"] = mu * state["momentum_buffer"] + (1.0 - mu) * u
        return p * (1.0 - group["lr"] * group["weight_decay"]) - group["lr"] * u


REFERENCES[SM3Reference.name] = SM3Reference


# ---------------------------------------------------------------------------------------------- Amos
def amos_scale_reference(shape: torch.Size) -> float:
    """eta: 0.5 for 0-d and 1-D tensors, sqrt(2 / fan_in) for 2-D, sqrt(1 / shape[1]) for more dimensions."""
    if len(shape) <= 1:
        return 0.5
    return math.sqrt((2.0 if len(shape) == 2 else 1.0) / max(shape[1], 1))  # (3, 0): no elements to move


class AmosReference(Reference):
    r"""Amos (2210.11693), per tensor at step t, eta = amos_scale_reference(shape), init_lr = lr eta:
    g2 = mean(g^2);  v = beta v + (1-beta) g2;  r = (1 - beta^t) / (v + eps);
    c = 1 / sqrt(1 + c_coef sqrt(lr) b);  d = 1 / (1 + d_coef sqrt(init_lr) b);  gamma = c lr^2 r g2;
    u = d (init_lr sqrt(r) g + (gamma / 2 + extra_l2) p);  b = b + gamma (1 + b);
    momentum (if the constructor's momentum > 0): m = mu m + (1-mu) u, u = m;  p = p (1 - lr wd) - u.
    """

    name = "Amos"
    defaults = {
        "lr": 1e-3,
        "beta": 0.999,
        "momentum": 0.0,
        "extra_l2": 0.0,
        "c_coef": 0.25,
        "d_coef": 0.25,
        "eps": 1e-18,
        "weight_decay": 0.0,
    }
    mutations = ("no_bias_correction", "decay_not_accumulated", "extra_l2_halved_negative")

    def __init__(self, param_groups: Sequence[Any], **kwargs: Any) -> None:
        self.keeps_momentum = kwargs.get("momentum", self.defaults["momentum"]) > 0.0
        super().__init__(param_groups, **kwargs)

    def init_state(self, p):
        state = {
            "exp_avg_sq": torch.zeros(1, 1, dtype=F64),
            "decay": torch.zeros(1, 1, dtype=F64),
            "target_scale": torch.full((1, 1), amos_scale_reference(p.shape), dtype=F64),
        }
        if self.keeps_momentum:
            state["exp_avg"] = torch.zeros_like(p)
        return state

    def update(self, p, g, state, group, group_state):
        if p.numel() == 0:
            return p
        lr, beta, t = group["lr"], group["beta"], state["step"]
        eta = amos_scale_reference(p.shape)
        g2 = torch.mean(g * g)
        v = state["exp_avg_sq"] = beta * state["exp_avg_sq"] + (1.0 - beta) * g2
        bias_correction = 1.0 if self.mutation == "no_bias_correction" else 1.0 - beta**t
        r = bias_correction / (v + group["eps"])
        b = state["decay"]
        c = 1.0 / torch.sqrt(1.0 + group["c_coef"] * math.sqrt(lr) * b)
        d = 1.0 / (1.0 + group["d_coef"] * math.sqrt(lr * eta) * b)
        gamma = c * lr**2 * r * g2
        l2 = (gamma - group["extra_l2"]) / 2.0 if self.mutation == "extra_l2_halved_negative" else (
            gamma / 2.0 + group["extra_l2"]
        )
        u = (d * (lr * eta * torch.sqrt(r) * g + l2 * p)).reshape(p.shape)  # (1, 1) numbers times p
        if self.mutation != "decay_not_accumulated":
            state["decay"] = b + gamma * (1.0 + b)
        if group["momentum"] > 0.0:
            mu = group["momentum"]
            u = state["exp_avg"] = mu * state["exp_avg"] + (1.0 - mu) * u
        return p * (1.0 - lr * group["weight_decay"]) - u


REFERENCES[AmosReference.name] = AmosReference


# ---------------------------------------------------------------------------------------------- Muon
def newton_schulz_reference(u: torch.Tensor, coefficients, steps: int, eps: float, mutation=None) -> torch.Tensor:
    """Keller Jordan's quintic iteration X <- a X + b (X X^T) X + c (X X^T)^2 X from X0 = U / max(||U||_F, eps),
    derived through the SVD: every term is P diag(.) Q^T for X0 = P diag(s) Q^T, so the iteration maps each
    singular value by phi(s) = a s + b s^3 + c s^5 and keeps the singular vectors."""
    if mutation == "no_normalisation":
        x = u
    else:
        x = u / max(float(torch.linalg.matrix_norm(u)), eps)
    if not bool(x.isfinite().all()):  # (X X^T)^2 mixes every element into every other: the whole matrix is NaN
        return torch.full_like(x, float("nan"))
    p, s, qh = torch.linalg.svd(x, full_matrices=False)
    a, b, c = coefficients
    for _ in range(steps):
        s = a * s + b * s**3 + c * s**5
    return p @ torch.diag(s) @ qh


class MuonReference(Reference):
    r"""Muon (Keller Jordan 2024; arXiv:2502.16982) for matrices, AdamW for the rest, per tensor at step t.

    Route: a tensor of two or more dimensions takes Muon unless its group says ``use_muon=False``.
    Muon, with U the tensor as a (shape[0], rest) matrix:  m = mu m + (1-mu) g;  u = (1-mu) g + mu m if nesterov
    else m;  O = newton_schulz_reference(u);  s = 0.2 sqrt(max(rows, cols)) ("match_rms_adamw") or
    sqrt(max(1, rows / cols)) ("original");  p = p (1 - lr wd) - lr s O.
    AdamW:  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  p = p (1 - lr wd) - lr (m / (1-b1^t)) / (sqrt(v / (1-b2^t))
    + eps).  The Newton-Schulz dtype is ignored: everything is float64.
    """

    name = "Muon"
    defaults = {
        "lr": 1e-3,
        "weight_decay": 0.1,
        "momentum": 0.95,
        "nesterov": True,
        "ns_coefficients": (3.4445, -4.7750, 2.0315),
        "eps": 1e-7,
        "ns_steps": 5,
        "adjust_lr_fn": "match_rms_adamw",
        "ns_dtype": "bfloat16",
        "adamw_betas": (0.9, 0.95),
        "adamw_eps": 1e-8,
    }
    mutations = (
        "no_nesterov",  # the momentum itself orthogonalised
        "keller_scale",  # sqrt(max(1, rows / cols)) whatever adjust_lr_fn says
        "min_dim_scale",  # 0.2 sqrt(min(rows, cols))
        "conv_last_two_dims",  # a 4-D weight orthogonalised as a batch of (kh, kw) matrices
        "no_normalisation",  # Newton-Schulz on the momentum not divided by its norm
        "adamw_no_bias_correction",  # m / (sqrt(v) + eps) in the AdamW part
        "decay_after_update",  # p = (p - lr s O)(1 - lr wd)
    )

    def __init__(self, param_groups: Sequence[Any], **kwargs: Any) -> None:
        groups = list(param_groups)
        if groups and isinstance(groups[0], dict):
            self.use_muon = [group.get("use_muon") for group in groups]
            groups = [{k: v for k, v in group.items() if k != "use_muon"} for group in groups]
        else:
            self.use_muon = [None]
        super().__init__(groups, **kwargs)

    def takes_muon(self, p: torch.Tensor, group: dict[str, Any]) -> bool:
        gi = next(i for i, g in enumerate(self.groups) if g is group)
        return p.dim() >= 2 and self.use_muon[gi] is not False

    def init_state(self, p):
        group = next(g for g in self.groups if any(q is p for q in g["params"]))
        second = torch.zeros(0, dtype=F64) if self.takes_muon(p, group) else torch.zeros_like(p)
        return {"exp_avg": torch.zeros_like(p), "exp_avg_sq": second}

    def update(self, p, g, state, group, group_state):
        if p.numel() == 0:
            return p
        lr, wd = group["lr"], group["weight_decay"]
        if self.takes_muon(p, group):
            mu = group["momentum"]
            m = state["exp_avg"] = mu * state["exp_avg"] + (1.0 - mu) * g
            u = (1.0 - mu) * g + mu * m if group["nesterov"] and self.mutation != "no_nesterov" else m
            if self.mutation == "conv_last_two_dims" and p.dim() == 4:
                mats = u.reshape(-1, *u.shape[-2:])
                o = torch.stack([
                    newton_schulz_reference(x, group["ns_coefficients"], group["ns_steps"], group["eps"]) for x in mats
                ]).reshape(p.shape)
                rows, cols = p.shape[-2], p.shape[-1]
            else:
                matrix = u.reshape(p.shape[0], -1)
                rows, cols = matrix.shape
                o = newton_schulz_reference(
                    matrix, group["ns_coefficients"], group["ns_steps"], group["eps"], self.mutation
                ).reshape(p.shape)
            if self.mutation == "min_dim_scale":
                scale = 0.2 * math.sqrt(min(rows, cols))
            elif group["adjust_lr_fn"] == "original" or self.mutation == "keller_scale":
                scale = math.sqrt(max(1.0, rows / cols))
            else:
                scale = 0.2 * math.sqrt(max(rows, cols))
            step = lr * scale * o
        else:
            beta1, beta2 = group["adamw_betas"]
            t = state["step"]
            m = state["exp_avg"] = beta1 * state["exp_avg"] + (1.0 - beta1) * g
            v = state["exp_avg_sq"] = beta2 * state["exp_avg_sq"] + (1.0 - beta2) * g * g
            bc1, bc2 = (1.0, 1.0) if self.mutation == "adamw_no_bias_correction" else (1.0 - beta1**t, 1.0 - beta2**t)
            step = lr * (m / bc1) / (torch.sqrt(v / bc2) + group["adamw_eps"])
        if self.mutation == "decay_after_update":
            return (p - step) * (1.0 - lr * wd)
        return p * (1.0 - lr * wd) - step


REFERENCES[MuonReference.name] = MuonReference


# ---------------------------------------------------------------------------------------------- FractionalAdam
def gl_coefficient_reference(alpha: float, j: int) -> float:
    """(-1)^j binom(alpha, j), the generalised binomial written as a product."""
    value = 1.0
    for i in range(j):
        value *= (alpha - i) / (i + 1)
    return (-1) ** j * value


class FractionalAdamReference(AdamFamilyReference):
    """The Adam family's update with g replaced by the Grunwald-Letnikov sum f = sum_{j=0..K} c_j g_{t-j},
    c_j = (-1)^j binom(alpha, j), over the gradients there are (none before step 1). The past gradients are kept
    as the package keeps them: K slots in the (units, width) view, g_t written to slot (t - 1) mod K."""

    name = "FractionalAdam"
    defaults = {
        "lr": 1e-3,
        "betas": (0.9, 0.999),
        "eps": 1e-8,
        "weight_decay": 0.0,
        "alpha": 0.2,
        "history": 4,
        "denominator": "eps",
        "softplus_beta": 50.0,
        "nesterov": False,
        "cautious": False,
        "cautious_weight_decay": False,
    }
    mutations = (
        "no_history",  # plain Adam on g
        "history_reversed",  # the oldest gradient weighted as the newest
        "alpha_sign",  # c_j = binom(alpha, j) without (-1)^j
    )

    def init_state(self, p):
        group = next(g for g in self.groups if any(q is p for q in g["params"]))
        return {**super().init_state(p), "grad_history": torch.zeros(group["history"], *unit_rows(p).shape, dtype=F64)}

    def update(self, p, g, state, group, group_state):
        t, history, alpha = state["step"], group["history"], group["alpha"]
        slots = state["grad_history"]
        f = g.clone()
        if self.mutation != "no_history":
            for j in range(1, min(history, t - 1) + 1):  # g_{t-j} sits in slot (t - j - 1) mod K
                lag = history + 1 - j if self.mutation == "history_reversed" else j
                c = gl_coefficient_reference(alpha, lag)
                if self.mutation == "alpha_sign":
                    c = abs(c)
                f = f + c * slots[(t - j - 1) % history].reshape(g.shape)
        slots[(t - 1) % history] = unit_rows(g)
        return super().update(p, f, state, group, group_state)


REFERENCES[FractionalAdamReference.name] = FractionalAdamReference


# ---------------------------------------------------------------------------------------------- adaptive memory (AM)
class AdaptiveMemorySGDReference(Reference):
    """AM-SGD (2510.04988), per tensor: d_1 = g_1; then, with W = 1 (AM-AdamW: Adam's 1 / (sqrt(v_hat) + eps)),
    beta = clip(((1 + lam) <g, W d> - <d - g, W (g + lam d)>) / <d - g, W (d - g)>, 0, beta_max) (0 where d = g),
    d = ((beta + lam) d + (1 - beta) g) / (1 + lam). u = d (AM-AdamW: d / (sqrt(v_hat) + eps) or the chosen
    denominator); cautious mask, cautious or decoupled weight decay and the step as in AdamAtan2Reference."""

    name = "AdaptiveMemorySGD"
    defaults = {
        "lr": 0.1,
        "beta_max": 0.9,
        "lam": 0.1,
        "weight_decay": 0.0,
        "cautious": False,
        "cautious_weight_decay": False,
    }
    mutations = (
        "fixed_beta",  # beta = 0.9 at every step
        "no_first_gradient",  # d starts at zero
        "euclidean_metric",  # AM-AdamW's sums without Adam's weights
        "no_loss_gap",  # the memory's plane through the current loss: no (1 + lam) <g, d> term
        "no_beta_max",  # beta clipped to [0, 1]
    )
    adaptive: ClassVar[bool] = False

    def init_state(self, p):
        state = {"exp_avg": torch.zeros_like(p)}
        if self.adaptive:
            state["exp_avg_sq"] = torch.zeros_like(p)
        return state

    def update(self, p, g, state, group, group_state):
        t, lam, d = state["step"], group["lam"], state["exp_avg"]
        weights = torch.ones_like(g)
        if self.adaptive:
            beta2 = group["beta2"]
            v = state["exp_avg_sq"] = beta2 * state["exp_avg_sq"] + (1.0 - beta2) * g * g
            root = torch.sqrt(v / (1.0 - beta2**t))
            if self.mutation != "euclidean_metric":
                weights = 1.0 / (root + group["eps"])
        if t == 1 and self.mutation != "no_first_gradient":
            d = g.clone()
        else:
            diff = d - g
            square = float(torch.sum(weights * diff * diff))
            gap = 0.0 if self.mutation == "no_loss_gap" else (1.0 + lam) * float(torch.sum(weights * g * d))
            numerator = gap - float(torch.sum(weights * diff * (g + lam * d)))
            top = 1.0 if self.mutation == "no_beta_max" else group["beta_max"]
            beta = min(max(numerator / square, 0.0), top) if square > 0 else 0.0
            if self.mutation == "fixed_beta":
                beta = 0.9
            d = ((beta + lam) * d + (1.0 - beta) * g) / (1.0 + lam)
        state["exp_avg"] = d
        if self.adaptive:
            if group["denominator"] == "atan2":
                u = 1.27 * torch.atan2(d, root)
            elif group["denominator"] == "softplus":
                u = d / torch.nn.functional.softplus(root + group["eps"], beta=group["softplus_beta"])
            else:
                u = d / (root + group["eps"])
        else:
            u = d
        if group["cautious"]:
            agree = (u * g > 0).to(F64)
            u = u * agree * (u.numel() / (agree.sum() + 1.0))
        lr, wd = group["lr"], group["weight_decay"]
        mask = (u * p > 0).to(F64) if group["cautious_weight_decay"] else 1.0
        return p - lr * wd * mask * p - lr * u


class AdaptiveMemoryAdamWReference(AdaptiveMemorySGDReference):
    name = "AdaptiveMemoryAdamW"
    defaults = {
        "lr": 1e-3,
        "beta_max": 0.9,
        "beta2": 0.999,
        "eps": 1e-8,
        "lam": 0.1,
        "weight_decay": 1e-2,
        "denominator": "eps",
        "softplus_beta": 50.0,
        "cautious": False,
        "cautious_weight_decay": False,
    }
    adaptive = True


REFERENCES.update({cls.name: cls for cls in (AdaptiveMemorySGDReference, AdaptiveMemoryAdamWReference)})
