"""The calibration criteria: Wanda and SparseGPT, registered like every other criterion.

Both read statistics of each op's inputs on calibration data (gathered by
:mod:`prunekit.training.statistics` while the model runs), so they work through
``pk.prune(model, config, calibration_data=...)``. Called directly, they take those
statistics as ``statistics={name: tensor}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from prunekit.plugins.hookspecs import Register, hookimpl
from prunekit.training.criteria import Criterion, criterion
from prunekit.training.reconstruct import SelectColumns, inverse_factor, obs_prune

__all__ = ["CALIBRATION_CRITERIA", "SparseGPTOptions", "sparsegpt", "wanda"]


def _statistic(name: str, wanted: str, statistics: Mapping[str, Tensor] | None) -> Tensor:
    """One statistic a criterion reads, or an error saying how it is supplied."""
    value = None if statistics is None else statistics.get(wanted)
    if value is None:
        raise ValueError(
            f"criterion {name!r} reads the {wanted!r} of each op's inputs on calibration data: "
            "pass calibration_data=... to pk.prune / pk.Pruner (called directly, pass "
            f"statistics={{{wanted!r}: ...}})"
        )
    return value


@criterion(statistics=("input_norms",), default_scope="per_output")
def wanda(
    weight: Tensor,
    *,
    grad: Tensor | None = None,
    state: Tensor | None = None,
    generator: torch.Generator | None = None,
    statistics: Mapping[str, Tensor] | None = None,
    options: BaseModel | None = None,
) -> Tensor:
    """|w| * ||x||: the weight's magnitude times its input's norm on calibration data (Wanda).

    Source: Sun, Liu, Bair and Kolter 2024, "A Simple and Effective Pruning Approach for
    Large Language Models" (ICLR): score ``S_ij = |W_ij| * ||X_j||_2``, ``X_j`` the j-th
    input feature over every calibration token, compared within each output row (so the
    default scope is ``per_output``); no weight update. ``statistics["input_norms"]``
    broadcasts against the weight (``(1, in)`` for a Linear).
    """
    norms = _statistic("wanda", "input_norms", statistics)
    return weight.detach().abs().to(torch.float32) * norms.to(weight.device, torch.float32)


class SparseGPTOptions(BaseModel):
    """SparseGPT's options (the reference's defaults)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    blocksize: int = Field(
        128,
        ge=1,
        le=65536,
        description="Columns per block: the pattern chooses each block's mask from scores "
        "that include the updates of the blocks before it (the reference's 128).",
    )
    percdamp: float = Field(
        0.01,
        ge=0.0,
        le=10.0,
        allow_inf_nan=False,
        description="Damping added to the Hessian's diagonal, as a fraction of its mean "
        "diagonal (the reference's 0.01).",
    )


def reconstruct_sparsegpt(
    weight: Tensor,
    statistics: Mapping[str, Tensor],
    options: BaseModel | None,
    select: SelectColumns,
    name: str = "op",
) -> Tensor:
    """SparseGPT on one op: ``weight`` seen ``(out, in)``, ``statistics["hessian"]``
    ``(in, in)`` (overwritten); returns the pruned, updated weight (float32)."""
    opts = options if isinstance(options, SparseGPTOptions) else SparseGPTOptions()
    hessian = _statistic("sparsegpt", "hessian", statistics)
    return obs_prune(weight, hessian, select, opts.blocksize, opts.percdamp, name)


@criterion(
    statistics=("hessian",),
    options=SparseGPTOptions,
    reconstruct=reconstruct_sparsegpt,
    default_scope="local",
    scopes=("local", "per_output"),
)
def sparsegpt(
    weight: Tensor,
    *,
    grad: Tensor | None = None,
    state: Tensor | None = None,
    generator: torch.Generator | None = None,
    statistics: Mapping[str, Tensor] | None = None,
    options: BaseModel | None = None,
) -> Tensor:
    """w^2 / U_jj^2 per column block, kept weights updated (OBS): second-order pruning (SparseGPT).

    Source: Frantar and Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately
    Pruned in One-Shot" (ICML). Reads each op's Hessian ``X^T X`` on calibration data; the
    engine asks the pattern for each column block's mask from the saliency ``w^2 /
    [U]_jj^2`` (``U`` the Cholesky factor of the damped inverse Hessian) with the earlier
    blocks' updates applied, and the kept weights are updated to compensate. Called as a
    plain criterion it returns that saliency before any update (a 2-D ``(out, in)`` weight).
    """
    opts = options if isinstance(options, SparseGPTOptions) else SparseGPTOptions()
    hessian = _statistic("sparsegpt", "hessian", statistics).clone()
    diagonal = inverse_factor(hessian, opts.percdamp, "op").diagonal()
    w = weight.detach().to(torch.float32)
    return w.square() / diagonal.square().reshape(1, -1).to(w.device)


CALIBRATION_CRITERIA: Final[dict[str, Criterion]] = {"wanda": wanda, "sparsegpt": sparsegpt}


@hookimpl
def register_criteria(register: Register) -> None:
    for name, fn in CALIBRATION_CRITERIA.items():
        register(name, fn)
