"""Write the last latent picture of a run to a PNG file and print the run's final validation scalars.

Usage::

    python -m lightning_opt.recipes.digits_vae.export_latents LOGDIR OUT.png [--tag latent/scatter]

``LOGDIR`` is a run's version directory (``logs/digits_vae_adalo/version_0``) or any directory above it
(``logs/digits_vae_adalo``): the directory holding the most recently written event file is used, so the
latest run wins. The image is copied byte for byte: TensorBoard stores it PNG-encoded already.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from lightning_opt.recipes.digits_vae.model import LATENT_TAG

SCALARS = ("val_recon", "val_kl", "val_loss")
"""The scalars whose last value is printed."""


def latest_run_dir(log_dir: str | Path) -> Path:
    """The directory, ``log_dir`` itself or below it, that holds the most recently modified event file.

    Raises:
        FileNotFoundError: no event file under ``log_dir``.
    """
    events = sorted(Path(log_dir).rglob("events.out.tfevents.*"), key=lambda path: path.stat().st_mtime)
    if not events:
        raise FileNotFoundError(f"no TensorBoard event file under {log_dir}")
    return events[-1].parent


def export_last_image(
    log_dir: str | Path, out: str | Path, tag: str = LATENT_TAG
) -> tuple[Path, int, dict[str, float]]:
    """Copy the last image logged under ``tag`` in the latest run below ``log_dir`` to the file ``out``.

    Args:
        log_dir: a run's directory or a directory above it (see the module docstring).
        out: the PNG file to write; its parent directories are created.
        tag: the image's TensorBoard tag.

    Returns:
        ``(run directory, global step of the image, {scalar: last value})`` for the scalars of
        :data:`SCALARS` that the run logged.

    Raises:
        FileNotFoundError: no event file under ``log_dir``.
        KeyError: the run has no image under ``tag``.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = latest_run_dir(log_dir)
    events = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    if tag not in events.Tags()["images"]:
        raise KeyError(f"no image tagged {tag!r} in {run_dir} (images: {events.Tags()['images']})")
    last = events.Images(tag)[-1]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(last.encoded_image_string)
    scalars = {name: events.Scalars(name)[-1].value for name in SCALARS if name in events.Tags()["scalars"]}
    return run_dir, last.step, scalars


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m lightning_opt.recipes.digits_vae.export_latents", description=__doc__.split("\n")[0]
    )
    parser.add_argument("log_dir", help="a run's directory or a directory above it (the latest run is used)")
    parser.add_argument("out", help="the PNG file to write")
    parser.add_argument("--tag", default=LATENT_TAG, help=f"the image's TensorBoard tag (default: {LATENT_TAG})")
    args = parser.parse_args(argv)
    try:
        run_dir, step, scalars = export_last_image(args.log_dir, args.out, args.tag)
    except (FileNotFoundError, KeyError) as error:
        print(f"error: {error.args[0]}", file=sys.stderr)
        return 1
    shown = ", ".join(f"{name} {value:.3f}" for name, value in scalars.items())
    print(f"{args.out}: {args.tag!r} at step {step} from {run_dir}" + (f"\n  final {shown}" if shown else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
