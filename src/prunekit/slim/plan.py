"""A slimming as plain JSON, and the same surgery on a freshly built dense model.

``report.plan`` says, per module, which positions of which dim of each parameter the
slimmed model kept, where a bias was added, and which attributes changed. A dense model
built anew (``Model(config)``) becomes the slimmed shapes by :func:`apply_slim_plan`, so
``load_state_dict`` of the slimmed weights works; Hugging Face models carry the plan in
their ``config.json`` (:mod:`prunekit.slim.hf`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from prunekit.errors import PrunekitError
from prunekit.slim.rebuild import ModulePlan, rebuilt

PLAN_FORMAT = "prunekit.slim"
PLAN_VERSION = 1


class SlimPlanError(PrunekitError, ValueError):
    """A slim plan that does not fit the model it is applied to."""


def plan_json(plans: Mapping[str, ModulePlan]) -> dict[str, Any]:
    """The plan as JSON-able data."""
    return {
        "format": PLAN_FORMAT,
        "version": PLAN_VERSION,
        "modules": {name: plan.to_json() for name, plan in plans.items()},
    }


def plan_modules(plan: Mapping[str, Any]) -> dict[str, ModulePlan]:
    """The per-module plans of JSON ``plan``, checked for its format."""
    if not isinstance(plan, Mapping) or plan.get("format") != PLAN_FORMAT:
        raise SlimPlanError(f"not a prunekit slim plan (no 'format': {PLAN_FORMAT!r})")
    if plan.get("version") != PLAN_VERSION:
        raise SlimPlanError(
            f"slim plan version {plan.get('version')!r}; this prunekit reads {PLAN_VERSION}"
        )
    return {name: ModulePlan.from_json(entry) for name, entry in plan["modules"].items()}


def apply_plans(model: nn.Module, plans: Mapping[str, ModulePlan]) -> dict[str, nn.Module]:
    """Rebuild ``model``'s modules by ``plans`` (layers first, then attribute changes of the
    blocks above them); returns the modules replaced, by name, to restore them."""
    modules = dict(model.named_modules())
    replaced: dict[str, nn.Module] = {}
    for name, plan in plans.items():
        module = modules.get(name)
        if module is None or type(module).__name__ != plan.kind:
            found = type(module).__name__ if module is not None else "nothing"
            raise SlimPlanError(
                f"slim plan: module {name!r} should be a {plan.kind}, found {found}"
            )
        if not plan.keep and not plan.add_bias:
            continue
        _set(model, name, rebuilt(module, plan))
        replaced[name] = module
    for name, plan in plans.items():
        if not plan.keep and not plan.add_bias:
            for attribute, value in plan.attributes.items():
                setattr(modules[name], attribute, value)
    return replaced


def restore(model: nn.Module, replaced: Mapping[str, nn.Module]) -> None:
    """Put back the modules :func:`apply_plans` replaced."""
    for name, module in replaced.items():
        _set(model, name, module)


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def apply_slim_plan(model: nn.Module, plan: Mapping[str, Any]) -> nn.Module:
    """Rebuild a freshly built dense ``model`` to the shapes of a slimmed one (``plan`` is
    ``SlimReport.plan``), in place, so that ``model.load_state_dict(slimmed_state)`` works.
    The values are the dense model's, sliced: load the slimmed weights after."""
    apply_plans(model, plan_modules(plan))
    return model
