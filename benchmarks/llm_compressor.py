"""prunekit's one-shot calibration pruning against llm-compressor's, on the same tiny LLaMA.

Issue 12: are prunekit's ``wanda`` and ``sparsegpt`` criteria (``pk.prune(model, config,
calibration_data=...)``) as good as the reference implementations people use, and faster?
The contender is llm-compressor (vLLM's ``oneshot`` with ``WandaPruningModifier`` and
``SparseGPTModifier``). Both prune the same trained model (``examples/llm_calibration.py``:
a 6-layer LLaMA trained on the pydoc topics; trained once, about 4 minutes, then kept in
``out/llm_calibration``) from the very same 64 calibration windows of 128 bytes, every
decoder layer's Linear layers (q, k, v, o, gate, up, down; embeddings and ``lm_head`` stay
dense), and are scored by the same held-out perplexity:

* 50% unstructured and 2:4, each with Wanda and with SparseGPT;
* prunekit's configs are the example's ``settings()`` (Wanda with its default scope
  ``per_output``; SparseGPT ``local``, blocksize 128, percdamp 0.01);
* llm-compressor's: the same sparsity, ``mask_structure`` ``"0:0"`` or ``"2:4"``,
  ``block_size`` 128 and ``dampening_frac`` 0.01 set explicitly, the windows given as a
  tokenized ``datasets.Dataset`` (all 64, in order, batches of 8, no truncation), its
  sequential pipeline over the decoder layers.

Wall time is ``time.perf_counter`` around the prune call only (``pk.prune(...).remove()``;
``oneshot(...)``), the fastest of ``--repeats`` runs (the median is printed too), the two
tools taking turns, after one untimed warm-up of each (so imports and first-call
initialisation are counted for neither). llm-compressor's time is also split into its
fixed cost (torch.fx tracing of the model into per-layer subgraphs), the pruning arithmetic
itself (its ``sparsify_weight``) and the rest (setup and its two calibration passes per
layer), so a reader can see where the difference comes from. Runs where llm-compressor is
installed (its own venv: ``make llmc-venv``, then ``make bench-llmc``; ``ARGS=--quick`` for
a smoke check; ``--model DIR`` prunes a model saved elsewhere, with the same data).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# tqdm reads this when its bars are made: llm-compressor's per-layer bars would bury the table.
os.environ.setdefault("TQDM_DISABLE", "1")

import torch
from torch import Tensor, nn

import prunekit as pk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from llm_calibration import (
    DECODER_LAYERS,
    OUT,
    WINDOW,
    calibration_batches,
    perplexity,
    settings,
    split,
    text_bytes,
    trained_model,
)

# llm-compressor's targets: the decoder layers' Linear layers by name (its default, every
# Linear, would take lm_head too). re: names are matched with re.match from the start.
LLMC_TARGETS = [r"re:.*layers\.\d+\..*_proj$"]
SPARSITY = 0.5


@dataclass(frozen=True)
class Case:
    """One row of the table: a method, a pattern, and each tool's settings for it."""

    method: str  # "Wanda" or "SparseGPT"
    pattern: str  # "50%" or "2:4"
    config: dict[str, Any]  # prunekit's, taken from the example's settings()
    mask_structure: str  # llm-compressor's: "0:0" unstructured, "2:4"


def cases(quick: bool) -> list[Case]:
    """The four comparisons (two with ``quick``), prunekit's configs from the example itself
    so that this benchmark measures exactly what the example reports."""
    by_name = {s.name: s.config for s in settings() if s.config is not None}
    wanted = [("Wanda", "50%"), ("SparseGPT", "2:4")] if quick else [
        ("Wanda", "50%"), ("SparseGPT", "50%"), ("Wanda", "2:4"), ("SparseGPT", "2:4"),
    ]  # fmt: skip
    return [
        Case(method, pattern, by_name[f"{pattern} {method}"], "2:4" if pattern == "2:4" else "0:0")
        for method, pattern in wanted
    ]


