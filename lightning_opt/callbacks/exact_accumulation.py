"""``ExactAccumulation``: gradient accumulation whose step equals the big batch's, for uneven micro-batches.

With ``Trainer(accumulate_grad_batches=N)`` Lightning divides every micro-batch's mean loss by ``N`` and sums
the gradients. That is the big batch's mean-loss gradient only when every micro-batch counts the same
number of items: a shorter last micro-batch, a partial window at the end of an epoch (fewer than ``N``
micro-batches, still divided by ``N``), token masks that leave a different number of tokens in each
micro-batch, or DDP ranks with different counts (DDP averages the ranks' gradients with equal weights) all
tilt the step. The big batch's gradient is the count-weighted mean

    ``sum_i n_i * grad(L_i) / sum_i n_i``

over every micro-batch ``i`` of the window on every rank, where ``L_i`` is the micro-batch's mean loss over
its ``n_i`` counted items (samples, or unmasked tokens).

The weights ``n_i / sum n_i`` need the whole window's count, which is unknown before the window's last
micro-batch has been loaded (and, under DDP, before the ranks have exchanged their counts). The callback
does not need it in advance: it splits the weight into ``n_i``, applied to each micro-batch's backward as
it happens, and ``1 / sum n_i``, applied once to the accumulated gradient after the window's last backward,
when every count is known. The gradient is linear in the loss, so the result is the same.

One optimizer step therefore costs one extra multiplication of every gradient (like a clipping pass) and,
under DDP, one all-reduce of a single number per step; the LightningModule stays as it is.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.data import extract_batch_size
from typing_extensions import override

CountFn = Callable[[Any], Any]
"""What ``count_fn`` is: the batch in, its number of counted items out (a number or a one-element tensor;
``Any`` so that LightningCLI accepts any function by its import path)."""


class ExactAccumulation(Callback):
    """Make every optimizer step use the gradient of the mean loss over all items of its accumulation window.

    Lightning's ``accumulate_grad_batches=N`` weights every micro-batch by ``1 / N``; this callback weights
    micro-batch ``i`` by its share ``n_i / sum n`` of the items of the whole window instead, across all
    data-parallel ranks, so that the step equals the one a single big batch (all of the window's
    micro-batches, on all ranks, concatenated) would take: also with a shorter last micro-batch, with the
    partial window at the end of an epoch, with token masks, and under DDP with different counts per rank.
    With ``N = 1`` under DDP it still corrects the ranks' equal weighting.

    The training step's loss must be the **mean** over the items that ``count_fn`` counts (samples by
    default; for a masked token loss, ``(loss * mask).sum() / mask.sum()`` with ``count_fn`` returning
    ``mask.sum()``). A micro-batch that counts no item gets weight 0; its loss must still be finite
    (divide by ``mask.sum().clamp(min=1)``), since a ``nan`` times 0 is still ``nan``.

    How: each micro-batch's backward is multiplied by ``n_i / r`` (``r``, a fixed reference count, keeps the
    gradients at their usual size: the mean count of the run's first micro-batch over the ranks); after
    the window's last backward, and after DDP's averaging, the gradients are multiplied once by
    ``world_size * N * r / sum n``, where the sum runs over the window's micro-batches on every rank. This
    happens before ``on_before_optimizer_step``, so every gradient callback, the Trainer's gradient
    clipping and the optimizer see the exact gradient; under a GradScaler the gradients are still scaled at
    that point, which the multiplication does not disturb. The logged training loss stays Lightning's.
    :class:`~lightning_opt.callbacks.LossFeeder` in the same Trainer weights the losses it averages by the
    same counts, so that it feeds the window's true mean loss.

    Supported: automatic optimization on one device or under DDP (``ddp``, ``ddp_spawn``, ``ddp_fork``),
    any precision; under manual optimization it warns and does nothing. Strategies that accumulate
    gradients themselves (DeepSpeed) are refused. An optimizer that calls the closure more than once per
    step (LBFGS) re-runs the window's last micro-batch onto the accumulated gradient, under Lightning's
    accumulation as under this one: use it with ``accumulate_grad_batches=1``.

    Args:
        count_fn: gives the number of counted items of a (micro-)batch, as the training step receives it
            (after the transfer to the device): a number or a one-element tensor, finite and ``>= 0``.
            ``None`` (the default) counts samples with Lightning's ``extract_batch_size`` (the length of the
            batch's first tensor). From a LightningCLI, give a function's import path
            (``--trainer.callbacks.count_fn=mypackage.data.count_tokens``); under ``ddp_spawn`` it must be
            picklable (a module-level function, not a lambda).

    Example:
        >>> import torch
        >>> import lightning.pytorch as pl
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from lightning_opt.callbacks import ExactAccumulation
        >>> class Regression(pl.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.layer = torch.nn.Linear(2, 1)
        ...     def training_step(self, batch, batch_idx):
        ...         x, y = batch
        ...         return torch.nn.functional.mse_loss(self.layer(x), y)  # the mean over the micro-batch
        ...     def configure_optimizers(self):
        ...         return torch.optim.SGD(self.parameters(), lr=0.1)
        ...     def train_dataloader(self):  # 10 rows in micro-batches of 4, 4, 2: one window of 3
        ...         data = TensorDataset(torch.randn(10, 2), torch.randn(10, 1))
        ...         return DataLoader(data, batch_size=4)
        >>> exact = ExactAccumulation()
        >>> trainer = pl.Trainer(
        ...     accelerator="cpu", max_steps=1, accumulate_grad_batches=3, callbacks=[exact], logger=False,
        ...     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        ... )
        >>> trainer.fit(Regression())
        >>> exact.last_window_count  # the step took the mean over all 10 rows: weights 4/10, 4/10, 2/10, not 1/3 each
        10.0

        For a masked token loss: ``ExactAccumulation(count_fn=lambda batch: batch["mask"].sum())``.

    References:
        - Lightning's gradient accumulation: ``Trainer(accumulate_grad_batches=...)`` and
          ``ClosureResult.from_training_step_output`` (the division by ``N``),
          https://lightning.ai/docs/pytorch/stable/common/optimization.html
        - Hugging Face Transformers' fix of the same problem for causal language models, which counts the
          window's tokens ahead of time ("Fixing Gradient Accumulation", 2024),
          https://huggingface.co/blog/gradient_accumulation
        - Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour", arXiv:1706.02677,
          section 3 (a distributed step must equal the big batch's: normalise by the total count).
    """

    def __init__(self, count_fn: CountFn | None = None) -> None:
        super().__init__()
        if count_fn is not None and not callable(count_fn):
            raise ValueError(
                f"Invalid count_fn: {count_fn!r} (expected a function of the batch that returns its number of "
                "counted items, or None to count samples)"
            )
        self.count_fn = count_fn
        self.micro_batch_count: float | torch.Tensor | None = None
        """The current micro-batch's count on this rank, as ``count_fn`` returned it (read by ``LossFeeder``)."""
        self.last_window_count: float | None = None
        """The count of the most recent window, summed over its micro-batches and over the ranks."""
        self.last_gradient_scale: float | None = None
        """What the most recent window's accumulated gradients, weighted ``n_i / r`` each, were multiplied by:
        ``world_size * N * r / last_window_count``."""
        self.reference_count: float | None = None
        """``r``: the fixed count each micro-batch's weight ``n_i / r`` is relative to (checkpointed)."""
        self._window_counts: list[float | torch.Tensor] = []
        self._uncounted = False
        self._scaled_window = False
        self._active = False

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"reference_count": self.reference_count}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        reference = state_dict.get("reference_count")
        self.reference_count = None if reference is None else float(reference)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._active = False
        if not pl_module.automatic_optimization:
            rank_zero_warn(
                "ExactAccumulation does nothing under manual optimization: weight each micro-batch's loss by "
                "its share of the window's items yourself."
            )
            return
        if trainer.strategy.handles_gradient_accumulation:
            raise MisconfigurationException(
                f"ExactAccumulation cannot act under {type(trainer.strategy).__name__}, which accumulates "
                "gradients itself: use its own accumulation settings."
            )
        self._active = True

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset_window()

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self._active:
            return
        count = self._count(batch, batch_idx)
        self.micro_batch_count = count
        self._uncounted = True
        if self.reference_count is None:
            # The mean over the ranks of their first micro-batch's count: the same number on every rank.
            mean = float(trainer.strategy.reduce(_as_tensor(count, pl_module.device), reduce_op="mean"))
            self.reference_count = mean if math.isfinite(mean) and mean > 0 else 1.0

    @override
    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        if not self._active or not loss.requires_grad or self.micro_batch_count is None:
            return
        if self._uncounted:  # once per micro-batch, however often a closure runs its backward
            self._window_counts.append(self.micro_batch_count)
            self._uncounted = False
        assert self.reference_count is not None
        weight = self.micro_batch_count / self.reference_count
        # Scales the gradient that flows out of the loss, so every parameter's, without changing the loss
        # value that other callbacks and the progress bar see.
        loss.register_hook(lambda grad: grad * (weight.to(grad.dtype) if isinstance(weight, torch.Tensor) else weight))

    @override
    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._active and not trainer.fit_loop._should_accumulate():
            # The window's last backward: Lightning steps next, and DDP has averaged the gradients.
            self._scale_window(trainer, pl_module)

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self._active and not self._scaled_window:
            # The window's last training_step returned None (no backward, single device only): Lightning
            # steps on the earlier micro-batches' gradients, so weight those.
            self._scale_window(trainer, pl_module)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._scaled_window:  # the window ended with this batch: the next one starts a new window
            self._reset_window()

    def _scale_window(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Multiply the accumulated gradients by ``world_size * N * r / (the window's count on all ranks)``."""
        local = _window_sum(self._window_counts)
        total = float(trainer.strategy.reduce(_as_tensor(local, pl_module.device), reduce_op="sum"))
        assert self.reference_count is not None
        if total > 0:
            scale = trainer.world_size * trainer.accumulate_grad_batches * self.reference_count / total
        else:
            rank_zero_warn(
                "ExactAccumulation: an accumulation window counted no item on any rank; its gradients are "
                "multiplied by zero (a big batch without items has no mean loss)."
            )
            scale = 0.0
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if grads and scale != 1.0:
            torch._foreach_mul_(grads, scale)
        self.last_window_count = total
        self.last_gradient_scale = scale
        self._scaled_window = True

    def _reset_window(self) -> None:
        self._window_counts = []
        self._uncounted = False
        self._scaled_window = False

    def _count(self, batch: Any, batch_idx: int) -> float | torch.Tensor:
        """The batch's count from ``count_fn``, checked where that needs no device synchronisation."""
        count = extract_batch_size(batch) if self.count_fn is None else self.count_fn(batch)
        if isinstance(count, torch.Tensor):
            if count.numel() != 1 or count.is_complex():
                raise ValueError(
                    f"Invalid count from count_fn for batch {batch_idx}: a tensor of shape {tuple(count.shape)} "
                    f"and dtype {count.dtype} (expected one real number)"
                )
            return count.detach().reshape(())
        if isinstance(count, bool) or not isinstance(count, (int, float)) or not math.isfinite(count) or count < 0:
            raise ValueError(
                f"Invalid count from count_fn for batch {batch_idx}: {count!r} (expected a finite number >= 0)"
            )
        return float(count)


def _window_sum(counts: list[float | torch.Tensor]) -> float:
    """The sum of a window's counts, after checking them (one device synchronisation per window at most)."""
    numbers = [count for count in counts if not isinstance(count, torch.Tensor)]
    tensors = [count for count in counts if isinstance(count, torch.Tensor)]
    if tensors:
        numbers += torch.stack([t.to(accumulation_dtype(t.device)) for t in tensors]).tolist()
    bad = [number for number in numbers if not (math.isfinite(number) and number >= 0)]
    if bad:
        raise ValueError(f"Invalid count from count_fn: {bad[0]!r} (expected a finite number >= 0)")
    return math.fsum(numbers)


def _as_tensor(count: float | torch.Tensor, device: torch.device) -> torch.Tensor:
    """``count`` as a 0-d tensor on ``device`` for a collective: float64, except on MPS (no float64 there)."""
    dtype = accumulation_dtype(device)
    if isinstance(count, torch.Tensor):
        return count.to(device=device, dtype=dtype)
    return torch.tensor(count, dtype=dtype, device=device)


def accumulation_dtype(device: torch.device) -> torch.dtype:
    """float64 to sum a window's losses and counts exactly, except on MPS, which has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64
