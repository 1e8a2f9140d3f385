"""One-shot pruning of a saved Hugging Face causal language model, as ``prunekit oneshot``
runs it: load the checkpoint, cut calibration windows from a text file, prune in place
(Wanda, SparseGPT, OWL or magnitude, any pattern), measure held-out perplexity before and
after if asked, and save the pruned model, its tokenizer and the report.

It is what llm-compressor's ``oneshot`` and the Wanda and SparseGPT repositories' ``main.py``
do, on prunekit's engine: the masks are multiplied into the weights as they are made and none
is kept (:func:`prunekit.prune_in_place`), so a 7B model needs about its own size in memory.
Calibration windows are drawn as both papers draw them from C4: ``samples`` windows of
``length`` tokens at seeded random starts in the tokenized text.

This module imports ``transformers`` (``prunekit[hf]``); nothing in prunekit imports it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from prunekit.config.files import ConfigSource, load_configs
from prunekit.config.model import PruningConfig
from prunekit.config.resolve import target_or_default
from prunekit.errors import CalibrationError
from prunekit.training.blocks import find_blocks
from prunekit.training.inplace import prune_in_place
from prunekit.training.report import PruningReport

REPORT_FILE = "prunekit_report.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class OneshotResult:
    """What a one-shot run did: the report, the held-out perplexity before and after (None
    when no evaluation text was given) and the directory the model was saved to."""

    report: PruningReport
    perplexity_before: float | None
    perplexity_after: float | None
    output: Path


def calibration_windows(ids: Tensor, samples: int, length: int, seed: int = 0) -> list[Tensor]:
    """``samples`` windows of ``length`` tokens of ``ids`` (1-D), each ``(1, length)``, at
    random starts drawn with ``seed`` (overlapping where the text is short)."""
    if samples < 1 or length < 1:
        raise CalibrationError(f"samples and length must be at least 1, got {samples}, {length}")
    if ids.numel() < length:
        raise CalibrationError(
            f"the calibration text has {ids.numel()} tokens, fewer than one window of "
            f"length={length}: give more text or a smaller --length"
        )
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - length + 1, (samples,), generator=generator)
    return [ids[s : s + length].unsqueeze(0) for s in starts.tolist()]


def held_out_windows(ids: Tensor, length: int) -> list[Tensor]:
    """The whole windows of ``length`` tokens that tile ``ids``, in order (the rest dropped)."""
    count = ids.numel() // length
    if count == 0:
        raise CalibrationError(
            f"the evaluation text has {ids.numel()} tokens, fewer than one window of "
            f"length={length}"
        )
    return list(ids[: count * length].reshape(count, 1, length))


@torch.no_grad()
def perplexity(model: nn.Module, windows: Sequence[Tensor]) -> float:
    """The model's perplexity per token over ``windows`` (each predicts its own next tokens,
    as Wanda's and SparseGPT's evaluations do)."""
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    for window in windows:
        window = window.to(device)
        loss = model(window, labels=window, use_cache=False).loss
        total += float(loss) * (window.shape[1] - 1)
        tokens += window.shape[1] - 1
    return math.exp(total / tokens)


def decoder_op_names(model: nn.Module) -> list[str]:
    """``op_names`` that select every Linear inside the model's repeated decoder blocks (the
    embeddings and ``lm_head`` stay dense, as in both papers)."""
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    blocks = find_blocks(model, linears, None)
    if blocks is None:
        raise CalibrationError(
            "the model has no list of repeated blocks holding Linears: give a config with "
            "op_names (--config) to say which ops to prune"
        )
    return [f"^{re.escape(blocks.path)}\\."]


def flag_config(
    pattern: str, criterion: str, sparsity: float | None, owl: bool = False
) -> dict[str, Any]:
    """The config ``prunekit oneshot``'s flags say. ``sparsity`` None: the pattern's own
    default target (N/M for ``"2:4"``), else 0.5."""
    config: dict[str, Any] = {
        "pattern": pattern,
        "criterion": criterion,
        "target_sparsity": target_or_default(pattern, sparsity),
    }
    if owl:
        config["layer_sparsity"] = "owl"
    return config


def with_default_ops(config: PruningConfig, model: nn.Module) -> PruningConfig:
    """``config`` with ``op_names`` set to the decoder blocks' Linears when it names none."""
    if config.op_names:
        return config
    return config.model_copy(update={"op_names": decoder_op_names(model)})


def oneshot(
    model_dir: str | Path,
    config: ConfigSource | Sequence[ConfigSource],
    calibration_text: str,
    output: str | Path,
    *,
    samples: int = 128,
    length: int = 2048,
    seed: int = 0,
    device: str | None = None,
    dtype: str = "auto",
    tokenizer_dir: str | Path | None = None,
    evaluation_text: str | None = None,
) -> OneshotResult:
    """Prune the causal LM saved in ``model_dir`` with ``config`` (one or several, as
    :func:`prunekit.load_configs` reads them; one without ``op_names`` prunes the decoder
    blocks' Linears) on windows of ``calibration_text``, and save it with its tokenizer and
    the report into ``output``.
    ``device``: where each decoder block runs while it is calibrated (the model stays on the
    CPU). Nothing is written when pruning fails."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype != "auto" and dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: use 'auto', {', '.join(map(repr, DTYPES))}")
    configs = load_configs(config)  # every config error before the model is loaded
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or model_dir)
    model: Any = AutoModelForCausalLM.from_pretrained(  # a PreTrainedModel
        model_dir, dtype="auto" if dtype == "auto" else DTYPES[dtype]
    )
    model.eval()
    configs = [with_default_ops(c, model) for c in configs]
    ids = tokenizer(calibration_text, return_tensors="pt").input_ids[0]
    windows = calibration_windows(ids, samples, length, seed)
    held_out = None
    if evaluation_text is not None:
        evaluation_ids = tokenizer(evaluation_text, return_tensors="pt").input_ids[0]
        held_out = held_out_windows(evaluation_ids, length)
    before = perplexity(model, held_out) if held_out else None
    report = prune_in_place(model, configs, calibration_data=windows, calibration_device=device)
    after = perplexity(model, held_out) if held_out else None
    target = Path(output)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    (target / REPORT_FILE).write_text(report.to_json() + "\n")
    return OneshotResult(report, before, after, target)
