"""Which selected ops form an attention block, and which role each plays, from their names.

A head is a slice of several layers at once: rows of the query, key and value projections
and columns of the output projection. The naming conventions of the models people prune
say which layers those are; reading names keeps the ``head`` pattern free of any import of
transformers (and works on hand-written attention that follows a convention):

* ``P.q_proj``, ``P.k_proj``, ``P.v_proj`` with ``P.o_proj`` (LLaMA, Mistral, Qwen, Gemma,
  HF ViT-style ``ViTMAE``), ``P.out_proj`` (OPT, BART, Whisper) or ``P.dense`` (Phi);
* ``S.query``, ``S.key``, ``S.value`` with ``P.output.dense`` where ``S`` is a child of
  ``P`` (BERT, RoBERTa, ViT: ``attention.self.query`` ... ``attention.output.dense``);
* fused ``P.c_attn`` with ``P.c_proj`` (GPT-2's Conv1D) and ``P.qkv`` with ``P.proj``
  (timm's ViT): one layer makes q, k and v, stacked ``[q | k | v]`` along its outputs.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

_SEPARATE = (("q_proj", "k_proj", "v_proj"), ("o_proj", "out_proj", "dense"))
_FUSED = (("c_attn", "c_proj"), ("qkv", "proj"))


@dataclass(frozen=True)
class AttentionBlock:
    """One attention block's layers, by op name. ``fused``: one layer makes q, k and v
    (``q`` names it; ``k`` and ``v`` are None). ``module``: where its head counts live
    (the module that owns the projections)."""

    module: str
    q: str
    k: str | None
    v: str | None
    o: str

    @property
    def fused(self) -> bool:
        return self.k is None

    @property
    def ops(self) -> tuple[str, ...]:
        return tuple(name for name in (self.q, self.k, self.v, self.o) if name is not None)


def _join(parent: str, child: str) -> str:
    return f"{parent}.{child}" if parent else child


def _split(name: str) -> tuple[str, str]:
    parent, _, leaf = name.rpartition(".")
    return parent, leaf


def attention_blocks(names: Collection[str]) -> tuple[list[AttentionBlock], dict[str, list[str]]]:
    """The attention blocks among ``names`` (module names) and, per block some of whose
    projections are among ``names`` but not all, the missing ones (the block's module ->
    op names). A block is found from its q/k/v projections (or its fused one); an output
    projection alone (a ``dense`` is also a feed-forward layer's name) starts none."""
    present = set(names)
    anchors: dict[str, tuple[str, ...]] = {}
    for name in sorted(present):
        parent, leaf = _split(name)
        wanted = _wanted(parent, leaf, present)
        if wanted is not None:
            anchors.setdefault(parent, wanted)
    blocks: list[AttentionBlock] = []
    missing: dict[str, list[str]] = {}
    for module, wanted in anchors.items():
        absent = [op for op in wanted if op not in present]
        if absent:
            missing[module] = absent
        elif len(wanted) == 2:
            blocks.append(AttentionBlock(module, wanted[0], None, None, wanted[1]))
        else:
            blocks.append(AttentionBlock(module, *wanted))
    return blocks, missing


def _wanted(parent: str, leaf: str, present: set[str]) -> tuple[str, ...] | None:
    """Every op of the block that ``parent.leaf`` is a q, k or v projection of (or the fused
    one), q first and the output last; None when it is none of those."""
    separate, outputs = _SEPARATE
    if leaf in separate:
        output = next((o for o in outputs if _join(parent, o) in present), outputs[0])
        return (*(_join(parent, x) for x in separate), _join(parent, output))
    if leaf in ("query", "key", "value"):
        owner, _ = _split(parent)
        return (
            *(_join(parent, x) for x in ("query", "key", "value")),
            _join(owner, "output.dense"),
        )
    for fused, output in _FUSED:
        if leaf == fused:
            return _join(parent, fused), _join(parent, output)
    return None
