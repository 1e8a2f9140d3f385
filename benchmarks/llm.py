"""Global pruning of a 7B-weight model (LLaMA-7B's Linear shapes, bf16) on one machine.

Builds 32 decoder blocks of q, k, v, o (4096x4096), gate, up (11008x4096) and down
(4096x11008), plus lm_head (32000x4096): 6.6B weights, 13.2 GB in bf16. Then prunes them to
``--sparsity`` at global scope with ``--pattern``, streaming: scores are |W| computed on
demand (never all held), masks come one op at a time from ``Pattern.iter_masks`` and are
applied in place. Reports wall time, peak RSS against the weights' size, and the achieved
sparsity. ``--layers`` scales the model down for a quick check.

    python benchmarks/llm.py --pattern 1x1          # about 13.2 GB of weights
    python benchmarks/llm.py --pattern 4x1 --layers 4

``--calibration table`` and ``--calibration 7b`` are the one-shot calibration modes (Wanda,
SparseGPT, OWL): ``benchmarks/calibration_modes.py``.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import nn

import prunekit as pk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from calibration_modes import perplexity_table, wanda_7b

LLAMA_7B_BLOCK = [
    ("q_proj", 4096, 4096),
    ("k_proj", 4096, 4096),
    ("v_proj", 4096, 4096),
    ("o_proj", 4096, 4096),
    ("gate_proj", 4096, 11008),
    ("up_proj", 4096, 11008),
    ("down_proj", 11008, 4096),
]


def rss_gib() -> float:
    """Peak resident set size of this process so far, in GiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def llama_linears(layers: int, seed: int) -> dict[str, nn.Linear]:
    """Linear modules with LLaMA-7B's shapes and random bf16 weights, built one at a time."""
    generator = torch.Generator().manual_seed(seed)
    modules: dict[str, nn.Linear] = {}
    shapes = [
        (f"layers.{i}.{n}", inp, out) for i in range(layers) for n, inp, out in LLAMA_7B_BLOCK
    ]
    shapes.append(("lm_head", 4096, 32000))
    for name, inp, out in shapes:
        layer = nn.Linear(inp, out, bias=False, device="meta", dtype=torch.bfloat16)
        weight = torch.empty(out, inp, dtype=torch.bfloat16)
        weight.normal_(0.0, inp**-0.5, generator=generator)
        layer.weight = nn.Parameter(weight, requires_grad=False)
        modules[name] = layer
    return modules


class MagnitudeOnDemand(Mapping[str, torch.Tensor]):
    """|W| of each op, computed at each access and never kept."""

    def __init__(self, modules: Mapping[str, nn.Module]) -> None:
        self.modules = modules

    def __getitem__(self, name: str) -> torch.Tensor:
        weight = self.modules[name].weight
        assert isinstance(weight, torch.Tensor)
        return weight.detach().abs()

    def __iter__(self) -> Iterator[str]:
        return iter(self.modules)

    def __len__(self) -> int:
        return len(self.modules)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pattern", default="1x1")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--calibration", choices=["table", "7b"], default=None,
        help="table: the example's perplexity table; 7b: Wanda on a LLaMA-7B-shaped model",
    )  # fmt: skip
    parser.add_argument("--batches", type=int, default=4, help="7b: calibration batches")
    parser.add_argument("--tokens", type=int, default=128, help="7b: tokens per batch")
    parser.add_argument("--criterion", default="wanda", help="7b: wanda or sparsegpt")
    args = parser.parse_args()
    if args.calibration == "table":
        perplexity_table()
        return
    if args.calibration == "7b":
        wanda_7b(args.layers, args.batches, args.tokens, args.seed, args.criterion)
        return

    started = time.perf_counter()
    modules = llama_linears(args.layers, args.seed)
    weights = sum(m.weight.numel() for m in modules.values())
    weight_gib = weights * 2 / 2**30
    built = time.perf_counter() - started
    base_rss = rss_gib()
    print(
        f"built {len(modules)} Linear layers, {weights / 1e9:.2f}B weights, "
        f"{weight_gib:.2f} GiB bf16, in {built:.0f} s; peak RSS so far {base_rss:.2f} GiB"
    )

    started = time.perf_counter()
    pattern = pk.get_pattern(
        {"pattern": args.pattern, "pruning_scope": "global", "target_sparsity": args.sparsity},
        modules,
    )
    removed = 0
    with torch.no_grad():
        for name, mask in pattern.iter_masks(MagnitudeOnDemand(modules), args.sparsity):
            modules[name].weight.mul_(mask)
            removed += int(mask.numel() - int(torch.count_nonzero(mask)))
    elapsed = time.perf_counter() - started
    peak = rss_gib()
    print(
        f"pruned to {removed / weights:.6f} sparsity ({args.pattern}, global, target "
        f"{args.sparsity}) in {elapsed:.1f} s"
    )
    print(
        f"peak RSS {peak:.2f} GiB = weights {weight_gib:.2f} GiB + {peak - weight_gib:.2f} GiB "
        f"(budget: weights + 2 GiB)"
    )


if __name__ == "__main__":
    main()
