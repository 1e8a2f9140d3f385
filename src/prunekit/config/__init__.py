"""The config layer: ``PruningConfig`` validated once, read from dicts and files, described
by a JSON Schema, and resolved against a plugin host into what a run needs."""

from prunekit.config.files import ConfigSource, load_config, load_configs, read_config_file
from prunekit.config.model import PRUNE_MODE_SCHEDULES, PruningConfig
from prunekit.config.resolve import Resolved, get_pattern, resolve
from prunekit.config.schema import config_json_schema

__all__ = [
    "PRUNE_MODE_SCHEDULES",
    "ConfigSource",
    "PruningConfig",
    "Resolved",
    "config_json_schema",
    "get_pattern",
    "load_config",
    "load_configs",
    "read_config_file",
    "resolve",
]
