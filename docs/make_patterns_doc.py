"""Regenerate docs/patterns.md and its pictures (docs/img/*.png) from the pattern registry.

    python docs/make_patterns_doc.py            # writes docs/patterns.md and docs/img/
    python docs/make_patterns_doc.py --out DIR  # writes DIR/patterns.md and DIR/img/

Edit this script, not patterns.md: tests/test_viz.py runs it into a temporary directory and
fails when the committed patterns.md differs from what it generates, so the text and the
pictures never go stale. The hand-written explanations of each family live below; the rest
(sections, options, supported modules, span tables, pictures) comes from the registry.

Sections: NxM, N:M, every fasterai granularity, then every other built-in pattern (described
generically from its registry entry), then the patterns of the plugins shipped in this
repository (``plugins/*``; only those are loaded, so what else is installed on the machine
does not change the page). img/ belongs to this script: PNGs it did not write are removed.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

LINEAR = (8, 12)
CONV2D = (4, 3, 3, 3)
# NxM and N:M work on INC's 2-D view (out, kh*kw*in); 4 input channels make a 1x4 tile or a
# group of 4 exactly the 4 channels of one kernel position, and every spec divides (4, 36).
CONV2D_VIEW = (4, 4, 3, 3)
CONV3D = (4, 2, 3, 3, 3)

INTRO = """\
Every pattern turns scores into masks with the same rules: exact counts, ties to the lower
index, lowest scores first, caps, monotone `pre_masks` (see
[getting-started.md](getting-started.md#scope-and-caps)). A block's score is the mean of its
elements' scores (`criterion_reduce_type`: `mean`, `sum`, `max`).

**The pictures.** Each one is the mask a pattern makes on a small weight whose scores are
seeded random numbers: kept weights blue, removed weights light grey. A Linear weight is drawn
as its `(out, in)` matrix. A conv weight `(out, in, kh, kw)` is drawn the way fasterai's
granularity page draws it: one row per filter (output channel), one `kh x kw` kernel per input
channel along the row. Unless a caption says otherwise: Linear `(8, 12)`, Conv2d
`(4, 3, 3, 3)`, local scope, target sparsity 0.5. The title gives the sparsity reached, which
can differ from the target when whole blocks do not add up to it (`round(target * blocks)`
blocks are removed). Draw your own with `prunekit show` (needs `pip install 'prunekit[viz]'`):

```bash
prunekit show 4x1 --module linear -o 4x1.png
prunekit show kernel --shape 8,4,3,3 --sparsity 0.75 -o kernel.png
prunekit show block_diagonal --module linear --option blocks=4 -o block_diagonal.png
```

From Python: `prunekit.viz.draw_mask("2:4", module="linear")` returns the matplotlib Figure,
`prunekit.viz.save_mask_picture("2-4.png", "2:4")` writes it.
"""

NXM_TEXT = """\
Specs `"NxM"` with N and M whole numbers or `channel`: `"1x1"` (unstructured), `"4x1"`,
`"1x4"`, `"2x2"`, `"channelx1"`, `"1xchannel"`, ... Registered as the family `NxM` by the
built-in plugin `prunekit.patterns.nxm`.

- N counts output channels (dim 0, "vertical"), M input positions, as in INC.
- Linear weights `(out, in)` are used as they are. Conv weights `(out, in, *kernel)` are seen
  in INC's 2-D view `(out, prod(kernel) * in)` with the input channel varying fastest (INC
  permutes `(0, 2, 3, 1)` and reshapes; Conv1d `(0, 2, 1)`; Conv3d likewise); tiles are laid
  on that view and the mask is mapped back to the weight's own layout.
- `"channelx1"` removes whole columns of the view (one input position across every output
  channel); `"1xchannel"` removes whole rows: a whole output neuron or conv filter. (INC
  sizes `1xchannel` on a conv from the 4-D shape, so its block is `1 x in_channels` of the
  view; ours is the whole row.)
- Shapes the tile does not divide: by default the edge tiles are partial and score by their
  mean; `indivisible="skip"` leaves the op unpruned (listed in `pattern.skipped`),
  `indivisible="raise"` is an error naming the op. INC skips such layers silently.
"""

NXM_PICTURES = """\
On the conv weight (4 filters of 4 input channels) the tiles lie on the 2-D view, where the
input channel varies fastest: a `1x4` tile is one kernel position in all 4 input channels, a
`4x1` tile is one weight at the same place in all 4 filters.
"""

NINM_TEXT = """\
Specs `"N:M"` with whole numbers `1 <= N < M`: `"2:4"`, `"1:4"`, `"4:8"`, ... Registered as
the family `N:M` by the built-in plugin `prunekit.patterns.ninm`.

> **Warning: N counts the REMOVED weights, as in Intel Neural Compressor.** `"1:4"` removes
> 1 weight of every 4 and keeps 3. NVIDIA (sparse tensor cores, ASP) and the N:M literature
> read `N:M` the other way round: N *kept* of every M. The two readings agree only when
> N = M/2 (`"2:4"`, `"4:8"`); for any other spec, make sure which one you mean (NVIDIA's
> "1:4", one weight kept of four, is our `"3:4"`).

- Groups are M consecutive weights along the input side of the same 2-D view as NxM (Linear
  `(out, in)`; Conv `(out, prod(kernel) * in)` with the input channel fastest). In every
  pruned group exactly N weights are removed, the N lowest-scoring, ties to the lower index
  (fasterai's 2:4 can keep more than 2 on ties; we never do).
- A config that names no `target_sparsity` gets N/M. At `target_sparsity == N/M` every group
  is N:M: the layout sparse tensor cores need (`pattern.is_hardware_valid(name, mask)` is
  True).
- Below N/M the lowest-scoring groups (a group scores by the mean of its weights) become N:M
  and the others stay dense, as in INC: the op is **not hardware-valid**, and
  `is_hardware_valid` says so. Above N/M is an error.
- A view width that M does not divide: the edge weights of each row stay dense
  (`indivisible="partial"`, the default; not hardware-valid), `"skip"` leaves the op
  unpruned, `"raise"` refuses it.
"""

GRANULARITY_HEADING = "Granularities (fasterai's names)"
PLUGIN_HEADING = "Plugin patterns"

GRANULARITY_TEXT = """\
fasterai's names for the block a pattern removes from a conv weight `(out, in, kh, kw)`. A
granularity names the dims one block spans; the block's score is the mean (or
`criterion_reduce_type`) of its elements' scores over those dims. "shared" means the same
pattern for every filter: the block also spans `out`. Each name is its own built-in pattern
(`{"pattern": "kernel"}`), registered by the built-in plugin
`prunekit.patterns.granularity`.

Linear `(out, in)` has three of them: `weight` (single weights), `column` (spans out: removes
an input neuron) and `row` (spans in: removes an output neuron). Conv1d is Conv2d with
`kh = 1`; Conv3d extends the table with a depth dim `kd` (spanned by `kernel`,
`shared_kernel` and `filter`; `depth` and `shared_depth` are Conv3d only). ConvTranspose
weights are `(in, out, ...)`, so each name finds `out` and `in` where they are (`filter`
there spans every dim but `out`). A name that does not apply to a module type is an error
naming the module and the names that do apply.
"""

NINM_PICTURES = """\
`2:4` at its target 0.5 (every group of 4 loses exactly 2: hardware-valid) and at 0.25 (the
lower-scoring half of the groups are 2:4, the others stay dense: not hardware-valid). On the
conv weight a group of 4 is one kernel position in the 4 input channels.
"""

# One hand-written sentence per granularity, beyond the one-line description in the code.
GRANULARITY_NOTES: dict[str, str] = {
    "weight": "Single weights: unstructured pruning, on conv and linear weights alike.",
    "shared_weight": "Single weights, but one pattern for every filter: a position "
    "`(in, kh, kw)` is removed from every filter or from none.",
    "channel": "For one filter and one kernel position `(kh, kw)`, the weights of every "
    "input channel go together.",
    "column": "Conv: a column of one kernel (its `kh` weights at one `kw`). Linear: a whole "
    "column of the matrix, which removes an input neuron.",
    "row": "Conv: a row of one kernel (its `kw` weights at one `kh`). Linear: a whole row of "
    "the matrix, which removes an output neuron.",
    "shared_channel": "A kernel position `(kh, kw)` is removed from every input channel of "
    "every filter.",
    "shared_column": "The column `kw` of input channel `in`'s kernel is removed from every filter.",
    "shared_row": "The row `kh` of input channel `in`'s kernel is removed from every filter.",
    "vertical_slice": "The column `kw` of every kernel of one filter.",
    "horizontal_slice": "The row `kh` of every kernel of one filter.",
    "kernel": "A whole `kh x kw` kernel: one filter's weights on one input channel.",
    "shared_vertical_slice": "The column `kw` of every kernel of every filter.",
    "shared_horizontal_slice": "The row `kh` of every kernel of every filter.",
    "shared_kernel": "An input channel of every filter, which removes that input channel "
    "(an output channel of the layer before becomes unused).",
    "filter": "A whole filter, which removes an output channel.",
    "depth": "Conv3d only: the `kd` weights along the depth axis at one `(kh, kw)` of one "
    "kernel. Drawn on a Conv3d `(4, 2, 3, 3, 3)`: each kernel is 3 depth slices side by side.",
    "shared_depth": "Conv3d only: depth vectors with one pattern for every filter. Drawn on a "
    "Conv3d `(4, 2, 3, 3, 3)`: each kernel is 3 depth slices side by side.",
}
# Granularities that also apply to Linear, drawn on both.
LINEAR_GRANULARITIES = ("weight", "column", "row")

# Hand-written notes for other built-ins, used only when they are registered.
OTHER_NOTES: dict[str, str] = {
    "ln_structured": """\
The semantics of `torch.nn.utils.prune.LnStructured`: the channels are the slices of the
weight along `dim` (default -1, as torch), ranked by the Ln norm (`n`: 1, 2, `inf`, `-inf`,
`"fro"`) of their scores over every other dim; the lowest go. `amount` may be given instead
of `target_sparsity`: an int is a number of channels, a float the fraction
`round(amount * channels)`. Masks equal torch's for the same weights wherever torch has no
ties.""",
    "random": """\
A random mask with the exact count, drawn from a generator seeded by the config's `seed` (and
the op's name), so the same seed gives the same mask. Scores are not used.""",
    "iter_nonstruct": """\
Removes every weight scoring below `delta`, then below `2 * delta`, ... until the target is
reached. N2D2 removes the whole last step and overshoots; we remove exactly the target, lowest
first, within the last step (the same weights as `"1x1"`).""",
}
OTHER_NOTES["head"] = """\
A head spans four layers: the rows of the query, key and value projections that make it and
the columns of the output projection that read it, removed together, so the masked model is
a model with fewer heads and `pk.slim` makes it one ([slimming.md](slimming.md)). With
grouped-query attention a key/value head serves a group of query heads, and the unit is that
whole group. The blocks are found by their layers' names (`q_proj`, `k_proj`, `v_proj` with
`o_proj`, `out_proj` or `dense`; `self.query`, `self.key`, `self.value` with
`output.dense`; GPT-2's fused `c_attn` with `c_proj`; `qkv` with `proj`); other selected ops
are left alone (named in the report), so `{"pattern": "head"}` on a whole model prunes its
attention and another config may take its feed-forward layers. Head counts come from
`num_heads` / `num_key_value_heads`, else from the attention modules or the model's config.
Local scope removes `round(target * units)` of every block's units; global scope compares
them across blocks, counted in the weights they touch.

For LLaMA-style attention with 4 query heads of 2 channels and 2 key/value heads (`q_proj`
`(8, d)`, `k_proj` and `v_proj` `(4, d)`, `o_proj` `(d, 8)`) at 0.5, when the second
key/value group scores lowest:

```
q_proj rows   k_proj rows   v_proj rows   o_proj columns
0-3 kept      0-1 kept      0-1 kept      0-3 kept
4-7 removed   2-3 removed   2-3 removed   4-7 removed
```"""
# Patterns a single weight cannot show (they span several layers): no picture.
NO_PICTURES = {"head"}
# Extra pictures for other built-ins: name -> [(module, options, caption)].
OTHER_PICTURES: dict[str, list[tuple[str, dict[str, Any], str]]] = {
    "ln_structured": [
        ("conv2d", {"dim": 0}, "`dim=0`: whole filters"),
        ("conv2d", {}, "`dim=-1` (the default): the same kernel column everywhere"),
        ("linear", {"dim": 0}, "`dim=0`: output neurons"),
    ],
}


