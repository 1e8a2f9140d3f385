"""The demo's second part: structured pruning that ends in a smaller, faster model.

A mask makes nothing faster. Starting from the same trained dense CNN, this part removes
half of its channels and neurons with one coupled config (``1xchannel``: whole output
channels of conv1, conv2 and fc1, each class with the inputs of the layer after it),
fine-tunes, then ``pk.slim`` rebuilds the layers smaller. It prints the parameters, the
size on disk (``torch.save`` of the state dict) and the latency of the test set's forward
pass before and after, and checks that the slimmed model predicts exactly what the masked
one does.
"""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

import prunekit as pk

STRUCTURED = {
    "pattern": "1xchannel",
    "target_sparsity": 0.5,
    "coupled": True,
    "pruning_scope": "local",
    "op_names": ["^conv1$", "^conv2$", "^fc1$"],
    "start_step": 0,
    "end_step": 100,
    "pruning_frequency": 20,
    "sparsity_decay_type": "cos",
}


@dataclass(frozen=True)
class Size:
    """What a model costs: parameters, bytes on disk, milliseconds per test-set forward."""

    params: int
    disk: int
    latency_ms: float


def measure(model: nn.Module, images: torch.Tensor) -> Size:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    model.eval()
    times = []
    with torch.inference_mode():
        for _ in range(25):
            start = time.perf_counter()
            model(images)
            times.append(time.perf_counter() - start)
    model.train()
    params = sum(p.numel() for p in model.parameters())
    return Size(params, buffer.tell(), 1000 * statistics.median(times[5:]))


def payoff(
    model: nn.Module,
    train: Callable[[nn.Module, pk.Pruner, int], None],
    accuracy: Callable[[nn.Module], float],
    images: torch.Tensor,
    console: Console,
) -> pk.SlimReport:
    """Prune ``model`` (trained, dense) with :data:`STRUCTURED`, fine-tune it with ``train``
    for 150 steps, slim it and print what that bought."""
    dense = measure(model, images)
    dense_accuracy = accuracy(model)
    pruner = pk.Pruner(model, STRUCTURED, example_inputs=images[:2])
    train(model, pruner, 150)
    masked = measure(model, images)
    masked_accuracy = accuracy(model)
    model.eval()
    with torch.no_grad():
        masked_predictions = model(images).argmax(dim=1)
    report = pk.slim(model)
    with torch.no_grad():
        same = bool(torch.equal(model(images).argmax(dim=1), masked_predictions))
    model.train()
    slimmed = measure(model, images)
    table = Table(title="structured pruning, then pk.slim", title_justify="left")
    for column in ("model", "params", "size on disk", "latency (test set)", "test accuracy"):
        table.add_column(column, justify="right" if column != "model" else "left")
    for name, size, correct in (
        ("dense", dense, dense_accuracy),
        ("masked (50% channels)", masked, masked_accuracy),
        ("slimmed", slimmed, accuracy(model)),
    ):
        table.add_row(
            name, f"{size.params:,}", f"{size.disk / 1024:.1f} KiB", f"{size.latency_ms:.2f} ms",
            f"{correct:.2%}",
        )  # fmt: skip
    console.print(table)
    shapes = ", ".join(
        f"{c.name.removesuffix('.weight')} {'x'.join(map(str, c.before))} -> "
        f"{'x'.join(map(str, c.after))}"
        for c in report.changes
        if c.name.endswith(".weight")
    )
    console.print(
        f"slimmed: {shapes}; {dense.params / slimmed.params:.1f}x fewer parameters, "
        f"{masked.latency_ms / slimmed.latency_ms:.1f}x faster than the masked model, "
        f"predictions {'identical to' if same else 'DIFFERENT from'} the masked model's"
    )
    return report
