"""Global masks over a model spread across torch.distributed ranks.

Two layouts are supported, and may be mixed:

* **layers per rank** (pipeline-style): each rank holds some whole ops;
* **row shards** (FSDP2 / DTensor ``Shard(0)``): each rank holds rows ``[start, start + rows)``
  of an op's weight, the local module's weight being that shard.

Every rank calls :func:`global_masks` with its own modules' pattern and scores, and gets the
masks of its own weights: exactly the masks a single process would compute on the whole
model (same counts, same ties: earlier op in ``op_order``, then lower block index), built by
the same problem builder as ``get_masks``. Ranks exchange counts, a sample of scores and the
few candidate blocks near the threshold, never weights. Works with any backend that has
``all_reduce`` and ``all_gather`` (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from prunekit.errors import PrunekitError
from prunekit.masks.engine import decide, masks
from prunekit.masks.layouts import GridLayout
from prunekit.masks.pattern import Masks, Pattern
from prunekit.masks.problem import Part

__all__ = ["TorchComm", "global_masks"]


class TorchComm:
    """The :class:`~prunekit.masks.select.multirank.Comm` of a torch.distributed group."""

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        self.group = group
        self.world = dist.get_world_size(group)
        # Counts and samples live on the CPU; NCCL exchanges only CUDA tensors.
        nccl = dist.get_backend(group) == "nccl"
        self.device = (
            torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        )

    def sum(self, tensor: Tensor) -> Tensor:
        total = tensor.to(self.device, copy=True)
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=self.group)
        return total.cpu()

    def gather(self, tensor: Tensor) -> tuple[Tensor, list[int]]:
        flat = tensor.reshape(-1).contiguous().to(self.device)
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
    order = {name: i for i, name in enumerate(op_order)}
    parts: dict[str, Part] = {}
    for name in pattern.layouts:
        if name not in order:
            raise PrunekitError(f"global_masks: op {name!r} is not in op_order")
        parts[name] = (
            _shard(pattern, name, order[name], *shards[name])
            if shards and name in shards
            else Part(order[name])
        )
    problem = pattern.problem(scores, target_sparsity, parts=parts)
    if problem.engine != "counting":
        uneven = next(op.name for op in problem.ops if op.layout.sizes is not None)
        raise PrunekitError(
            f"global_masks: op {uneven!r} has blocks of different sizes "
            "(partial edges); distributed masks need block-aligned shapes"
        )
    return dict(masks(problem, decide(problem, TorchComm(group))))


def _shard(pattern: Pattern, name: str, op: int, first_row: int, total_rows: int) -> Part:
    """Op ``name``'s part on this rank: a row shard of a whole op of ``total_rows`` rows."""
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
    return Part(op, (first_row // layout.n) * layout.grid[1], whole)
