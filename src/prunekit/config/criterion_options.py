"""A criterion's own config fields, validated as a pattern's are.

A criterion may declare ``Options`` (a closed pydantic model: SparseGPT's ``blocksize`` and
``percdamp``), the ``pruning_scope`` it takes when a config names none (``default_scope``:
Wanda compares weights within output rows) and the scopes it can work in at all
(``scopes``: SparseGPT prunes op by op, so not ``global``). Flat keys of a config that are
the criterion's options (and not the pattern's) move into ``criterion_options``; an unknown
or invalid one is refused with the criterion named, like a pattern's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import InitErrorDetails

from prunekit.config.messages import detail, option_error
from prunekit.errors import UnknownNameError
from prunekit.plugins.host import PluginHost

DEFAULT_CRITERION = "magnitude"


def criterion_of(data: Mapping[str, Any], host: PluginHost) -> tuple[str, Any] | None:
    """``(name, criterion)`` the config names (``criterion`` or INC's ``pruning_type``), or
    None when it names no known one (the field's own validation reports that)."""
    name = data.get("criterion", data.get("pruning_type", DEFAULT_CRITERION))
    if not isinstance(name, str):
        return None
    try:
        return name, host.criteria.resolve(name).obj
    except UnknownNameError:
        return None


def options_model(criterion: Any) -> type[BaseModel] | None:
    """The criterion's ``Options`` model, or None when it declares none."""
    model = getattr(criterion, "Options", None)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def move_criterion_options(
    data: dict[str, Any], name: str, criterion: Any, taken: set[str]
) -> tuple[set[str], list[InitErrorDetails]]:
    """Move ``data``'s flat keys that are the criterion's options (and not in ``taken``:
    the config's own fields and the pattern's options) into ``data["criterion_options"]``,
    validated; returns the option names and the problems found."""
    model = options_model(criterion)
    given = dict(data.get("criterion_options") or {})
    if model is None:
        if given:
            return set(), [
                detail(
                    "criterion_options",
                    given,
                    f"criterion {name!r} has no options; leave criterion_options out",
                )
            ]
        return set(), []
    fields = set(model.model_fields)
    for key in [k for k in data if k in fields and k not in taken]:
        given[key] = data.pop(key)
    try:
        validated = model.model_validate(given)
    except ValidationError as exc:
        data.pop("criterion_options", None)
        return fields, [option_error(e, name, kind="criterion") for e in exc.errors()]
    data["criterion_options"] = validated.model_dump()
    return fields, []


def default_scope(criterion: Any) -> str | None:
    """The ``pruning_scope`` a config of this criterion takes when it names none: the one it
    declares, else the first of the scopes it works in when those leave out 'global'."""
    scope = getattr(criterion, "default_scope", None)
    if isinstance(scope, str):
        return scope
    scopes = getattr(criterion, "scopes", None)
    if scopes and "global" not in scopes:
        return str(scopes[0])
    return None


def scope_problems(name: str, criterion: Any, scope: str) -> list[InitErrorDetails]:
    """``pruning_scope`` refused when the criterion cannot work in it."""
    scopes = getattr(criterion, "scopes", None)
    if not scopes or scope in scopes:
        return []
    valid = " or ".join(repr(s) for s in scopes)
    return [
        detail(
            "pruning_scope",
            scope,
            f"criterion {name!r} prunes op by op, so it works in pruning_scope {valid}",
        )
    ]
