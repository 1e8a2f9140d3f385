"""Schedules: which target sparsity holds at which training step.

A registered schedule is a factory ``schedule(config) -> Callable[[int], float]``: given a
validated :class:`~prunekit.PruningConfig` it returns the function from step to target.
Registered through the ``register_schedules`` hook like any plugin's.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from prunekit.config.model import PruningConfig
from prunekit.plugins.hookspecs import Register, hookimpl

StepToSparsity = Callable[[int], float]


def oneshot(config: PruningConfig) -> StepToSparsity:
    """The whole target at ``start_step`` (0 before it)."""
    target, start = config.target_sparsity, config.start_step

    def at(step: int) -> float:
        return target if step >= start else 0.0

    return at


def decay(kind: str, init: float, final: float, progress: float) -> float:
    """INC's sparsity between ``init`` and ``final`` at ``progress`` in [0, 1]."""
    p = min(max(progress, 0.0), 1.0)
    if kind == "linear":
        return init + (final - init) * p
    if kind == "cube":
        return init + (final - init) * p**3
    if kind == "cos":
        return init + (final - init) * (1 - math.cos(p * math.pi / 2))
    if kind == "exp":
        return float(1 - (1 - init) * ((1 - final) / (1 - init)) ** p)
    raise ValueError(f"sparsity_decay_type: {kind!r} is not one of linear, cube, exp, cos")


def _ramp(config: PruningConfig, shape: Callable[[float], float]) -> StepToSparsity:
    """0 before ``start_step``, the target from ``end_step`` on, and in between
    ``shape(progress)`` with progress in [0, 1) updated every ``pruning_frequency`` steps."""
    start, end, frequency = config.start_step, config.end_step, config.pruning_frequency
    target = config.target_sparsity

    def at(step: int) -> float:
        if step < start:
            return 0.0
        if step >= end:
            return target
        last_update = start + ((step - start) // frequency) * frequency
        return shape((last_update - start) / (end - start))

    return at


def iterative(config: PruningConfig) -> StepToSparsity:
    """INC's iterative schedule: from 0 at ``start_step`` to the target at ``end_step``,
    updated every ``pruning_frequency`` steps, shaped by ``sparsity_decay_type``."""
    kind, target = config.sparsity_decay_type, config.target_sparsity
    return _ramp(config, lambda progress: decay(kind, 0.0, target, progress))


def identity(config: PruningConfig) -> StepToSparsity:
    """N2D2's Identity mode: no pruning at any step."""

    def at(step: int) -> float:
        return 0.0

    return at


def gradual(config: PruningConfig) -> StepToSparsity:
    """N2D2's Gradual mode: ``start`` at ``start_step``, plus ``gamma`` every ``stepsize``
    steps, until the target."""
    begin, first, gamma, every = config.start_step, config.start, config.gamma, config.stepsize
    target = config.target_sparsity

    def at(step: int) -> float:
        if step < begin:
            return 0.0
        return min(target, first + gamma * ((step - begin) // every))

    return at


def agp(config: PruningConfig) -> StepToSparsity:
    """fasterai's ``agp``, Zhu and Gupta's automated gradual pruning: ``s_f * (1 - (1 - p)^3)``
    from ``start_step`` to ``end_step`` every ``pruning_frequency`` steps: fast early, slow
    late (INC's ``cube`` is the opposite)."""
    target = config.target_sparsity
    return _ramp(config, lambda progress: float(target * (1 - (1 - progress) ** 3)))


@hookimpl
def register_schedules(register: Register) -> None:
    register("oneshot", oneshot)
    register("iterative", iterative)
    register("agp", agp)
    register("identity", identity)
    register("gradual", gradual)
