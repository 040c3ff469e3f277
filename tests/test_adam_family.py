"""The Adam family (lightning_opt.optim.adam_family): its presets against their public implementations
(pytorch_optimizer's DiffGrad, AdaNorm, PNM, AdaPNM; torch.optim's Adam and NAdam; Ranger21's softplus), the
pieces composed across presets (every denominator with the cautious options), the state each keeps, and the
documented deviations. The float64 references and the registry-wide checks live in tests/references.py and
tests/test_optimizers_common.py."""

from __future__ import annotations

import math
from typing import Any

import pytest
import pytorch_optimizer
import torch

from lightning_opt import PNM, AdaMomentum, AdaNorm, AdaPNM, DiffGrad, SAdam, get_spec
from lightning_opt.engine.stacks import STACK_NUMEL
from lightning_opt.optim.adam_family import AdamFamily
from lightning_opt.transforms.acceleration import gradient_norm_correction_
from lightning_opt.transforms.denominators import softplus_
from lightning_opt.transforms.momentum import positive_negative_momentum_
from lightning_opt.transforms.reductions import PER_TENSOR
from tests.references import REFERENCES

F64 = torch.float64
SHAPES = [(), (7,), (5, 3), (2, 3, 4), (1, 1)]
PRESETS = [DiffGrad, SAdam, AdaMomentum, AdaNorm, PNM, AdaPNM]
ADAPTIVE = [DiffGrad, SAdam, AdaMomentum, AdaNorm, AdaPNM]


class PlainAdam(AdamFamily):
    """The family with no piece switched on: Adam with decoupled decay (the test's own preset)."""

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        denominator: str = "eps",
        softplus_beta: float = 50.0,
        nesterov: bool = False,
        cautious: bool = False,
        cautious_weight_decay: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__(
            params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, denominator=denominator,
            softplus_beta=softplus_beta, nesterov=nesterov, cautious=cautious,
            cautious_weight_decay=cautious_weight_decay, compile=compile,
        )


def run_pair(ours, theirs, steps: int = 25, seed: int = 0, grad_scale: float = 1.0) -> float:
    """Step two optimizers over the same float64 parameters in SHAPES and the same gradients; return the largest
    absolute difference of the parameters over all steps."""
    generator = torch.Generator().manual_seed(seed)
    values = [torch.randn(shape, generator=generator, dtype=F64) for shape in SHAPES]
    a = [torch.nn.Parameter(v.clone()) for v in values]
    b = [torch.nn.Parameter(v.clone()) for v in values]
    first, second = ours(a), theirs(b)
    worst = 0.0
    for _ in range(steps):
        for x, y in zip(a, b):
            grad = grad_scale * torch.randn(x.shape, generator=generator, dtype=F64)
            x.grad, y.grad = grad.clone(), grad.clone()
        first.step()
        second.step()
        worst = max(worst, max(float((x - y).detach().abs().max()) for x, y in zip(a, b) if x.numel()))
    return worst


