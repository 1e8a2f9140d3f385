"""Global masks over a model spread across torch.distributed ranks.

Two layouts are supported, and may be mixed:

* **layers per rank** (pipeline-style): each rank holds some whole ops;
* **row shards** (FSDP2 / DTensor ``Shard(0)``): each rank holds rows ``[start, start + rows)``
  of an op's weight, the local module's weight being that shard.

Every rank calls :func:`global_masks` with its own modules' pattern and scores, and gets the
masks of its own weights: exactly the masks a single process would compute on the whole
model (same counts, same ties: earlier op in ``op_order``, then lower block index). Ranks
exchange counts, a sample of scores and the few candidate blocks near the threshold, never
weights. Works with any backend that has ``all_reduce`` and ``all_gather`` (gloo on CPU,
NCCL on GPU).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from prunekit.errors import PrunekitError
from prunekit.patterns.base import Masks, Pattern
from prunekit.patterns.fastselect import Comm, FastOp, _Scratch, global_plan
from prunekit.patterns.layout import GridLayout, Reduce
from prunekit.patterns.selection import cap_counts


class TorchComm(Comm):
    """:class:`~prunekit.patterns.fastselect.Comm` over a torch.distributed process group."""

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        # Counts and samples live on the CPU; NCCL exchanges only CUDA tensors.
        nccl = dist.get_backend(group) == "nccl"
        self.device = (
            torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        )

    @property
    def single(self) -> bool:
        return False

    def sum(self, tensor: Tensor) -> Tensor:
        total = tensor.to(self.device, copy=True)
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=self.group)
        return total.cpu()

    def gather(self, tensor: Tensor) -> tuple[Tensor, list[int]]:
        flat = tensor.reshape(-1).contiguous()
        length = torch.tensor([flat.numel()], dtype=torch.int64, device=self.device)
        lengths = [torch.zeros(1, dtype=torch.int64, device=self.device) for _ in range(self.world)]
        dist.all_gather(lengths, length, group=self.group)
        sizes = [int(n) for n in lengths]
        longest = max(sizes)
        padded = torch.zeros(longest, dtype=flat.dtype, device=self.device)
        padded[: flat.numel()] = flat
        parts = [
            torch.zeros(longest, dtype=flat.dtype, device=self.device) for _ in range(self.world)
        ]
        dist.all_gather(parts, padded, group=self.group)
        gathered = torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)])
        return gathered.cpu(), sizes


def global_masks(
    pattern: Pattern,
    scores: Mapping[str, Tensor],
    target_sparsity: float,
    *,
    op_order: Sequence[str],
    shards: Mapping[str, tuple[int, int]] | None = None,
    group: dist.ProcessGroup | None = None,
) -> Masks:
    """This rank's masks under global scope, equal to a single process's on the whole model.

    ``pattern``: built on this rank's modules (for a row shard, a module whose weight is the
    shard). ``scores``: this rank's scores, shaped like its weights. ``op_order``: every op
    name of the whole model in model order, the same list on every rank (it fixes the tie
    rule between ops). ``shards``: op name -> ``(first_row, total_rows)`` for ops this rank
    holds a row shard of (rows of the weight's dim 0; a shard must start on a block
    boundary). Every rank of ``group`` must call this, with the same target.
    """
    if pattern.config.pruning_scope != "global":
        raise PrunekitError(
            "global_masks: the pattern's config must have pruning_scope "
            "'global' (local scope needs no communication: use get_masks)"
        )
    target = pattern.check_target(target_sparsity)
    pattern.check_inputs(scores)
    comm = TorchComm(group)
    shards = dict(shards or {})
    order = {name: i for i, name in enumerate(op_order)}
    how: Reduce = getattr(pattern.options, "criterion_reduce_type", "mean")
    ops: list[FastOp] = []
    names = list(pattern.layouts)
    elements = 0
    for name in names:
        if name not in order:
            raise PrunekitError(f"global_masks: op {name!r} is not in op_order")
        layout = pattern.layouts[name]
        if layout.sizes is not None:
            raise PrunekitError(
                f"global_masks: op {name!r} has blocks of different sizes "
                "(partial edges); distributed masks need block-aligned shapes"
            )
        offset, whole = 0, layout.num_blocks
        if name in shards:
            offset, whole = _shard_blocks(pattern, name, *shards[name])
        lo, hi = cap_counts(
            whole,
            pattern.config.min_sparsity_ratio_per_op,
            pattern.config.max_sparsity_ratio_per_op,
            0,
        )
        values = pattern._block_values(name, scores[name], how)
        ops.append(
            FastOp(values, layout.block_size, lo, hi, values.numel(), order[name], offset, whole)
        )
        elements += math.prod(pattern.shapes[name])
    total = int(comm.sum(torch.tensor([elements], dtype=torch.int64))[0])
    scratch = _Scratch()
    plans = global_plan(ops, round(target * total), total, retain=True, scratch=scratch, comm=comm)
    masks: Masks = {}
    for name in pattern.shapes:
        if name in pattern.layouts:
            i = names.index(name)
            keep = plans[i].materialize(ops[i], scratch)
            masks[name] = pattern.expand_blocks(name, keep, scores[name], None)
        else:
            masks[name] = torch.ones(pattern.shapes[name], dtype=torch.bool)
    return masks


def _shard_blocks(pattern: Pattern, name: str, first_row: int, total_rows: int) -> tuple[int, int]:
    """(index of the shard's first block in the whole op, blocks of the whole op)."""
    layout = pattern.layouts[name]
    shape = pattern.shapes[name]
    if pattern.params.get("n") == "channel":
        raise PrunekitError(
            f"global_masks: op {name!r}: {pattern.config.pattern!r} blocks span every row, so "
            "a row shard holds no whole block"
        )
    if not isinstance(layout, GridLayout):
        raise PrunekitError(
            f"global_masks: op {name!r}: row shards are supported for NxM "
            "patterns (tiles on the (out, kernel * in) view)"
        )
    if first_row % layout.n or (shape[0] % layout.n and first_row + shape[0] != total_rows):
        raise PrunekitError(
            f"global_masks: op {name!r}: the shard's rows [{first_row}, "
            f"{first_row + shape[0]}) do not start and end on {layout.n}-row "
            "block boundaries"
        )
    whole_shape = (total_rows, *shape[1:])
    whole = GridLayout(whole_shape, layout.n, layout.m)
    if whole.sizes is not None:
        raise PrunekitError(
            f"global_masks: op {name!r}: the whole weight {whole_shape} does not divide into blocks"
        )
    return (first_row // layout.n) * layout.grid[1], whole.num_blocks
