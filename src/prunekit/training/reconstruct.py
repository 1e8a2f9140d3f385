"""SparseGPT's reconstruction: prune a layer column block by column block and update the
weights it keeps so that the layer's output on calibration data changes as little as
possible (Frantar and Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately
Pruned in One-Shot"; the optimal brain surgeon update of Hassibi and Stork 1993).

For a weight ``W`` (out, in) and the inputs' Hessian ``H = X^T X`` (in, in): ``H`` is damped
(``percdamp`` times its mean diagonal added to the diagonal, inputs that are always zero
given a unit diagonal), and ``U``, the upper Cholesky factor of ``H^-1``, is taken once. The
columns are then visited in column blocks of ``blocksize``; for each block the caller's
``select`` turns the scores ``w^2 / U_jj^2`` (the OBS saliency of each weight, with the
updates from earlier blocks applied) into the block's mask (for a pattern whose groups of
columns are chosen each by itself, N:M, into each group's mask when the sweep reaches the
group, with the updates from the block's earlier columns too, as the reference does), and
each column of the block in turn is pruned where the mask says, its error ``(w - q) / U_jj``
spread over the later columns of the block through row ``j`` of ``U``; the block's errors
then update every later column at once (one matrix product). Pruned weights are exactly
zero; nothing else is set to zero (the reference also zeroes the weights of always-zero
inputs; here they keep their value, which such inputs never read).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

from prunekit.errors import CalibrationError


class SelectColumns(Protocol):
    """What gives a reconstruction its masks: called with the scores of columns ``[start,
    start + width)`` and ``start``, it returns their keep mask ``(out, width)``. ``sweep``:
    the width of the column groups the pattern chooses each by itself (their masks are then
    asked for one group at a time, as the sweep reaches them), or None (one column block at
    a time, at its start)."""

    sweep: int | None

    def __call__(self, scores: Tensor, start: int) -> Tensor: ...


# Damping grows by this factor, a few times, when H + damping is not positive definite.
_DAMP_GROWTH = 10.0
_DAMP_TRIES = 4


def inverse_factor(hessian: Tensor, percdamp: float, name: str) -> Tensor:
    """``U``: the upper Cholesky factor of the damped ``H^-1`` (``(in, in)`` float32). The
    Hessian is overwritten (damped in place) to spare a second ``(in, in)`` matrix."""
    h = hessian
    diagonal = h.diagonal()
    dead = diagonal == 0
    diagonal[dead] = 1.0
    mean = float(diagonal.mean())
    damp = percdamp * mean
    base = max(damp, 1e-6 * mean)  # what a failed attempt grows from, also when damp is 0
    added = 0.0
    for attempt in range(_DAMP_TRIES):
        wanted = damp if attempt == 0 else base * _DAMP_GROWTH**attempt
        diagonal += wanted - added
        added = wanted
        factor, info = torch.linalg.cholesky_ex(h)
        if int(info) == 0:
            inverse = torch.cholesky_inverse(factor)
            del factor
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if int(info) == 0:
                found: Tensor = upper
                return found
    raise CalibrationError(
        f"op {name!r}: its inputs' Hessian is not positive definite even with damping "
        f"{added:g}; raise percdamp or give more "
        "calibration data"
    )


def obs_prune(
    weight: Tensor, hessian: Tensor, select: SelectColumns, blocksize: int, percdamp: float,
    name: str = "op",
) -> Tensor:  # fmt: skip
    """The pruned and updated ``weight`` ((out, in), any float dtype; the result is float32
    with its pruned weights exactly zero). ``select`` gives the masks: of each column block
    at its start, or, when its ``sweep`` is set, of each group of ``sweep`` columns when the
    column sweep reaches it."""
    w = weight.detach().to(torch.float32, copy=True)
    upper = inverse_factor(hessian, percdamp, name)
    columns = w.shape[1]
    for start in range(0, columns, blocksize):  # blocks in order: each sees earlier updates
        stop = min(start + blocksize, columns)
        block = w[:, start:stop]
        u = upper[start:stop, start:stop]
        choose = _chooser(block, u, select, start, name)
        errors = obs_block(block, u, choose, select.sweep or block.shape[1])
        if stop < columns:
            w[:, stop:].addmm_(errors, upper[start:stop, stop:], alpha=-1.0)
    return w


# (first, stop, their current values) within a column block -> the keep mask of its
# columns [first, stop).
ChooseColumns = Callable[[int, int, Tensor], Tensor]

# Columns the sweep visits one by one in a contiguous copy before the rest of the column
# block takes their errors at once (one matrix product): SparseGPT's lazy batch update of
# column blocks, applied again inside each block. Measured on CPU (2 threads): a 4096 x 128
# block took 59.5 ms one column at a time over the whole block, 26 ms in chunks of 16 or 32;
# whole ops (benchmarks/obs_sweep.py), 4096 x 1024: 296 ms in chunks of 16, 326 of 32, 396
# of 64; 688 x 256: 15.2, 17.3 and 18.6 ms.
_CHUNK = 16


def _chooser(
    block: Tensor, u: Tensor, select: SelectColumns, start: int, name: str
) -> ChooseColumns:
    """``select`` on the OBS saliencies ``w^2 / U_jj^2`` of columns [first, stop) of the
    column block at ``start``, from their values as they are when asked (with every update
    made so far)."""
    diagonal = u.diagonal().square().reshape(1, -1)

    def choose(first: int, stop: int, columns: Tensor) -> Tensor:
        scores = columns.square() / diagonal[:, first:stop]
        keep = select(scores, start + first)
        if keep.shape != scores.shape or keep.dtype != torch.bool:
            raise CalibrationError(
                f"op {name!r}: the pattern gave a mask of shape {tuple(keep.shape)} for "
                f"columns {start + first}..{start + stop - 1}, expected "
                f"{tuple(scores.shape)} bools"
            )
        return keep.to(block.device)

    return choose


def obs_block(block: Tensor, u: Tensor, choose: ChooseColumns, group: int) -> Tensor:
    """Prune one column block in place (``block``: (out, width) float32, ``u``: its
    (width, width) part of ``U``) and return the errors ``(w - q) / U_jj`` that update the
    later columns. ``choose`` gives the mask of each ``group`` columns just before the sweep
    reaches them (``group`` = width: the whole block's at its start).

    The columns are visited one by one because each column's error depends on the updates
    the previous columns' errors made to it (the algorithm is sequential along columns);
    each step is one vector operation over all rows, on a chunk of ``_CHUNK`` columns (a
    whole number of groups) copied out, and the block's later columns take the chunk's
    errors in one matrix product. A per-row batched triangular solve per chunk gives the
    same result with fewer steps but measured slower on 4096 rows (32.7 against 26.4 ms a
    block) and, over the whole block, 3.6x slower than one column at a time."""
    errors = torch.zeros_like(block)
    width = block.shape[1]
    step = group * max(1, _CHUNK // group) if group < width else _CHUNK
    keep = drop = block  # bound on the first column (j = 0 starts a group)
    first = 0
    for a in range(0, width, step):
        b = min(a + step, width)
        part = block[:, a:b].clone()
        for j in range(a, b):
            if j % group == 0:
                first, stop = j, min(j + group, width)
                # a group inside the chunk reads its updated copy; the whole block, at j = 0,
                # the block itself (nothing is updated yet)
                current = part[:, j - a : stop - a] if stop <= b else block[:, j:stop]
                keep = choose(first, stop, current)
                drop = ~keep
            column = part[:, j - a]
            error = column * drop[:, j - first] / u[j, j]
            errors[:, j] = error
            column.mul_(keep[:, j - first])
            if j + 1 < b:
                part[:, j - a + 1 :].addr_(error, u[j, j + 1 : b], alpha=-1.0)
        block[:, a:b] = part
        if b < width:
            block[:, b:].addmm_(errors[:, a:b], u[a:b, b:], alpha=-1.0)
    return errors
