"""Muon: what the common suite does not cover. The public implementations as oracles (torch.optim.Muon for the
matrices, pytorch_optimizer's Muon for both parts, torch.optim.AdamW for the rest), the float64 re-derivation over
square, tall, wide, stacked, large and 4-D conv weights, the precision of Newton-Schulz in bfloat16 and float32,
the compiled bfloat16 path, the split of a model into hidden matrices and the rest (muon_param_groups, the
factory, ``lightning-opt fit --optimizer Muon``) and which class the short name ``Muon`` means."""

from __future__ import annotations

import functools
import io
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import lightning_opt  # before LightningCLI(...): the short name "Muon" then has two candidates
from lightning_opt import Muon, build_optimizer, muon_param_groups
from lightning_opt.cli import qualify_optimizer_names
from lightning_opt.factories import optimizer_class_for_name
from lightning_opt.optim.muon import NS_COEFFICIENTS, muon_view, newton_schulz, output_layer, shape_scale

try:
    from tests.references import MuonReference, newton_schulz_reference
    from tests.test_optimizers_common import run_against_reference
except ImportError:  # pytest's default "prepend" import mode puts tests/ itself on sys.path
    from references import MuonReference, newton_schulz_reference
    from test_optimizers_common import run_against_reference

F64 = torch.float64
# square, tall, wide, three stacked of one shape, a 4-D conv weight, one above the stacking limit (run in place)
MATRICES = [(8, 8), (12, 4), (4, 12), (6, 10), (6, 10), (6, 10), (8, 3, 3, 3), (130, 130)]
VECTORS = [(), (7,), (5,)]


def _params(shapes: list[tuple[int, ...]], dtype: torch.dtype = torch.float32, seed: int = 0) -> list[nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(shape, generator=generator, dtype=F64).to(dtype)) for shape in shapes]


def _twins(params: list[nn.Parameter]) -> list[nn.Parameter]:
    return [nn.Parameter(p.detach().clone()) for p in params]


def _grads(step: int, shapes: list[tuple[int, ...]], dtype: torch.dtype) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1000 + step)
    return [torch.randn(shape, generator=generator, dtype=F64).to(dtype) for shape in shapes]


def _set(params: list[nn.Parameter], grads: list[torch.Tensor]) -> None:
    for p, g in zip(params, grads):
        p.grad = g.clone()  # each optimizer its own copy (pytorch_optimizer's Nesterov writes into p.grad)


def _svd_newton_schulz(grad: torch.Tensor, ns_coefficients, ns_steps, eps) -> torch.Tensor:
    """torch.optim.Muon's _zeropower_via_newtonschulz without its bfloat16 cast: the float64 derivation."""
    return newton_schulz_reference(grad.to(F64), ns_coefficients, ns_steps, eps)


