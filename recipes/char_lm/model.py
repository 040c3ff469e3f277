"""``CharTransformer``: a small decoder-only transformer over bytes, with or without normalisation layers."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from typing_extensions import override

from lightning_opt.recipes.char_lm.data import VOCAB_SIZE
from lightning_opt.validation import check_bool, check_choice, check_float, check_positive_int

NORMS = ("layernorm", "rmsnorm", "none")
"""The ``norm`` options of :class:`CharTransformer`."""

INIT_STD = 0.02
"""Standard deviation of the initial weights (GPT-2's); the residual output projections get less (see below)."""


def make_norm(norm: str, width: int) -> nn.Module:
    """The normalisation layer ``norm`` names, over the last dimension of size ``width``: ``nn.LayerNorm``,
    ``nn.RMSNorm`` or, for ``"none"``, ``nn.Identity``.

    Example:
        >>> make_norm("rmsnorm", 8)
        RMSNorm((8,), eps=None, elementwise_affine=True)
    """
    check_choice("norm", norm, NORMS)
    if norm == "layernorm":
        return nn.LayerNorm(width)
    if norm == "rmsnorm":
        return nn.RMSNorm(width)
    return nn.Identity()


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which position ``t`` sees positions ``<= t`` only.

    One linear layer gives queries, keys and values; ``F.scaled_dot_product_attention(..., is_causal=True)``
    applies the causal mask and the ``1 / sqrt(head_dim)`` scale; a second linear layer (``out``) projects the
    heads back to the residual stream.

    Args:
        width: size of the residual stream, divisible by ``heads``.
        heads: attention heads.

    Example:
        >>> CausalSelfAttention(width=16, heads=4)(torch.randn(2, 5, 16)).shape
        torch.Size([2, 5, 16])
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        qkv = self.qkv(x).view(batch, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=True)
        return self.out(attended.transpose(1, 2).reshape(batch, length, width))


class Block(nn.Module):
    """One pre-norm transformer block: ``x + attention(norm(x))``, then ``x + mlp(norm(x))``.

    The MLP is ``Linear(width, mlp_ratio * width) -> GELU -> Linear(..., width)``. With ``norm="none"`` the
    two norms are identities.

    Args:
        width: size of the residual stream.
        heads: attention heads.
        mlp_ratio: hidden width of the MLP over ``width``.
        norm: ``"layernorm"``, ``"rmsnorm"`` or ``"none"``.
        dropout: dropout probability on each branch's output; 0 disables it.

    Example:
        >>> Block(width=16, heads=2, mlp_ratio=4, norm="none", dropout=0.0)(torch.randn(2, 5, 16)).shape
        torch.Size([2, 5, 16])
    """

    def __init__(self, width: int, heads: int, mlp_ratio: int, norm: str, dropout: float) -> None:
        super().__init__()
        self.norm1 = make_norm(norm, width)
        self.attention = CausalSelfAttention(width, heads)
        self.norm2 = make_norm(norm, width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))
        self.dropout = nn.Dropout(dropout)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attention(self.norm1(x)))
        return x + self.dropout(self.mlp(self.norm2(x)))