@dataclass(frozen=True)
class Shot:
    """One picture: which pattern on which module, and how it is named on disk and in text."""

    spec: str
    module: str
    shape: tuple[int, ...] | None = None
    sparsity: float | None = None
    options: dict[str, Any] = field(default_factory=dict)
    caption: str = ""

    @property
    def file_name(self) -> str:
        parts = [safe(self.spec), self.module]
        if self.shape is not None:
            parts.append("x".join(map(str, self.shape)))
        if self.sparsity is not None:
            parts.append(f"s{self.sparsity:g}")
        parts.extend(safe(f"{k}{v}") for k, v in sorted(self.options.items()))
        return "-".join(parts) + ".png"

    def alt(self) -> str:
        label = {"linear": "Linear"}.get(self.module, self.module.capitalize())
        shape = self.shape or {"linear": LINEAR, "conv2d": CONV2D, "conv3d": CONV3D}.get(
            self.module
        )
        options = ", ".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.spec}{f' ({options})' if options else ''} on {label} {shape}".replace(
            "]", ")"
        ).replace("[", "(")


def safe(name: str) -> str:
    """A file-name-safe version of a spec: ``"2:4"`` -> ``"2-4"``."""
    return re.sub(r"[^A-Za-z0-9_.]+", "-", name).strip("-") or "pattern"


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


