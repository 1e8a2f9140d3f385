"""From validated configs to the Pruner's groups: each config's ops, pattern, criterion and
schedule, with every op owned by one config.

Configs may overlap where one of them leaves an op alone: ``{"pattern": "head"}`` selects
every Linear by default and prunes only the attention projections, so a second config may
take the feed-forward layers. An op is owned by the one config whose pattern prunes it; the
others' patterns are built again without it. Two configs that would both prune an op are an
error naming both. Coupled configs (``coupled: true``) trace the model once and reach the
ops their channels are tied to, which count as theirs.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from prunekit.config.files import ConfigSource, load_configs
from prunekit.config.model import PruningConfig
from prunekit.config.resolve import Resolved, resolve
from prunekit.errors import ImpossibleTargetError, OpSelectionError
from prunekit.masks.pattern import Pattern
from prunekit.plugins.host import PluginHost
from prunekit.slim.flow import Flow, channel_flow
from prunekit.slim.slimming import EXAMPLE_ATTRIBUTE
from prunekit.slim.trace import ExampleInputs, export
from prunekit.training.coupled import CoupledPattern, CouplingError
from prunekit.training.ops import select_ops, shared_weights


@dataclass
class Group:
    """One config and everything the Pruner keeps for it."""

    index: int
    config: PruningConfig
    ops: dict[str, nn.Module]
    pattern: Pattern
    criterion: Callable[..., Tensor]
    schedule: Callable[[int], float]
    generator: torch.Generator
    applied_target: float = 0.0
    state: dict[str, Tensor] = field(default_factory=dict)

    @property
    def needs_grad(self) -> bool:
        return bool(getattr(self.criterion, "needs_grad", False))

    @property
    def stateful(self) -> bool:
        return bool(getattr(self.criterion, "stateful", False))

    @property
    def pruned(self) -> dict[str, nn.Module]:
        """The ops its pattern prunes (not those it leaves alone)."""
        return {n: m for n, m in self.ops.items() if n not in self.pattern.skipped}


def checked_groups(
    model: nn.Module,
    configs: ConfigSource | Sequence[ConfigSource],
    host: PluginHost | None,
    example_inputs: Any,
) -> list[Group]:
    """The configs loaded and their groups built, refused before anything changes when a
    target cannot be reached or a pruned op changes a weight another module shares (what a
    Pruner and ``prune_in_place`` both start from)."""
    many = isinstance(configs, Sequence) and not isinstance(configs, (str, bytes))
    validated = load_configs(list(configs) if many else configs, host=host)  # type: ignore[arg-type]
    groups = build_groups(model, validated, host, example_inputs)
    for group in groups:
        problem = group.pattern.unreachable(group.config.target_sparsity)
        if problem is not None and type(group.pattern).layout is not Pattern.layout:
            raise ImpossibleTargetError(
                f"config {group.index} (pattern {group.config.pattern!r}): {problem}"
            )
    # an op its pattern leaves unpruned (skipped) changes no shared weight
    shared_weights(model, validated, [group.pruned for group in groups])
    return groups


def build_groups(
    model: nn.Module,
    configs: Sequence[PruningConfig],
    host: PluginHost | None,
    example_inputs: Any,
) -> list[Group]:
    """Every config's group, each op owned by one (see the module's docstring)."""
    flow = traced(model, configs, example_inputs)
    resolved = [resolve(config, host) for config in configs]
    selected = [select_ops(model, config) for config in configs]
    patterns = [_pattern(r, ops, model, flow) for r, ops in zip(resolved, selected, strict=True)]
    _settle(configs, resolved, selected, patterns, model, flow)
    return [
        Group(
            index=index,
            config=r.config,
            ops=dict(getattr(pattern, "ops", None) or ops),
            pattern=pattern,
            criterion=r.criterion,
            schedule=r.schedule,
            generator=torch.Generator().manual_seed(config.seed),
        )
        for index, (config, r, ops, pattern) in enumerate(
            zip(configs, resolved, selected, patterns, strict=True)
        )
    ]


def _pattern(
    resolved: Resolved, ops: dict[str, nn.Module], model: nn.Module, flow: Flow | None
) -> Pattern:
    """The config's pattern on ``ops``, bound to the model (a pattern that reads it, as
    ``head`` reads head counts), coupled when the config says so."""
    pattern = resolved.pattern(resolved.config, ops)
    bind = getattr(pattern, "bind_model", None)
    if callable(bind):
        bind(model)
    if resolved.config.coupled and not pattern.couples_itself:
        assert flow is not None
        pattern = CoupledPattern(resolved.config, pattern, flow, dict(model.named_modules()))
    return pattern


def _settle(
    configs: Sequence[PruningConfig],
    resolved: Sequence[Resolved],
    selected: list[dict[str, nn.Module]],
    patterns: list[Pattern],
    model: nn.Module,
    flow: Flow | None,
) -> None:
    """Give every op claimed by several configs to the one whose pattern prunes it; build
    the others' patterns again without it (their warnings were given the first time)."""
    claims: dict[str, list[int]] = {}
    for index, pattern in enumerate(patterns):
        for name in getattr(pattern, "ops", None) or selected[index]:
            claims.setdefault(name, []).append(index)
    dropped: dict[int, set[str]] = {}
    for name, claimers in claims.items():
        if len(claimers) < 2:
            continue
        pruning = [i for i in claimers if name not in patterns[i].skipped]
        if len(pruning) > 1:
            raise _claimed_twice(name, pruning[:2], configs)
        keeper = pruning[0] if pruning else claimers[0]
        for index in claimers:
            if index != keeper:
                dropped.setdefault(index, set()).add(name)
    for index, names in dropped.items():
        selected[index] = {n: m for n, m in selected[index].items() if n not in names}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            patterns[index] = _pattern(resolved[index], selected[index], model, flow)


def _claimed_twice(name: str, indexes: list[int], configs: Sequence[PruningConfig]) -> Exception:
    first, second = indexes
    coupled = any(configs[i].coupled for i in indexes)
    return OpSelectionError(
        f"op {name!r} is claimed by config {first} (pattern {configs[first].pattern!r}) and "
        f"config {second} (pattern {configs[second].pattern!r})"
        + (" (a coupled config also prunes the ops its channels are tied to)" if coupled else "")
        + "; narrow op_names or add excluded_op_names so each op has one config"
    )


def traced(model: nn.Module, configs: Sequence[PruningConfig], example_inputs: Any) -> Flow | None:
    """The model's channel flow, when a config is coupled (which needs example inputs);
    the inputs are kept on the model for ``pk.slim``."""
    if not any(config.coupled for config in configs):
        if example_inputs is not None:
            object.__setattr__(model, EXAMPLE_ATTRIBUTE, ExampleInputs.of(example_inputs))
        return None
    if example_inputs is None:
        raise CouplingError(
            "coupled: true needs example_inputs (what the model is called with: a tensor, a "
            "tuple of arguments or a dict of keyword arguments) to trace which channels go "
            "together: pk.Pruner(model, config, example_inputs=...) or pk.prune(..., "
            "example_inputs=...)"
        )
    example = ExampleInputs.of(example_inputs)
    flow = channel_flow(export(model, example))
    object.__setattr__(model, EXAMPLE_ATTRIBUTE, example)
    return flow
