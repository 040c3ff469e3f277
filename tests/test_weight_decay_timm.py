"""The decay / no-decay split against timm's ``param_groups_weight_decay``, on a small vision transformer.

timm cannot be imported in this project's test environment: every ``import timm`` imports torchvision, and the
torchvision wheel built for torch 2.13 does not load with the CPU build of torch pinned here (``operator
torchvision::nms does not exist``). So :func:`timm_param_groups_weight_decay` below is timm's rule transcribed
from timm 1.0.31 (``timm/optim/_param_groups.py`` and ``create_optimizer_v2``, which passes
``model.no_weight_decay()`` as ``no_weight_decay_list``); where timm imports, the transcription is checked
against the real function too.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Collection

import pytest
import torch
from torch import nn

from lightning_opt import build_optimizer, param_groups_for_weight_decay


def timm_param_groups_weight_decay(
    model: nn.Module, weight_decay: float, no_weight_decay_list: Collection[str] = ()
) -> list[dict]:
    """timm 1.0.31's ``param_groups_weight_decay`` without the fallback groups: no-decay group first."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        listed = any(fnmatch.fnmatch(name, pattern) for pattern in no_weight_decay_list)
        if param.ndim <= 1 or name.endswith(".bias") or listed:
            no_decay.append(param)
        else:
            decay.append(param)
    groups = []
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    return groups


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.gamma = nn.Parameter(torch.full((dim,), 0.1))  # a layer-scale vector

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.gamma * self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """A two-block ViT built the way timm's VisionTransformer is (patch conv, cls token, position embedding)."""

    def __init__(self, dim: int = 16, heads: int = 2, patches: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(1, dim, kernel_size=4, stride=4)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, patches + 1, dim) * 0.02)
        self.blocks = nn.Sequential(Block(dim, heads), Block(dim, heads))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}  # what timm's VisionTransformer returns

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(images).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(len(images), -1, -1), tokens], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(tokens))[:, 0])


def _split(groups: list[dict], model: nn.Module) -> tuple[set[str], set[str]]:
    """(decayed names, exempt names) of a list of groups."""
    names = {id(param): name for name, param in model.named_parameters()}
    decayed = {names[id(p)] for group in groups if group["weight_decay"] for p in group["params"]}
    exempt = {names[id(p)] for group in groups if not group["weight_decay"] for p in group["params"]}
    return decayed, exempt


def test_default_split_equals_timms_on_a_vision_transformer() -> None:
    model = TinyViT()
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)
    ours = _split(param_groups_for_weight_decay(model, 0.05), model)
    timms = _split(timm_param_groups_weight_decay(model, 0.05, model.no_weight_decay()), model)

    assert ours == timms
    assert {"pos_embed", "cls_token", "blocks.0.gamma", "norm.weight"} <= ours[1]  # no_weight_decay() honoured
    assert {"patch_embed.weight", "blocks.0.attn.in_proj_weight", "head.weight"} <= ours[0]


def test_an_added_pattern_keeps_the_default_exemptions() -> None:
    """The timm user's surprise: adding pos_embed to no_decay must not make every bias and norm weight decay."""

    class Undeclared(TinyViT):
        no_weight_decay = None  # type: ignore[assignment]  (a model that declares nothing itself)

    model = Undeclared()
    decayed, exempt = _split(param_groups_for_weight_decay(model, 0.05, no_decay=["pos_embed"]), model)
    assert "pos_embed" in exempt and "cls_token" in decayed
    assert {"norm.weight", "head.bias", "blocks.1.norm2.bias", "blocks.0.gamma"} <= exempt


def test_no_weight_decay_of_a_wrapped_model_is_honoured() -> None:
    """A LightningModule-style wrapper: the timm model's names are relative to it, its attribute name is added."""

    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = TinyViT()
            self.extra = nn.Linear(3, 3)

    model = Wrapper()
    decayed, exempt = _split(param_groups_for_weight_decay(model, 0.05), model)
    assert {"backbone.pos_embed", "backbone.cls_token"} <= exempt
    assert {"backbone.head.weight", "extra.weight"} <= decayed


def test_no_weight_decay_keywords_match_substrings() -> None:
    class Swinish(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Module()
            self.layer.relative_position_bias_table = nn.Parameter(torch.zeros(9, 2))
            self.layer.proj = nn.Linear(2, 2)

        def no_weight_decay_keywords(self) -> set[str]:
            return {"relative_position_bias_table"}

    model = Swinish()
    decayed, exempt = _split(param_groups_for_weight_decay(model, 0.05), model)
    assert exempt == {"layer.relative_position_bias_table", "layer.proj.bias"}
    assert decayed == {"layer.proj.weight"}


def test_embeddings_and_tied_heads_differ_from_timm_and_replace_default_reproduces_timm() -> None:
    """Our default exempts embedding weights and the head tied to them; timm decays both (2-D tensors)."""

    class TinyLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(11, 8)
            self.block = nn.Linear(8, 8)
            self.norm = nn.LayerNorm(8)
            self.head = nn.Linear(8, 11, bias=False)
            self.head.weight = self.embed.weight  # tied

    model = TinyLM()
    decayed, exempt = _split(param_groups_for_weight_decay(model, 0.1), model)
    assert "embed.weight" in exempt and decayed == {"block.weight"}
    timms = _split(timm_param_groups_weight_decay(model, 0.1), model)
    assert "embed.weight" in timms[0]

    def timm_rule(name: str, param: nn.Parameter, module: nn.Module) -> bool:
        return param.ndim <= 1 or name.endswith(".bias")

    assert _split(param_groups_for_weight_decay(model, 0.1, timm_rule, replace_default=True), model) == timms
    optimizer = build_optimizer(model, "adamw", weight_decay=0.1, no_decay=timm_rule, replace_default=True)
    assert _split(optimizer.param_groups, model) == timms


def test_a_malformed_no_weight_decay_is_refused() -> None:
    class Bad(nn.Linear):
        def no_weight_decay(self) -> str:
            return "weight"  # a string, not a set of names

    with pytest.raises(ValueError, match=r"^Invalid Bad.no_weight_decay\(\): 'weight'"):
        param_groups_for_weight_decay(Bad(2, 2), 0.1)


def test_the_transcription_matches_timm_where_timm_imports() -> None:
    try:
        from timm.optim import param_groups_weight_decay
    except Exception as error:  # noqa: BLE001  (ImportError, or torchvision's RuntimeError on a mismatched build)
        pytest.skip(f"timm does not import here: {type(error).__name__}: {error}")
    model = TinyViT()
    real = param_groups_weight_decay(model, 0.05, no_weight_decay_list=model.no_weight_decay())
    assert _split(real, model) == _split(timm_param_groups_weight_decay(model, 0.05, model.no_weight_decay()), model)