class Page:
    """The markdown being written and the pictures it links to."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.lines: list[str] = []
        self.written: dict[str, Shot] = {}

    def add(self, text: str = "") -> None:
        self.lines.extend(text.rstrip("\n").split("\n") if text else [""])

    def block(self, text: str) -> None:
        """A paragraph (or list, table, ...) and the blank line after it."""
        self.add(text)
        self.add()

    def picture(self, shot: Shot) -> str:
        """Draw ``shot`` into img/ and return its markdown image link."""
        from prunekit.viz import save_mask_picture

        name = shot.file_name
        previous = self.written.get(name)
        if previous is not None and previous != shot:
            raise RuntimeError(f"two different pictures would be named {name}")
        if previous is None:
            save_mask_picture(
                self.out / "img" / name,
                shot.spec,
                shot.module,  # type: ignore[arg-type]
                shot.shape,
                shot.sparsity,
                **shot.options,
            )
            self.written[name] = shot
        return f"![{shot.alt()}](img/{name})"

    def gallery(self, header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
        """A table of pictures (cells are markdown: links or labels)."""
        self.add("| " + " | ".join(header) + " |")
        self.add("|" + " --- |" * len(header))
        for row in rows:
            self.add("| " + " | ".join(row) + " |")
        self.add()

    def text(self) -> str:
        return "\n".join(self.lines).rstrip("\n") + "\n"


def supported(cls: Any) -> str:
    names = [t.__name__ for t in getattr(cls, "module_types", ())]
    return ", ".join(f"`{n}`" for n in names) or "see the pattern's documentation"


def options_list(cls: Any) -> list[str]:
    """One markdown bullet per option of a pattern class (name, default, description)."""
    model = getattr(cls, "Options", None)
    fields = getattr(model, "model_fields", {}) if model is not None else {}
    lines = []
    for name, info in fields.items():
        default = info.get_default(call_default_factory=True)
        description = " ".join((info.description or "").split())
        lines.append(f"- `{name}` (default `{default!r}`): {description}".rstrip(": "))
    return lines


def works(spec: str, module: str, **options: Any) -> bool:
    """Whether ``spec`` can be drawn on ``module`` at its default target."""
    from prunekit.errors import PrunekitError
    from prunekit.viz import mask_picture

    try:
        mask_picture(spec, module, **options)  # type: ignore[arg-type]
    except (PrunekitError, ValueError):
        return False
    return True


def dims_names(module: Any) -> list[str]:
    """The dim names of a module's weight, in order (for the span table)."""
    rank = module.weight.dim()
    return {2: ["out", "in"], 4: ["out", "in", "kh", "kw"], 5: ["out", "in", "kd", "kh", "kw"]}[
        rank
    ]


