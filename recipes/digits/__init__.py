"""Handwritten digits: scikit-learn's bundled 8x8 images (1797 of them, no download) and a small MLP.

Example::

    lightning-opt fit --config configs/digits.yaml                         # AdaLo, the config's optimizer
    lightning-opt fit --config configs/digits.yaml --optimizer AdamAtan2 --optimizer.lr 3e-3
"""

from lightning_opt.recipes.digits.data import DigitsDataModule
from lightning_opt.recipes.digits.model import DigitsClassifier

__all__ = ["DigitsClassifier", "DigitsDataModule"]
