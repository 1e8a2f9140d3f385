"""Criteria: pure functions that turn what a weight knows into scores (higher = keep).

Every criterion has one signature, so the Pruner can call any of them the same way::

    scores = criterion(weight, grad=None, state=None, generator=None)

``weight`` is a module's weight (any shape, e.g. Linear ``(out, in)``, Conv2d ``(out, in, kh,
kw)``); ``grad`` is that weight's gradient after ``backward()``, shaped like it; ``state`` is
what the same criterion returned for the same op at the previous step (``None`` at the first
step); ``generator`` is a seeded :class:`torch.Generator` for random criteria. A criterion
reads only what it needs and ignores the rest. It returns a new floating-point tensor shaped
like ``weight``, detached from autograd, and never modifies its inputs.

Two attributes, set by :func:`criterion`, tell the Pruner what to collect:

``needs_grad``
    The criterion reads ``grad``: the Pruner keeps each op's gradient after ``backward()``.
``stateful``
    The criterion reads ``state``: the scores it returns *are* the new state, which the Pruner
    keeps per op and passes back as ``state`` at the next step.

Built-ins are registered through the ``register_criteria`` hook, like any plugin's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Protocol, cast, overload, runtime_checkable

import torch
from pydantic import BaseModel
from torch import Tensor

from prunekit.plugins.hookspecs import Register, hookimpl

__all__ = [
    "BUILTIN_CRITERIA",
    "SNIP_MOMENTUM_ALPHA",
    "SNIP_MOMENTUM_BETA",
    "Criterion",
    "criterion",
    "gradient",
    "l2",
    "magnitude",
    "movement",
    "random",
    "snip",
    "snip_momentum",
    "taylor",
]

# INC's SnipMomentumCriterion: score <- alpha * score + beta * |w * g|, from zeros.
SNIP_MOMENTUM_ALPHA: Final = 0.9
SNIP_MOMENTUM_BETA: Final = 1.0


class _ScoreFunction(Protocol):
    """The bare function shape before :func:`criterion` marks it."""

    def __call__(
        self,
        weight: Tensor,
        *,
        grad: Tensor | None = None,
        state: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor: ...


@runtime_checkable
class Criterion(Protocol):
    """A score function with the metadata the Pruner reads.

    ``criterion(weight, *, grad=None, state=None, generator=None) -> scores``: scores shaped
    like ``weight``, floating point, detached, higher = more important. ``needs_grad``: it
    reads ``grad``. ``stateful``: it reads ``state``, and its scores are the next ``state``.
    """

    needs_grad: bool
    stateful: bool

    def __call__(
        self,
        weight: Tensor,
        *,
        grad: Tensor | None = None,
        state: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor: ...


@overload
def criterion(fn: _ScoreFunction, /) -> Criterion: ...


@overload
def criterion(
    *,
    needs_grad: bool = False,
    stateful: bool = False,
    statistics: tuple[str, ...] = (),
    options: type[BaseModel] | None = None,
    reconstruct: Callable[..., Any] | None = None,
    default_scope: str | None = None,
    scopes: tuple[str, ...] | None = None,
) -> Callable[[_ScoreFunction], Criterion]: ...


def criterion(
    fn: _ScoreFunction | None = None,
    /,
    *,
    needs_grad: bool = False,
    stateful: bool = False,
    statistics: tuple[str, ...] = (),
    options: type[BaseModel] | None = None,
    reconstruct: Callable[..., Any] | None = None,
    default_scope: str | None = None,
    scopes: tuple[str, ...] | None = None,
) -> Criterion | Callable[[_ScoreFunction], Criterion]:
    """Mark a score function as a criterion: set ``fn.needs_grad`` and ``fn.stateful``.

    Works bare (``@criterion``: needs neither) and with arguments
    (``@criterion(needs_grad=True, stateful=True)``). Returns the function itself.

    Calibration criteria (docs/llm.md) also say: ``statistics``, what they read of each
    op's inputs on calibration data (``"input_norms"``, ``"hessian"``; the function is then
    called with ``statistics={name: tensor}`` and ``options=``); ``options``, their own
    config fields (a pydantic model, validated like a pattern's); ``reconstruct``, the
    function that prunes an op column block by column block and updates its kept weights
    (the engine then asks the pattern for each column block's mask); ``default_scope``, the
    ``pruning_scope`` a config takes when it names none; ``scopes``, the scopes it works in.
    """

    def mark(function: _ScoreFunction) -> Criterion:
        vars(function).update(needs_grad=needs_grad, stateful=stateful)
        if statistics or options or reconstruct or default_scope or scopes:
            vars(function).update(
                statistics=tuple(statistics),
                Options=options,
                reconstruct=reconstruct,
                default_scope=default_scope,
                scopes=scopes,
            )
        return cast(Criterion, function)

    return mark if fn is None else mark(fn)


# -- what the criteria share ----------------------------------------------------------------
def _floating(tensor: Tensor) -> Tensor:
    """``tensor`` detached, as floating point (integer weights score as float32)."""
    detached = tensor.detach()
    return detached if detached.is_floating_point() else detached.float()


def _require_grad(name: str, weight: Tensor, grad: Tensor | None) -> Tensor:
    """The detached gradient, after checking that it is there and shaped like ``weight``."""
    if grad is None:
        raise ValueError(
            f"criterion {name!r} needs the weight's gradient but got grad=None: the Pruner "
            "supplies gradients after backward() (called directly, pass grad=weight.grad "
            "after loss.backward())"
        )
    if grad.shape != weight.shape:
        raise ValueError(
            f"criterion {name!r}: grad shape {tuple(grad.shape)} differs from weight shape "
            f"{tuple(weight.shape)}"
        )
    return _floating(grad)


def _previous_state(name: str, weight: Tensor, state: Tensor | None) -> Tensor | None:
    """The detached running state, or ``None`` at the first step (it starts from zero)."""
    if state is None:
        return None
    if state.shape != weight.shape:
        raise ValueError(
            f"criterion {name!r}: state shape {tuple(state.shape)} differs from weight shape "
            f"{tuple(weight.shape)} (pass back the scores this criterion returned for this op)"
        )
    return _floating(state)


# -- the criteria -----------------------------------------------------------------------------
@criterion
def magnitude(
    weight: Tensor,
    *,
    grad: Tensor | None = None,
    state: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """|w|: the weight's magnitude (torch.nn.utils.prune's L1 unstructured, INC's magnitude).

    Source: INC ``magnitude`` (its default), fasterai ``large_final``, Han et al. 2015.
    Needs only the weight, so it works one-shot on a trained model without data; the
    baseline every other criterion is compared with.
    """
    return _floating(weight).abs()


@criterion
def l2(
    weight: Tensor,
    *,
    grad: Tensor | None = None,
    state: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """w^2: the squared weight; the same order as |w| per element, summed blocks differ.

    Source: fasterai ``squared_final``; the L2-norm filter criterion of structured pruning
    (a block's ``sum`` of w^2 is its squared L2 norm). Use it for blocks, where it favours
    blocks with a few large weights over blocks of many middling ones.
    """
    detached = _floating(weight)
    return detached * detached


@criterion
def random(
    weight: Tensor,
    *,
    grad: Tensor | None = None,
    state: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """U[0, 1): uniform random scores drawn from the given seeded generator.

    Source: fasterai ``random``; the random-pruning baseline of the pruning literature
    (e.g. Liu et al. 2022, "The unreasonable effectiveness of random pruning"). Use it as a
    control: a criterion that does not beat it at the same sparsity is not helping. The same
    generator state gives the same scores; the weight's values are not read.
    """
    if generator is None:
        raise ValueError(
            "criterion 'random' needs a seeded torch.Generator but got generator=None: pass "
            "e.g. generator=torch.Generator().manual_seed(seed), so the scores are reproducible"
        )
    dtype = weight.dtype if weight.is_floating_point() else torch.float32
    drawn = torch.rand(weight.shape, generator=generator, dtype=dtype, device=generator.device)
    return drawn.to(weight.device)


@criterion(needs_grad=True)
def gradient(
    weight: Tensor,
    *,
    grad: Tensor | None = None,
    state: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """|g|: the gradient's magnitude; weights the loss is most sensitive to now are kept.

    Source: INC ``gradient``. Ignores the weight's size, so a large weight with a small
    gradient can go; mostly a building block and a comparison point for ``snip``.
    """
    return _require_grad("gradient", weight, grad).abs()


@criterion(needs_grad=True)
def snip(
    weight: Tensor,
    *,
    grad: Tensor | None = None,
    state: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """|w*g|: connection sensitivity, the first-order loss change if w is removed (SNIP).

    Source: Lee et al. 2019, "SNIP: Single-shot Network Pruning based on Connection
    Sensitivity" (|dL/dc| for a mask c = 1 equals |w*g|); INC ``snip``. Use it to prune at
    or near initialization from one batch, or in training when one step's gradient is
    representative; otherwise prefer ``snip_momentum``, which averages out batch noise.
    """
    g = _require_grad("snip", weight, grad)
    return (_floating(weight) * g).abs()


@criterion(needs_grad=True, stateful=True)
def snip_momentum(
    weight: Tensor,
    *,
    grad: Tensor | None = None,
    state: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """0.9*s + 1.0*|w*g|: a momentum sum of SNIP scores over steps (INC's snip_momentum).

    Source: INC ``snip_momentum`` (``SnipMomentumCriterion``: scores start at zero, then
    ``score = alpha * score + beta * |w * g|`` at every step before the optimizer step, with
    alpha = 0.9 and beta = 1.0). It is the default ``pruning_type`` of INC's
    ``WeightPruningConfig`` and the method behind INC's pruning results when fine-tuning
    (BERT, YOLOv5, Flan-T5). Use it for gradual pruning during training: the decay keeps
    recent steps' sensitivity while smoothing out the noise of single batches. ``state`` is
    the previous scores (``None``: zero); the returned scores are the new state.
    """
    g = _require_grad("snip_momentum", weight, grad)
    previous = _previous_state("snip_momentum", weight, state)
    current = SNIP_MOMENTUM_BETA * (_floating(weight) * g).abs()
    return current if previous is None else SNIP_MOMENTUM_ALPHA * previous + current


@criterion(needs_grad=True)
def taylor(
    weight: Tensor,
    *,
    grad: Tensor | None = None,
    state: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """(w*g)^2: first-order Taylor importance, the squared loss change if w is removed.

    Source: Molchanov et al. 2019, "Importance Estimation for Neural Network Pruning": the
    per-parameter importance I = (g*w)^2 (their eq. 3); fasterai's ``grad_crit`` also scores
    (w*g)^2 per element before reducing over a granularity. A block's ``sum`` is then the sum
    of its elements' importances (the paper's group form (sum w*g)^2 lets opposite signs
    cancel, which per-element scores cannot express). Same order as ``snip`` per element;
    squaring weighs large contributions more when blocks are reduced.
    """
    g = _require_grad("taylor", weight, grad)
    contribution = _floating(weight) * g
    return contribution * contribution


@criterion(needs_grad=True, stateful=True)
def movement(
    weight: Tensor,
    *,
    grad: Tensor | None = None,
    state: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """s - w*g: movement score, accumulated -w*g; weights moving away from zero are kept.

    Source: Sanh et al. 2020, "Movement Pruning: Adaptive Sparsity by Fine-Tuning": the
    score S = -sum over steps of (dL/dW) * W (the learning-rate factor, the same for every
    weight, is left out; it does not change the order). A weight whose gradient step pushes
    it away from zero gains score. Use it when fine-tuning a pretrained model (transfer
    learning), where magnitude reflects pretraining rather than the new task. ``state`` is
    the previous scores (``None``: zero); the returned scores are the new state. Scores can
    be negative.
    """
    g = _require_grad("movement", weight, grad)
    previous = _previous_state("movement", weight, state)
    product = _floating(weight) * g
    # 0 - x rather than -x: a zero product scores +0.0, not -0.0 (same order, cleaner output).
    return 0.0 - product if previous is None else previous - product


# Name -> criterion, in the order `prunekit` lists them; the registered names.
BUILTIN_CRITERIA: Final[dict[str, Criterion]] = {
    "magnitude": magnitude,
    "l2": l2,
    "random": random,
    "gradient": gradient,
    "snip": snip,
    "snip_momentum": snip_momentum,
    "taylor": taylor,
    "movement": movement,
}


@hookimpl
def register_criteria(register: Register) -> None:
    for name, fn in BUILTIN_CRITERIA.items():
        register(name, fn)
