"""INC 3.7.1's ``WeightPruningConfig`` and its rule that entries of ``pruning_configs``
inherit the top-level values.

The signature and defaults are INC 3.7.1's (neural_compressor/config.py). INC writes its
list defaults (``pruning_configs=[{}]``, ``op_names=[]`` ...) as shared mutable objects and
then fills them in place while processing a config, so a second config made in the same
process silently inherits the first one's values; here the list defaults are ``None``
standing for the same values, built fresh for each config, and nothing the user passes is
ever changed.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prunekit.compat.inc_keys import (
    HANDLERS,
    INC_VERSION,
    IncCompatWarning,
    inc_defaults,
    passthrough_keys,
    unknown_key_message,
    user_stacklevel,
)
from prunekit.errors import ConfigError


class DotDict(dict[str, Any]):
    """A dict whose keys read as attributes too (``config.weight_compression.pattern``), as
    INC's ``DotDict``; a missing key reads as None, as there."""

    def __getattr__(self, key: str) -> Any:
        if key.startswith("__"):
            raise AttributeError(key)
        return self.get(key)

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value


class WeightPruningConfig:
    """INC 3.7.1's pruning config, with its exact arguments and defaults.

    ``pruning_configs``: a list of dicts, one pruner each; a key an entry leaves out (or
    sets to None) takes the top-level value, which itself defaults to INC's. ``None`` for a
    list argument means INC's default (``[{}]``, ``[]``, ``["Conv", "Linear"]``), a new list
    for every config. ``**kwargs`` are further INC keys (``criterion_reduce_type``,
    ``reg_type``, ``parameters`` ...) applied to every entry.
    """

    def __init__(
        self,
        pruning_configs: Sequence[Mapping[str, Any]] | None = None,
        target_sparsity: float = 0.9,
        pruning_type: str = "snip_momentum",
        pattern: str = "4x1",
        op_names: Sequence[str] | None = None,
        excluded_op_names: Sequence[str] | None = None,
        backend: str | None = None,
        start_step: int = 0,
        end_step: int = 0,
        pruning_scope: str = "global",
        pruning_frequency: int = 1,
        min_sparsity_ratio_per_op: float = 0.0,
        max_sparsity_ratio_per_op: float = 0.98,
        sparsity_decay_type: str = "exp",
        pruning_op_types: Sequence[str] | None = None,
        low_memory_usage: bool = False,
        **kwargs: Any,
    ) -> None:
        self.backend = backend
        self.pruning_configs: list[dict[str, Any]] = _entries(pruning_configs)
        self._weight_compression = DotDict(
            target_sparsity=target_sparsity,
            pruning_type=pruning_type,
            pattern=pattern,
            op_names=_names(op_names or []),
            excluded_op_names=_names(excluded_op_names or []),
            start_step=start_step,
            end_step=end_step,
            pruning_scope=pruning_scope,
            pruning_frequency=pruning_frequency,
            min_sparsity_ratio_per_op=min_sparsity_ratio_per_op,
            max_sparsity_ratio_per_op=max_sparsity_ratio_per_op,
            sparsity_decay_type=sparsity_decay_type,
            pruning_op_types=(
                ["Conv", "Linear"] if pruning_op_types is None else _names(pruning_op_types)
            ),
            low_memory_usage=low_memory_usage,
        )
        self._weight_compression.update(kwargs)

    @property
    def weight_compression(self) -> DotDict:
        """The top-level values, INC's name for them."""
        return self._weight_compression

    @weight_compression.setter
    def weight_compression(self, value: Mapping[str, Any]) -> None:
        self._weight_compression = DotDict(value)

    def __repr__(self) -> str:
        return (
            f"WeightPruningConfig(pruning_configs={self.pruning_configs!r}, "
            + ", ".join(f"{k}={v!r}" for k, v in self._weight_compression.items())
            + ")"
        )


def _entries(pruning_configs: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """Copies of the entries (a new ``[{}]`` by default): INC keeps the caller's list and
    writes the inherited values into its dicts."""
    if pruning_configs is None:
        return [{}]
    if isinstance(pruning_configs, (Mapping, str, bytes)):
        raise ConfigError(
            [
                "pruning_configs: expected a list of dicts, one per pruner, got "
                f"{type(pruning_configs).__name__}; write [{{...}}]"
            ],
            "INC WeightPruningConfig",
        )
    entries = []
    for i, entry in enumerate(pruning_configs):
        if not isinstance(entry, Mapping):
            raise ConfigError(
                [f"pruning_configs[{i}]: expected a dict, got {type(entry).__name__}"],
                "INC WeightPruningConfig",
            )
        entries.append(dict(entry))
    return entries


def _names(value: Sequence[str] | str) -> list[str]:
    """A plain string is one name (INC would iterate its characters)."""
    return [value] if isinstance(value, str) else list(value)


@dataclass(frozen=True)
class IncEntry:
    """One INC pruner: its entry of ``pruning_configs`` with the inherited and default
    values filled in, as INC's ``pruner.config`` holds it."""

    index: int
    config: dict[str, Any]


def pruner_entries(config: WeightPruningConfig) -> list[IncEntry]:
    """INC's ``process_config``: each entry of ``pruning_configs`` takes every INC key it
    leaves out or sets to None from the top-level values (INC's defaults where those are
    None); no entry at all means one pruner of the top-level values. Top-level keys that are
    not INC's (or prunekit's) are not passed down, as in INC, and are named in a warning."""
    defaults = inc_defaults()
    top = dict(config.weight_compression)
    shared = {**top, **{k: v for k, v in defaults.items() if top.get(k) is None}}
    if not config.pruning_configs:
        return [IncEntry(0, shared)]
    inherited = set(defaults) | passthrough_keys()
    for key in top:
        if key not in inherited:
            warnings.warn(
                IncCompatWarning(key, _not_passed_down(key)), stacklevel=user_stacklevel()
            )
    entries = []
    for index, local in enumerate(config.pruning_configs):
        entry = dict(local)
        for key in inherited:
            if entry.get(key) is None and key in shared:
                entry[key] = shared[key]
        entries.append(IncEntry(index, entry))
    return entries


def _not_passed_down(key: str) -> str:
    """A top-level key INC does not pass down to the entries of ``pruning_configs``."""
    if key in HANDLERS:
        return (
            f"{key}: ignored at the top level, as INC {INC_VERSION} ignores it there: it passes "
            "only the keys of its default config down to the pruning_configs entries; set it "
            "in the entries"
        )
    return f"{key}: {unknown_key_message(key)}"


def check_backend(config: WeightPruningConfig) -> None:
    """INC stores ``backend`` and its pruning never reads it."""
    if config.backend is not None:
        warnings.warn(
            IncCompatWarning(
                "backend",
                f"backend: {config.backend!r} is ignored, as INC {INC_VERSION}'s pruning never "
                "reads it",
            ),
            stacklevel=user_stacklevel(),
        )
