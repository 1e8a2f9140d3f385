"""The one orchestrator: solve a :class:`~prunekit.masks.problem.Problem`, then expand each
op's kept blocks into its mask.

All counting happens in :func:`decide`, before the first mask is made, so a caller that
applies each mask in place while iterating (an LLM pruned op by op) cannot change the
decision for later ops. :func:`masks` then yields one mask per op in op order, holding none
but the one it yields.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from functools import partial

import torch
from torch import Tensor

from prunekit.errors import ImpossibleTargetError
from prunekit.masks.bands import per_output_keep
from prunekit.masks.geometry import expand_keep, removed_blocks
from prunekit.masks.numeric import lowest_key, sortable_keys, working_dtype
from prunekit.masks.problem import LatestScores, Op, Problem, mixed_infinities
from prunekit.masks.select import counting, multirank, reference
from prunekit.masks.select.memory import release_freed_memory
from prunekit.masks.select.passes import Resolution, Scratch

KeepBlocks = Callable[[], Tensor]  # makes one op's 1-D keep decision per block (True = keep)


def decide(problem: Problem, comm: multirank.Comm | None = None) -> list[KeepBlocks]:
    """Every op's kept blocks, decided now and made when called (in op order).

    ``comm``: the ranks of a multi-rank selection (global scope, counting engine only)."""
    if problem.settings.scope == "per_output":  # every output row band alone
        made: list[KeepBlocks] = [partial(_per_output, problem, op) for op in problem.ops]
        return made if problem.streaming else [partial(_identity, make()) for make in made]
    if problem.engine == "reference":
        return [partial(_identity, keep) for keep in _reference(problem)]
    ops = [op.scored for op in problem.ops]
    if problem.settings.scope == "local":
        counts = [op.local for op in problem.ops]
        if problem.streaming:  # one op at a time, when its mask is wanted
            return [
                partial(Resolution(k).materialize, op) for op, k in zip(ops, counts, strict=True)
            ]
        keeps = counting.local_keeps(ops, counts)
        problem.forget_block_scores(problem.ops)
        return [partial(_identity, keep) for keep in keeps]
    if comm is not None:
        scratch = Scratch()
        target = round(problem.target * int(comm.sum(torch.tensor([problem.elements]))[0]))
        plans = multirank.global_plan(ops, target, comm, scratch=scratch)
        return [partial(p.materialize, op, scratch) for p, op in zip(plans, ops, strict=True)]
    plans = counting.global_plan(
        ops, problem.target_elements, problem.elements, retain=not problem.streaming
    )
    problem.forget_block_scores(
        [op for op, plan in zip(problem.ops, plans, strict=True) if plan.self_contained]
    )
    return [partial(p.materialize, op) for p, op in zip(plans, ops, strict=True)]


def masks(problem: Problem, keeps: list[KeepBlocks]) -> Iterator[tuple[str, Tensor]]:
    """``(op name, bool mask shaped like its weight)`` for every op in op order: its kept
    blocks expanded, ops without blocks (skipped) kept whole, and what a pre-mask removed
    still removed."""
    keep_of = {op.name: keep for op, keep in zip(problem.ops, keeps, strict=True)}
    for name, shape in problem.shapes.items():
        if problem.streaming:  # the previous op's buffers, before this (as large) op's
            release_freed_memory(math.prod(shape))
        scores = problem.scores[name]
        op = problem.by_name.get(name)
        if op is None:
            mask = torch.ones(shape, dtype=torch.bool, device=scores.device)
        else:
            mask = expand_keep(op.layout, keep_of[name](), scores, problem.pre.get(name))
        if name in problem.pre:
            mask = mask & problem.pre[name].to(mask.device)
        yield name, mask
    if isinstance(problem.scores, LatestScores):
        problem.scores.forget()


def _reference(problem: Problem) -> list[Tensor]:
    """Kept blocks per op by the radix search on sortable keys (any block sizes)."""
    dtype = working_dtype(problem.scores[op.name].dtype for op in problem.ops)
    keyed = [_keyed(problem, op, dtype) for op in problem.ops]
    if problem.settings.scope == "local":
        counts = [op.local for op in problem.ops]
    else:
        try:
            counts = reference.global_counts(keyed, problem.target_elements, problem.elements)
        except ImpossibleTargetError as error:
            partial = [op.name for op in problem.ops if op.layout.sizes is not None]
            raise ImpossibleTargetError(
                f"{error}. The ops with partial edge blocks ({', '.join(map(repr, partial))}) "
                "remove fewer elements when their smaller edge blocks score lowest; "
                "indivisible='skip' leaves them out instead"
            ) from None
    return [~reference.lowest_k(k.keys, n) for k, n in zip(keyed, counts, strict=True)]


def _keyed(problem: Problem, op: Op, dtype: torch.dtype) -> reference.KeyedOp:
    """Op ``op``'s blocks as sortable keys, those a pre-mask removed below every score."""
    scores = problem.scores[op.name].to(dtype)
    block_scores = op.layout.reduce(scores, problem.settings.how)
    if torch.isnan(block_scores).any():
        raise mixed_infinities(op.name, problem.settings.how)
    keys = sortable_keys(block_scores)
    pre = problem.pre.get(op.name)
    if pre is not None:
        keys[removed_blocks(op.layout, pre.to(scores.device))] = lowest_key(keys)
    sizes = None if op.layout.sizes is None else op.layout.sizes.to(keys.device)
    return reference.KeyedOp(keys, sizes, op.layout.block_size, op.lo, op.hi)


def _per_output(problem: Problem, op: Op) -> Tensor:
    """Op ``op``'s kept blocks when each of its output row bands reaches the target alone."""
    settings = problem.settings
    return per_output_keep(
        op.name,
        op.layout,
        tuple(problem.shapes[op.name]),
        problem.scores[op.name],
        problem.pre.get(op.name),
        problem.target,
        (settings.min_ratio, settings.max_ratio),
        settings.how,
    )


def _identity(value: Tensor) -> Tensor:
    return value