# -- sections -----------------------------------------------------------------------------
def facts(page: Page, cls: Any, *, options_title: str = "Options") -> None:
    """The supported modules and the options of a pattern class, as a list."""
    page.add(wrap(f"- Supported modules: {supported(cls)}."))
    options = options_list(cls)
    if options:
        page.add(f"- {options_title}:")
        for line in options:
            page.add(wrap(line, indent="  "))
    page.add()


def wrap(text: str, indent: str = "", *, item: bool = True) -> str:
    """Text wrapped at 96 columns; a list item's continuation lines are indented under it."""
    import textwrap

    return textwrap.fill(
        text,
        width=96,
        initial_indent=indent,
        subsequent_indent=indent + ("  " if item else ""),
        break_long_words=False,
        break_on_hyphens=False,
    )


def paragraph(text: str) -> str:
    return wrap(text, item=False)


def nxm_section(page: Page, entry: Any) -> None:
    page.block(f"## {entry.name}")
    page.add(NXM_TEXT)
    facts(page, entry.obj)
    page.block(NXM_PICTURES)
    specs = ["1x1", "4x1", "1x4", "2x2", "channelx1", "1xchannel"]
    page.gallery(
        ["spec", "Linear (8, 12)", "Conv2d (4, 4, 3, 3)"],
        (
            [
                f"`{spec}`",
                page.picture(Shot(spec, "linear")),
                page.picture(Shot(spec, "conv2d", CONV2D_VIEW)),
            ]
            for spec in specs
        ),
    )


