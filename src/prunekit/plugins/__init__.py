"""The plugin layer: hook specs, registries and the pluggy host that fills them.

Built-in patterns, criteria and schedules are plugins too: they are registered through the
same hooks, on the same manager, before any third-party entry point.
"""

from prunekit.plugins.default import (
    CRITERIA,
    PATTERNS,
    SCHEDULES,
    RegistryView,
    default_host,
    list_patterns,
    load_plugins,
    register_pattern,
    reset_default_host,
)
from prunekit.plugins.hookspecs import Register, hookimpl, hookspec
from prunekit.plugins.host import (
    BUILTIN_PLUGINS,
    ENTRY_POINT_GROUP,
    HOOK_OF,
    KINDS,
    LOAD_ENV,
    SKIP_ENV,
    Kind,
    PluginHost,
    PluginRecord,
)
from prunekit.plugins.registry import BUILTIN_OWNER, Entry, Registry

__all__ = [
    "BUILTIN_OWNER",
    "BUILTIN_PLUGINS",
    "CRITERIA",
    "ENTRY_POINT_GROUP",
    "HOOK_OF",
    "KINDS",
    "LOAD_ENV",
    "PATTERNS",
    "SCHEDULES",
    "SKIP_ENV",
    "Entry",
    "Kind",
    "PluginHost",
    "PluginRecord",
    "Register",
    "Registry",
    "RegistryView",
    "default_host",
    "hookimpl",
    "hookspec",
    "list_patterns",
    "load_plugins",
    "register_pattern",
    "reset_default_host",
]
