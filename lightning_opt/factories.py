"""Build optimizers for ``configure_optimizers``: by name, with the standard decay / no-decay split."""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Union

import torch
from torch import nn

from lightning_opt.engine.base import BaseOptimizer
from lightning_opt.registry import REGISTRY, find_spec
from lightning_opt.transforms.constraints import REGULARIZER_KEYS, REGULARIZERS, check_regularizer

NoDecayRule = Callable[[str, nn.Parameter, nn.Module], bool]
"""``rule(parameter_name, parameter, owning_module) -> True`` to exempt the parameter from weight decay."""

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
EMBEDDING_TYPES: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag)


def default_no_decay(name: str, param: nn.Parameter, module: nn.Module) -> bool:
    """The usual exemptions from weight decay: biases and other 0-d/1-d tensors, norm layers, embeddings.

    Unlike timm's ``param_groups_weight_decay`` (which exempts only 0-d/1-d tensors and biases), the weights
    of ``nn.Embedding`` / ``nn.EmbeddingBag`` are exempt too: decay pulls rarely seen tokens' vectors to zero
    between their updates. A classifier head tied to an embedding shares its weight, and a parameter with
    several owners is exempt if any owner exempts it, so a tied head is not decayed either.
    """
    return param.ndim <= 1 or name.endswith(".bias") or isinstance(module, NORM_TYPES + EMBEDDING_TYPES)


