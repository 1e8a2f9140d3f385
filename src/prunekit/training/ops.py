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
from collections.abc import Callable, Sequence

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
    reaches = _name_filter(config)
    selected = {
        name: module
        for name, module in candidates.items()
        if _type_matches(module, config.pruning_op_types) and reaches(name)
    }
    _warn_unmatched(config, list(candidates))
    _warn_unprunable(model, config, candidates, selected, reaches)
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


# Matrices outside prunable modules below this share of the reached weights are left
# without a warning: a ViT's class token and position table (0.2% of ViT-B, 3% of a
# 2-layer test ViT). Fused MoE experts are most of a model's weights.
_UNPRUNABLE_SHARE = 0.05


def _name_filter(config: PruningConfig) -> Callable[[str], bool]:
    """Whether a qualified module name is one ``op_names`` and ``excluded_op_names`` let in."""
    include = [re.compile(p) for p in config.op_names]
    exclude = [re.compile(p) for p in config.excluded_op_names]
    return lambda name: (not include or any(p.search(name) for p in include)) and not any(
        p.search(name) for p in exclude
    )


def _warn_unprunable(
    model: nn.Module,
    config: PruningConfig,
    candidates: dict[str, nn.Module],
    selected: dict[str, nn.Module],
    reaches: Callable[[str], bool],
) -> None:
    """Matrices the config's names reach that are no module's ``weight`` (transformers 5's
    fused MoE experts, ``gate_up_proj`` of shape ``(experts, 2 * ffn, hidden)``) stay dense
    whatever the target: say so when they are a real share of the weights, or a 50% sparse
    report would hide a model that is mostly dense."""
    weights = _weight_ids(model, candidates)
    left: list[tuple[str, str, tuple[int, ...], int]] = []
    for owner, module in model.named_modules():
        if not reaches(owner):
            continue
        for name, parameter in module.named_parameters(recurse=False):
            if parameter.dim() >= 2 and id(parameter) not in weights:
                shape = tuple(parameter.shape)
                left.append((f"{owner}.{name}", type(module).__name__, shape, parameter.numel()))
    dense = sum(item[3] for item in left)
    reached = dense + sum(_elements(m) for m in selected.values())
    if not left or dense < _UNPRUNABLE_SHARE * reached:
        return
    shown = ", ".join(f"{n} ({kind}, {shape})" for n, kind, shape, _ in left[:3])
    more = f" and {len(left) - 3} more" if len(left) > 3 else ""
    warnings.warn(
        f"config with pattern {config.pattern!r}: {len(left)} matrices its op_names reach are "
        f"not the weight of a module and stay dense: {shown}{more}, {dense / reached:.0%} of "
        "the weights reached. prunekit prunes the weights of modules (Linear, Conv, "
        "Hugging Face's Conv1D); fused tensors such as transformers' MoE experts are not "
        "supported",
        PruningWarning,
        stacklevel=4,
    )


def _weight_ids(model: nn.Module, candidates: dict[str, nn.Module]) -> set[int]:
    """The ids of the prunable modules' weights, and of what stands behind a reparametrized
    one (torch.nn.utils.prune's ``weight_orig``, torch.nn.utils.parametrize's ``original``)."""
    found = {id(m.weight) for m in candidates.values()}
    for module in model.modules():
        found.add(id(getattr(module, "weight_orig", None)))
        parametrized = getattr(module, "parametrizations", None)
        if isinstance(parametrized, nn.ModuleDict) and "weight" in parametrized:
            found.add(id(getattr(parametrized["weight"], "original", None)))
    return found


def _elements(module: nn.Module) -> int:
    weight = module.weight
    return weight.numel() if isinstance(weight, Tensor) else 0


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
