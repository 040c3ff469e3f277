"""``DigitsClassifier``: a small MLP, by default without normalisation layers, so the optimizer does all the work."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from lightning_opt import AdaLo
from lightning_opt.recipes.digits.data import NUM_CLASSES, NUM_FEATURES
from lightning_opt.validation import check_choice

NORMS = ("none", "layernorm")
"""The ``norm`` options of :class:`DigitsClassifier`."""


class DigitsClassifier(pl.LightningModule):
    """A multilayer perceptron for the 8x8 digits: ``Linear -> ReLU`` per hidden layer, then ``Linear``.

    By default there are no normalisation layers, so how fast and how far it trains depends on the optimizer
    alone; ``norm="layernorm"`` puts a ``LayerNorm`` between each hidden ``Linear`` and its ``ReLU`` (the
    ``lightning-opt study norm`` comparison).
    It logs ``train_loss`` (per step and per epoch, as ``train_loss_step`` / ``train_loss_epoch``),
    ``val_loss`` and ``val_acc``.

    On its own it trains with :class:`~lightning_opt.AdaLo` at its defaults (give the Trainer a
    :class:`~lightning_opt.LossFeeder`, as ``configs/digits.yaml`` does); LightningCLI's
    ``--optimizer NAME`` replaces that.

    Args:
        hidden_dims: width of each hidden layer, input side first.
        dropout: dropout probability after each hidden activation; 0 disables dropout.
        norm: ``"none"`` (the default) or ``"layernorm"``, a layer normalisation before each hidden activation.

    Example:
        >>> model = DigitsClassifier(hidden_dims=(32,))
        >>> model(torch.rand(5, 64)).shape
        torch.Size([5, 10])
        >>> [type(layer).__name__ for layer in DigitsClassifier(hidden_dims=(32,), norm="layernorm").net]
        ['Linear', 'LayerNorm', 'ReLU', 'Linear']

    References:
        J. L. Ba, J. R. Kiros, G. E. Hinton, "Layer Normalization", arXiv:1607.06450, 2016.
    """

    def __init__(self, hidden_dims: tuple[int, ...] = (128, 64), dropout: float = 0.0, norm: str = "none") -> None:
        super().__init__()
        if not isinstance(hidden_dims, (list, tuple)) or not hidden_dims or any(
            isinstance(width, bool) or not isinstance(width, int) or width < 1 for width in hidden_dims
        ):
            raise ValueError(f"Invalid hidden_dims: {hidden_dims!r} (expected one or more positive integers)")
        hidden_dims = tuple(hidden_dims)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"Invalid dropout: {dropout!r} (expected a probability in [0, 1))")
        check_choice("norm", norm, NORMS)
        self.save_hyperparameters()
        layers: list[nn.Module] = []
        width = NUM_FEATURES
        for hidden in hidden_dims:
            layers.append(nn.Linear(width, hidden))
            if norm == "layernorm":
                layers.append(nn.LayerNorm(hidden))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = hidden
        layers.append(nn.Linear(width, NUM_CLASSES))
        self.net = nn.Sequential(*layers)
        self.val_acc = MulticlassAccuracy(num_classes=NUM_CLASSES, average="micro")

    @override
    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Return the class logits, shape ``(batch, 10)``, of inputs of shape ``(batch, 64)``."""
        return self.net(inputs)

    @override
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs, labels = batch
        loss = F.cross_entropy(self(inputs), labels)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        return loss

    @override
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        inputs, labels = batch
        logits = self(inputs)
        self.val_acc(logits, labels)
        self.log("val_loss", F.cross_entropy(logits, labels), prog_bar=True)
        self.log("val_acc", self.val_acc, prog_bar=True)

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return AdaLo(self.parameters())
