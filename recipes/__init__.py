"""Small, real training tasks (a ``LightningModule`` and a ``LightningDataModule`` each), runnable by config.

Every recipe trains in about a minute on a laptop CPU, so optimizers can be compared end to end::

    lightning-opt fit --config configs/digits.yaml --optimizer NSGDA
"""
