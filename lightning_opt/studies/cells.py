"""A study's cells (optimizer x setting x seed), the key that names each one, and the file that keeps their results.

A cell's key is a digest of everything that defines its run: the contents of the config files (not their paths),
the optimizer's class path, the setting's command-line arguments, the seed, the accelerator and the extra ``fit``
arguments. A result is saved under its key the moment its cell finishes, so that rerunning the same study skips it;
a study whose config, grid or arguments changed computes other keys and runs those cells afresh, while the old
results stay in the file, unused.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

FORMAT = 1
"""The version of the results file's layout."""


@dataclass(frozen=True)
class Setting:
    """One setting of a study, the same for every optimizer: what it is called and the arguments it adds.

    Args:
        values: what the tables group by, e.g. ``{"kappa": 0.3}`` or ``{"warmup": "linear", "step_scale": 10.0}``.
        args: the ``lightning-opt fit`` arguments that make it, placed after ``--optimizer NAME``.

    Example:
        >>> Setting({"lr": 0.001}, ("--optimizer.lr", "0.001")).label()
        'lr=0.001'
    """

    values: Mapping[str, Any] = field(default_factory=dict)
    args: tuple[str, ...] = ()

    def label(self) -> str:
        """``name=value`` pairs, comma-separated; ``default`` for an empty setting."""
        return ", ".join(f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}"
                         for name, value in self.values.items()) or "default"


@dataclass(frozen=True)
class Cell:
    """One run of a study.

    Args:
        optimizer: the optimizer's name as the study was given it (the tables' row label).
        class_path: its full class path (what the key uses, so ``adamw`` and ``AdamW`` are one optimizer).
        setting: the setting.
        seed: the value of ``--seed_everything``.
    """

    optimizer: str
    class_path: str
    setting: Setting
    seed: int

    def label(self) -> str:
        """``AdamW lr=0.001 seed 0``."""
        return f"{self.optimizer} {self.setting.label()} seed {self.seed}"


@dataclass(frozen=True)
class FitBase:
    """What every cell of a study shares.

    Args:
        configs: the config files, in order (``--config`` each).
        config_digests: the SHA-256 of each file's contents.
        accelerator: ``--trainer.accelerator``.
        fit_args: further ``lightning-opt fit`` arguments, given to every cell last (so they win).
    """

    configs: tuple[str, ...]
    config_digests: tuple[str, ...]
    accelerator: str = "cpu"
    fit_args: tuple[str, ...] = ()

    @classmethod
    def from_files(
        cls, configs: Sequence[str | Path], accelerator: str = "cpu", fit_args: Sequence[str] = ()
    ) -> FitBase:
        """Read the configs' digests."""
        digests = tuple(hashlib.sha256(Path(path).read_bytes()).hexdigest() for path in configs)
        return cls(tuple(str(path) for path in configs), digests, accelerator, tuple(fit_args))


def cell_key(cell: Cell, base: FitBase) -> str:
    """The digest (16 hex digits) of everything that defines ``cell``'s run.

    Example:
        >>> base = FitBase(("a.yaml",), ("0" * 64,))
        >>> cell = Cell("AdamW", "torch.optim.AdamW", Setting({"lr": 0.01}, ("--optimizer.lr", "0.01")), 0)
        >>> key = cell_key(cell, base)
        >>> len(key), key == cell_key(cell, FitBase(("moved/a.yaml",), ("0" * 64,)))  # contents, not paths
        (16, True)
        >>> key == cell_key(cell, FitBase(("a.yaml",), ("1" * 64,)))  # a config edited
        False
    """
    definition = {
        "class_path": cell.class_path,
        "setting": list(cell.setting.args),
        "seed": cell.seed,
        "configs": list(base.config_digests),
        "accelerator": base.accelerator,
        "fit_args": list(base.fit_args),
    }
    return hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()[:16]


class ResultStore:
    """The results of a study's finished cells, by key, in a JSON file rewritten (atomically) at each result.

    Args:
        path: the file (created with its folder at the first result).

    Raises:
        ValueError: the file exists but is not a results file of this layout.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "cells.json"
        >>> ResultStore(path).put("k1", {"status": "ok"})
        >>> ResultStore(path).get("k1"), ResultStore(path).get("k2")
        ({'status': 'ok'}, None)
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.records: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text())
            except (OSError, ValueError) as error:
                raise ValueError(f"{self.path} is not a study results file ({error})") from None
            if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("cells"), dict):
                raise ValueError(f"{self.path} is not a study results file of format {FORMAT}")
            self.records = data["cells"]

    def get(self, key: str) -> Optional[dict[str, Any]]:
        """The saved result of the cell ``key``, or ``None``."""
        return self.records.get(key)

    def put(self, key: str, record: dict[str, Any]) -> None:
        """Save ``record`` under ``key`` and rewrite the file (a temporary file renamed over it)."""
        self.records[key] = record
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(json.dumps({"format": FORMAT, "cells": self.records}, indent=1, sort_keys=True))
        os.replace(temporary, self.path)


__all__ = ["FORMAT", "Cell", "FitBase", "ResultStore", "Setting", "cell_key"]
