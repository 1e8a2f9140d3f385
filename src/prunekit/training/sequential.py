"""The passes of calibration through a model: block by block, or the whole model at once.

Sequential (:func:`block_pass`): the first block's inputs are recorded for every batch
(:func:`prunekit.training.batches.block_inputs`); then each block in turn runs on them with
hooks gathering its ops' statistics, is handed over to be pruned, runs again (now pruned) to
make the next block's inputs, and goes back where it was. Only one block's inputs, outputs
and statistics exist at a time, and with a ``device`` only that block (and its activations)
is moved there while it runs: the rest of the model stays where it is (the CPU). A pass that
prunes nothing (OWL's dense pass) runs each block once.

Whole model (:func:`model_pass`): every batch through the model once, hooks on the ops.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from prunekit.training.batches import Call, block_inputs, first_output
from prunekit.training.blocks import Blocks
from prunekit.training.statistics import Collector, StatisticsComplete

# For block i: its ops (name -> module) and the statistics each needs; empty: nothing.
NeedsOf = Callable[[int], tuple[Mapping[str, nn.Module], Mapping[str, Sequence[str]]]]
# Block i's statistics are gathered: prune it (or read them).
OnBlock = Callable[[int, Collector], None]


def block_pass(
    model: nn.Module,
    blocks: Blocks,
    calls: list[Call],
    device: torch.device | None,
    needs_of: NeedsOf,
    on_block: OnBlock,
    *,
    prunes: bool,
    outputs_after_last: bool,
) -> None:
    """Every block in order, each on the outputs of the blocks before it as they are by
    then. ``prunes``: ``on_block`` changes the block, so it runs again for its outputs
    (else its statistics pass gives them). ``outputs_after_last``: the last block's outputs
    are wanted too (nothing reads them otherwise)."""
    modules = list(blocks.modules)
    streams = [call.to(device) for call in block_inputs(model, modules, calls, blocks.path)]
    last = len(modules) - 1
    for index, block in enumerate(modules):
        home = _device_of(block)
        if device is not None:
            block.to(device)
        try:
            wanted = index < last or outputs_after_last
            streams = _through_block(block, streams, index, needs_of, on_block, prunes, wanted)
        finally:
            if device is not None and home is not None:
                block.to(home)


def _through_block(
    block: nn.Module,
    streams: list[Call],
    index: int,
    needs_of: NeedsOf,
    on_block: OnBlock,
    prunes: bool,
    outputs_wanted: bool,
) -> list[Call]:
    """One block: statistics, pruning, then its outputs as the next block's inputs."""
    ops, needs = needs_of(index)
    if not any(needs.values()):
        return _forward(block, streams, keep=True) if outputs_wanted else streams
    keep = outputs_wanted and not prunes
    with Collector(ops, needs, stop_early=not keep) as collector:
        outputs = _forward(block, streams, collector, keep=keep)
    on_block(index, collector)
    del collector
    if outputs_wanted and prunes:
        outputs = _forward(block, streams, keep=True)
    return outputs


def _forward(
    block: nn.Module, streams: list[Call], collector: Collector | None = None, *, keep: bool
) -> list[Call]:
    """The block on every batch's inputs; ``keep``: return the same calls with its outputs
    as hidden states (else they are dropped as soon as made)."""
    outputs = []
    for call in streams:
        if collector is not None:
            collector.start()
        try:
            result = first_output(call.run(block))
        except StatisticsComplete:
            continue  # a statistics-only pass: nothing wanted this batch's outputs
        if keep:
            outputs.append(call.with_hidden(result))
    return outputs


def model_pass(
    model: nn.Module,
    calls: list[Call],
    ops: Mapping[str, nn.Module],
    needs: Mapping[str, Sequence[str]],
) -> Collector:
    """Every batch through the whole model with hooks on ``ops``: their statistics."""
    with Collector(ops, needs, stop_early=True) as collector:
        for call in calls:
            collector.start()
            with contextlib.suppress(StatisticsComplete):  # the rest of the model: not needed
                call.run(model)
    return collector


def _device_of(module: nn.Module) -> torch.device | None:
    for parameter in module.parameters():
        return parameter.device
    for buffer in module.buffers():
        return buffer.device
    return None
