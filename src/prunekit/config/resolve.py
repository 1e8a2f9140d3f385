"""A validated config resolved against a plugin host into what a run needs: the pattern
class, its spec parameters and options, the criterion and the schedule.

Validation (:mod:`prunekit.config.model`) already resolved the pattern on the host it was
validated against; :func:`resolve` reuses that and looks up the rest, so one run resolves
and validates each name once. A config validated against another host is validated again
against the one given.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from prunekit.config.files import ConfigSource, load_config
from prunekit.config.model import PruningConfig
from prunekit.masks.pattern import Pattern
from prunekit.plugins.default import default_host
from prunekit.plugins.host import PluginHost


@dataclass(frozen=True)
class Resolved:
    """One config and everything a run builds from it."""

    config: PruningConfig
    pattern: type[Pattern]
    params: Mapping[str, Any]
    criterion: Callable[..., Any]
    schedule: Callable[[int], float]


def resolve(config: ConfigSource, host: PluginHost | None = None) -> Resolved:
    """``config`` validated (if it is not yet) and resolved against ``host`` (default: the
    process's)."""
    host = host or default_host()
    validated = load_config(config, host=host)
    resolution = validated.resolution
    if resolution is None or resolution.host is not host:
        validated = load_config(validated.model_dump(), host=host)
        resolution = validated.resolution
    assert resolution is not None  # set by every successful validation
    return Resolved(
        config=validated,
        pattern=resolution.cls,
        params=resolution.params,
        criterion=host.criteria.resolve(validated.criterion).obj,
        schedule=host.schedules.resolve(validated.schedule_name).obj(validated),
    )


def target_or_default(spec: str, target: float | None, host: PluginHost | None = None) -> float:
    """``target``, or when None the target a one-off use of pattern ``spec`` takes: the
    pattern's own default (N/M for ``"2:4"``), else 0.5 (not the config's INC default of
    0.9, which a picture or a one-shot LLM run rarely wants). An unknown name raises the
    registry's error, with its did-you-mean."""
    if target is not None:
        return target
    entry = (host or default_host()).patterns.resolve(spec)
    default_target = getattr(entry.obj, "default_target", None)
    found = default_target(spec) if callable(default_target) else None
    return 0.5 if found is None else float(found)


def get_pattern(
    config: ConfigSource, modules: Mapping[str, nn.Module], *, host: PluginHost | None = None
) -> Pattern:
    """Build the pattern ``config.pattern`` names for ``modules`` (op name -> module).

    ``config`` may be a dict (validated here, errors as ``field: message`` lines) or a
    :class:`~prunekit.PruningConfig`. Raises :class:`~prunekit.UnknownPatternError` (also a
    :class:`~prunekit.ConfigError`) for an unknown name and
    :class:`~prunekit.UnsupportedModuleError` for a module the pattern cannot handle.
    """
    resolved = resolve(config, host)
    return resolved.pattern(resolved.config, modules)