def param_groups_for_weight_decay(
    module: nn.Module,
    weight_decay: float,
    no_decay: Union[NoDecayRule, Sequence[str], None] = None,
    *,
    replace_default: bool = False,
    decayed_keys: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Split the trainable parameters of ``module`` into a decayed group and a group with no weight decay.

    A parameter is exempt from decay when any of these says so:

    1. the default rule :func:`default_no_decay` (biases, 0-d/1-d tensors, norm layers, embeddings), unless
       ``replace_default=True``;
    2. ``no_decay``: patterns or a rule function, which *add* exemptions to the default;
    3. the model itself, as timm models declare it: ``no_weight_decay()`` of the module or of any submodule
       returns parameter names (relative to that submodule, ``fnmatch`` patterns allowed: ``{"pos_embed",
       "cls_token"}``), ``no_weight_decay_keywords()`` returns substrings of names
       (``{"relative_position_bias_table"}``). This is the model author's statement and always applies.

    With the defaults the split equals timm's ``param_groups_weight_decay(model, wd,
    no_weight_decay_list=model.no_weight_decay())`` except that embedding weights (and heads tied to them)
    are exempt here; ``no_decay=lambda name, p, m: p.ndim <= 1 or name.endswith(".bias"),
    replace_default=True`` reproduces timm's split exactly.

    Args:
        module: the model; parameters with ``requires_grad=False`` are left out.
        weight_decay: the decay of the first group; the second group gets 0.
        no_decay: more exemptions: a rule function ``(name, param, owning_module) -> bool`` or a list of
            ``fnmatch`` patterns on the qualified parameter name (``["pos_embed", "*.gamma"]``); ``None``
            for none.
        replace_default: use ``no_decay`` instead of the default rule (it then needs a ``no_decay``;
            ``no_decay=[]`` decays everything the model does not exempt itself).
        decayed_keys: more keys for the decayed group only, such as a regulariser's
            (:func:`regularizer_group_keys`); ``None`` for none.

    Returns:
        Up to two groups, decayed first (empty ones are dropped), each with ``params`` and ``weight_decay``.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        >>> [len(g["params"]) for g in param_groups_for_weight_decay(model, 0.1)]
        [1, 3]
        >>> [len(g["params"]) for g in param_groups_for_weight_decay(model, 0.1, no_decay=["0.weight"])]
        [4]
        >>> [len(g["params"]) for g in param_groups_for_weight_decay(model, 0.1, [], replace_default=True)]
        [4]
        >>> groups = param_groups_for_weight_decay(model, 0.0, decayed_keys={"regularizer": "cpr"})
        >>> [g.get("regularizer") for g in groups]
        ['cpr', None]
    """
    if decayed_keys is not None and (not isinstance(decayed_keys, Mapping) or "params" in decayed_keys):
        raise ValueError(f"Invalid decayed_keys: {decayed_keys!r} (expected a dict of group keys other than 'params')")
    decay, exempt = _split_for_weight_decay(module, no_decay, replace_default)
    groups = [
        {**(decayed_keys or {}), "params": decay, "weight_decay": weight_decay},
        {"params": exempt, "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]


def _split_for_weight_decay(
    module: nn.Module, no_decay: Union[NoDecayRule, Sequence[str], None], replace_default: bool
) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """The decayed and the exempt trainable parameters of ``module`` (see :func:`param_groups_for_weight_decay`)."""
    if not isinstance(replace_default, bool):
        raise ValueError(f"Invalid replace_default: {replace_default!r} (expected True or False)")
    if replace_default and no_decay is None:
        raise ValueError("Invalid no_decay: None with replace_default=True (give the rule that replaces the default)")
    extra = _as_rule(no_decay)
    declared = _declared_by_model(module)

    def rule(name: str, param: nn.Parameter, owner: nn.Module) -> bool:
        by_default = not replace_default and default_no_decay(name, param, owner)
        return by_default or extra(name, param, owner) or declared(name)

    exempt_by_id: dict[int, bool] = {}
    params_by_id: dict[int, nn.Parameter] = {}
    # A parameter shared by several modules (tied embedding and output layer) is exempt if any owner exempts it.
    for module_name, child in module.named_modules(remove_duplicate=False):
        for param_name, param in child.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            full_name = f"{module_name}.{param_name}" if module_name else param_name
            params_by_id.setdefault(id(param), param)
            exempt_by_id[id(param)] = exempt_by_id.get(id(param), False) or rule(full_name, param, child)
    decay = [param for key, param in params_by_id.items() if not exempt_by_id[key]]
    exempt = [param for key, param in params_by_id.items() if exempt_by_id[key]]
    return decay, exempt


def _declared_by_model(module: nn.Module) -> Callable[[str], bool]:
    """Names the model exempts itself: ``no_weight_decay()`` / ``no_weight_decay_keywords()`` of any submodule."""
    patterns: list[str] = []
    keywords: list[tuple[str, str]] = []
    for prefix, child in module.named_modules():
        dot = f"{prefix}." if prefix else ""
        for method, into in (("no_weight_decay", "patterns"), ("no_weight_decay_keywords", "keywords")):
            declare = getattr(type(child), method, None)
            if not callable(declare):
                continue
            names = getattr(child, method)()
            if isinstance(names, str) or not all(isinstance(name, str) for name in names):
                raise ValueError(
                    f"Invalid {type(child).__name__}.{method}(): {names!r} (expected a set of parameter names)"
                )
            if into == "patterns":
                patterns += [dot + name for name in names]
            else:
                keywords += [(dot, keyword) for keyword in names]

    def declared(name: str) -> bool:
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
            return True
        return any(name.startswith(dot) and keyword in name[len(dot) :] for dot, keyword in keywords)

    return declared


def build_optimizer(
    model: Union[nn.Module, Iterable[nn.Parameter]],
    name: str,
    *,
    weight_decay: float | None = None,
    no_decay: Union[NoDecayRule, Sequence[str], None] = None,
    replace_default: bool = False,
    regularizer: str | None = None,
    regularizer_kwargs: dict[str, Any] | None = None,
    scheduler: Union[str, type[torch.optim.lr_scheduler.LRScheduler], None] = None,
    scheduler_kwargs: dict[str, Any] | None = None,
    interval: str = "step",
    **optimizer_kwargs: Any,
) -> Union[torch.optim.Optimizer, dict[str, Any]]:
    """Build an optimizer by name for a LightningModule's ``configure_optimizers``.

    An optimizer class with a ``module_param_groups(module, groups)`` static method gets the decay / no-decay
    groups split further by it: :class:`~lightning_opt.optim.muon.Muon` splits each into its hidden matrices
    (``use_muon=True``) and the rest (embeddings, the output layer, biases, norms: ``use_muon=False``), see
    :func:`~lightning_opt.optim.muon.muon_param_groups`.

    ``regularizer`` puts Norm Loss or CPR (:mod:`lightning_opt.transforms.constraints`) on the decayed group
    only, as a replacement of its weight decay: the parameters exempt from decay (biases, norm gains,
    embeddings, and what ``no_decay`` or the model exempts) get neither. CPR's authors likewise constrain the
    weight matrices and leave biases and normalisation parameters alone, and Norm Loss is defined on weight
    vectors (its unit norm means nothing for a bias). Without an explicit ``weight_decay`` the regularised group
    gets no weight decay (``weight_decay=0``); give one to apply both (Ranger21 runs Norm Loss beside its
    decoupled weight decay). The regularisers run inside the package's optimizers, so a ``torch.optim`` name
    is refused with them.

    Args:
        model: a module (its parameters are split into decay / no-decay groups) or an iterable of
            parameters (one group, no split).
        name: a registered optimizer (``"AdaLo"``, ``"NSGDA"``, ``"AdamAtan2"``, case-insensitive; see
            ``lightning-opt optimizers``) or any ``torch.optim`` class name (``"AdamW"``) for baselines.
        weight_decay: decay of the decayed group; ``None`` keeps the optimizer's default, or 0 with a
            ``regularizer``. The no-decay group always gets 0.
        no_decay: exemptions from decay added to the default rule (biases, 0-d/1-d tensors, norms,
            embeddings, and what the model's ``no_weight_decay()`` names), see
            :func:`param_groups_for_weight_decay`.
        replace_default: use ``no_decay`` instead of the default rule.
        regularizer: ``"norm_loss"`` or ``"cpr"`` on the decayed group (with a plain iterable of parameters:
            on its one group); ``None`` (default) for none. Only for the package's optimizers.
        regularizer_kwargs: the regulariser's numbers, named as its group keys: ``{"norm_loss_factor":
            1e-4}`` for Norm Loss, ``{"cpr_mu": 1.0, "cpr_warm_start": 1000}`` for CPR (those are the defaults;
            any may be left out), see :func:`regularizer_group_keys`.
        scheduler: optional ``torch.optim.lr_scheduler`` class or class name (``"CosineAnnealingLR"``).
        scheduler_kwargs: keyword arguments of the scheduler.
        interval: ``"step"`` or ``"epoch"``: when Lightning steps the scheduler.
        **optimizer_kwargs: passed to the optimizer (``lr``, ``betas``, ``compile``...).

    Returns:
        The optimizer, or with ``scheduler`` Lightning's dict
        ``{"optimizer": ..., "lr_scheduler": {"scheduler": ..., "interval": ..., "frequency": 1}}``.

    Example::

        def configure_optimizers(self):
            return lightning_opt.build_optimizer(self, "AdamAtan2", lr=3e-3, weight_decay=0.05,
                                                 scheduler="CosineAnnealingLR",
                                                 scheduler_kwargs={"T_max": self.trainer.max_steps})

        def configure_optimizers(self):  # CPR instead of weight decay on the weights; biases, norms: neither
            return lightning_opt.build_optimizer(self, "AdaLo", regularizer="cpr",
                                                 regularizer_kwargs={"cpr_warm_start": 500})
    """
    optimizer_cls = resolve_optimizer_class(name)
    keys = regularizer_group_keys(regularizer, regularizer_kwargs)
    if keys and not issubclass(optimizer_cls, BaseOptimizer):
        raise ValueError(
            f"Invalid regularizer: {regularizer!r} with {name!r} ({optimizer_cls.__module__}.{optimizer_cls.__name__} "
            "is not one of the package's optimizers, which run the regularisers; see lightning-opt optimizers)"
        )
    if weight_decay is None:
        weight_decay = 0.0 if keys else _default_weight_decay(optimizer_cls)
    if isinstance(model, nn.Module):
        params: Any = param_groups_for_weight_decay(
            model, weight_decay, no_decay, replace_default=replace_default, decayed_keys=keys
        )
        module_groups = getattr(optimizer_cls, "module_param_groups", None)
        if callable(module_groups):  # an optimizer that treats layers differently (Muon) splits them further
            params = module_groups(model, params)
    else:
        params = [{**keys, "params": list(model), "weight_decay": weight_decay}]
    if "weight_decay" not in inspect.signature(optimizer_cls).parameters:
        raise ValueError(f"Invalid name: {name!r} takes no weight_decay argument; build it directly instead")
    optimizer = optimizer_cls(params, weight_decay=weight_decay, **optimizer_kwargs)
    if scheduler is None:
        if scheduler_kwargs:
            raise ValueError(f"Invalid scheduler_kwargs: {scheduler_kwargs!r} given without a scheduler")
        return optimizer
    if interval not in ("step", "epoch"):
        raise ValueError(f"Invalid interval: {interval!r} (expected 'step' or 'epoch')")
    scheduler_cls = _resolve_scheduler(scheduler)
    lr_scheduler = scheduler_cls(optimizer, **(scheduler_kwargs or {}))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": lr_scheduler, "interval": interval, "frequency": 1}}


def regularizer_group_keys(
    regularizer: str | None = None, regularizer_kwargs: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The parameter-group keys that choose a regulariser, validated: what :func:`build_optimizer` and
    ``lightning-opt fit --regularizer.name`` put on the decayed group.

    The values are checked by :func:`~lightning_opt.transforms.constraints.check_regularizer` (the check the
    optimizers run on every group) and returned normalised, with the regulariser's defaults filled in.

    Args:
        regularizer: ``"norm_loss"``, ``"cpr"`` or ``None`` (no keys).
        regularizer_kwargs: the regulariser's own keys: ``norm_loss_factor`` for Norm Loss, ``cpr_mu`` and
            ``cpr_warm_start`` for CPR; another regulariser's key, or any with ``regularizer=None``, is refused.

    Returns:
        ``{}`` without a regulariser, else ``{"regularizer": ..., <its keys>: ...}``.

    Raises:
        ValueError: a bad name, key or value (the message names it and quotes the value).

    Example:
        >>> regularizer_group_keys("cpr", {"cpr_warm_start": 500})
        {'regularizer': 'cpr', 'cpr_mu': 1.0, 'cpr_warm_start': 500}
        >>> regularizer_group_keys("norm_loss", {"cpr_mu": 2.0})
        Traceback (most recent call last):
        ...
        ValueError: Invalid regularizer_kwargs: {'cpr_mu': 2.0} ('norm_loss' takes norm_loss_factor)
    """
    if regularizer_kwargs is not None and not isinstance(regularizer_kwargs, Mapping):
        raise ValueError(f"Invalid regularizer_kwargs: {regularizer_kwargs!r} (expected a dict or None)")
    given = dict(regularizer_kwargs or {})
    if regularizer is None:
        if given:
            raise ValueError(f"Invalid regularizer_kwargs: {given!r} given without a regularizer")
        return {}
    checked = check_regularizer(regularizer, **_known(regularizer, given))  # the name and values
    return {"regularizer": checked["regularizer"], **{key: checked[key] for key in REGULARIZER_KEYS[regularizer]}}


