"""Command lines shared by the CLI tests: a ``fit`` of the digits config cut down to a few steps."""

from __future__ import annotations

from pathlib import Path

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "digits.yaml"
"""The checkout's digits config (the same file the package installs as ``--config digits``)."""


def fit_args(
    tmp_path: Path, *extra: str, max_epochs: int = 1, train_batches: int = 2, val_batches: int = 1, quiet: bool = True
) -> list[str]:
    """``fit`` with the digits config, ``max_epochs`` epochs of ``train_batches`` steps and ``val_batches``
    validation batches, logged to ``tmp_path``, no checkpoints; ``extra`` is appended.

    Args:
        tmp_path: where the TensorBoard logger writes.
        extra: more command-line arguments, after the defaults (so they win).
        max_epochs: ``--trainer.max_epochs``.
        train_batches: ``--trainer.limit_train_batches``.
        val_batches: ``--trainer.limit_val_batches``.
        quiet: also no sanity check, progress bar or model summary, and a log line at every step; with
            ``False`` those are left to the CLI (what a user sees).
    """
    args = [
        "fit",
        "--config",
        str(CONFIG),
        f"--trainer.logger.save_dir={tmp_path}",
        "--trainer.accelerator=cpu",
        f"--trainer.max_epochs={max_epochs}",
        f"--trainer.limit_train_batches={train_batches}",
        f"--trainer.limit_val_batches={val_batches}",
        "--trainer.enable_checkpointing=false",
    ]
    if quiet:
        args += [
            "--trainer.num_sanity_val_steps=0",
            "--trainer.log_every_n_steps=1",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
        ]
    return [*args, *extra]
