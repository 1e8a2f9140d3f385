"""The hooks a prunekit plugin implements, and the markers it marks them with.

Every hook has the shape ``register_<things>(register)``: prunekit hands the plugin a
callback ``register(name, obj)``. Built-ins implement the same hooks as third-party plugins.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT_NAME = "prunekit"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

Register = Callable[[str, Any], None]


@hookspec
def register_patterns(register: Register) -> None:
    """Register pattern classes: ``register("foo", FooPattern)`` (a ``prunekit.Pattern``)."""


@hookspec
def register_criteria(register: Register) -> None:
    """Register score functions: ``register("foo", foo_scores)``."""


@hookspec
def register_schedules(register: Register) -> None:
    """Register schedules (step -> target sparsity): ``register("foo", FooSchedule)``."""