def _known(regularizer: Any, given: dict[str, Any]) -> dict[str, Any]:
    """``given``, if every key belongs to ``regularizer`` (an unknown name is left to ``check_regularizer``)."""
    if regularizer not in REGULARIZERS:
        return {}
    allowed = REGULARIZER_KEYS[regularizer]
    if any(key not in allowed for key in given):
        raise ValueError(f"Invalid regularizer_kwargs: {given!r} ({regularizer!r} takes {', '.join(allowed)})")
    return given


def optimizer_class_for_name(name: str) -> type[torch.optim.Optimizer] | None:
    """The class a short optimizer name stands for, or ``None``: the one naming rule of the package.

    A registered name (``AdaLo``, ``NSGDA``, ``AdamAtan2``) or else a ``torch.optim`` class name (``AdamW``,
    ``SGD``), both case-insensitive. :func:`build_optimizer` and ``lightning-opt fit --optimizer NAME`` use it.

    Args:
        name: the short name.

    Example:
        >>> optimizer_class_for_name("adamw") is torch.optim.AdamW, optimizer_class_for_name("ADALO").__name__
        (True, 'AdaLo')
    """
    spec = find_spec(name)
    if spec is not None:
        return spec.cls
    return _torch_optimizers().get(str(name).lower())


def resolve_optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """The class for a registered or ``torch.optim`` name, case-insensitive; ``ValueError`` naming it if none."""
    cls = optimizer_class_for_name(name)
    if cls is None:
        raise ValueError(
            f"Invalid name: {name!r} (expected one of {', '.join(REGISTRY)} or a torch.optim class name, any case)"
        )
    return cls


