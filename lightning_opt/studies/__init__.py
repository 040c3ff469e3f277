"""Studies: the seed's claims measured on a recipe, each one command that writes a markdown table and a PNG.

``lightning-opt study NAME`` (:mod:`lightning_opt.studies.command`) runs every cell of a study (optimizer x
setting x seed) as a ``lightning-opt fit`` in its own process, saves each result the moment it finishes, skips
finished cells when rerun, and writes its table and figure. A study is a small declaration
(:class:`~lightning_opt.studies.base.Study`): the settings it runs each optimizer with, its table and its plot.

- ``lr`` (:mod:`~lightning_opt.studies.learning_rate`): final metric over a log grid of each optimizer's step
  knob; the width of the good band.
- ``warmup`` (:mod:`~lightning_opt.studies.warmup`): with and without a linear warm-up, at several step scales:
  divergences and final metric.
- ``norm`` (:mod:`~lightning_opt.studies.norm`): the model with and without normalisation layers.
- ``accumulation`` (:mod:`~lightning_opt.studies.accumulation`): a big batch against accumulated micro-batches,
  with and without :class:`~lightning_opt.ExactAccumulation`; curves overlaid.
- ``tails`` (:mod:`~lightning_opt.studies.tails`): the gradients' tail statistics over training, without
  clipping, with SoftClip and with AGC.
- ``time`` (:mod:`~lightning_opt.studies.time_to_target`): wall time and steps to a target metric.
- ``memory`` (:mod:`~lightning_opt.studies.memory`): optimizer-state bytes per parameter and peak process memory.

The Lightning side is one callback, :class:`~lightning_opt.studies.probe.StudyProbe`, which each cell's run gets.
"""

from __future__ import annotations

from lightning_opt.studies import accumulation, learning_rate, memory, norm, tails, time_to_target, warmup
from lightning_opt.studies.base import Study

STUDIES: dict[str, Study] = {
    study.name: study
    for study in (
        learning_rate.STUDY, warmup.STUDY, norm.STUDY, accumulation.STUDY, tails.STUDY, time_to_target.STUDY,
        memory.STUDY,
    )
}  # fmt: skip
"""Every study, by its ``lightning-opt study NAME``."""

__all__ = ["STUDIES", "Study"]
