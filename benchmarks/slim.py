"""What slimming buys: CPU forward latency of dense, masked and slimmed models.

Masks alone run at the dense speed; a model with fewer channels, neurons and heads is
faster everywhere. For each model: build it (random weights, no download), prune it with
coupled structured configs and ``head``, time the masked model, ``pk.slim`` it, time it
again, and check the slimmed outputs against the masked ones. Models (``--models``):

* ``bert-ffn``: BERT-base's encoder (12 layers, 768 wide, FFN 3072), every FFN halved;
* ``bert-heads-ffn``: the same with half of every layer's heads removed too;
* ``llama-gqa``: a LLaMA-style stack (8 layers, 1024 wide, 16 query / 4 key-value heads,
  FFN 2816), half of the key/value groups and half of every FFN removed;
* ``resnet50``: a ResNet-50-shaped CNN on 8 images of 224x224 (channels-last), half of
  every class of tied channels (``filter``, coupled, local); with Torch-Pruning installed
  (the ``bench`` extra) Torch-Pruning's MagnitudePruner at the same ratio is measured
  beside it.

    python benchmarks/slim.py                     # everything, 2 threads
    python benchmarks/slim.py --models bert-ffn --markdown

Latency: the best of 3 medians of ``--repeats`` timed forwards after warm-up, the
models of a row (and Torch-Pruning's) timed in turn; batch 1 of sequence 128 for the
transformers, 8 images for the CNN (at batch 1 its small convolutions are bound by
per-call overhead: 2.2-2.8x instead of 3.3x), ``torch.inference_mode``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

import prunekit as pk
from prunekit.slim.macs import macs
from prunekit.slim.trace import ExampleInputs, export


@dataclass
class Row:
    """One measured model."""

    model: str
    what: str
    params: int
    macs: int
    dense_ms: float
    masked_ms: float
    slimmed_ms: float
    max_diff: float  # slimmed vs masked outputs, relative to the outputs' largest value

    @property
    def speedup(self) -> float:
        return self.dense_ms / self.slimmed_ms


def latency_ms(model: nn.Module, inputs: Any, repeats: int) -> float:
    """Median forward time in milliseconds."""
    call = _caller(model, inputs)
    with torch.inference_mode():
        for _ in range(3):
            call()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def interleaved_ms(
    models: Sequence[nn.Module], inputs: Any, repeats: int, rounds: int = 3
) -> list[float]:
    """Each model's latency, the best of ``rounds`` medians, the models timed in turn in
    every round: a CPU's clock and caches drift over a run, and timing one model after
    another would hand that drift to whichever runs last."""
    best = [float("inf")] * len(models)
    if isinstance(inputs, Tensor) and inputs.dim() == 4:  # images: convolutions channels-last
        models = [model.to(memory_format=torch.channels_last) for model in models]
    for _ in range(rounds):
        for i, model in enumerate(models):
            best[i] = min(best[i], latency_ms(model, inputs, repeats))
    return best


def _caller(model: nn.Module, inputs: Any) -> Callable[[], Any]:
    if isinstance(inputs, dict):
        return lambda: model(**inputs)
    return lambda: model(inputs)


def output(model: nn.Module, inputs: Any) -> Tensor:
    with torch.inference_mode():
        out = _caller(model, inputs)()
    found = getattr(out, "last_hidden_state", out)
    assert isinstance(found, Tensor)
    return found.clone()


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# -- models ---------------------------------------------------------------------------------------
def bert_base() -> nn.Module:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    return BertModel(BertConfig(), add_pooling_layer=False).eval()


def llama_gqa() -> nn.Module:
    from transformers import LlamaConfig, LlamaModel

    config = LlamaConfig(
        hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
        num_attention_heads=16, num_key_value_heads=4, vocab_size=32000,
    )  # fmt: skip
    torch.manual_seed(0)
    return LlamaModel(config).eval()


class Bottleneck(nn.Module):
    """ResNet-50's block: 1x1 reduce, 3x3, 1x1 expand (4x), with BatchNorm and a residual."""

    def __init__(self, inp: int, width: int, stride: int) -> None:
        super().__init__()
        out = width * 4
        self.conv1 = nn.Conv2d(inp, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample: nn.Module | None = None
        if stride != 1 or inp != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(inp, out, 1, stride, bias=False), nn.BatchNorm2d(out)
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        return torch.relu(self.bn3(self.conv3(y)) + identity)


class ResNet50(nn.Module):
    """torchvision's ResNet-50 shapes (3, 4, 6, 3 bottlenecks), built by hand: torchvision
    does not import with the CPU build of torch."""

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        blocks: list[nn.Module] = []
        inp = 64
        for stage, (width, count) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3), strict=True)):
            for index in range(count):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(Bottleneck(inp, width, stride))
                inp = width * 4
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(inp, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        x = self.layers(x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def resnet50() -> nn.Module:
    torch.manual_seed(0)
    model = ResNet50()
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():  # statistics as a trained network has, not the identity
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5, generator=generator)
            module.running_var.uniform_(0.5, 2, generator=generator)
            module.bias.data.uniform_(-0.2, 0.2, generator=generator)
    return model.eval()


CNN_BATCH = 8


def images() -> Tensor:
    """The CNN's inputs: a batch of ``CNN_BATCH`` 224x224 images, channels-last (the memory
    format PyTorch's CPU convolutions are fastest in; the models are timed in it too)."""
    x = torch.randn(CNN_BATCH, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    return x.contiguous(memory_format=torch.channels_last)


def _tokens() -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(1, 1000, (1, 128), generator=generator)}


FFN = {"pattern": "row", "target_sparsity": 0.5, "coupled": True, "pruning_scope": "local"}
HEADS = {"pattern": "head", "target_sparsity": 0.5, "pruning_scope": "local"}
CASES: dict[str, tuple[Callable[[], nn.Module], Callable[[], Any], list[dict[str, Any]], str]] = {
    "bert-ffn": (bert_base, _tokens, [{**FFN, "op_names": ["intermediate.dense"]}], "FFN 50%"),
    "bert-heads-ffn": (
        bert_base,
        _tokens,
        [HEADS, {**FFN, "op_names": ["intermediate.dense"]}],
        "heads 50% + FFN 50%",
    ),
    "llama-gqa": (
        llama_gqa,
        _tokens,
        [HEADS, {**FFN, "op_names": ["mlp.(gate|up)_proj"]}],
        "kv groups 50% + FFN 50%",
    ),
    "resnet50": (
        resnet50,
        lambda: images(),
        [{**FFN, "pattern": "filter", "pruning_op_types": ["Conv2d"]}],
        "channels 50%",
    ),
}


def measure(name: str, repeats: int, others: Sequence[nn.Module] = ()) -> tuple[Row, list[float]]:
    """The row of model ``name``, and the latencies of ``others`` (other slimmed models on
    the same inputs), all timed interleaved with the dense, masked and slimmed models."""
    build, inputs_of, configs, what = CASES[name]
    model, inputs = build(), inputs_of()
    dense = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pk.prune(model, configs, example_inputs=inputs)
    masked_model = copy.deepcopy(model)
    masked = output(model, inputs)
    report = pk.slim(model)
    diff = float((output(model, inputs) - masked).abs().max() / masked.abs().max())
    dense_ms, masked_ms, slimmed_ms, *rest = interleaved_ms(
        [dense, masked_model, model, *others], inputs, repeats
    )
    flops = f"{report.macs_before / report.macs_after:.2f}x fewer MACs"
    row = Row(
        name, f"{what} ({flops})", params(model), report.macs_after,
        dense_ms, masked_ms, slimmed_ms, diff,
    )  # fmt: skip
    return row, rest


def torch_pruned_resnet50() -> tuple[nn.Module, str] | None:
    """Torch-Pruning's MagnitudePruner on the same ResNet-50 at 50% channels, and its label
    (None when it is not installed)."""
    try:
        import torch_pruning as tp  # type: ignore[import-not-found]
    except ImportError:
        return None
    model, x = resnet50(), images()
    pruner = tp.pruner.MagnitudePruner(
        model, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=0.5,
        ignored_layers=[model.fc],
    )  # fmt: skip
    pruner.step()
    return model, f"Torch-Pruning {tp.__version__} MagnitudePruner 50%"


def torch_pruning_row(model: nn.Module, what: str, dense_ms: float, slimmed_ms: float) -> Row:
    """Torch-Pruning's row: no masked model (it removes channels at once), no equivalence
    to one."""
    x = images()
    count = macs(export(model, ExampleInputs.of(x)))
    nan = float("nan")
    return Row("resnet50", what, params(model), count, dense_ms, nan, slimmed_ms, nan)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        theirs = torch_pruned_resnet50() if name == "resnet50" else None
        row, rest = measure(name, args.repeats, [theirs[0]] if theirs else [])
        rows.append(row)
        print(_line(row), flush=True)
        if theirs is not None:
            rows.append(torch_pruning_row(*theirs, row.dense_ms, rest[0]))
            print(_line(rows[-1]), flush=True)
        elif name == "resnet50":
            print("Torch-Pruning is not installed (pip install torch-pruning): not compared")
    if args.markdown:
        print(_markdown(rows, args.threads))
    return 0


def _line(row: Row) -> str:
    return (
        f"{row.model:15} {row.what:45} params {row.params:>11,}  dense {row.dense_ms:8.1f} ms  "
        f"masked {row.masked_ms:8.1f} ms  slimmed {row.slimmed_ms:8.1f} ms  "
        f"speedup {row.speedup:.2f}x  max diff {row.max_diff:.1e}"
    )


def _markdown(rows: list[Row], threads: int) -> str:
    lines = [
        f"| model | removed | params after | MACs after | dense ms | masked ms | slimmed ms "
        f"| speedup | slimmed vs masked |  (CPU, {threads} threads)",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        masked = "-" if r.masked_ms != r.masked_ms else f"{r.masked_ms:.1f}"
        diff = "-" if r.max_diff != r.max_diff else f"{r.max_diff:.0e}"
        lines.append(
            f"| {r.model} | {r.what} | {r.params:,} | {r.macs:,} | {r.dense_ms:.1f} | {masked} "
            f"| {r.slimmed_ms:.1f} | {r.speedup:.2f}x | {diff} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