def torch_optimizer_names() -> list[str]:
    """The class names of ``torch.optim``'s optimizers (``Adam``, ``AdamW``, ``SGD``...), as torch spells them."""
    return [cls.__name__ for cls in _torch_optimizers().values()]


def _torch_optimizers() -> dict[str, type[torch.optim.Optimizer]]:
    """``torch.optim``'s optimizer classes by lower-case name."""
    found = {}
    for attribute in dir(torch.optim):
        candidate = getattr(torch.optim, attribute)
        if inspect.isclass(candidate) and issubclass(candidate, torch.optim.Optimizer):
            if candidate is not torch.optim.Optimizer:
                found[attribute.lower()] = candidate
    return found


def _resolve_scheduler(scheduler: Union[str, type]) -> type:
    candidate = scheduler if inspect.isclass(scheduler) else getattr(torch.optim.lr_scheduler, str(scheduler), None)
    base = torch.optim.lr_scheduler.LRScheduler
    if inspect.isclass(candidate) and issubclass(candidate, base) and candidate is not base:
        return candidate
    raise ValueError(f"Invalid scheduler: {scheduler!r} (expected a torch.optim.lr_scheduler class or its name)")


def _default_weight_decay(optimizer_cls: type) -> float:
    parameter = inspect.signature(optimizer_cls).parameters.get("weight_decay")
    return 0.0 if parameter is None or parameter.default is inspect.Parameter.empty else float(parameter.default)


def _as_rule(no_decay: Union[NoDecayRule, Sequence[str], None]) -> NoDecayRule:
    if no_decay is None:
        return lambda name, param, module: False
    if callable(no_decay):
        return no_decay
    if isinstance(no_decay, str) or not all(isinstance(pattern, str) for pattern in no_decay):
        raise ValueError(f"Invalid no_decay: {no_decay!r} (expected a rule function or a list of name patterns)")
    patterns = list(no_decay)
    return lambda name, param, module: any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)
