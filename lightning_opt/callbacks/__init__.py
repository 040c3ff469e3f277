"""Lightning callbacks that feed optimizers and act on gradients."""

from lightning_opt.callbacks.loss_feeder import LossFeeder, LossDriven

__all__ = ["LossDriven", "LossFeeder"]