# ============================================================================================ public oracles
# pytorch_optimizer divides by (sqrt(v + 1e-15) + eps) / sqrt(1 - beta2**t), we by sqrt(v / (1 - beta2**t)) + eps
# (torch.optim.Adam's placement): with eps = 1e-30 both reduce to m_hat / sqrt(v_hat) up to its 1e-15, which
# moves a coordinate by about lr * 1e-15 / v: hence TIGHT; with the default eps, the difference is of the order of
# lr * eps / sqrt(v_hat) per step: LOOSE.
TIGHT, LOOSE = 1e-9, 1e-6
ORACLES = [
    pytest.param(DiffGrad, {}, pytorch_optimizer.DiffGrad, {}, id="DiffGrad"),
    pytest.param(
        DiffGrad, {"lr": 1e-2, "betas": (0.8, 0.99), "weight_decay": 0.1}, pytorch_optimizer.DiffGrad,
        {"lr": 1e-2, "betas": (0.8, 0.99), "weight_decay": 0.1}, id="DiffGrad-decay",
    ),
    pytest.param(AdaNorm, {}, pytorch_optimizer.AdaNorm, {}, id="AdaNorm"),
    pytest.param(
        AdaNorm, {"norm_beta": 0.5, "lr": 1e-2, "weight_decay": 0.05}, pytorch_optimizer.AdaNorm,
        {"r": 0.5, "lr": 1e-2, "weight_decay": 0.05}, id="AdaNorm-r",
    ),
    pytest.param(AdaPNM, {}, pytorch_optimizer.AdaPNM, {}, id="AdaPNM"),
    pytest.param(
        AdaPNM, {"betas": (0.8, 0.99), "beta0": 0.5, "lr": 1e-2}, pytorch_optimizer.AdaPNM,
        {"betas": (0.8, 0.99, 0.5), "lr": 1e-2}, id="AdaPNM-betas",
    ),
]


@pytest.mark.parametrize("foreach", [False, True], ids=["per-param", "foreach"])
@pytest.mark.parametrize(("ours", "our_kwargs", "theirs", "their_kwargs"), ORACLES)
def test_matches_pytorch_optimizer(ours, our_kwargs, theirs, their_kwargs, foreach):
    tight = run_pair(
        lambda p: ours(p, **our_kwargs, eps=1e-30), lambda p: theirs(p, **their_kwargs, eps=1e-30, foreach=foreach)
    )
    assert tight < TIGHT
    loose = run_pair(lambda p: ours(p, **our_kwargs), lambda p: theirs(p, **their_kwargs, foreach=foreach))
    assert loose < LOOSE


@pytest.mark.parametrize("foreach", [False, True], ids=["per-param", "foreach"])
@pytest.mark.parametrize(
    ("our_kwargs", "their_kwargs"),
    [({}, {}), ({"lr": 3e-2, "momentum": 0.5, "beta0": 0.3, "weight_decay": 0.1}, {"betas": (0.5, 0.3)})],
    ids=["default-betas", "other-betas"],
)
def test_pnm_matches_pytorch_optimizer_exactly(our_kwargs, their_kwargs, foreach):
    """PNM has no eps: the same numbers to rounding. Our default lr is 0.1 (theirs 1e-3): given explicitly."""
    lr = our_kwargs.get("lr", 0.1)
    decay = our_kwargs.get("weight_decay", 0.0)
    worst = run_pair(
        lambda p: PNM(p, **{**our_kwargs, "lr": lr}),
        lambda p: pytorch_optimizer.PNM(p, lr=lr, weight_decay=decay, foreach=foreach, **their_kwargs),
    )
    assert worst < 1e-13


def test_plain_family_is_torch_adamw():
    worst = run_pair(
        lambda p: PlainAdam(p, lr=1e-2, weight_decay=0.1),
        lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1, eps=1e-8),
    )
    assert worst < 1e-13


def test_nesterov_is_torch_nadam_without_its_momentum_schedule():
    """torch.optim.NAdam's mu_t = beta1 (1 - 0.5 * 0.96**(t * momentum_decay)) is beta1 itself for a huge
    momentum_decay: then its step is our nesterov look-ahead. (NAdam keeps its product of mu_t in the default
    dtype: float64 here, or it rounds at 1e-8.)"""
    default = torch.get_default_dtype()
    torch.set_default_dtype(F64)
    try:
        worst = run_pair(
            lambda p: PlainAdam(p, lr=1e-2, weight_decay=0.1, nesterov=True),
            lambda p: torch.optim.NAdam(p, lr=1e-2, weight_decay=0.1, momentum_decay=1e9, decoupled_weight_decay=True),
        )
    finally:
        torch.set_default_dtype(default)
    assert worst < 1e-13


