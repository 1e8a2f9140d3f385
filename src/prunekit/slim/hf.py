"""Slimmed Hugging Face models through ``save_pretrained`` and back.

A Hugging Face config cannot say "layer 3 has 7 heads and an FFN of 1408" (transformers 5
has no ``prune_heads`` any more), so ``from_pretrained`` of a slimmed model's folder would
build the dense shapes and refuse the weights. :func:`prunekit.slim` records its plans in the
model's config (``prunekit_slim_plans``, a list: a model slimmed twice has two), which
``save_pretrained`` writes into ``config.json``; :func:`load_slimmed` is ``from_pretrained``
with the plans applied to the model it builds, before the weights are read.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from prunekit.slim.plan import SlimPlanError, apply_slim_plan

PLANS_KEY = "prunekit_slim_plans"


def remember_plan(model: nn.Module, plan: Mapping[str, Any]) -> None:
    """Append ``plan`` to the plans ``model``'s Hugging Face config carries (a model without
    one is left alone)."""
    config = getattr(model, "config", None)
    if config is None or not callable(getattr(config, "to_dict", None)):
        return
    plans = list(getattr(config, PLANS_KEY, None) or [])
    if plan.get("modules"):
        plans.append(dict(plan))
    setattr(config, PLANS_KEY, plans)


def load_slimmed(
    folder: str | Path, model_class: type[nn.Module] | None = None, **kwargs: Any
) -> nn.Module:
    """The slimmed model ``save_pretrained`` wrote to ``folder``.

    Loaded by ``model_class.from_pretrained(folder, **kwargs)`` (default class: the config's
    first architecture), so everything ``from_pretrained`` does holds (its weight renaming
    between checkpoint and module names, tied weights, shards, ``dtype``, ``device_map``),
    with one step added: right after the dense model is built from the config, and before
    the weights are read, the plans in ``config.json`` rebuild it to the slimmed shapes. The
    model returned is of ``model_class`` itself."""
    import transformers  # optional: prunekit[hf]

    config = transformers.AutoConfig.from_pretrained(folder)
    plans = getattr(config, PLANS_KEY, None)
    if not plans:
        raise SlimPlanError(
            f"{Path(folder) / 'config.json'} has no {PLANS_KEY!r}: it is not a model pk.slim "
            "slimmed (load it with from_pretrained)"
        )
    cls = model_class or _architecture(transformers, config, Path(folder))
    model: nn.Module = _slimmed_class(cls).from_pretrained(folder, **kwargs)
    model.__class__ = cls  # the subclass only added the rebuild to __init__
    return model


def _slimmed_class(cls: type[nn.Module]) -> Any:
    """``cls`` whose ``__init__`` applies the config's slim plans after building the dense
    model; named as ``cls`` so that transformers finds its weight conversions."""

    def __init__(self: nn.Module, config: Any, *args: Any, **kwargs: Any) -> None:
        cls.__init__(self, config, *args, **kwargs)
        for plan in getattr(config, PLANS_KEY, None) or []:
            apply_slim_plan(self, plan)

    namespace = {"__init__": __init__, "__qualname__": cls.__qualname__}
    namespace["__module__"] = cls.__module__  # transformers' own: not "custom code"
    return type(cls.__name__, (cls,), namespace)


def _architecture(transformers: Any, config: Any, folder: Path) -> type[nn.Module]:
    names = getattr(config, "architectures", None) or []
    found = getattr(transformers, names[0], None) if names else None
    if not isinstance(found, type):
        raise SlimPlanError(
            f"{folder / 'config.json'} names no transformers architecture ({names!r}): pass "
            "model_class="
        )
    return found