@dataclass
class Run:
    """What one prune of one copy gave: the model, its wall time, and (llm-compressor) how
    that time splits."""

    model: nn.Module
    seconds: float
    parts: dict[str, float] = field(default_factory=dict)


def decoder_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The Linear layers the configs select: those inside ``model.layers.*``."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and any(f"{d}." in name for d in DECODER_LAYERS)
    }


def prune_prunekit(model: nn.Module, case: Case, data: list[Tensor]) -> Run:
    """A pruned deep copy of ``model`` by prunekit, timed around ``pk.prune`` (with the
    ``remove()`` that leaves plain weights, as llm-compressor's result has)."""
    pruned = copy.deepcopy(model)
    started = time.perf_counter()
    pk.prune(pruned, case.config, calibration_data=data).remove()
    return Run(pruned, time.perf_counter() - started)


def placeholder_tokenizer() -> Any:
    """A 256-entry word-level tokenizer that is never used to tokenize.

    ``oneshot`` refuses a dataset without a processor (it tries to load one from the model's
    path, and the tiny model has none); the dataset given here is already tokenized (it has
    ``input_ids``), so llm-compressor hands it straight to its DataLoader and only keeps
    this object.
    """
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {f"<{i}>": i for i in range(256)}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, "<0>")))


def calibration_dataset(data: list[Tensor]) -> Any:
    """The very windows prunekit gets, as the tokenized ``datasets.Dataset`` llm-compressor
    takes (``input_ids`` and an all-ones ``attention_mask``: no padding anywhere)."""
    from datasets import Dataset

    ids = torch.cat(data)
    return Dataset.from_dict(
        {"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()}
    )


def llmc_modifier(case: Case) -> Any:
    """llm-compressor's modifier for ``case``; block size and dampening set explicitly (they
    are its defaults too) to match prunekit's blocksize 128 and percdamp 0.01."""
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier

    common: dict[str, Any] = {
        "sparsity": SPARSITY,
        "mask_structure": case.mask_structure,
        "targets": LLMC_TARGETS,
    }
    if case.method == "Wanda":
        return WandaPruningModifier(**common)
    return SparseGPTModifier(**common, block_size=128, dampening_frac=0.01)


@contextmanager
def timed(owner: Any, attribute: str, parts: dict[str, float], label: str) -> Iterator[None]:
    """Within the block, ``owner.attribute`` (a function) adds its run time to
    ``parts[label]``: how llm-compressor's total splits, without changing what it does."""
    original: Callable[..., Any] = getattr(owner, attribute)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            parts[label] = parts.get(label, 0.0) + time.perf_counter() - started

    setattr(owner, attribute, wrapper)
    try:
        yield
    finally:
        setattr(owner, attribute, original)


def prune_llmc(model: nn.Module, case: Case, dataset: Any, tokenizer: Any) -> Run:
    """A pruned deep copy of ``model`` by llm-compressor's ``oneshot``, timed around that
    call; ``parts`` says how much of it was tracing and how much the pruning arithmetic."""
    import llmcompressor.modifiers.pruning.sparsegpt.base as sgpt_base
    import llmcompressor.modifiers.pruning.wanda.base as wanda_base
    import llmcompressor.pipelines.sequential.pipeline as sequential
    from llmcompressor import oneshot

    pruned = copy.deepcopy(model)
    modifier = llmc_modifier(case)
    math_of = wanda_base if case.method == "Wanda" else sgpt_base
    parts: dict[str, float] = {}
    with (
        timed(sequential, "trace_subgraphs", parts, "tracing"),
        timed(math_of, "sparsify_weight", parts, "pruning math"),
    ):
        started = time.perf_counter()
        result = oneshot(
            model=pruned,
            recipe=modifier,
            dataset=dataset,
            processor=tokenizer,
            num_calibration_samples=len(dataset),
            max_seq_length=WINDOW,
            batch_size=8,  # prunekit's batches are 8 windows too
            shuffle_calibration_samples=False,
            pipeline="sequential",
        )
        seconds = time.perf_counter() - started
    return Run(result, seconds, parts)


@dataclass(frozen=True)
class Check:
    """What a pruned model's decoder Linear weights show."""

    sparsity: float  # zeros / weights over the decoder Linear layers
    two_four: bool  # every group of 4 consecutive inputs of every row has >= 2 zeros
    untouched: bool  # every other parameter (embeddings, norms, lm_head) is unchanged


def check(pruned: nn.Module, original: nn.Module) -> Check:
    """Count the zeros; check the 2:4 layout and that nothing outside the targets changed."""
    linears = decoder_linears(pruned)
    zeros = total = 0
    two_four = True
    for module in linears.values():
        w = module.weight.detach()
        zeros += int((w == 0).sum())
        total += w.numel()
        groups = (w.reshape(w.shape[0], -1, 4) == 0).sum(dim=-1)
        two_four = two_four and bool((groups >= 2).all())
    targets = {f"{name}.weight" for name in linears}
    before = dict(original.named_parameters())
    untouched = all(
        torch.equal(p, before[name]) for name, p in pruned.named_parameters() if name not in targets
    )
    return Check(zeros / total, two_four, untouched)


def mask_agreement(a: nn.Module, b: nn.Module) -> float:
    """The fraction of decoder Linear weights that both models keep or both prune."""
    same = total = 0
    other = decoder_linears(b)
    for name, module in decoder_linears(a).items():
        za, zb = module.weight == 0, other[name].weight == 0
        same += int((za == zb).sum())
        total += za.numel()
    return same / total


def interleaved(prunes: Sequence[Callable[[], Run]], repeats: int) -> list[tuple[Run, list[float]]]:
    """For each prune, its fastest run and the seconds of all its runs; the tools take
    turns (ours, theirs, ours, ...) so that a burst of load from another process on this
    shared 2-core machine slows both rather than one. Pruning is deterministic: every run
    gives the same model, only the time varies."""
    runs: list[list[Run]] = [[] for _ in prunes]
    for _ in range(repeats):
        for index, prune in enumerate(prunes):
            runs[index].append(prune())
    return [(min(r, key=lambda run: run.seconds), [run.seconds for run in r]) for r in runs]


def load_model(steps: int, directory: Path | None) -> tuple[nn.Module, Tensor, Tensor]:
    """The model to prune and the example's two splits of the text.

    The example's trained model (trained first if ``out/llm_calibration`` holds no model of
    ``steps`` steps), or the one saved in ``directory``. Its weights are copied into memory:
    transformers maps the safetensors file, and another run that saves a model into the
    same directory would otherwise change them under this one.
    """
    from transformers import LlamaForCausalLM

    if directory is None:
        model, train_ids, held_out = trained_model(steps, False)
        if not getattr(model.config, "name_or_path", ""):
            # just trained: oneshot reads the config back from the model's path
            model = LlamaForCausalLM.from_pretrained(OUT)
    else:
        train_ids, held_out = split(text_bytes())
        model = LlamaForCausalLM.from_pretrained(directory)
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.data = tensor.data.clone()
    return model.eval(), train_ids, held_out


def quiet_llmc(verbose: bool) -> None:
    """llm-compressor logs every layer it prunes through loguru; keep errors only (after its
    import, which installs its own handlers)."""
    import llmcompressor  # noqa: F401
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="INFO" if verbose else "ERROR")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="two settings, one timed run each")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per tool (fastest)")
    parser.add_argument("--verbose", action="store_true", help="show llm-compressor's log")
    parser.add_argument(
        "--steps", type=int, default=800, help="the example's trained model (default 800 steps)"
    )
    parser.add_argument(
        "--model", type=Path, help="a saved model directory to use instead (never trains)"
    )
    args = parser.parse_args()
    repeats = 1 if args.quick else max(1, args.repeats)
    torch.set_num_threads(2)
    quiet_llmc(args.verbose)

    import llmcompressor
    import transformers

    model, train_ids, held_out = load_model(args.steps, args.model)
    data = calibration_batches(train_ids)
    dataset, tokenizer = calibration_dataset(data), placeholder_tokenizer()
    todo = cases(args.quick)

    print(
        f"prunekit {pk.__version__} vs llm-compressor {llmcompressor.__version__} "
        f"(torch {torch.__version__}, transformers {transformers.__version__}, "
        f"{torch.get_num_threads()} threads; load average {os.getloadavg()[0]:.2f})"
    )
    print(
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M-parameter LLaMA, "
        f"{len(decoder_linears(model))} decoder Linear layers pruned; {sum(len(d) for d in data)} "
        f"calibration windows of {WINDOW} tokens; held-out perplexity per byte over "
        f"{len(held_out)} bytes; dense: {perplexity(model, held_out):.3f}"
    )
    if not args.quick:  # warm-up: first-call costs (lazy imports, kernels) timed for neither
        prune_prunekit(model, todo[0], data)
        prune_llmc(model, todo[0], dataset, tokenizer)

    rows, details = [], []
    for case in todo:
        (ours, our_times), (theirs, their_times) = interleaved(
            [
                lambda case=case: prune_prunekit(model, case, data),
                lambda case=case: prune_llmc(model, case, dataset, tokenizer),
            ],
            repeats,
        )
        our_s, their_s = min(our_times), min(their_times)
        ours_ppl, their_ppl = perplexity(ours.model, held_out), perplexity(theirs.model, held_out)
        diff = 100 * (ours_ppl - their_ppl) / their_ppl
        rows.append(
            f"| {case.method} | {case.pattern} | {ours_ppl:.3f} | {their_ppl:.3f} | {diff:+.2f}% "
            f"| {our_s:.2f} | {their_s:.2f} | {their_s / our_s:.1f}x |"
        )
        a, b = check(ours.model, model), check(theirs.model, model)
        parts = theirs.parts
        rest = theirs.seconds - sum(parts.values())
        details.append(
            f"| {case.method} | {case.pattern} | {100 * a.sparsity:.3f}% | {100 * b.sparsity:.3f}% "
            f"| {f'{a.two_four} / {b.two_four}' if case.pattern == '2:4' else '-'} "
            f"| {a.untouched} / {b.untouched} "
            f"| {100 * mask_agreement(ours.model, theirs.model):.2f}% "
            f"| {parts.get('tracing', 0.0):.2f} | {parts.get('pruning math', 0.0):.2f} "
            f"| {rest:.2f} | {statistics.median(our_times):.2f} / "
            f"{statistics.median(their_times):.2f} |"
        )
        print(f"  done: {case.pattern} {case.method}", file=sys.stderr, flush=True)

    # another busy process on a 2-core machine slows both tools many times over: say so
    print(
        f"\nfastest of {repeats} timed run(s) each; ppl diff: prunekit against llm-compressor; "
        f"load average at the end {os.getloadavg()[0]:.2f}"
    )
    print(
        "| method | pattern | prunekit ppl | llm-compressor ppl | ppl diff % | prunekit s "
        "| llm-compressor s | speedup |\n| --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    print("\n".join(rows))
    print(
        "\nchecks (prunekit / llm-compressor), llm-compressor's time split (its fastest run), "
        "median times\n"
        "| method | pattern | prunekit sparsity | llm-compressor sparsity | 2:4 valid "
        "| rest untouched | mask agreement | llmc tracing s | llmc pruning math s "
        "| llmc calibration passes + setup s | median s (prunekit / llmc) |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    print("\n".join(details))


if __name__ == "__main__":
    main()
