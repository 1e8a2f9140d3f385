"""The process-wide plugin host, and the public registry API on it.

``PATTERNS``, ``CRITERIA``, ``SCHEDULES`` (read-only views), ``register_pattern`` and
``list_patterns`` work on the default host and load plugins on first use. Code that wants
its own plugins (a test, an application with a fixed set) builds a
:class:`~prunekit.plugins.host.PluginHost` and passes it where a host is taken.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from prunekit.masks.pattern import Pattern
from prunekit.plugins.host import Kind, PluginHost, PluginRecord
from prunekit.plugins.registry import Entry, Registry

T = TypeVar("T")

_default: PluginHost | None = None
_default_lock = threading.Lock()


def default_host() -> PluginHost:
    """The process-wide host, loaded on first use."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = PluginHost()
    return _default.load()


def reset_default_host() -> None:
    """Forget the loaded plugins, so the next use loads them again (after changing the
    environment variables or installing a plugin in a running process)."""
    global _default
    with _default_lock:
        _default = None


def load_plugins() -> list[PluginRecord]:
    """Load plugins now (they load on first use anyway) and return what each one did."""
    return default_host().records


class RegistryView(Mapping[str, T]):
    """A read-only view of one registry of the default host that loads plugins first.

    ``PATTERNS["4x1"]`` and ``"4x1" in PATTERNS`` resolve family specs too, so a user can
    ask for the spec they would write in a config; iteration lists registered names only.
    """

    def __init__(self, kind: Kind) -> None:
        self._kind = kind

    def _registry(self) -> Registry[T]:
        return default_host().registry(self._kind)

    def __getitem__(self, name: str) -> T:
        return self._registry().resolve(name).obj

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            self._registry().resolve(name)
        except KeyError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._registry()))

    def __len__(self) -> int:
        return len(self._registry())

    def entry(self, name: str) -> Entry[T]:
        """The registry entry (owner, description, grammar) that answers to ``name``."""
        return self._registry().resolve(name)

    def __repr__(self) -> str:
        return f"<prunekit {self._kind}: {', '.join(self)}>"


PATTERNS: RegistryView[type[Pattern]] = RegistryView("patterns")
CRITERIA: RegistryView[Callable[..., Any]] = RegistryView("criteria")
SCHEDULES: RegistryView[Callable[..., Any]] = RegistryView("schedules")

_P = TypeVar("_P", bound=type[Pattern])


def register_pattern(name: str, *, override: bool = False) -> Callable[[_P], _P]:
    """Class decorator: register a :class:`~prunekit.Pattern` subclass under ``name``.

    The in-process twin of a plugin's ``register_patterns`` hook; both end in the same
    registry call. The owner recorded is the class's module. A taken name is refused with
    both owners named unless ``override=True`` (never allowed over a built-in).
    """

    def decorate(cls: _P) -> _P:
        default_host().register("patterns", name, cls, owner=cls.__module__, override=override)
        return cls

    return decorate


def list_patterns(filter: str | None = None) -> list[str]:
    """Registered pattern names matching ``filter`` (shell wildcards, or a substring)."""
    return [e.name for e in default_host().patterns.entries(filter)]
