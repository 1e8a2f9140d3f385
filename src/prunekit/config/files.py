"""Configs from dicts, models and YAML/JSON files, one or several (INC's ``pruning_configs``).

Errors are :class:`~prunekit.errors.ConfigError`: one ``field: message`` line per problem,
each naming the bad value and what would be valid.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from prunekit.config.messages import from_validation_error
from prunekit.config.model import PruningConfig
from prunekit.errors import ConfigError, UnknownNameError, config_error
from prunekit.plugins.host import PluginHost

ConfigSource = PruningConfig | Mapping[str, Any] | str | os.PathLike[str]


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader without YAML 1.1's base-60 numbers: ``pattern: 2:4`` stays the
    string ``"2:4"`` (YAML 1.1 reads it as 2 * 60 + 4 = 124, and ``1:30`` as 90), which is
    what every pruning config means by it."""


_SEXAGESIMAL = (
    r"|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+",  # the int branch, e.g. 2:4
    r"|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*",  # the float branch, e.g. 1:30.5
)


def _without_base_60(regexp: re.Pattern[str]) -> re.Pattern[str]:
    text = regexp.pattern
    for branch in _SEXAGESIMAL:
        text = text.replace(branch, "")
    return re.compile(text, regexp.flags)


ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, _without_base_60(regexp)) for tag, regexp in resolvers]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def read_config_file(path: str | os.PathLike[str]) -> Any:
    """Parse a ``.yaml``/``.yml``/``.json`` file into plain Python data."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError([f"file: {str(file)!r} does not exist or is not a file"], str(file))
    text = file.read_text(encoding="utf-8")
    try:
        if file.suffix.lower() == ".json":
            return json.loads(text)
        return yaml.load(text, Loader=ConfigLoader)
    except (ValueError, yaml.YAMLError) as exc:  # JSONDecodeError is a ValueError
        raise ConfigError([f"file: cannot parse {str(file)!r}: {exc}"], str(file)) from None


def load_config(source: ConfigSource, *, host: PluginHost | None = None) -> PruningConfig:
    """Validate one config given as a :class:`PruningConfig`, a dict, or a YAML/JSON path.

    ``host``: the plugin host whose patterns, criteria and schedules the names must be
    (default: the process's). Raises :class:`ConfigError` with one ``field: message`` line
    per problem (also an ``UnknownPatternError`` when the pattern name is unknown).
    """
    if isinstance(source, PruningConfig):
        return source
    label = "config"
    data: Any = source
    if isinstance(source, (str, os.PathLike)):
        label = str(source)
        data = read_config_file(source)
    if not isinstance(data, Mapping):
        raise ConfigError(
            [
                f"config: expected a mapping of fields, got {type(data).__name__}"
                + ("; for several configs use load_configs()" if isinstance(data, list) else "")
            ],
            label,
        )
    try:
        return PruningConfig.model_validate(data, context={"host": host} if host else None)
    except ValidationError as exc:
        raise from_validation_error(exc, label) from None


def load_configs(source: Any, *, host: PluginHost | None = None) -> list[PruningConfig]:
    """Several configs: a list, INC's ``{"pruning_configs": [...], <shared defaults>}``, a
    single config, or a YAML/JSON file holding any of these. Shared defaults apply to every
    entry of ``pruning_configs`` unless the entry sets the field itself."""
    label = "config"
    data = source
    if isinstance(source, (str, os.PathLike)):
        label = str(source)
        data = read_config_file(source)
    if isinstance(data, PruningConfig):
        return [data]
    if isinstance(data, Mapping) and "pruning_configs" in data:
        shared = {k: v for k, v in data.items() if k != "pruning_configs"}
        entries = data["pruning_configs"] or [{}]
        data = [{**shared, **dict(entry)} for entry in entries]
    if isinstance(data, Mapping):
        return [_relabelled(data, label, host)]
    if not isinstance(data, Sequence) or isinstance(data, (str, bytes)):
        raise ConfigError(
            [f"config: expected a mapping or a list of mappings, got {type(data).__name__}"], label
        )
    configs: list[PruningConfig] = []
    lines: list[str] = []
    unknown: UnknownNameError | None = None
    for i, item in enumerate(data):
        try:
            configs.append(load_config(item, host=host))
        except ConfigError as exc:
            lines.extend(f"pruning_configs[{i}].{line}" for line in exc.lines)
            unknown = unknown or _unknown_of(exc)
    if lines:
        raise config_error(lines, label, unknown)
    return configs


def _relabelled(data: Mapping[str, Any], label: str, host: PluginHost | None) -> PruningConfig:
    try:
        return load_config(data, host=host)
    except ConfigError as exc:
        raise config_error(exc.lines, label, _unknown_of(exc)) from None


def _unknown_of(error: ConfigError) -> UnknownNameError | None:
    """The unknown name a config error stands for too, if any."""
    return error if isinstance(error, UnknownNameError) else None