# ------------------------------------------------------------------------------------------ oracles
@pytest.mark.parametrize("adjust_lr_fn", ["match_rms_adamw", "original"])
@pytest.mark.parametrize("nesterov", [True, False])
def test_matrices_take_torch_optim_muons_steps(monkeypatch, adjust_lr_fn: str, nesterov: bool) -> None:
    """torch.optim.Muon on 2-D weights (square, tall, wide), every step but Newton-Schulz being torch's code: its
    bfloat16 iteration replaced by the float64 one (checked against the SVD below), ours in float64 too."""
    import torch.optim._muon as torch_muon

    monkeypatch.setattr(torch_muon, "_zeropower_via_newtonschulz", _svd_newton_schulz)
    shapes = [(8, 8), (12, 4), (4, 12)]
    ours_params = _params(shapes, F64)
    theirs_params = _twins(ours_params)
    options = dict(lr=2e-2, weight_decay=0.1, momentum=0.9, nesterov=nesterov, adjust_lr_fn=adjust_lr_fn)
    ours = Muon(ours_params, ns_dtype="float64", **options)
    theirs = torch.optim.Muon(theirs_params, **options)
    for step in range(6):
        grads = _grads(step, shapes, F64)
        _set(ours_params, grads)
        _set(theirs_params, grads)
        ours.step()
        theirs.step()
        for mine, torchs in zip(ours_params, theirs_params):
            torch.testing.assert_close(mine, torchs, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(ours.state[mine]["exp_avg"], theirs.state[torchs]["momentum_buffer"])


def test_matrices_follow_torch_optim_muon_in_bfloat16() -> None:
    """The defaults' bfloat16 Newton-Schulz against torch.optim.Muon's own (also bfloat16): the two round
    differently (ours divides by the norm in float32), so the steps agree to bfloat16's precision, not bit for
    bit; over 5 steps the parameters' motion differs by under 3% (each is about 1% from the float64 iteration's),
    while with Keller Jordan's shape scaling (a factor 0.69 to 2.5 away here) they land over 10% apart."""
    shapes = [(8, 8), (12, 4), (4, 12), (32, 16)]
    start = _params(shapes)
    ours_params, theirs_params, other_params = _twins(start), _twins(start), _twins(start)
    ours = Muon(ours_params, lr=1e-2, weight_decay=0.1)
    theirs = torch.optim.Muon(theirs_params, lr=1e-2, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    other = torch.optim.Muon(other_params, lr=1e-2, weight_decay=0.1, adjust_lr_fn="original")
    for step in range(5):
        grads = _grads(step, shapes, torch.float32)
        for params in (ours_params, theirs_params, other_params):
            _set(params, grads)
        for optimizer in (ours, theirs, other):
            optimizer.step()
    for p0, mine, torchs, keller in zip(start, ours_params, theirs_params, other_params):
        motion = (torchs - p0).detach().norm()
        assert float((mine - torchs).detach().norm()) < 0.03 * float(motion)
        assert float((keller - torchs).detach().norm()) > 0.1 * float(motion)  # the check can tell them apart


@pytest.mark.parametrize("use_adjusted_lr", [True, False])
def test_both_parts_take_pytorch_optimizers_muon_steps(monkeypatch, use_adjusted_lr: bool) -> None:
    """pytorch_optimizer's Muon with use_muon groups (2-D and 4-D conv weights; vectors and an embedding-like
    matrix for AdamW), its Newton-Schulz run in float64 by its own code, the AdamW groups with the same lr and
    weight decay: the same steps as ours (use_adjusted_lr=True is "match_rms_adamw")."""
    from pytorch_optimizer.optimizer.muon import base as po_base
    from pytorch_optimizer.optimizer.muon.muon import Muon as PoMuon

    monkeypatch.setattr(
        po_base, "zero_power_via_newton_schulz_5", functools.partial(po_base.zero_power_via_newton_schulz_5, dtype=F64)
    )
    hidden_shapes, other_shapes = [(8, 8), (12, 4), (4, 12), (6, 10), (6, 10), (8, 3, 3, 3)], [(7,), (), (10, 6)]
    hidden, rest = _params(hidden_shapes, F64), _params(other_shapes, F64, seed=1)
    twins_hidden, twins_rest = _twins(hidden), _twins(rest)
    lr, wd, betas, eps = 1e-2, 0.05, (0.9, 0.95), 1e-8
    adjust = "match_rms_adamw" if use_adjusted_lr else "original"
    ours = Muon(
        [{"params": hidden, "use_muon": True}, {"params": rest, "use_muon": False}],
        lr=lr, weight_decay=wd, adamw_betas=betas, adamw_eps=eps, adjust_lr_fn=adjust, ns_dtype="float64",
    )
    theirs = PoMuon(
        [{"params": twins_hidden, "use_muon": True}, {"params": twins_rest, "use_muon": False}],
        lr=lr, weight_decay=wd, use_adjusted_lr=use_adjusted_lr, adamw_lr=lr, adamw_wd=wd, adamw_betas=betas,
        adamw_eps=eps,
    )
    shapes = hidden_shapes + other_shapes
    for step in range(6):
        grads = _grads(step, shapes, F64)
        _set(hidden + rest, grads)
        _set(twins_hidden + twins_rest, grads)
        ours.step()
        theirs.step()
        for mine, po in zip(hidden + rest, twins_hidden + twins_rest):
            torch.testing.assert_close(mine, po, rtol=1e-10, atol=1e-12, msg=lambda m, s=mine.shape: f"{s}: {m}")


def test_adamw_part_takes_torch_optim_adamws_steps() -> None:
    """Tensors routed to AdamW (vectors by their dimension, a matrix by use_muon=False) against
    torch.optim.AdamW, float32, several steps and two groups of their own lr."""
    vectors, matrix = _params([(7,), (), (5,)]), _params([(6, 4)], seed=2)
    twins_vectors, twins_matrix = _twins(vectors), _twins(matrix)
    ours = Muon(
        [{"params": vectors}, {"params": matrix, "use_muon": False, "lr": 3e-3}],
        lr=1e-2, weight_decay=0.1, adamw_betas=(0.8, 0.99), adamw_eps=1e-6,
    )
    theirs = torch.optim.AdamW(
        [{"params": twins_vectors}, {"params": twins_matrix, "lr": 3e-3}],
        lr=1e-2, weight_decay=0.1, betas=(0.8, 0.99), eps=1e-6,
    )
    shapes = [tuple(p.shape) for p in vectors + matrix]
    for step in range(8):
        grads = _grads(step, shapes, torch.float32)
        _set(vectors + matrix, grads)
        _set(twins_vectors + twins_matrix, grads)
        ours.step()
        theirs.step()
        for mine, torchs in zip(vectors + matrix, twins_vectors + twins_matrix):
            torch.testing.assert_close(mine, torchs, rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(ours.state[mine]["exp_avg_sq"], theirs.state[torchs]["exp_avg_sq"])


# ------------------------------------------------------------------------------------------ float64 re-derivation
def _against_reference(shapes, dtype, ns_dtype, steps=6, **kwargs) -> float:
    """Run ours and the float64 reference side by side; return the worst relative error of the parameters'
    motion (over all steps and tensors)."""
    params = _params(shapes, dtype)
    start = [p.detach().to(F64).clone() for p in params]
    optimizer = Muon(params, ns_dtype=ns_dtype, **kwargs)
    reference = MuonReference([p.detach() for p in params], **kwargs)
    worst = 0.0
    for step in range(steps):
        grads = _grads(step, shapes, dtype)
        _set(params, grads)
        optimizer.step()
        reference.step([grads])
        for p, p0, expected in zip(params, start, reference.params[0]):
            motion = (expected - p0).norm()
            worst = max(worst, float((p.detach().to(F64) - expected).norm() / motion))
    return worst


@pytest.mark.parametrize("kwargs", [{}, {"adjust_lr_fn": "original", "lr": 2e-2}, {"nesterov": False}])
def test_matches_the_float64_derivation_on_every_shape(kwargs: dict[str, Any]) -> None:
    """Square, tall, wide, stacked, a 4-D conv weight (flattened from dim 1) and one run in place, with vectors
    beside them: float64 Newton-Schulz agrees with the SVD-derived iteration to rounding."""
    shapes = MATRICES + VECTORS
    params = _params(shapes, F64)
    optimizer = Muon(params, ns_dtype="float64", **kwargs)
    reference = MuonReference([p.detach() for p in params], **kwargs)
    for step in range(6):
        grads = _grads(step, shapes, F64)
        _set(params, grads)
        optimizer.step()
        reference.step([grads])
        for p, expected in zip(params, reference.params[0]):
            torch.testing.assert_close(p.detach(), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("ns_dtype", "bound"), [("float32", 1e-4), ("bfloat16", 3e-2)])
def test_newton_schulz_precision_in_float32_and_bfloat16(ns_dtype: str, bound: float) -> None:
    """Newton-Schulz in float32 or bfloat16 (float64 parameters, so that only its rounding shows) against the
    float64 derivation: every tensor's motion over 6 steps within 1e-4 (float32; measured about 2e-5) or 3%
    (bfloat16; measured about 1%, as torch.optim.Muon's own bfloat16 iteration) of the reference's."""
    assert _against_reference(MATRICES + VECTORS, F64, ns_dtype) < bound


def test_newton_schulz_maps_singular_values_by_the_quintic() -> None:
    """The batched iteration, tall and wide forms, against the singular-value polynomial; a zero matrix stays
    zero (the eps floor of the norm)."""
    generator = torch.Generator().manual_seed(0)
    wide = torch.randn(3, 5, 9, generator=generator, dtype=F64)
    for matrices, tall in ((wide, False), (wide.transpose(1, 2).contiguous(), True)):
        result = newton_schulz(matrices, NS_COEFFICIENTS, 5, 1e-7, F64, tall)
        for x, y in zip(matrices, result):
            torch.testing.assert_close(y, newton_schulz_reference(x, NS_COEFFICIENTS, 5, 1e-7), rtol=1e-10, atol=1e-12)
        singular = torch.linalg.svdvals(result)
        assert bool(((singular > 0.6) & (singular < 1.25)).all())  # near 1, not exactly: Keller Jordan's schedule
    assert torch.equal(newton_schulz(torch.zeros(1, 3, 4), NS_COEFFICIENTS, 5, 1e-7, torch.bfloat16),
                       torch.zeros(1, 3, 4, dtype=torch.bfloat16))


@pytest.mark.parametrize(
    "mutation", ["no_nesterov", "keller_scale", "min_dim_scale", "conv_last_two_dims", "no_normalisation",
                 "adamw_no_bias_correction", "decay_after_update"],
)
def test_the_common_suites_tolerance_tells_each_mutant_apart(mutation: str) -> None:
    """Each deliberately wrong reference is caught by the common suite's float32 tolerance (with float64
    Newton-Schulz, as its Muon entries run), and the right one passes it."""
    kwargs = {"ns_dtype": "float64", "lr": 1e-2}
    assert run_against_reference("Muon", kwargs, torch.float32, mutation=mutation, check=False) > 1.0
    assert run_against_reference("Muon", kwargs, torch.float32, check=False) <= 1.0


# ------------------------------------------------------------------------------------------ views, compile, state
def test_view_and_scaling() -> None:
    assert muon_view(torch.Size([8, 3, 3, 3])) == (8, 27)  # flattened like Keller Jordan's and pytorch_optimizer's
    assert muon_view(torch.Size([27, 8])) == (27, 8, 1)  # tall: the trailing 1 selects X^T X
    assert shape_scale(768, 3072, "match_rms_adamw") == pytest.approx(0.2 * math.sqrt(3072))
    assert shape_scale(3072, 768, "original") == pytest.approx(2.0)
    assert shape_scale(768, 3072, "original") == 1.0


def test_compiled_bfloat16_newton_schulz_matches_eager() -> None:
    """The default (bfloat16) Newton-Schulz compiled with the rest of the update: the same numbers as eager to
    bfloat16's precision (inductor may fuse the polynomial's products and sums differently)."""
    shapes = [(6, 10), (6, 10), (12, 4), (7,)]
    eager_params = _params(shapes)
    compiled_params = _twins(eager_params)
    eager, compiled = Muon(eager_params, lr=1e-2), Muon(compiled_params, lr=1e-2, compile=True)
    start = [p.detach().clone() for p in eager_params]
    for step in range(3):
        grads = _grads(step, shapes, torch.float32)
        _set(eager_params, grads)
        _set(compiled_params, grads)
        eager.step()
        compiled.step()
    for p0, e, c in zip(start, eager_params, compiled_params):
        assert float((c - e).detach().norm()) <= 1e-2 * float((e - p0).detach().norm()) + 1e-7


def test_resume_from_a_weights_only_checkpoint_is_bit_identical() -> None:
    """Mixed routes (a use_muon=True group, a use_muon=False group, one routed by dimension), bfloat16 Newton-Schulz:
    state_dict -> torch.load(weights_only=True) -> load_state_dict continues bit for bit, and keeps use_muon."""
    shapes = [(6, 10), (12, 4), (7,), (5, 5)]

    def build(params):
        return Muon([{"params": params[:2], "use_muon": True}, {"params": params[2:3]},
                     {"params": params[3:], "use_muon": False}], lr=1e-2)

    params = _params(shapes)
    optimizer = build(params)
    for step in range(3):
        _set(params, _grads(step, shapes, torch.float32))
        optimizer.step()
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    twins = _twins(params)
    resumed = build(twins)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert [g.get("use_muon") for g in resumed.param_groups] == [True, None, False]
    assert resumed.state[twins[0]]["exp_avg_sq"].numel() == 0 and resumed.state[twins[3]]["exp_avg_sq"].shape == (5, 5)
    for step in range(3, 6):
        grads = _grads(step, shapes, torch.float32)
        _set(params, grads)
        _set(twins, grads)
        optimizer.step()
        resumed.step()
        for a, b in zip(params, twins):
            assert torch.equal(a, b)


def test_use_muon_is_validated() -> None:
    w, b = nn.Parameter(torch.randn(4, 3)), nn.Parameter(torch.randn(4))
    with pytest.raises(ValueError, match=r"^Invalid use_muon: 'yes' \(expected True, False or None\) \[parameter"):
        Muon([{"params": [w], "use_muon": "yes"}])
    with pytest.raises(ValueError, match=r"^Invalid use_muon: True for a parameter of shape \(4,\) .*group 1\]$"):
        Muon([{"params": [w], "use_muon": True}, {"params": [b], "use_muon": True}])
    optimizer = Muon([{"params": [w]}, {"params": [b]}])
    with pytest.raises(ValueError, match=r"^Invalid use_muon: True for a parameter of shape \(2,\) .*group 2\]$"):
        optimizer.add_param_group({"params": [nn.Parameter(torch.zeros(2))], "use_muon": True})
    assert len(optimizer.param_groups) == 2
    w.grad, b.grad = torch.ones_like(w), torch.ones_like(b)
    optimizer.step()
    optimizer.param_groups[0]["use_muon"] = False  # the matrix's state is Muon's: switching is refused
    before = w.detach().clone()
    with pytest.raises(ValueError, match=r"^Invalid use_muon: False \(was None when the group first stepped"):
        optimizer.step()
    assert torch.equal(w, before)


# ------------------------------------------------------------------------------------------ the split
class TinyLM(nn.Module):
    """An embedding, two blocks (attention, MLP, norms), a final norm and a head tied to the embedding."""

    def __init__(self, tied: bool = True) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"norm": nn.LayerNorm(16), "attn": nn.MultiheadAttention(16, 2), "mlp": nn.Linear(16, 32),
                           "proj": nn.Linear(32, 16)})
            for _ in range(2)
        )
        self.pos_embed = nn.Parameter(torch.zeros(1, 8, 16))
        self.norm = nn.LayerNorm(16)
        self.lm_head = nn.Linear(16, 50, bias=False)
        if tied:
            self.lm_head.weight = self.embed.weight