def ninm_section(page: Page, entry: Any) -> None:
    page.block(f"## {entry.name}")
    page.add(NINM_TEXT)
    facts(page, entry.obj)
    page.block(NINM_PICTURES)
    page.gallery(
        ["module", "`2:4`, target 0.5", "`2:4`, target 0.25"],
        [
            [
                "Linear (8, 12)",
                page.picture(Shot("2:4", "linear")),
                page.picture(Shot("2:4", "linear", sparsity=0.25)),
            ],
            [
                "Conv2d (4, 4, 3, 3)",
                page.picture(Shot("2:4", "conv2d", CONV2D_VIEW)),
                page.picture(Shot("2:4", "conv2d", CONV2D_VIEW, sparsity=0.25)),
            ],
        ],
    )


@dataclass(frozen=True)
class Spans:
    """What one granularity's block spans, read from the code (not hand-copied)."""

    module: str  # "conv2d", or "conv3d" for the Conv3d-only names
    spanned: list[str]
    per: list[str]
    linear: list[str] | None  # dims spanned on a Linear, None when it does not apply

    def per_text(self) -> str:
        text = f"({', '.join(self.per)})" if len(self.per) > 1 else "".join(self.per)
        return text or "the whole weight"


def spans(name: str) -> Spans:
    from torch import nn

    from prunekit.patterns.granularity import GRANULARITIES, applicable_names, span_of

    conv2d = nn.Conv2d(2, 2, 3, device="meta")
    conv3d = nn.Conv3d(2, 2, 3, device="meta")
    module, kind = (conv2d, "conv2d") if name in applicable_names(conv2d) else (conv3d, "conv3d")
    dims = ["out", "in", "kd", "kh", "kw"] if kind == "conv3d" else ["out", "in", "kh", "kw"]
    spanned_at = set(span_of(name, module))
    linear = None
    if GRANULARITIES[name][1] is not None:
        on_linear = set(span_of(name, nn.Linear(2, 2, device="meta")))
        linear = [d for i, d in enumerate(["out", "in"]) if i in on_linear]
    return Spans(
        kind,
        [d for i, d in enumerate(dims) if i in spanned_at],
        [d for i, d in enumerate(dims) if i not in spanned_at],
        linear,
    )


