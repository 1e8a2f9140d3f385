"""The calibration modes of ``benchmarks/llm.py``: one-shot pruning from calibration data.

``table``: the perplexity table of ``examples/llm_calibration.py`` (a small LLaMA trained on
the pydoc topics; dense, magnitude, Wanda, SparseGPT at 50%, 2:4 and 70% with and without
OWL), with each pruning call's wall time.

``7b``: a LLaMA-7B-shaped ``LlamaForCausalLM`` (32 decoder layers, hidden 4096, MLP 11008,
32 heads, vocabulary 32000) with random bf16 weights, every decoder Linear pruned with Wanda
at 50% (``per_output``), sequentially, block by block, by :func:`prunekit.prune_in_place`
(no masks kept: they would add one byte per weight, 6.0 GiB). Reports the wall time, the
peak RSS against the weights' size (budget: weights + 2 GiB) and the sparsity reached.
``--layers`` scales the model down for a quick check.

    python benchmarks/llm.py --calibration table
    python benchmarks/llm.py --calibration 7b            # about 12.6 GiB of weights
    python benchmarks/llm.py --calibration 7b --layers 2
"""

from __future__ import annotations

import importlib.util
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import prunekit as pk

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def rss_gib() -> float:
    """Peak resident set size of this process so far, in GiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _example() -> Any:
    """examples/llm_calibration.py, loaded from its path (its name is not a package's)."""
    spec = importlib.util.spec_from_file_location(
        "llm_calibration", EXAMPLES / "llm_calibration.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


def perplexity_table() -> None:
    """The example's table, as Markdown."""
    example = _example()

    model, train_ids, held_out = example.trained_model(example.STEPS, False)
    data = example.calibration_batches(train_ids)
    print(f"held-out perplexity per byte ({len(held_out)} bytes), the decoder layers pruned")
    print("| setting | perplexity | pruning time |\n| --- | ---: | ---: |")
    example.table(
        model, data, held_out, lambda n, p, s: print(f"| {n} | {p:.3f} | {s:.1f} s |", flush=True)
    )


def llama_7b(layers: int, seed: int) -> nn.Module:
    """LLaMA-7B's shapes with random bf16 weights (normal, std 0.02; norms at 1), built on
    the meta device and filled one tensor at a time, so nothing is ever held twice."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers,
        num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=2048,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, dtype="bfloat16",
    )  # fmt: skip
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # meta tensors in bf16: to_empty allocates that
    try:
        with torch.device("meta"):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    model = model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 1:  # RMSNorm scales
                parameter.fill_(1.0)
            else:
                parameter.normal_(0.0, 0.02, generator=generator)
        # the rotary frequencies are a buffer computed at construction (meta until now)
        model.model.rotary_emb = type(model.model.rotary_emb)(config=config)
    return model.eval().requires_grad_(False)


def wanda_7b(layers: int, batches: int, tokens: int, seed: int, criterion: str = "wanda") -> None:
    """The 7B-shaped run (see the module's docstring); ``criterion`` "sparsegpt" prunes
    with SparseGPT instead (per-layer Hessians; 2.5 minutes per layer here: 2 layers 300 s)."""
    started = time.perf_counter()
    model = llama_7b(layers, seed)
    linears = {
        n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".layers." in n
    }
    weights = sum(p.numel() for p in model.parameters())
    weight_gib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30
    print(
        f"built a LLaMA-7B-shaped model with {layers} layers: {weights / 1e9:.2f}B weights "
        f"({sum(m.weight.numel() for m in linears.values()) / 1e9:.2f}B in {len(linears)} "
        f"decoder Linear layers), {weight_gib:.2f} GiB bf16, in "
        f"{time.perf_counter() - started:.0f} s; peak RSS so far {rss_gib():.2f} GiB"
    )
    generator = torch.Generator().manual_seed(seed + 1)
    data = [torch.randint(3, 32000, (1, tokens), generator=generator) for _ in range(batches)]
    config = {"pattern": "1x1", "criterion": criterion, "target_sparsity": 0.5}
    config["op_names"] = ["layers"]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="prunekit-bench-") as undo:
        report = pk.prune_in_place(model, config, calibration_data=data, undo_dir=undo)
    elapsed = time.perf_counter() - started
    peak = rss_gib()
    rows_exact = all(
        bool(((m.weight == 0).sum(dim=1) == m.weight.shape[1] // 2).all()) for m in linears.values()
    )
    print(
        f"{criterion} 50% ({report.ops[0].scope}), sequential over {layers} blocks, "
        f"{batches} x {tokens} "
        f"calibration tokens: {report.removed / report.elements:.6f} sparsity in "
        f"{elapsed:.1f} s; every row at exactly 50%: {rows_exact}"
    )
    print(
        f"peak RSS {peak:.2f} GiB = weights {weight_gib:.2f} GiB + {peak - weight_gib:.2f} GiB "
        "(budget: weights + 2 GiB)"
    )