def test_nesterov_option_changes_each_adam_preset():
    for cls in (DiffGrad, SAdam, AdaMomentum, AdaNorm):
        assert run_pair(lambda p, cls=cls: cls(p), lambda p, cls=cls: cls(p, nesterov=True), steps=3) > 1e-6


def test_softplus_is_ranger21s():
    """Ranger21 (use_softplus) applies torch.nn.functional.softplus(sqrt(v_hat) + eps, beta=50) (threshold 20);
    ours is exact everywhere: the same to 1e-10 relative (the threshold's own error, log1p(exp(-20)) / 50)."""
    x = torch.cat([torch.zeros(1), torch.logspace(-12, 3, 400, dtype=F64)])
    for beta in (50.0, 5.0, 0.5):
        expected = torch.nn.functional.softplus(x, beta=beta)
        torch.testing.assert_close(softplus_(x.clone(), beta), expected, rtol=1e-10, atol=0.0)
        # float32, as the optimizer runs it: within two float32 roundings of the float64 value everywhere
        torch.testing.assert_close(softplus_(x.float(), beta).double(), expected, rtol=2.5e-7, atol=0.0)
    assert softplus_(torch.tensor([0.0], dtype=F64), 50.0).item() == pytest.approx(math.log(2) / 50, rel=1e-15)


def test_sadam_is_adam_where_the_root_is_large_and_bounded_where_it_is_zero():
    """softplus_50(x) = x for x >> 1/50: SAdam over large gradients takes Adam's steps; a coordinate whose second
    moment is zero (a gradient of 1e-30) moves by at most lr * |m_hat| / (log(2) / 50), not Adam's lr."""
    assert run_pair(lambda p: SAdam(p), lambda p: PlainAdam(p), grad_scale=100.0) < 1e-12
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([1e-30, 1.0])
    SAdam([p], lr=1.0).step()
    assert abs(p[0].item()) < 1e-27 and p[1].item() == pytest.approx(-1.0, rel=1e-6)


# ============================================================================================ pieces across presets
@pytest.mark.parametrize("denominator", ["eps", "atan2", "softplus"])
@pytest.mark.parametrize("cls", ADAPTIVE, ids=lambda c: c.__name__)
def test_every_denominator_with_cautious_options_matches_the_reference(cls, denominator):
    kwargs = {"denominator": denominator, "cautious": True, "cautious_weight_decay": True, "weight_decay": 0.1}
    kwargs["lr"] = 1e-2
    generator = torch.Generator().manual_seed(1)
    values = [torch.randn(shape, generator=generator, dtype=F64) for shape in SHAPES]
    params = [torch.nn.Parameter(v.clone()) for v in values]
    optimizer = cls(params, **kwargs)
    reference = REFERENCES[cls.__name__](values, **kwargs)
    for _ in range(6):
        grads = [torch.randn(v.shape, generator=generator, dtype=F64) for v in values]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        optimizer.step()
        reference.step([grads])
        for p, expected in zip(params, reference.params[0]):
            torch.testing.assert_close(p.detach(), expected, rtol=1e-10, atol=1e-12)


def test_diffgrad_atan2_cautious_from_the_issue():
    model = torch.nn.Linear(4, 2)
    optimizer = DiffGrad(model.parameters(), denominator="atan2", cautious=True)
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.randn(8, 4)).square().mean().backward()
    optimizer.step()
    # atan2 bounds a coordinate's step by lr * 1.27 * pi / 2 (times the cautious rescale, at most numel / 1 here)
    for p, q in zip(model.parameters(), before):
        assert 0 < float((p - q).detach().abs().max()) <= 1e-3 * 1.27 * math.pi / 2 * p.numel()


