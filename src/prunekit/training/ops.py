"""Which modules of a model a config prunes: names (regular expressions) and types.

``op_names`` and ``excluded_op_names`` are regular expressions searched in each module's
qualified name (``re.search``, so ``"fc"`` matches ``"encoder.fc1"``; anchor with ``^``/``$``
for exact names). ``pruning_op_types`` are class names or prefixes (``"Conv"`` matches
``Conv1d``, ``Conv2d``, ``ConvTranspose2d``). Only modules with a tensor ``weight`` of at
least two dims are prunable.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence

from torch import Tensor, nn

from prunekit.config.model import PruningConfig
from prunekit.errors import OpSelectionError, PruningWarning
from prunekit.naming import close_matches


def prunable_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every module with a tensor ``weight`` of two dims or more, by qualified name."""
    found: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, Tensor) and weight.dim() >= 2:
            found[name] = module
    return found


def _type_matches(module: nn.Module, type_names: Sequence[str]) -> bool:
    cls_name = type(module).__name__
    return any(cls_name == t or cls_name.startswith(t) for t in type_names) or any(
        base.__name__ in type_names for base in type(module).__mro__
    )


def select_ops(model: nn.Module, config: PruningConfig) -> dict[str, nn.Module]:
    """The modules ``config`` prunes, in the model's order; an error when there are none."""
    candidates = prunable_modules(model)
    include = [re.compile(p) for p in config.op_names]
    exclude = [re.compile(p) for p in config.excluded_op_names]
    selected = {
        name: module
        for name, module in candidates.items()
        if _type_matches(module, config.pruning_op_types)
        and (not include or any(p.search(name) for p in include))
        and not any(p.search(name) for p in exclude)
    }
    _warn_unmatched(config, list(candidates))
    if not selected:
        listing = ", ".join(f"{n} ({type(m).__name__})" for n, m in candidates.items()) or "none"
        raise OpSelectionError(
            f"config with pattern {config.pattern!r} selects no op: op_names="
            f"{config.op_names}, excluded_op_names={config.excluded_op_names}, "
            f"pruning_op_types={config.pruning_op_types}. The model's prunable modules: {listing}"
        )
    return selected


def _warn_unmatched(config: PruningConfig, names: Sequence[str]) -> None:
    """A regular expression of ``op_names`` or ``excluded_op_names`` that matches no module
    is most likely a typo: say so, with the names it may have meant."""
    for field in ("op_names", "excluded_op_names"):
        for expression in getattr(config, field):
            if any(re.search(expression, name) for name in names):
                continue
            hint = close_matches(expression, names)
            warnings.warn(
                f"{field}: {expression!r} matches no prunable module of the model"
                + (f"; did you mean {hint[0]!r}?" if hint else "")
                + (" (so it excludes nothing)" if field == "excluded_op_names" else ""),
                PruningWarning,
                stacklevel=4,
            )


def select_all(model: nn.Module, configs: Sequence[PruningConfig]) -> list[dict[str, nn.Module]]:
    """Each config's ops; an op claimed by two configs is an error naming both."""
    chosen = [select_ops(model, config) for config in configs]
    owner: dict[str, int] = {}
    for index, ops in enumerate(chosen):
        for name in ops:
            if name in owner:
                first = owner[name]
                raise OpSelectionError(
                    f"op {name!r} is claimed by config {first} (pattern "
                    f"{configs[first].pattern!r}) and config {index} (pattern "
                    f"{configs[index].pattern!r}); narrow op_names or add excluded_op_names so "
                    "each op has one config"
                )
            owner[name] = index
    return chosen


def shared_weights(
    model: nn.Module, configs: Sequence[PruningConfig], chosen: Sequence[dict[str, nn.Module]]
) -> None:
    """Refuse an op whose weight another module holds too (tied weights: a LLaMA's
    ``lm_head`` and ``embed_tokens``), since pruning it prunes both, unless its config says
    ``prune_shared_weights``; two selected ops sharing one weight are always refused (they
    would need one mask)."""
    holders: dict[int, list[tuple[str, nn.Module]]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        weight = getattr(module, "weight", None)
        if isinstance(weight, Tensor):
            found = holders.setdefault(id(weight), [])
            if all(module is not m for _, m in found):
                found.append((name, module))
    owner: dict[int, str] = {}
    for config, ops in zip(configs, chosen, strict=True):
        for name, module in ops.items():
            weight = module.weight
            if id(weight) in owner:
                raise OpSelectionError(
                    f"ops {owner[id(weight)]!r} and {name!r} share one weight (tied): select "
                    "one of them (excluded_op_names), since one weight has one mask"
                )
            owner[id(weight)] = name
            others = [(n, m) for n, m in holders[id(weight)] if m is not module]
            if others and not config.prune_shared_weights:
                listed = ", ".join(f"{n!r} ({type(m).__name__})" for n, m in others)
                raise OpSelectionError(
                    f"op {name!r} shares its weight with {listed} (tied weights): pruning it "
                    f"prunes those too. Leave it out (excluded_op_names: ['^{re.escape(name)}$']) "
                    "or set prune_shared_weights: true to prune the shared weight on purpose"
                )
