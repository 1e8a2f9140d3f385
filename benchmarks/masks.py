"""Mask-computation speed and memory on a BERT-base-shaped stack of Linear layers.

Times (median of ``--repeat`` runs after a warm-up) one ``|W|`` pass over every weight (the
memory floor) and prunekit's patterns at local and global scope, and prints each time with
its ratio to the floor and the achieved sparsity. ``--blocks`` scales the stack (12 blocks:
72 Linear layers, 85M weights). Run with ``make bench``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from typing import TypeVar

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

import prunekit as pk

T = TypeVar("T")
BERT_BLOCK = [
    ("q", 768, 768),
    ("k", 768, 768),
    ("v", 768, 768),
    ("o", 768, 768),
    ("fc1", 768, 3072),
    ("fc2", 3072, 768),
]


def bert_stack(blocks: int) -> dict[str, nn.Linear]:
    """72 Linear layers for 12 blocks, shaped like BERT-base's encoder (weights (out, in))."""
    modules: dict[str, nn.Linear] = {}
    for b in range(blocks):
        for name, inp, out in BERT_BLOCK:
            layer = nn.Linear(inp, out, bias=False)
            modules[f"layer{b}.{name}"] = layer
    return modules


def median_time(fn: Callable[[], T], repeat: int) -> tuple[float, T]:
    """Median seconds of ``repeat`` calls after one warm-up, and the last result."""
    result = fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--blocks", type=int, default=12, help="encoder blocks (12: BERT-base)")
    parser.add_argument("--sparsity", type=float, default=0.8)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    modules = bert_stack(args.blocks)
    weights = {n: m.weight.detach() for n, m in modules.items()}
    total = sum(w.numel() for w in weights.values())
    scores = {n: w.abs() for n, w in weights.items()}

    def floor() -> object:
        return [w.abs() for w in weights.values()]

    rows: list[tuple[str, float, str]] = []
    floor_time, _ = median_time(floor, args.repeat)
    rows.append(("|W| pass (floor)", floor_time, "-"))
    contenders = [
        (spec, scope)
        for spec in ("1x1", "4x1", "channelx1", "1xchannel")
        for scope in ("global", "local")
    ]
    for spec, scope in contenders:
        pattern = pk.get_pattern(
            {"pattern": spec, "pruning_scope": scope, "target_sparsity": args.sparsity}, modules
        )
        seconds, masks = median_time(
            lambda pattern=pattern: pattern.get_masks(scores, args.sparsity), args.repeat
        )
        removed = sum(int((~m).sum()) for m in masks.values())
        rows.append((f"prunekit {spec} {scope}", seconds, f"{removed / total:.4f}"))

    machine = platform.processor() or platform.machine()
    table = Table(
        title=f"{len(modules)} Linear layers, {total / 1e6:.1f}M weights, target "
        f"{args.sparsity:.0%}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{machine}"
    )
    for column in ("contender", "median", "x floor", "achieved sparsity"):
        table.add_column(column, justify="left" if column == "contender" else "right")
    for name, seconds, achieved in rows:
        table.add_row(name, f"{seconds * 1000:.0f} ms", f"{seconds / floor_time:.1f}", achieved)
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
