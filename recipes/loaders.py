"""``TrainValDataModule``: the data loaders that every recipe's ``LightningDataModule`` shares."""

from __future__ import annotations

from typing import Optional

import lightning.pytorch as pl
from torch.utils.data import DataLoader, Dataset
from typing_extensions import override


class TrainValDataModule(pl.LightningDataModule):
    """A ``LightningDataModule`` whose ``setup`` builds ``train_dataset`` and ``val_dataset`` in memory: training
    batches of ``batch_size`` shuffled with the global (seeded) generator, validation batches in order, both
    loaded in the main process (``num_workers=0``: the recipes' data is small).

    A subclass sets ``batch_size`` in its ``__init__`` and the two datasets in ``setup``.

    Example:
        >>> from lightning_opt.recipes.digits import DigitsDataModule
        >>> data = DigitsDataModule(batch_size=8)
        >>> data.val_dataloader()
        Traceback (most recent call last):
        ...
        RuntimeError: DigitsDataModule.val_dataset is not built yet: call setup() first
        >>> data.setup("fit")
        >>> next(iter(data.val_dataloader()))[0].shape
        torch.Size([8, 64])
    """

    batch_size: int
    train_dataset: Optional[Dataset]
    val_dataset: Optional[Dataset]

    @override
    def train_dataloader(self) -> DataLoader:
        return DataLoader(self._dataset("train_dataset"), batch_size=self.batch_size, shuffle=True, num_workers=0)

    @override
    def val_dataloader(self) -> DataLoader:
        return DataLoader(self._dataset("val_dataset"), batch_size=self.batch_size, shuffle=False, num_workers=0)

    def _dataset(self, name: str) -> Dataset:
        dataset = getattr(self, name, None)
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.{name} is not built yet: call setup() first")
        return dataset
