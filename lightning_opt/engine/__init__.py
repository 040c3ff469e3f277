"""The step machinery shared by every optimizer in :mod:`lightning_opt.optim`."""

from lightning_opt.engine.base import BaseOptimizer, Flags, Hyperparameters, OptionalBuffer, UpdateFn

__all__ = ["BaseOptimizer", "Flags", "Hyperparameters", "OptionalBuffer", "UpdateFn"]