# What removing one block of these means, in the span table.
REMOVES = {"shared_kernel": "removes an input channel", "filter": "removes an output channel"}


def granularity_overview(page: Page, names: Sequence[str]) -> None:
    from prunekit.patterns.granularity import PATTERN_CLASSES

    page.block(f"## {GRANULARITY_HEADING}")
    page.block(GRANULARITY_TEXT)
    page.add("| name | block spans | one block per | on Linear |")
    page.add("| --- | --- | --- | --- |")
    for name in names:
        info = spans(name)
        notes = [n for n in (REMOVES.get(name), "Conv3d only" * (info.module == "conv3d")) if n]
        per = info.per_text() + (f" ({'; '.join(notes)})" if notes else "")
        on_linear = "-"
        if info.linear is not None:
            on_linear = f"spans {', '.join(info.linear)}" if info.linear else "element"
        page.add(
            f"| [`{name}`](#{anchor(name)}) | {', '.join(info.spanned) or 'nothing'} | {per} | "
            f"{on_linear} |"
        )
    page.add()
    facts(page, PATTERN_CLASSES[names[0]], options_title="Options (every granularity)")


def granularity_section(page: Page, entry: Any) -> None:
    name = entry.name
    info = spans(name)
    page.block(f"## {name}")
    page.block(paragraph(GRANULARITY_NOTES.get(name) or f"{entry.description}."))
    spanned = ", ".join(info.spanned) or "nothing (one weight)"
    where = "Conv3d" if info.module == "conv3d" else "Conv2d"
    linear = "does not apply"
    if info.linear is not None:
        linear = f"a block spans {', '.join(info.linear)}" if info.linear else "single weights"
    page.add(wrap(f"- {where}: a block spans {spanned}; one block per {info.per_text()}."))
    page.add(wrap(f"- Linear: {linear}."))
    page.add(wrap(f"- `prunekit patterns` says: {entry.description}."))
    page.add()
    if info.module == "conv3d":
        page.gallery(["Conv3d (4, 2, 3, 3, 3)"], [[page.picture(Shot(name, "conv3d"))]])
    elif info.linear is not None:
        page.gallery(
            ["Conv2d (4, 3, 3, 3)", "Linear (8, 12)"],
            [[page.picture(Shot(name, "conv2d")), page.picture(Shot(name, "linear"))]],
        )
    else:
        page.gallery(["Conv2d (4, 3, 3, 3)"], [[page.picture(Shot(name, "conv2d"))]])


def generic_section(page: Page, entry: Any, level: str = "##") -> None:
    """A pattern this script has no hand-written section for: its registry entry, options,
    supported modules and pictures on whichever modules work (conv2d and linear)."""
    cls = entry.obj
    page.block(f"{level} {entry.name}")
    origin = (
        f"the built-in plugin `{cls.__module__}`"
        if entry.builtin
        else f"the `{entry.owner}` distribution (module `{cls.__module__}`)"
    )
    family = ""
    if entry.is_family:
        family = " A family: specs such as " + ", ".join(f"`{e}`" for e in entry.examples) + "."
    description = entry.description or entry.name
    page.block(
        paragraph(f"{description[:1].upper()}{description[1:]}. Registered by {origin}.{family}")
    )
    note = OTHER_NOTES.get(entry.name)
    if note:
        page.block(note)
    facts(page, cls)
    if entry.name in NO_PICTURES:
        return
    spec = entry.examples[0] if entry.is_family and entry.examples else entry.name
    extra = OTHER_PICTURES.get(entry.name)
    if extra:
        shots = [(Shot(spec, module, options=dict(o)), caption) for module, o, caption in extra]
    else:
        shots = [(Shot(spec, m), "") for m in ("conv2d", "linear") if works(spec, m)]
        if not shots:
            shots = [(Shot(spec, "linear"), "")]  # fails loudly: every pattern must draw
    page.gallery(
        [caption or shot.alt().split(" on ")[-1] for shot, caption in shots],
        [[page.picture(shot) for shot, _ in shots]],
    )


