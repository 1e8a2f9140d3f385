"""How long ``prunekit verify`` takes on one LLaMA-7B MLP weight (4096 x 11008, float32).

Prunes a real ``nn.Linear(11008, 4096)`` to 2:4 with ``prunekit.prune`` (then ``remove()``),
breaks one group (row 1234, columns 5676:5680 made nonzero) and times
``verify_tensors`` finding it, the correct weight passing, and the same from a safetensors
file (reading included). Prints the best and the median of ``--repeat`` runs, never asserts
a time: the tests check the coordinates, this script the speed.

    python benchmarks/verify.py
    python benchmarks/verify.py --pattern 4x1 --repeat 7
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

import prunekit as pk
from prunekit.verify import VerifyReport, verify_file, verify_tensors

ROWS, COLS = 4096, 11008
BROKEN = (1234, slice(5676, 5680))


def pruned_weight(pattern: str, rows: int, cols: int) -> torch.Tensor:
    """A weight pruned by prunekit itself (magnitude, the pattern's default target)."""
    torch.manual_seed(0)
    layer = nn.Linear(cols, rows, bias=False)
    config: dict[str, object] = {"pattern": pattern}
    if ":" not in pattern:
        config["target_sparsity"] = 0.5
    pruner = pk.prune(layer, config)
    pruner.remove()
    return layer.weight.detach()


def timed(run: Callable[[], VerifyReport], repeat: int) -> tuple[list[float], VerifyReport]:
    """Wall times of ``repeat`` runs and the last report (after one untimed run, which
    loads the plugins)."""
    report = run()
    times: list[float] = []
    for _ in range(repeat):
        start = time.perf_counter()
        report = run()
        times.append(time.perf_counter() - start)
    return times, report


def show(label: str, times: list[float], report: VerifyReport) -> None:
    verdict = report.tensors[0]
    where = verdict.first_offender.index if verdict.first_offender else "-"
    print(
        f"{label:<34} best {min(times):.3f} s, median {statistics.median(times):.3f} s  "
        f"{verdict.status}, first offender {where}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pattern", default="2:4")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--cols", type=int, default=COLS)
    args = parser.parse_args()
    weight = pruned_weight(args.pattern, args.rows, args.cols)
    broken = weight.clone()
    broken[BROKEN] = 1.0
    print(
        f"{args.pattern} on a ({args.rows}, {args.cols}) float32 weight, "
        f"{torch.get_num_threads()} threads"
    )
    show(
        "correct, in memory",
        *timed(lambda: verify_tensors({"w": weight}, args.pattern), args.repeat),
    )
    show(
        "one broken block, in memory",
        *timed(lambda: verify_tensors({"w": broken}, args.pattern), args.repeat),
    )
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "broken.safetensors"
        save_file({"w": broken}, str(path))
        show(
            "one broken block, safetensors file",
            *timed(lambda: verify_file(path, args.pattern), args.repeat),
        )


if __name__ == "__main__":
    main()
