"""The step machinery shared by every optimizer in :mod:`lightning_opt.optim`."""

from lightning_opt.engine.base import BaseOptimizer, Flags, Hyperparameters, UpdateFn

__all__ = ["BaseOptimizer", "Flags", "Hyperparameters", "UpdateFn"]
