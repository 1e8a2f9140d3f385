"""prunekit demo: prune a real CNN's weights from a config dict and show what happened.

Runs on the embedded default (a LeNet-style CNN for 8x8 digit images, 4x1 blocks, 80%
sparsity, global scope) with no download; ``--pattern``, ``--sparsity`` and ``--scope``
change it. Prints the per-layer sparsity table and checks that the masked model still runs.
"""

from __future__ import annotations

import argparse
import time

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

import prunekit as pk


class DigitsCNN(nn.Module):
    """A LeNet-style CNN for 1x8x8 digit images: the model the later demo trains."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 2 * 2, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pattern", default="4x1", help="any registered pattern or spec")
    parser.add_argument("--sparsity", type=float, default=0.8, help="target sparsity in [0, 1)")
    parser.add_argument("--scope", default="global", choices=["global", "local"])
    args = parser.parse_args()

    torch.manual_seed(0)
    model = DigitsCNN()
    config = {
        "pattern": args.pattern,
        "target_sparsity": args.sparsity,
        "pruning_scope": args.scope,
    }
    modules = {
        name: m for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))
    }

    started = time.perf_counter()
    pattern = pk.get_pattern(config, modules)
    scores = {name: pk.CRITERIA["magnitude"](m.weight) for name, m in modules.items()}
    masks = pattern.get_masks(scores, args.sparsity)
    with torch.no_grad():
        for name, module in modules.items():
            module.weight.mul_(masks[name])
    elapsed = time.perf_counter() - started

    table = Table(title=f"prunekit: {args.pattern}, {args.scope} scope, target {args.sparsity:.0%}")
    for column in ("op", "type", "weight shape", "blocks", "removed", "sparsity"):
        table.add_column(column, justify="left" if column in {"op", "type"} else "right")
    removed_total = elements_total = 0
    for name, module in modules.items():
        mask = masks[name]
        removed = int((~mask).sum())
        removed_total += removed
        elements_total += mask.numel()
        layout = pattern.layouts.get(name)
        blocks = str(layout.num_blocks) if layout is not None else pattern.skipped.get(name, "-")
        table.add_row(
            name,
            type(module).__name__,
            "x".join(map(str, mask.shape)),
            blocks,
            str(removed),
            f"{removed / mask.numel():.1%}",
        )
    table.add_row(
        "total",
        "",
        "",
        "",
        str(removed_total),
        f"{removed_total / elements_total:.1%}",
        style="bold",
    )
    console = Console()
    console.print(table)
    zero_weights = sum(int((m.weight == 0).sum()) for m in modules.values())
    output = model(torch.randn(4, 1, 8, 8))
    console.print(
        f"masks computed and applied in {elapsed * 1000:.1f} ms; {zero_weights} weights "
        f"are now zero; the pruned model still runs (output {tuple(output.shape)})."
    )


if __name__ == "__main__":
    main()
