"""The optimizers, one short module each, built from :mod:`lightning_opt.transforms`."""

from lightning_opt.optim.adafactor import Adafactor
from lightning_opt.optim.adalo import AdaLo
from lightning_opt.optim.adam_atan2 import AdamAtan2
from lightning_opt.optim.adam_family import PNM, AdaMomentum, AdaNorm, AdaPNM, DiffGrad, Lamb, SAdam
from lightning_opt.optim.amos import Amos
from lightning_opt.optim.lookahead import Lookahead
from lightning_opt.optim.muon import Muon
from lightning_opt.optim.nsgda import NSGDA
from lightning_opt.optim.sm3 import SM3
from lightning_opt.optim.smmf import SMMF

__all__ = ["NSGDA", "AdaLo", "Adafactor", "AdamAtan2", "AdaMomentum", "AdaNorm", "AdaPNM", "DiffGrad", "PNM", "SAdam"]
__all__ += ["Amos", "SM3"]
__all__ += ["SMMF"]
__all__ += ["Lookahead"]
__all__ += ["Lamb"]
__all__ += ["Muon"]
