"""``DigitsDataModule``: scikit-learn's 8x8 digits with a fixed, stratified train/validation split."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import TensorDataset
from typing_extensions import override

from lightning_opt.recipes.loaders import TrainValDataModule

NUM_FEATURES = 64
"""Pixels per image (8 x 8), flattened."""

NUM_CLASSES = 10
"""The digits 0 to 9."""

MAX_PIXEL = 16.0
"""The largest pixel value in the dataset; inputs are divided by it to lie in [0, 1]."""


def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """Load all 1797 images as ``(float32 inputs in [0, 1] of shape (N, 64), int64 labels of shape (N,))``."""
    from sklearn.datasets import load_digits  # the recipes' only use of scikit-learn (an optional dependency)

    images, labels = load_digits(return_X_y=True)
    inputs = torch.from_numpy(images.astype(np.float32) / MAX_PIXEL)
    return inputs, torch.from_numpy(labels.astype(np.int64))


def split_indices(labels: torch.Tensor, val_fraction: float, split_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``range(len(labels))`` into sorted, disjoint train and validation indices, stratified by label.

    The split depends only on ``labels``, ``val_fraction`` and ``split_seed`` (not on the global seed), so
    every run and every optimizer is evaluated on the same images.

    Args:
        labels: the class of every example.
        val_fraction: share of the examples held out for validation, in (0, 1).
        split_seed: seed of the shuffle before splitting.

    Returns:
        ``(train_indices, val_indices)`` as int64 tensors.

    Example:
        >>> train, val = split_indices(torch.tensor([0, 1] * 10), val_fraction=0.2, split_seed=0)
        >>> len(train), len(val)
        (16, 4)
    """
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    train, val = train_test_split(
        indices, test_size=val_fraction, stratify=labels.numpy(), random_state=split_seed, shuffle=True
    )
    return torch.from_numpy(np.sort(train)), torch.from_numpy(np.sort(val))


class DigitsDataModule(TrainValDataModule):
    """The 1797 handwritten 8x8 digits bundled with scikit-learn, flattened to 64 pixels scaled to [0, 1].

    The train/validation split is stratified by class and fixed by ``split_seed``, independently of the
    run's ``seed_everything``; the training order is shuffled with the global (seeded) generator. The
    whole dataset is a few hundred kilobytes in memory, so loading happens in the main process.

    Args:
        batch_size: examples per training and validation batch.
        val_fraction: share of the images held out for validation, in (0, 1).
        split_seed: seed of the train/validation split.

    Example:
        >>> data = DigitsDataModule(batch_size=32)
        >>> data.setup("fit")
        >>> len(data.train_dataset), len(data.val_dataset)
        (1437, 360)
    """

    def __init__(self, batch_size: int = 32, val_fraction: float = 0.2, split_seed: int = 0) -> None:
        super().__init__()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"Invalid batch_size: {batch_size!r} (expected a positive integer)")
        if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
            raise ValueError(f"Invalid val_fraction: {val_fraction!r} (expected a number strictly between 0 and 1)")
        if isinstance(split_seed, bool) or not isinstance(split_seed, int):
            raise ValueError(f"Invalid split_seed: {split_seed!r} (expected an integer)")
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.val_fraction = float(val_fraction)
        self.split_seed = split_seed
        self.train_indices: torch.Tensor | None = None
        self.val_indices: torch.Tensor | None = None
        self.train_dataset: TensorDataset | None = None
        self.val_dataset: TensorDataset | None = None

    @override
    def setup(self, stage: str) -> None:
        if self.train_dataset is not None:
            return
        inputs, labels = load_digits_tensors()
        self.train_indices, self.val_indices = split_indices(labels, self.val_fraction, self.split_seed)
        self.train_dataset = TensorDataset(inputs[self.train_indices], labels[self.train_indices])
        self.val_dataset = TensorDataset(inputs[self.val_indices], labels[self.val_indices])