def _names(model: nn.Module, groups: list[dict[str, Any]]) -> list[tuple[Any, set[str]]]:
    by_id = {id(p): name for name, p in model.named_parameters()}
    return [(g["use_muon"], {by_id[id(p)] for p in g["params"]}) for g in groups]


@pytest.mark.parametrize("tied", [True, False])
def test_muon_param_groups_send_embeddings_norms_heads_and_biases_to_adamw(tied: bool) -> None:
    model = TinyLM(tied)
    (muon, hidden), (adamw, rest) = _names(model, muon_param_groups(model))
    assert (muon, adamw) == (True, False)
    assert hidden == {f"blocks.{i}.{name}" for i in range(2) for name in (
        "attn.in_proj_weight", "attn.out_proj.weight", "mlp.weight", "proj.weight")}
    assert "embed.weight" in rest and "pos_embed" in rest and "norm.weight" in rest
    assert ("lm_head.weight" in rest) is (not tied)  # tied: the same tensor as embed.weight, named once
    assert len(hidden) + len(rest) == len(list(model.parameters()))


def test_output_layer_conv_nets_and_extra_exclusions() -> None:
    """The last Linear is the output layer (AdamW); conv weights take Muon (flattened); patterns or a rule add
    AdamW parameters; groups given (the weight-decay split) are split each, keeping their keys."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8, 16), nn.Linear(16, 10))
    assert output_layer(model) is model[4]
    groups = _names(model, muon_param_groups(model))
    assert groups == [(True, {"0.weight", "3.weight"}),
                      (False, {"0.bias", "1.weight", "1.bias", "3.bias", "4.weight", "4.bias"})]
    assert _names(model, muon_param_groups(model, adamw=["0.*"]))[0] == (True, {"3.weight"})
    assert _names(model, muon_param_groups(model, adamw=lambda n, p, m: isinstance(m, nn.Linear)))[0] == (
        True, {"0.weight"})
    decay = lightning_opt.param_groups_for_weight_decay(model, 0.1)
    split = muon_param_groups(model, decay)
    assert [(g["use_muon"], g["weight_decay"], len(g["params"])) for g in split] == [
        (True, 0.1, 2), (False, 0.1, 1), (False, 0.0, 5)]
    with pytest.raises(ValueError, match=r"^Invalid groups: parameters of shapes \[\(2,\)\]"):
        muon_param_groups(model, [{"params": [nn.Parameter(torch.zeros(2))]}])
    with pytest.raises(ValueError, match=r"^Invalid adamw: 'head'"):
        muon_param_groups(model, adamw="head")


def test_plain_parameters_are_routed_by_dimension() -> None:
    """Muon(model.parameters()) (what a user's own LightningCLI passes): 2-D and more to Muon, the rest AdamW."""
    model = TinyLM(tied=False)
    optimizer = Muon(model.parameters())
    assert optimizer.takes_muon(model.embed.weight) and optimizer.takes_muon(model.lm_head.weight)
    assert not optimizer.takes_muon(model.norm.weight) and not optimizer.takes_muon(model.blocks[0].mlp.bias)


# ------------------------------------------------------------------------------------------ the name, factory, CLI
def test_short_name_means_this_class_in_lightning_opt_and_the_factory() -> None:
    assert lightning_opt.Muon is Muon and lightning_opt.optim.Muon is Muon
    assert optimizer_class_for_name("Muon") is Muon and optimizer_class_for_name("muon") is Muon
    assert qualify_optimizer_names(["fit", "--optimizer", "Muon", "--optimizer.help=muon"]) == [
        "fit", "--optimizer", "lightning_opt.Muon", "--optimizer.help=lightning_opt.Muon"
    ]


def test_build_optimizer_splits_by_decay_and_by_route() -> None:
    model = TinyLM(tied=False)
    optimizer = build_optimizer(model, "Muon", lr=2e-3, weight_decay=0.05)
    assert type(optimizer) is Muon
    summary = [(g["use_muon"], g["weight_decay"], len(g["params"])) for g in optimizer.param_groups]
    # decayed: 8 hidden matrices to Muon, the untied head and pos_embed (3-D, decayed) to AdamW; exempt from decay
    # (biases, norms, the embedding): AdamW
    assert summary == [(True, 0.05, 8), (False, 0.05, 2), (False, 0.0, 15)]
    assert optimizer.takes_muon(model.blocks[1].proj.weight) and not optimizer.takes_muon(model.lm_head.weight)
    scheduled = build_optimizer(model, "Muon", scheduler="LinearLR", scheduler_kwargs={"total_iters": 3})
    assert type(scheduled["optimizer"]) is Muon


def _cli(optimizer: str, tmp_path: Path, cls: Any = None) -> Any:
    from lightning.pytorch.cli import LightningCLI
    from lightning.pytorch.demos.boring_classes import BoringModel

    args = [
        "fit", "--optimizer", optimizer,
        "--trainer.accelerator=cpu", "--trainer.max_steps=2", "--trainer.limit_val_batches=0",
        "--trainer.logger=false", "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", f"--trainer.default_root_dir={tmp_path}",
    ]
    if cls is None:
        return LightningCLI(BoringModel, args=args, save_config_kwargs={"overwrite": True})
    return cls(args + ["--model=lightning.pytorch.demos.boring_classes.BoringModel",
                       "--data=lightning.pytorch.demos.boring_classes.BoringDataModule"])


def test_lightning_opt_fit_gives_muon_the_models_groups(tmp_path: Path) -> None:
    """lightning-opt's CLI: --optimizer Muon is this class, built from the model's groups (the digits MLP: the
    two hidden Linear weights take Muon; the output layer, biases to AdamW), and it trains."""
    from lightning_opt.lightning_cli import LightningOptCLI

    cli = LightningOptCLI(["--optimizer", "Muon", "--optimizer.lr", "2e-3"], run=False)
    optimizer = cli.model.configure_optimizers()
    assert type(optimizer) is Muon and optimizer.defaults["lr"] == 2e-3
    net = cli.model.net
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert [g["use_muon"] for g in optimizer.param_groups] == [True, False]
    assert {id(p) for p in optimizer.param_groups[0]["params"]} == {id(m.weight) for m in linears[:-1]}
    assert "parameters" not in cli.model.__dict__  # the model's own parameters() is back
    (trained,) = _cli("Muon", tmp_path, LightningOptCLI).trainer.optimizers
    assert type(trained) is Muon and [g["use_muon"] for g in trained.param_groups] == [False]  # BoringModel: 1 Linear


def test_users_own_lightning_cli_finds_the_short_name_ambiguous_and_takes_the_full_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """jsonargparse resolves a short name among torch.optim.Optimizer's subclasses: once lightning_opt is imported
    there are two called Muon, and LightningCLI stops (exit code 2) asking for the full class path."""
    with pytest.raises(SystemExit) as info:
        _cli("Muon", tmp_path)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Multiple subclasses with name Muon" in err and "lightning_opt.Muon" in err
    (optimizer,) = _cli("lightning_opt.Muon", tmp_path).trainer.optimizers
    assert type(optimizer) is Muon and int(optimizer.state[next(iter(optimizer.state))]["step"]) == 2


def test_non_contiguous_and_bfloat16_matrices() -> None:
    """A transposed (non-contiguous) weight steps like its contiguous copy; bfloat16 weights keep bfloat16 state
    and move along the float32 run's motion from the same start (the common suite bounds bfloat16 per element)."""
    transposed = nn.Parameter(0.1 * torch.randn(6, 4, generator=torch.Generator().manual_seed(0)).t())
    contiguous = nn.Parameter(transposed.detach().contiguous())
    assert not transposed.is_contiguous()
    bf16 = nn.Parameter(contiguous.detach().to(torch.bfloat16))
    start = bf16.detach().float()
    from_start = nn.Parameter(start.clone())
    params = (transposed, contiguous, bf16, from_start)
    optimizers = [Muon([p], lr=3e-2) for p in params]
    for step in range(4):
        grad = _grads(step, [(4, 6)], torch.float32)[0]
        for p, optimizer in zip(params, optimizers):
            p.grad = grad.to(p.dtype)
            optimizer.step()
    assert torch.equal(transposed, contiguous)
    assert {value.dtype for key, value in optimizers[2].state[bf16].items() if key != "step"} == {torch.bfloat16}
    moved, expected = (bf16.detach().float() - start).flatten(), (from_start.detach() - start).flatten()
    assert float(torch.nn.functional.cosine_similarity(moved, expected, dim=0)) > 0.95


@pytest.mark.own_process  # a process group of its own, not left behind in the pytest process
def test_sharded_dtensors_are_refused_with_a_clear_message(tmp_path: Path) -> None:
    """Newton-Schulz needs the whole matrix, not a shard (FSDP2): refused at construction; replicated is fine."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        sharded = nn.Parameter(distribute_tensor(torch.randn(4, 3), mesh, [Shard(0)]))
        with pytest.raises(ValueError, match=r"^Invalid params: Muon computes statistics over whole tensors"):
            Muon([sharded])
        Muon([nn.Parameter(distribute_tensor(torch.randn(4, 3), mesh, [Replicate()]))])
    finally:
        dist.destroy_process_group()
