"""``LossFeeder``: hand loss-driven optimizers the true mean training loss of each step."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from lightning_opt.callbacks.exact_accumulation import ExactAccumulation, accumulation_dtype
from lightning_opt.validation import check_bool


@runtime_checkable
class LossDriven(Protocol):
    """An optimizer whose step uses the training loss, given to it with ``set_loss`` before ``step``."""

    def set_loss(self, loss: torch.Tensor | float) -> None: ...


class LossFeeder(Callback):
    """Feed every loss-driven optimizer (such as :class:`~lightning_opt.AdaLo`) the loss it should use.

    Before each optimizer step it gives the optimizer the mean training loss of the micro-batches whose
    gradients the step applies: it undoes Lightning's ``1 / accumulate_grad_batches`` and any GradScaler
    scaling, averages over the accumulation window, and averages across data-parallel ranks so that
    every replica takes the identical step. This works where the closure cannot help: under a GradScaler
    Lightning calls ``step`` without a closure, and under gradient accumulation the closure returns only
    the last micro-batch's loss divided by the window size.

    With :class:`~lightning_opt.callbacks.ExactAccumulation` in the same Trainer, both averages weight each
    micro-batch by its count of items (samples, unmasked tokens), as that callback weights the gradients:
    the loss fed is then the mean over every item of the window on every rank, the big batch's mean loss.
    Without it every micro-batch on every rank weighs the same, as in Lightning's own accumulation.

    Optimizers without a ``set_loss`` method are left alone, so the callback is harmless with any
    optimizer.

    It also logs the step size a loss-driven optimizer actually took (its ``last_step_sizes``, AdaLo's
    ``lr_t = lr * max(ell / kappa, eps)``), after each step, with ``pl_module.log`` and therefore on the
    Trainer's ``log_every_n_steps`` cadence, as ``<OptimizerClass>/step_size`` (``AdaLo/step_size``), or
    ``AdaLo/step_size/pg1``, ``.../pg2``... (1-based, as ``LearningRateMonitor`` names groups) when the
    optimizer has several parameter groups. ``LearningRateMonitor`` shows AdaLo's ``lr``, which is only the
    multiplier a scheduler sets; this is the number that moves the weights.

    Args:
        log_step_size: log the step size as above.

    Example::

        from lightning.pytorch import Trainer
        from lightning_opt import AdaLo, LossFeeder

        # in the LightningModule: def configure_optimizers(self): return AdaLo(self.parameters())
        trainer = Trainer(callbacks=[LossFeeder()], accumulate_grad_batches=4)
    """

    def __init__(self, log_step_size: bool = True) -> None:
        super().__init__()
        self.log_step_size = check_bool("log_step_size", log_step_size)
        self._window_sum: torch.Tensor | None = None
        self._window_weight: torch.Tensor | None = None
        self._counter: ExactAccumulation | None = None
        self.last_fed_loss: float | None = None
        """The loss given to the optimizers at the most recent step (for logging and inspection)."""

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._counter = next((c for c in trainer.callbacks if isinstance(c, ExactAccumulation)), None)
        if stage == "fit" and not pl_module.automatic_optimization:
            rank_zero_warn(
                "LossFeeder does nothing under manual optimization: give the optimizer the loss yourself, "
                "with self.optimizers().set_loss(loss) or self.optimizers().step(loss=loss)."
            )

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset()

    @override
    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        if not pl_module.automatic_optimization:
            return
        # Lightning divided the training_step loss by accumulate_grad_batches and, under a GradScaler,
        # multiplied it by the current scale: undo both to get the micro-batch's own mean loss.
        dtype = accumulation_dtype(loss.device)
        micro_batch_loss = loss.detach().to(dtype) * trainer.accumulate_grad_batches
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None and scaler.is_enabled():
            micro_batch_loss = micro_batch_loss / scaler.get_scale()
        # The micro-batch's weight: its count of items under ExactAccumulation, else 1.
        count = None if self._counter is None else self._counter.micro_batch_count
        weight = torch.ones((), dtype=dtype, device=loss.device) if count is None else _as_weight(count, loss)
        weighted = micro_batch_loss * weight
        if self._window_sum is None or self._window_weight is None:
            self._window_sum, self._window_weight = weighted, weight
        else:
            self._window_sum, self._window_weight = self._window_sum + weighted, self._window_weight + weight

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self._window_sum is None or self._window_weight is None:
            return
        # One all-reduce of (weighted loss sum, weight sum): the mean over every rank's micro-batches.
        totals = trainer.strategy.reduce(torch.stack([self._window_sum, self._window_weight]), reduce_op="sum")
        self._reset()
        loss_sum, weight_sum = (float(total) for total in totals)
        if weight_sum <= 0:  # no item in the whole window (ExactAccumulation zeroed its gradients): no loss
            return
        loss = loss_sum / weight_sum
        self.last_fed_loss = loss
        target = _unwrap(optimizer)
        if isinstance(target, LossDriven):
            target.set_loss(loss)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self.log_step_size:
            return
        for optimizer in trainer.optimizers:
            target = _unwrap(optimizer)
            step_sizes = getattr(target, "last_step_sizes", None)
            if not isinstance(target, LossDriven) or not step_sizes:
                continue
            prefix = f"{type(target).__name__}/step_size"
            for index, step_size in enumerate(step_sizes):
                if step_size is not None:
                    key = prefix if len(step_sizes) == 1 else f"{prefix}/pg{index + 1}"
                    pl_module.log(key, step_size, on_step=True, on_epoch=False, batch_size=1)

    def _reset(self) -> None:
        self._window_sum = None
        self._window_weight = None


def _unwrap(optimizer: Any) -> Any:
    """The optimizer itself or, for Lightning's wrapper, the optimizer it wraps.

    A ``LightningOptimizer`` passes ``isinstance`` checks for the wrapped class but keeps its own
    ``__dict__``, so ``set_loss`` called on the wrapper would never reach the wrapped optimizer.
    """
    return getattr(optimizer, "_optimizer", optimizer)


def _as_weight(count: float | torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
    """A micro-batch's count as a 0-d tensor of the window sums' dtype, on the loss's device."""
    dtype = accumulation_dtype(loss.device)
    if isinstance(count, torch.Tensor):
        return count.detach().to(device=loss.device, dtype=dtype).reshape(())
    return torch.tensor(float(count), dtype=dtype, device=loss.device)