def test_atan2_denominator_compiled_matches_eager():
    generator = torch.Generator().manual_seed(2)
    values = [torch.randn(shape, generator=generator) for shape in [(5, 3), (5, 3), (7,), (130, 130)]]
    runs = []
    for compile in (False, True):
        params = [torch.nn.Parameter(v.clone()) for v in values]
        optimizer = DiffGrad(params, denominator="atan2", cautious=True, nesterov=True, weight_decay=0.1, lr=1e-2,
                             cautious_weight_decay=True, compile=compile)
        generator.manual_seed(3)
        for _ in range(4):
            for p in params:
                p.grad = torch.randn(p.shape, generator=generator)
            with _no_compile_warning():
                optimizer.step()
        runs.append(params)
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


class _no_compile_warning:
    """Fail if the engine warns that a phase fell back to eager (a compile failure)."""

    def __enter__(self) -> None:
        import warnings

        self._catcher = warnings.catch_warnings(record=True)
        self._caught = self._catcher.__enter__()
        warnings.simplefilter("always")

    def __exit__(self, *exc: Any) -> None:
        self._catcher.__exit__(*exc)
        messages = [str(w.message) for w in self._caught if "torch.compile failed" in str(w.message)]
        assert not messages, messages


# ============================================================================================ the pieces
def test_positive_negative_momentum_alternates_by_parity_per_tensor():
    """Two tensors stacked together at different parities: each updates its own buffer."""
    a, b = torch.zeros(2, 1, 3), torch.ones(2, 1, 3)
    odd = torch.tensor([1.0, 0.0]).view(2, 1, 1)
    mix = positive_negative_momentum_(a, b, torch.full((2, 1, 3), 3.0), 0.5, odd, 2.0, 1.0)
    torch.testing.assert_close(a, torch.tensor([1.5, 0.0]).view(2, 1, 1).expand(2, 1, 3))  # only the odd one
    torch.testing.assert_close(b, torch.tensor([1.0, 2.0]).view(2, 1, 1).expand(2, 1, 3))  # only the even one
    # odd: 2 * 1.5 - 1 * 1 = 2; even: positive is b = 2, negative a = 0: 2 * 2 - 0 = 4
    torch.testing.assert_close(mix, torch.tensor([2.0, 4.0]).view(2, 1, 1).expand(2, 1, 3))


def test_gradient_norm_correction_only_raises_small_gradients():
    e = torch.tensor([[[10.0]], [[1.0]], [[5.0]]])
    grad = torch.stack([torch.tensor([[3.0, 4.0]]), torch.tensor([[3.0, 4.0]]), torch.zeros(1, 2)])
    scale = gradient_norm_correction_(e, grad, 0.5, PER_TENSOR)
    torch.testing.assert_close(e.flatten(), torch.tensor([7.5, 3.0, 2.5]))
    torch.testing.assert_close(scale.flatten(), torch.tensor([1.5, 1.0, 1.0]))  # e <= ||g||, and ||g|| = 0


# ============================================================================================ state
@pytest.mark.parametrize("cls", PRESETS, ids=lambda c: c.__name__)
def test_state_memory_and_docstring(cls):
    """Parameter-sized buffers as the registry says (PNM: two momenta); AdaNorm one number more per tensor; the
    docstring states the cost."""
    spec = get_spec(cls.__name__)
    small, large = torch.nn.Parameter(torch.randn(3, 4)), torch.nn.Parameter(torch.randn(STACK_NUMEL + 1))
    optimizer = cls([small, large])
    for p in (small, large):
        p.grad = torch.randn_like(p)
    optimizer.step()
    for p in (small, large):
        state = optimizer.state[p]
        full = [k for k, v in state.items() if k != "step" and v.shape == p.shape]
        other = {k: tuple(v.shape) for k, v in state.items() if k != "step" and v.shape != p.shape}
        assert len(full) == spec.state_buffers
        assert other == ({"exp_grad_norm": (1, 1)} if cls is AdaNorm else {})
    assert f"State: {spec.state_buffers} tensors of the parameter's size" in " ".join(cls.__doc__.split())
    if cls is PNM:
        assert set(optimizer.state[small]) == {"step", "exp_avg", "neg_exp_avg"}


