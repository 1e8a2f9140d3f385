"""OWL's layer-wise budgets: blocks with more activation outliers are pruned less.

Source: Yin et al. 2024, "Outlier Weighed Layerwise Sparsity (OWL): A Missing Secret Sauce
for Pruning LLMs to High Sparsity" (ICML). A block's outlier ratio ``D`` is the fraction of
its selected weights whose Wanda score ``|w| * ||x||`` (on the dense model's calibration
activations) exceeds ``M`` times the block's mean score. Ratios are scaled to ``[0, 2
lambda]`` and subtracted from the target: a block's sparsity is ``target - (D_norm -
mean)``, so blocks spread over about ``target +- lambda``.

Where prunekit is exact: the targets are shifted together (one constant, found by
bisection) so that their mean **weighted by each block's selected weights**, after each is
held within its caps (the per-op min and max ratios, and the most the pattern can remove),
is the target; then each block's count of removed weights is made a whole number with the
largest remainders, so that the counts add up to ``round(target * weights)`` exactly. (OWL
takes the plain mean over blocks and does not cap; with blocks of equal size and no cap
binding the two agree.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from prunekit.errors import ImpossibleTargetError

_BISECTIONS = 200


def outlier_ratio(scores: Callable[[], Iterable[Tensor]], m: float) -> float:
    """The fraction of a block's scores above ``m`` times their mean. ``scores()`` yields
    the block's ops' scores one op at a time, and is called twice (the mean, then the
    count), so that no two ops' scores are held at once."""
    total, count = 0.0, 0
    for tensor in scores():
        total += float(tensor.sum(dtype=torch.float64))
        count += tensor.numel()
    if count == 0:
        return 0.0
    threshold = m * total / count
    above = sum(int((tensor > threshold).sum()) for tensor in scores())
    return above / count


def owl_targets(
    ratios: Tensor, elements: Tensor, target: float, lam: float, lo: Tensor, hi: Tensor
) -> Tensor:
    """Per block (1-D tensors, one entry per block): its sparsity from its outlier ratio,
    within ``[lo, hi]``, the removed weights adding up to ``round(target * elements.sum())``
    (see the module's docstring). Raises when the caps cannot hold that many."""
    d = ratios.to(torch.float64)
    n = elements.to(torch.float64)
    spread = d.max() - d.min()
    normalized = (d - d.min()) / spread * (2 * lam) if float(spread) > 0 else torch.zeros_like(d)
    lo64, hi64 = lo.to(torch.float64), hi.to(torch.float64)
    total = float(n.sum())
    if float((hi64 * n).sum()) + 1e-9 < target * total:
        raise ImpossibleTargetError(
            f"layer_sparsity 'owl': the blocks' caps allow at most "
            f"{float((hi64 * n).sum()) / total:.4%} sparsity, below target_sparsity {target:g}; "
            "lower the target or raise max_sparsity_ratio_per_op"
        )

    def mean_at(shift: float) -> Tensor:
        return torch.clamp(shift - normalized, lo64, hi64)

    low, high = float((lo64 + normalized).min()) - 1.0, float((hi64 + normalized).max()) + 1.0
    for _ in range(_BISECTIONS):  # the weighted mean rises with the shift: bisect it
        middle = (low + high) / 2
        if float((mean_at(middle) * n).sum()) < target * total:
            low = middle
        else:
            high = middle
    return whole_counts(mean_at(high), n, round(target * total), lo64, hi64) / n


def whole_counts(targets: Tensor, n: Tensor, wanted: int, lo: Tensor, hi: Tensor) -> Tensor:
    """Whole removed counts per block near ``targets * n``, within ``[ceil(lo n), floor(hi
    n)]``, adding up to ``wanted``: floors first, then one more for the blocks with the
    largest remainders (ties to the earlier block), or one less for the smallest."""
    exact = targets * n
    least = torch.ceil(lo * n - 1e-9)
    most = torch.floor(hi * n + 1e-9)
    counts = torch.clamp(torch.floor(exact), least, most)
    short = wanted - int(counts.sum())
    remainder = exact - counts
    if short > 0:
        room = counts < most
        rank = torch.where(room, remainder, torch.full_like(remainder, -torch.inf))
        chosen = torch.sort(-rank, stable=True).indices  # largest first, ties: earlier
        counts[chosen[:short][room[chosen[:short]]]] += 1
    elif short < 0:
        room = counts > least
        rank = torch.where(room, remainder, torch.full_like(remainder, torch.inf))
        chosen = torch.sort(rank, stable=True).indices
        counts[chosen[:-short][room[chosen[:-short]]]] -= 1
    return counts
