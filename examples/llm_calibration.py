"""One-shot LLM pruning from calibration data: magnitude, Wanda, SparseGPT and OWL compared.

Nothing is downloaded. A small LLaMA (transformers' ``LlamaForCausalLM`` built from a config:
6 decoder layers, hidden 256, MLP 688, 8 query and 4 key/value heads, a byte-level vocabulary
of 256) is trained for a few minutes on text that ships with Python itself, the pydoc topics
(``pydoc_data.topics``: 466 KB of the language reference), with the last 10% held out. Then
one copy of the trained model after another is pruned in one shot, every decoder layer's
Linear layers (q, k, v, o, gate, up, down; the embeddings and ``lm_head`` stay dense), from 64
calibration windows of 128 bytes of the training text, and the held-out perplexity (per byte)
is printed for each:

* 50% unstructured and 2:4 (every group of 4 weights loses 2): magnitude (per layer),
  Wanda (``|w| * ||x||`` per output row), SparseGPT (second-order, kept weights updated);
* 70% unstructured, each with uniform layer sparsity and with OWL's per-layer targets.

    python examples/llm_calibration.py                  # trains (about 15 minutes), then prunes
    python examples/llm_calibration.py --steps 200      # a quicker, weaker model

The trained model is kept in ``out/llm_calibration/`` (``save_pretrained``), so a second run
(and ``benchmarks/llm.py --calibration``) starts from it; ``--retrain`` trains again. The same
calls work on a real Hugging Face checkpoint: docs/llm.md.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import prunekit as pk

OUT = Path(__file__).resolve().parents[1] / "out" / "llm_calibration"
WINDOW = 128
# Long enough for the model to grow the activation outliers Wanda and OWL rely on: at 800
# steps its input norms reached only 1.6-3.7x their median and Wanda ~ magnitude.
STEPS = 2400
DECODER_LAYERS = ["layers"]  # op_names: every Linear inside model.layers.*


def text_bytes() -> Tensor:
    """The pydoc topics, in a fixed order, as one tensor of bytes (the token ids)."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[key] for key in sorted(topics))
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.long)


def split(ids: Tensor, held_out: float = 0.1) -> tuple[Tensor, Tensor]:
    cut = int(len(ids) * (1 - held_out))
    return ids[:cut], ids[cut:]


def small_llama(seed: int = 0) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=256, hidden_size=256, intermediate_size=688, num_hidden_layers=6,
        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=WINDOW,
        tie_word_embeddings=False, bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def windows(ids: Tensor, count: int, generator: torch.Generator, length: int = WINDOW) -> Tensor:
    """``count`` random windows of ``length`` tokens, ``(count, length)``."""
    starts = torch.randint(0, len(ids) - length, (count,), generator=generator)
    return torch.stack([ids[s : s + length] for s in starts.tolist()])


def train(model: nn.Module, ids: Tensor, steps: int, batch: int = 16, lr: float = 3e-3) -> None:
    """AdamW with a short warm-up and a cosine decay, on random windows."""
    generator = torch.Generator().manual_seed(1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.95))
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s / steps, 1))),
    )
    model.train()
    started = time.perf_counter()
    for step in range(steps):
        x = windows(ids, batch, generator)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == steps - 1:
            seconds = time.perf_counter() - started
            print(f"  step {step:4d}  loss {loss.item():.3f}  {seconds:.0f} s")
    model.eval()


