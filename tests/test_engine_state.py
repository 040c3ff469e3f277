"""Parameter groups: one check, in ``add_param_group``, refuses complex parameters on every path."""

from __future__ import annotations

import pytest
import torch

from lightning_opt.registry import REGISTRY

NAMES = list(REGISTRY)


def _complex() -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.randn(3, 2, dtype=torch.complex64))


@pytest.mark.parametrize("name", NAMES)
def test_complex_parameters_are_refused_at_construction(name: str) -> None:
    with pytest.raises(ValueError, match=rf"^Invalid params: {name} does not support complex parameters \(got one of "
                       r"dtype torch.complex64 and shape \(3, 2\)\)"):
        REGISTRY[name].cls([torch.nn.Parameter(torch.randn(2)), _complex()])


@pytest.mark.parametrize("name", NAMES)
def test_complex_parameters_are_refused_by_add_param_group_and_the_optimizer_is_unchanged(name: str) -> None:
    real = torch.nn.Parameter(torch.randn(2))
    optimizer = REGISTRY[name].cls([real])
    with pytest.raises(ValueError, match=rf"^Invalid params: {name} does not support complex parameters"):
        optimizer.add_param_group({"params": [torch.nn.Parameter(torch.randn(4)), _complex()]})
    with pytest.raises(ValueError, match="complex"):
        optimizer.add_param_group({"params": _complex()})  # a lone tensor, as torch accepts it
    assert len(optimizer.param_groups) == 1 and optimizer.param_groups[0]["params"] == [real]
    extra = torch.nn.Parameter(torch.randn(4))
    optimizer.add_param_group({"params": [extra]})  # a real group is still accepted afterwards
    assert optimizer.param_groups[1]["params"] == [extra]