def plugin_section(page: Page, entries: Sequence[Any], dists: Sequence[str]) -> None:
    page.block(f"## {PLUGIN_HEADING}")
    shipped = ", ".join(f"`{d}`" for d in dists) or "none"
    page.block(
        paragraph(
            "Patterns that the plugins shipped in this repository register (`plugins/`: "
            f"{shipped}); a plugin pattern is used exactly like a built-in. `prunekit "
            "patterns` lists what is installed on your machine, `prunekit plugins` who "
            "registered it; [plugins.md](plugins.md) shows how to write one."
        )
    )
    if not entries:
        page.block("No plugin pattern is installed.")
    for entry in entries:
        generic_section(page, entry, level="###")
        readme = ROOT / "plugins" / entry.owner / "README.md"
        if readme.is_file():
            page.block(f"More in [its README](../plugins/{entry.owner}/README.md).")


def shipped_plugins() -> list[str]:
    """Distribution names of the plugins in this repository's plugins/ directory."""
    names = []
    for pyproject in sorted((ROOT / "plugins").glob("*/pyproject.toml")):
        match = re.search(r'^name\s*=\s*"([^"]+)"', pyproject.read_text(), flags=re.M)
        if match:
            names.append(match.group(1))
    return names


def build(out: Path) -> Page:
    from prunekit.patterns.granularity import GRANULARITIES
    from prunekit.plugins import default_host

    page = Page(out)
    entries = default_host().patterns.entries()
    builtins = {e.name: e for e in entries if e.builtin}
    granularities = [n for n in GRANULARITIES if n in builtins]
    others = [e for e in entries if e.builtin and e.name not in {"NxM", "N:M", *GRANULARITIES}]
    plugins = [e for e in entries if not e.builtin]

    page.block("# Patterns")
    page.block(
        "<!-- Generated by docs/make_patterns_doc.py from the pattern registry: edit the\n"
        "script, not this file. -->"
    )
    page.block(INTRO)
    contents = [
        *(n for n in ("NxM", "N:M") if n in builtins),
        *([GRANULARITY_HEADING] if granularities else []),
        *(e.name for e in others),
        PLUGIN_HEADING,
    ]
    page.block(paragraph("Contents: " + ", ".join(f"[{c}](#{anchor(c)})" for c in contents) + "."))
    if "NxM" in builtins:
        nxm_section(page, builtins["NxM"])
    if "N:M" in builtins:
        ninm_section(page, builtins["N:M"])
    if granularities:
        granularity_overview(page, granularities)
        for name in granularities:
            granularity_section(page, builtins[name])
    for entry in others:
        generic_section(page, entry)
    plugin_section(page, plugins, shipped_plugins())
    return page


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=DOCS, help="directory for patterns.md and img/ (docs/)"
    )
    args = parser.parse_args(argv)
    # Only the plugins shipped here: what else is installed must not change the page.
    from prunekit.plugins import LOAD_ENV, SKIP_ENV, reset_default_host

    dists = shipped_plugins()
    os.environ[LOAD_ENV] = ",".join(dists)
    os.environ.pop(SKIP_ENV, None)
    reset_default_host()

    out: Path = args.out
    (out / "img").mkdir(parents=True, exist_ok=True)
    page = build(out)
    (out / "patterns.md").write_text(page.text(), encoding="utf-8")
    for stale in sorted((out / "img").glob("*.png")):
        if stale.name not in page.written:
            stale.unlink()
            print(f"removed stale {stale}")
    print(f"wrote {out / 'patterns.md'} and {len(page.written)} pictures in {out / 'img'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