@torch.no_grad()
def perplexity(model: nn.Module, ids: Tensor, batch: int = 32) -> float:
    """Per-byte perplexity over the non-overlapping windows of ``ids``."""
    model.eval()
    usable = (len(ids) // WINDOW) * WINDOW
    chunks = ids[:usable].reshape(-1, WINDOW)
    total, count = 0.0, 0
    for part in chunks.split(batch):
        loss = model(input_ids=part, labels=part).loss  # mean over the shifted tokens
        total += float(loss) * part.shape[0] * (WINDOW - 1)
        count += part.shape[0] * (WINDOW - 1)
    return math.exp(total / count)


def trained_model(steps: int, retrain: bool) -> tuple[nn.Module, Tensor, Tensor]:
    """The trained model (kept in ``out/llm_calibration``) and the two splits."""
    from transformers import LlamaForCausalLM

    train_ids, held_out = split(text_bytes())
    marker = OUT / f"trained-{steps}-steps"
    if marker.exists() and not retrain:
        return LlamaForCausalLM.from_pretrained(OUT).eval(), train_ids, held_out
    model = small_llama()
    print(f"training {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
          f"{steps} steps of 16 x {WINDOW} bytes")  # fmt: skip
    train(model, train_ids, steps)
    model.save_pretrained(OUT)
    for old in OUT.glob("trained-*-steps"):
        old.unlink()
    marker.touch()
    return model, train_ids, held_out


def calibration_batches(train_ids: Tensor, count: int = 64, seed: int = 2) -> list[Tensor]:
    """``count`` windows of the training text, in batches of 8 (model inputs)."""
    generator = torch.Generator().manual_seed(seed)
    return list(windows(train_ids, count, generator).split(8))


@dataclass(frozen=True)
class Setting:
    """One row of the table: a name and the config (None: the dense model)."""

    name: str
    config: dict[str, Any] | None


def settings() -> list[Setting]:
    base: dict[str, Any] = {"op_names": DECODER_LAYERS, "pruning_scope": "local"}
    rows = [Setting("dense", None)]
    for label, pattern, target in (("50%", "1x1", 0.5), ("2:4", "2:4", 0.5)):
        shape = {"pattern": pattern, "target_sparsity": target}
        rows += [
            Setting(f"{label} magnitude", {**base, **shape}),
            Setting(f"{label} Wanda", {**shape, "op_names": DECODER_LAYERS, "criterion": "wanda"}),
            Setting(f"{label} SparseGPT", {**base, **shape, "criterion": "sparsegpt"}),
        ]
    names = {"magnitude": "magnitude", "wanda": "Wanda", "sparsegpt": "SparseGPT"}
    for criterion, name in names.items():
        config = {
            "pattern": "1x1",
            "target_sparsity": 0.7,
            "op_names": DECODER_LAYERS,
            "criterion": criterion,
        }
        if criterion != "wanda":
            config["pruning_scope"] = "local"
        rows += [
            Setting(f"70% {name}", config),
            Setting(f"70% {name} + OWL", {**config, "layer_sparsity": "owl"}),
        ]  # fmt: skip
    return rows


def prune_copy(model: nn.Module, setting: Setting, data: list[Tensor]) -> tuple[nn.Module, float]:
    """A pruned copy of ``model`` and the seconds pruning took."""
    pruned = copy.deepcopy(model)
    started = time.perf_counter()
    if setting.config is not None:
        needs = setting.config.get("criterion", "magnitude") != "magnitude" or (
            setting.config.get("layer_sparsity") == "owl"
        )
        pk.prune(pruned, setting.config, calibration_data=data if needs else None).remove()
    return pruned, time.perf_counter() - started


def table(model: nn.Module, data: list[Tensor], held_out: Tensor,
          report: Callable[[str, float, float], None]) -> dict[str, float]:  # fmt: skip
    """Held-out perplexity of every setting; ``report(name, ppl, seconds)`` as each ends."""
    results = {}
    for setting in settings():
        pruned, seconds = prune_copy(model, setting, data)
        results[setting.name] = perplexity(pruned, held_out)
        report(setting.name, results[setting.name], seconds)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=STEPS, help=f"training steps ({STEPS})")
    parser.add_argument(
        "--retrain", action="store_true", help="train again, ignoring the kept model"
    )
    args = parser.parse_args()
    model, train_ids, held_out = trained_model(args.steps, args.retrain)
    data = calibration_batches(train_ids)
    print(f"\nheld-out perplexity per byte ({len(held_out)} bytes), pruning the decoder layers")
    print("| setting | perplexity | pruning time |\n| --- | --- | --- |")
    table(model, data, held_out, lambda n, p, s: print(f"| {n} | {p:.3f} | {s:.1f} s |"))


if __name__ == "__main__":
    main()
