"""SparseGPT's column sweep alone: :func:`prunekit.training.reconstruct.obs_prune` on one op's
weight and Hessian, for the shapes of the example's small LLaMA and of LLaMA-7B, unstructured
(each column block's mask at its start) and 2:4 (each group's when the sweep reaches it),
with the sweep's chunk width as a knob (``--chunk``, default the library's).

It times the part of a SparseGPT run that is prunekit's own arithmetic, apart from the
calibration passes and the Hessians. The masks come from the real pattern selectors, as in
``pk.prune``. The fastest of ``--repeats`` runs per case; 2 threads.

    python benchmarks/obs_sweep.py
    python benchmarks/obs_sweep.py --chunk 16 --chunk 32 --chunk 64
    python benchmarks/obs_sweep.py --shape 4096x4096 --columns 1024
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import prunekit as pk
from prunekit.training import reconstruct
from prunekit.training.columns import selector

SHAPES = ["256x256", "256x688", "688x256", "4096x4096"]


def hessian(columns: int, tokens: int, seed: int) -> torch.Tensor:
    """``X^T X`` of correlated inputs, as a layer's calibration inputs give."""
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(columns, columns, generator=generator) / columns**0.5
    x = torch.randn(tokens, columns, generator=generator) @ mixing
    gram: torch.Tensor = x.t() @ x
    return gram


def time_case(rows: int, columns: int, pattern: str, repeats: int, blocksize: int) -> float:
    """The fastest of ``repeats`` sweeps of a ``rows x columns`` op, in seconds."""
    weight = torch.randn(rows, columns, generator=torch.Generator().manual_seed(0))
    h = hessian(columns, max(2 * columns, 512), 1)
    config = pk.load_config({"pattern": pattern, "target_sparsity": 0.5, "pruning_scope": "local"})
    op = nn.Linear(columns, rows, bias=False, device="meta")
    found = pk.get_pattern(config, {"op": op})
    best = float("inf")
    for _ in range(repeats):
        choose = selector(found, config, "op", 0.5, None)
        started = time.perf_counter()
        reconstruct.obs_prune(weight, h, choose, blocksize, 0.01, "op")
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", action="append", help="ROWSxCOLUMNS (repeatable)")
    parser.add_argument("--chunk", type=int, action="append", help="sweep chunk widths")
    parser.add_argument("--columns", type=int, help="cut every shape to this many columns")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--blocksize", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(2)
    chunks = args.chunk or [reconstruct._CHUNK]
    print(f"obs_prune, fastest of {args.repeats}, blocksize {args.blocksize}, 2 threads")
    print("| op | pattern | " + " | ".join(f"chunk {c}" for c in chunks) + " |")
    print("| --- | --- | " + " | ".join("---:" for _ in chunks) + " |")
    for shape in args.shape or SHAPES:
        rows, columns = (int(v) for v in shape.split("x"))
        columns = min(columns, args.columns or columns)
        for pattern in ("1x1", "2:4"):
            times = []
            for chunk in chunks:
                reconstruct._CHUNK = chunk
                times.append(time_case(rows, columns, pattern, args.repeats, args.blocksize))
            cells = " | ".join(f"{t * 1000:.1f} ms" for t in times)
            print(f"| {rows}x{columns} | {pattern} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