def test_adanorm_norm_is_per_tensor_stacked_or_in_place():
    """One running norm per tensor: small tensors of one shape are stacked, a large one steps in place; each
    matches a per-tensor float64 recomputation."""
    shapes = [(4, 3), (4, 3), (), (STACK_NUMEL + 5,)]
    params = [torch.nn.Parameter(torch.randn(s, dtype=F64)) for s in shapes]
    optimizer = AdaNorm(params, norm_beta=0.5)
    expected = [0.0] * len(params)
    for step in range(3):
        for i, p in enumerate(params):
            p.grad = torch.randn_like(p) * (i + 1) * (0.2 if step == 2 else 1.0)
            expected[i] = 0.5 * expected[i] + 0.5 * float(p.grad.norm())
        optimizer.step()
    for p, e in zip(params, expected):
        assert optimizer.state[p]["exp_grad_norm"].flatten().item() == pytest.approx(e, rel=1e-12)


# ============================================================================================ arguments
def test_names_do_not_collide_with_torch_optim():
    assert not [cls.__name__ for cls in PRESETS if hasattr(torch.optim, cls.__name__)]


def test_the_family_itself_needs_a_preset():
    with pytest.raises(TypeError, match="use a preset"):
        AdamFamily([torch.nn.Parameter(torch.zeros(1))])


def test_invalid_denominator_names_the_choices():
    expected = r"^Invalid denominator: 'sqrt' \(expected one of 'eps', 'atan2', 'softplus'\)$"
    with pytest.raises(ValueError, match=expected):
        DiffGrad([torch.nn.Parameter(torch.zeros(1))], denominator="sqrt")


def test_atan2_bounds_lr_by_its_largest_step():
    with pytest.raises(ValueError, match=r"^Invalid lr: 10000000.0 \(the largest step size lr \* 1.27 \* pi / 2"):
        AdaMomentum([torch.nn.Parameter(torch.zeros(1))], lr=1e7, denominator="atan2")
    AdaMomentum([torch.nn.Parameter(torch.zeros(1))], lr=1e7)  # below 2**24 without atan2


def test_pnm_takes_no_second_moment_options():
    with pytest.raises(TypeError):
        PNM([torch.nn.Parameter(torch.zeros(1))], denominator="atan2")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        AdaPNM([torch.nn.Parameter(torch.zeros(1))], nesterov=True)  # type: ignore[call-arg]


# ============================================================================================ the references' teeth
MUTANTS = [
    ("DiffGrad", {"lr": 1e-2}, "no_friction"),
    ("AdaMomentum", {}, "second_moment_of_gradient"),
    ("AdaMomentum", {"eps": 1e-3}, "no_eps_in_second_moment"),
    ("AdaNorm", {"norm_beta": 0.5}, "no_norm_correction"),
    ("AdaNorm", {"norm_beta": 0.5}, "norm_corrected_second_moment"),
    ("PNM", {"lr": 1e-2}, "pnm_no_swap"),
    ("AdaPNM", {"lr": 1e-2}, "no_amsgrad"),
    ("SAdam", {"eps": 0.05, "softplus_beta": 5.0}, "softplus_of_root_only"),
]


@pytest.mark.parametrize(("name", "kwargs", "mutation"), MUTANTS, ids=[f"{m[0]}-{m[2]}" for m in MUTANTS])
def test_the_common_suites_tolerance_tells_each_piece_apart(name, kwargs, mutation):
    """A reference with one piece broken is told apart from the package by the common suite's float32
    tolerance (and the right reference is not): each piece is really checked there."""
    from tests.test_optimizers_common import F32, run_against_reference

    assert run_against_reference(name, kwargs, F32, mutation=mutation, check=False) > 1.0
    assert run_against_reference(name, kwargs, F32, check=False) <= 1.0