class CharTransformer(pl.LightningModule):
    """A decoder-only transformer that predicts the next byte (a GPT-2-style model, scaled down).

    Tokens (bytes, 256 ids) and learned positions are embedded and summed, go through ``layers`` pre-norm
    :class:`Block` s (causal multi-head attention, then a GELU MLP, each on a residual branch), a final
    norm, and a linear head to 256 logits, which by default shares its weight with the token embedding.

    **Normalisation.** ``norm`` chooses ``nn.LayerNorm`` (the default), ``nn.RMSNorm`` or ``"none"``: no
    normalisation layer at all, neither in the blocks nor before the head, so that the optimizer alone has
    to keep the activations in range (the question of the normalisation study). What keeps the model without
    norms trainable is its initialisation, which is the same for every ``norm``: all weights are drawn from
    ``N(0, 0.02^2)`` (biases zero), and the two projections that write into the residual stream in each
    block (attention's ``out`` and the MLP's second layer) from ``N(0, (0.02 / sqrt(2 * layers))^2)``, as in
    GPT-2. The ``2 * layers`` residual branches then add up to a stream of about the same scale whatever
    the depth, instead of a variance growing with the number of branches; with pre-norm that only balances
    the branches, without norm it is also what keeps the stream, the attention logits and (through the tied
    head) the output logits small at the start. Everything is small at first: the initial loss is close to
    ``ln 256 = 5.55`` nats, uniform over the bytes, without norms, and about 0.13 nats lower with them (the
    final norm scales the stream, which starts as the input byte's embedding, up to unit size, and the tied
    head then slightly favours repeating the input byte).

    **Logged.** ``train_loss`` (per step and per epoch, as ``train_loss_step`` / ``train_loss_epoch``), and
    per validation epoch ``val_loss`` (the mean cross-entropy over every validation token, in nats),
    ``val_ppl`` (perplexity, ``exp(val_loss)``) and ``val_bpb`` (bits per byte, ``val_loss / ln 2``).

    On its own it trains with ``torch.optim.AdamW`` (lr 1e-3, weight decay 0.01, as ``configs/char_lm.yaml``);
    LightningCLI's ``--optimizer NAME`` replaces that.

    Args:
        context: the longest input, in tokens (the number of learned positions).
        width: size of the embeddings and of the residual stream.
        layers: transformer blocks.
        heads: attention heads per block; must divide ``width``.
        mlp_ratio: hidden width of each MLP over ``width``.
        norm: ``"layernorm"`` (pre-norm), ``"rmsnorm"`` (pre-norm) or ``"none"``.
        dropout: dropout probability on the embeddings and every residual branch; 0 disables it.
        tie_embeddings: use the token embedding as the output head's weight (no head bias then).

    Example:
        >>> model = CharTransformer(context=16, width=32, layers=2, heads=4, norm="rmsnorm")
        >>> model(torch.randint(0, 256, (3, 10))).shape
        torch.Size([3, 10, 256])

    References:
        Vaswani et al., "Attention Is All You Need", NeurIPS 2017 (the transformer); Radford et al.,
        "Language Models are Unsupervised Multitask Learners", OpenAI 2019 (GPT-2: pre-norm blocks, a final
        norm, tied embeddings, the residual-projection initialisation); Xiong et al., "On Layer Normalization
        in the Transformer Architecture", ICML 2020 (pre-norm); Zhang and Sennrich, "Root Mean Square Layer
        Normalization", NeurIPS 2019 (RMSNorm).
    """

    def __init__(
        self,
        context: int = 64,
        width: int = 128,
        layers: int = 4,
        heads: int = 4,
        mlp_ratio: int = 4,
        norm: str = "layernorm",
        dropout: float = 0.0,
        tie_embeddings: bool = True,
    ) -> None:
        super().__init__()
        check_positive_int("context", context)
        check_positive_int("width", width)
        check_positive_int("layers", layers)
        check_positive_int("heads", heads)
        if width % heads:
            raise ValueError(f"Invalid heads: {heads!r} (expected a divisor of width = {width})")
        check_positive_int("mlp_ratio", mlp_ratio)
        check_choice("norm", norm, NORMS)
        check_float("dropout", dropout, low=0.0, high=1.0, high_inclusive=False)
        check_bool("tie_embeddings", tie_embeddings)
        self.save_hyperparameters()
        self.context = context
        self.token_embedding = nn.Embedding(VOCAB_SIZE, width)
        self.position_embedding = nn.Embedding(context, width)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, norm, dropout) for _ in range(layers))
        self.final_norm = make_norm(norm, width)
        self.head = nn.Linear(width, VOCAB_SIZE, bias=not tie_embeddings)
        if tie_embeddings:
            self.head.weight = self.token_embedding.weight
        self._initialize(layers)
        self.val_mean_loss = MeanMetric()

    def _initialize(self, layers: int) -> None:
        """GPT-2's initialisation; see the class docstring."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for block in self.blocks:
            for projection in (block.attention.out, block.mlp[-1]):
                nn.init.normal_(projection.weight, mean=0.0, std=INIT_STD / math.sqrt(2 * layers))

    @override
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Next-byte logits, shape ``(batch, length, 256)``, of token ids of shape ``(batch, length)``.

        The logits at position ``t`` depend on ``tokens[:, : t + 1]`` only; ``length`` may be at most
        ``context``.
        """
        length = tokens.shape[-1]
        if length > self.context:
            raise ValueError(
                f"Invalid tokens: length {length} (expected <= context = {self.context}, the model's; "
                "give the datamodule a context no longer than the model's)"
            )
        positions = torch.arange(length, device=tokens.device)
        x = self.dropout(self.token_embedding(tokens) + self.position_embedding(positions))
        for block in self.blocks:
            x = block(x)
        return self.head(self.final_norm(x))

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy, in nats per token, of predicting ``targets`` from ``inputs`` (same shape)."""
        logits = self(inputs)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))

    @override
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        loss = self.loss(inputs, targets)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=inputs.shape[0])
        return loss

    @override
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        inputs, targets = batch
        # weighted by the batch's tokens: the epoch's value is the mean over every validation token
        self.val_mean_loss.update(self.loss(inputs, targets), weight=targets.numel())

    @override
    def on_validation_epoch_end(self) -> None:
        loss = self.val_mean_loss.compute()  # synchronised across processes under DDP
        self.val_mean_loss.reset()
        self.log("val_loss", loss, prog_bar=True)
        self.log("val_ppl", loss.exp(), prog_bar=True)
        self.log("val_bpb", loss / math.log(2))

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3, weight_decay=0.01)
