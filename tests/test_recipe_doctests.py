"""The recipes' docstring examples, run under the name the wheel installs them as (``lightning_opt.recipes``).

pytest's ``--doctest-modules`` would import the top-level ``recipes/`` folder as a package called ``recipes``
(a second copy of every class), so ``pyproject.toml`` leaves it out of ``testpaths`` and this file runs the
examples instead.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import lightning_opt.recipes

RECIPE_MODULES = sorted(
    info.name for info in pkgutil.walk_packages(lightning_opt.recipes.__path__, prefix="lightning_opt.recipes.")
)


def test_every_recipe_module_is_found() -> None:
    assert "lightning_opt.recipes.digits.data" in RECIPE_MODULES
    assert "lightning_opt.recipes.digits_vae.model" in RECIPE_MODULES


@pytest.mark.parametrize("name", ["lightning_opt.recipes", *RECIPE_MODULES])
def test_recipe_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__name__.startswith("lightning_opt.recipes")
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in doctest.DocTestFinder().find(module, name):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples of {name} failed (above)"
