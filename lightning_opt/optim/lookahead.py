"""Lookahead: slow weights that follow any optimizer's fast weights, synchronised every ``k`` steps."""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, Optional, Union

import torch
from torch.optim.optimizer import ParamsT

from lightning_opt.validation import check_float, check_positive_int

__all__ = ["Lookahead", "OptimizerFactory"]

OptimizerFactory = Callable[[Iterable[Any]], torch.optim.Optimizer]
"""Builds the inner optimizer from the parameters: a class (``torch.optim.AdamW``), a ``functools.partial``
or, from LightningCLI, a ``class_path`` / ``init_args`` pair (the same type as Lightning's
``OptimizerCallable``)."""

_STATE_KEY = "lookahead"
"""The key of Lookahead's own entry in its ``state_dict``, next to the inner optimizer's entries."""


class Lookahead(torch.optim.Optimizer):
    r"""Lookahead around any optimizer: every ``k`` steps the slow weights move ``alpha`` of the way to the fast.

    The inner optimizer updates the model's weights (the fast weights) as usual. Lookahead keeps a copy of
    every parameter (the slow weights, initially the parameters) and, after every ``k``-th step of a
    parameter group::

        slow <- slow + alpha * (fast - slow)
        fast <- slow

    computed as ``fast.lerp_(slow, 1 - alpha); slow.copy_(fast)`` with one ``torch._foreach_*`` call per
    group (the same numbers as pytorch_optimizer's ``Lookahead``). Every parameter of the group is
    synchronised, with or without a gradient at that step (pytorch_optimizer's skips those without one,
    which leaves them on their fast value if they had a gradient earlier in the period).

    It is a ``torch.optim.Optimizer`` that shares the inner optimizer's ``param_groups`` (the same list),
    ``state`` and ``defaults``: a learning-rate scheduler built on the Lookahead sets the inner optimizer's
    ``lr``, and Lightning's ``configure_optimizers`` and LightningCLI (``--optimizer lightning_opt.Lookahead
    --optimizer.optimizer AdamW``) can return it. ``step`` forwards its arguments to the inner step
    (``closure``, AdaLo's ``loss=``), and any public attribute it lacks is the inner optimizer's
    (``set_loss``, so that :class:`~lightning_opt.callbacks.LossFeeder` feeds a wrapped AdaLo).

    ``state_dict()`` is the inner optimizer's, plus a ``"lookahead"`` entry with the slow weights (by
    parameter index, like ``"state"``), each group's steps since its last synchronisation and, for
    information, ``k`` and ``alpha``: it loads with ``torch.load(..., weights_only=True)``, and a run
    resumed from it (a Lightning ``ckpt_path`` too) is bit-identical to one never interrupted. ``k`` and
    ``alpha`` are those given at construction: :meth:`load_state_dict` keeps them, and pickling and
    ``copy.deepcopy`` carry them along.

    Args:
        params: the optimizer to wrap; or the parameters (an iterable of tensors or of parameter-group dicts),
            from which ``optimizer`` builds it. LightningCLI passes the model's parameters here.
        optimizer: builds the inner optimizer from ``params`` (``torch.optim.AdamW``, ``functools.partial(
            lightning_opt.AdaLo, lr=1e-3)``); only when ``params`` are parameters.
        k: the number of steps of a parameter group between two synchronisations, an integer >= 1.
        alpha: the fraction of the way from the slow to the fast weights that the slow weights move at each
            synchronisation, in (0, 1]; 1 follows the inner optimizer alone.

    Raises:
        ValueError: ``k`` or ``alpha`` out of range (the message names the argument and the value).
        TypeError: ``params`` is an optimizer and ``optimizer`` is given too, or it is not and ``optimizer``
            is missing, not callable or does not build a ``torch.optim.Optimizer``.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> optimizer = Lookahead(torch.optim.SGD(model.parameters(), lr=0.1), k=5, alpha=0.5)
        >>> scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        >>> for _ in range(2):
        ...     model(torch.randn(8, 4)).square().mean().backward()
        ...     optimizer.step()
        ...     optimizer.zero_grad()
        ...     scheduler.step()
        >>> optimizer.optimizer.param_groups[0]["lr"]  # the scheduler reached the inner SGD
        0.025
        >>> state = optimizer.state_dict()["lookahead"]
        >>> state["steps"], len(state["slow"])
        ([2], 2)

        In a LightningModule, ``configure_optimizers`` returns it like any optimizer::

            def configure_optimizers(self):
                optimizer = Lookahead(torch.optim.AdamW(self.parameters(), lr=1e-3), k=6, alpha=0.5)
                scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=100)
                return {"optimizer": optimizer, "lr_scheduler": scheduler}

    References:
        Zhang, Lucas, Hinton, Ba, "Lookahead Optimizer: k steps forward, 1 step back", NeurIPS 2019,
        arXiv:1907.08610.
    """

    def __init__(
        self,
        params: Union[torch.optim.Optimizer, ParamsT],
        optimizer: Optional[OptimizerFactory] = None,
        k: int = 5,
        alpha: float = 0.5,
    ) -> None:
        self._k = check_positive_int("k", k)
        self._alpha = check_float("alpha", alpha, low=0.0, low_inclusive=False, high=1.0)
        self.optimizer: torch.optim.Optimizer = _inner_optimizer(params, optimizer)
        """The wrapped optimizer, which takes every step."""
        self._slow: dict[torch.Tensor, torch.Tensor] = {}
        self._steps: list[int] = []
        self._init_hooks()
        self._track_new_parameters()

    # ------------------------------------------------------------------ what it shares with the inner optimizer
    @property
    def k(self) -> int:
        """The number of steps of a parameter group between two synchronisations (set at construction)."""
        return self._k

    @property
    def alpha(self) -> float:
        """How far the slow weights move towards the fast ones at a synchronisation (set at construction)."""
        return self._alpha

    @property  # type: ignore[override]
    def param_groups(self) -> list[dict[str, Any]]:
        """The inner optimizer's parameter groups: the same list, whatever replaces it (``load_state_dict``)."""
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.optimizer.param_groups = value

    @property  # type: ignore[override]
    def state(self) -> Any:
        """The inner optimizer's per-parameter state (the slow weights are kept apart, see :meth:`state_dict`)."""
        return self.optimizer.state

    @state.setter
    def state(self, value: Any) -> None:
        self.optimizer.state = value

    @property  # type: ignore[override]
    def defaults(self) -> dict[str, Any]:
        """The inner optimizer's defaults (used by ``add_param_group``)."""
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self.optimizer.defaults = value

    def __getattr__(self, name: str) -> Any:
        """A public attribute of the inner optimizer that Lookahead lacks (``set_loss``, ``last_step_sizes``)."""
        if name.startswith("_") or name == "optimizer":  # private ones are torch's machinery: never borrowed
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(self.optimizer, name)

    # ------------------------------------------------------------------ the step
    def step(self, closure: Optional[Callable[[], Any]] = None, **kwargs: Any) -> Any:  # type: ignore[override]
        """The inner optimizer's step, then the synchronisation of every group whose ``k``-th step it was.

        Args:
            closure: passed on to the inner step (re-evaluates the model and returns the loss).
            **kwargs: passed on to the inner step (AdaLo's ``loss``).

        Returns:
            What the inner step returned.
        """
        self._track_new_parameters()  # groups the inner optimizer got without us (its add_param_group)
        loss = self.optimizer.step(closure, **kwargs)
        for index, group in enumerate(self.param_groups):
            self._steps[index] += 1
            if self._steps[index] >= self._k:
                self._steps[index] = 0
                self._synchronise(group)
        return loss

    @torch.no_grad()
    def _synchronise(self, group: dict[str, Any]) -> None:
        fast = list(group["params"])
        if not fast:
            return
        slow = [self._slow_weights(param) for param in fast]
        torch._foreach_lerp_(fast, slow, 1.0 - self._alpha)  # fast + (1 - alpha)(slow - fast) = the new slow
        torch._foreach_copy_(slow, fast)

    def _slow_weights(self, param: torch.Tensor) -> torch.Tensor:
        slow = self._slow[param]
        if slow.device != param.device or slow.dtype != param.dtype:  # the model moved (Lightning's teardown)
            slow = self._slow[param] = slow.to(device=param.device, dtype=param.dtype)
        return slow

    def zero_grad(self, set_to_none: bool = True) -> None:
        """The inner optimizer's ``zero_grad``."""
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the inner optimizer; its slow weights start at its parameters, its steps at zero.

        Args:
            param_group: the parameters and the group's hyper-parameters, as for any optimizer.
        """
        self.optimizer.add_param_group(param_group)
        self._track_new_parameters()

    def _track_new_parameters(self) -> None:
        groups = self.param_groups
        if len(self._steps) == len(groups) and len(self._slow) == sum(len(group["params"]) for group in groups):
            return
        del self._steps[len(groups) :]
        self._steps.extend([0] * (len(groups) - len(self._steps)))
        with torch.no_grad():
            for group in groups:
                for param in group["params"]:
                    if param not in self._slow:
                        self._slow[param] = param.detach().clone()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The inner optimizer's ``state_dict`` with a ``"lookahead"`` entry.

        Returns:
            The inner optimizer's entries (``"state"``, ``"param_groups"``) and ``"lookahead"``: ``"slow"``,
            the slow weights by parameter index (the numbering of ``"state"``: the parameters of every group,
            in order), ``"steps"``, each group's steps since its last synchronisation, and ``"k"`` and
            ``"alpha"``. Tensors, numbers, lists and dicts only: ``torch.load(..., weights_only=True)`` reads it.
        """
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        self._track_new_parameters()
        inner = self.optimizer.state_dict()
        parameters = [param for group in self.param_groups for param in group["params"]]
        own: dict[str, Any] = {
            "k": self._k,
            "alpha": self._alpha,
            "steps": list(self._steps),
            "slow": {index: self._slow[param] for index, param in enumerate(parameters)},
        }
        if _STATE_KEY in inner:  # a Lookahead inside a Lookahead
            own["inner"] = inner[_STATE_KEY]
        state_dict = {**inner, _STATE_KEY: own}
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            result = post_hook(self, state_dict)
            if result is not None:
                state_dict = result
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict`: the inner optimizer's part into it, the slow weights and steps here.

        ``k`` and ``alpha`` stay those of this Lookahead. The slow weights are copied onto each parameter's
        device and dtype. A checkpoint of the inner optimizer alone (no ``"lookahead"`` entry) loads with a
        warning: the slow weights restart from the current parameters.

        Args:
            state_dict: what :meth:`state_dict` returned (possibly through ``torch.save`` / ``torch.load``).

        Raises:
            ValueError: if the checkpoint's slow weights do not match this optimizer's parameters (number,
                shapes) or groups.
        """
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        inner = {key: value for key, value in state_dict.items() if key != _STATE_KEY}
        own = state_dict.get(_STATE_KEY)
        if own is not None and "inner" in own:
            inner[_STATE_KEY] = own["inner"]
        parameters = [param for group in self.param_groups for param in group["params"]]
        if own is not None:
            self._check_saved(own, parameters)
        self.optimizer.load_state_dict(inner)
        parameters = [param for group in self.param_groups for param in group["params"]]
        if own is None:
            warnings.warn(
                "Lookahead.load_state_dict: the state dict has no 'lookahead' entry (a checkpoint of the inner "
                "optimizer alone?); the slow weights restart from the current parameters",
                stacklevel=2,
            )
            self._slow = {}
            self._steps = []
        else:
            with torch.no_grad():
                self._slow = {
                    param: own["slow"][index].to(device=param.device, dtype=param.dtype, copy=True)
                    for index, param in enumerate(parameters)
                }
            self._steps = [int(steps) for steps in own["steps"]]
        self._track_new_parameters()
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def _check_saved(self, own: dict[str, Any], parameters: list[torch.Tensor]) -> None:
        slow, steps = own.get("slow"), own.get("steps")
        if not isinstance(slow, dict) or not isinstance(steps, (list, tuple)):
            raise ValueError("Invalid state_dict: its 'lookahead' entry lacks 'slow' or 'steps'")
        if len(steps) != len(self.param_groups):
            raise ValueError(
                f"Invalid state_dict: it has Lookahead steps for {len(steps)} parameter groups, "
                f"this optimizer has {len(self.param_groups)}"
            )
        if sorted(slow) != list(range(len(parameters))):
            raise ValueError(
                f"Invalid state_dict: it has slow weights for {len(slow)} parameters, this optimizer has "
                f"{len(parameters)}"
            )
        for index, param in enumerate(parameters):
            if tuple(slow[index].shape) != tuple(param.shape):
                raise ValueError(
                    f"Invalid state_dict: the slow weights of parameter {index} have shape "
                    f"{tuple(slow[index].shape)}, the parameter {tuple(param.shape)}"
                )

    # ------------------------------------------------------------------ torch.optim.Optimizer's machinery
    def _init_hooks(self) -> None:
        self._optimizer_step_pre_hooks: dict[int, Callable[..., Any]] = OrderedDict()
        self._optimizer_step_post_hooks: dict[int, Callable[..., Any]] = OrderedDict()
        self._optimizer_state_dict_pre_hooks: dict[int, Callable[..., Any]] = OrderedDict()
        self._optimizer_state_dict_post_hooks: dict[int, Callable[..., Any]] = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks: dict[int, Callable[..., Any]] = OrderedDict()
        self._optimizer_load_state_dict_post_hooks: dict[int, Callable[..., Any]] = OrderedDict()
        self._warned_capturable_if_run_uncaptured = True
        self._patch_step_function()  # step pre/post hooks and the profiler, as torch.optim.Optimizer.__init__

    _PICKLED = ("optimizer", "_k", "_alpha", "_slow", "_steps")
    """What pickling and ``copy.deepcopy`` carry (hooks are dropped, as torch.optim drops them)."""

    def __getstate__(self) -> dict[str, Any]:
        return {name: self.__dict__[name] for name in self._PICKLED}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({name: state[name] for name in self._PICKLED})
        self._init_hooks()

    def __repr__(self) -> str:
        inner = "\n".join("    " + line for line in repr(self.optimizer).splitlines())
        return f"{type(self).__name__}(k={self._k}, alpha={self._alpha},\n{inner}\n)"


def _inner_optimizer(params: Any, optimizer: Any) -> torch.optim.Optimizer:
    """The optimizer to wrap: ``params`` itself, or what ``optimizer`` builds from ``params``."""
    if isinstance(params, torch.optim.Optimizer):
        if optimizer is not None:
            raise TypeError(
                f"Invalid optimizer: {optimizer!r} (Lookahead got an optimizer to wrap as params already; "
                "give optimizer only with parameters)"
            )
        return params
    if optimizer is None:
        raise TypeError(
            "Invalid optimizer: None (Lookahead needs the optimizer to wrap: Lookahead(torch.optim.AdamW(params)),"
            " or Lookahead(params, optimizer=torch.optim.AdamW))"
        )
    if isinstance(optimizer, torch.optim.Optimizer) or not callable(optimizer):
        raise TypeError(
            f"Invalid optimizer: {optimizer!r} (expected a callable that builds the optimizer from the parameters,"
            " such as torch.optim.AdamW; pass an optimizer already built as the first argument instead)"
        )
    inner = optimizer(params)
    if not isinstance(inner, torch.optim.Optimizer):
        raise TypeError(f"Invalid optimizer: {optimizer!r} (it built {inner!r}, not a torch.optim.Optimizer)")
    return inner
