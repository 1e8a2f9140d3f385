"""Pictures of the masks a pattern makes: ``prunekit show`` and the pictures in docs/.

:func:`draw_mask` builds a real small module (a ``Linear`` or a ``Conv1d/2d/3d``), draws
seeded random scores, asks :func:`prunekit.get_pattern` for the pattern and draws the mask
that ``get_masks`` returns: kept weights in one colour, removed weights in another. A Linear
weight is drawn as its ``(out, in)`` matrix; a conv weight the way fasterai's granularity
page draws it: one row per filter (output channel), one ``kh x kw`` kernel per input channel
along the row, with gaps between kernels (a Conv3d kernel is ``kd`` slices side by side).

matplotlib is an optional extra (``pip install 'prunekit[viz]'``): it is imported only when
a picture is drawn, and only through the Agg canvas (no display, no pyplot, no global
backend change). Pictures are deterministic: fixed seed, figure size and dpi, and PNGs are
saved without the software/date metadata.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from prunekit.config.resolve import get_pattern, target_or_default
from prunekit.errors import PruningWarning, UnsupportedModuleError
from prunekit.plugins.default import default_host
from prunekit.viz.figures import DPI, require_matplotlib, save_figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

ModuleKind = Literal["linear", "conv1d", "conv2d", "conv3d"]
MODULE_KINDS: tuple[ModuleKind, ...] = ("linear", "conv1d", "conv2d", "conv3d")

#: The weight drawn when no shape is given: small, but big enough that every granularity
#: shows (4 filters of 3 input channels of 3x3 kernels; a linear of 8 outputs x 12 inputs).
DEFAULT_SHAPES: dict[ModuleKind, tuple[int, ...]] = {
    "linear": (8, 12),
    "conv1d": (4, 3, 5),
    "conv2d": (4, 3, 3, 3),
    "conv3d": (4, 2, 3, 3, 3),
}
_SHAPE_HELP: dict[ModuleKind, str] = {
    "linear": "2 sizes (out, in), e.g. 8,12",
    "conv1d": "3 sizes (out, in, k), e.g. 4,3,5",
    "conv2d": "4 sizes (out, in, kh, kw), e.g. 4,3,3,3",
    "conv3d": "5 sizes (out, in, kd, kh, kw), e.g. 4,2,3,3,3",
}
_MAX_ELEMENTS = 1_000_000  # more than a picture can show

KEPT_COLOR = "#2b6cb0"
REMOVED_COLOR = "#edf0f4"
EDGE_COLOR = "#7b8794"
_CORNERS = ((0, 0), (1, 0), (1, 1), (0, 1))
# Figure margins in inches (left, right, top, bottom): tick labels and the axis label on the
# left; the title and its two lines on top; ticks, axis label and legend at the bottom.
_MARGINS = (0.8, 0.3, 0.9, 0.85)
_MIN_WIDTH = 5.2
# Cells drawn one by one (with borders) up to this many; beyond, one image without borders.
_MAX_CELLS = 40_000


@dataclass(frozen=True)
class MaskPicture:
    """What :func:`mask_picture` computed: the module, the mask, and how it was asked for."""

    spec: str
    kind: ModuleKind
    shape: tuple[int, ...]
    target: float
    scope: str
    seed: int
    mask: Tensor
    options: dict[str, Any] = field(default_factory=dict)
    #: The pattern's ``is_hardware_valid`` verdict (N:M patterns), None where it does not apply.
    hardware_valid: bool | None = None

    @property
    def removed(self) -> int:
        return int((~self.mask).sum())

    @property
    def total(self) -> int:
        return self.mask.numel()

    @property
    def sparsity(self) -> float:
        """The achieved sparsity: removed elements / all elements."""
        return self.removed / self.total if self.total else 0.0

    @property
    def module_label(self) -> str:
        return {"linear": "Linear"}.get(self.kind, self.kind.capitalize())

    def summary(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        spec = f"{self.spec} ({options})" if options else self.spec
        return (
            f"{spec} on a {self.module_label} weight {self.shape}: removed {self.removed} of "
            f"{self.total} = {self.sparsity:.1%} (target {self.target:g}, {self.scope})"
            + self.hardware_note(", ")
        )

    def hardware_note(self, prefix: str = "") -> str:
        """'hardware-valid' / 'not hardware-valid' for N:M-like patterns, else ''."""
        if self.hardware_valid is None:
            return ""
        return prefix + ("hardware-valid" if self.hardware_valid else "not hardware-valid")


def parse_shape(text: str | Sequence[int] | None, kind: ModuleKind) -> tuple[int, ...]:
    """A weight shape for ``kind`` from ``"4,3,3,3"`` (or a sequence), or a clear ValueError;
    None gives the default shape."""
    if kind not in MODULE_KINDS:
        raise ValueError(f"module {kind!r} is not one of {', '.join(MODULE_KINDS)}")
    if text is None:
        return DEFAULT_SHAPES[kind]
    if isinstance(text, str):
        try:
            sizes = tuple(int(p) for p in _shape_parts(text))
        except ValueError:
            raise ValueError(
                f"shape {text!r} is not a list of whole numbers; for {kind} give "
                f"{_SHAPE_HELP[kind]}"
            ) from None
    else:
        sizes = tuple(text)
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in sizes):
            raise ValueError(f"shape {sizes!r}: sizes must be whole numbers")
    expected = len(DEFAULT_SHAPES[kind])
    if len(sizes) != expected or any(s < 1 for s in sizes):
        raise ValueError(
            f"shape {_show_shape(text)} does not fit {kind}: give {_SHAPE_HELP[kind]} "
            "(every size >= 1)"
        )
    if math.prod(sizes) > _MAX_ELEMENTS:
        raise ValueError(
            f"shape {sizes} has {math.prod(sizes)} weights; a picture shows at most {_MAX_ELEMENTS}"
        )
    return sizes


def module_for_shape(shape: str | Sequence[int] | None) -> ModuleKind:
    """The module kind a weight shape's number of sizes means (2 linear, 3 conv1d, 4 conv2d,
    5 conv3d), so that a shape alone says what to draw; no shape: conv2d, the default."""
    if shape is None:
        return "conv2d"
    count = len(_shape_parts(shape)) if isinstance(shape, str) else len(shape)
    for kind in MODULE_KINDS:
        if len(DEFAULT_SHAPES[kind]) == count:
            return kind
    fits = ", ".join(f"{len(DEFAULT_SHAPES[k])} ({k})" for k in MODULE_KINDS[:-1])
    last = MODULE_KINDS[-1]
    raise ValueError(
        f"shape {_show_shape(shape)} has {count} size{'' if count == 1 else 's'}, which fits "
        f"no module: give {fits} or {len(DEFAULT_SHAPES[last])} ({last})"
    )


def _shape_parts(text: str) -> list[str]:
    return [p.strip() for p in text.replace("x", ",").split(",")]


def _show_shape(text: str | Sequence[int]) -> str:
    return repr(text) if isinstance(text, str) else str(tuple(text))


def build_module(kind: ModuleKind, shape: Sequence[int]) -> nn.Module:
    """A real module of ``kind`` whose weight has ``shape`` (no bias, weights uninitialised:
    built on the meta device, so nothing draws from torch's global generator)."""
    sizes = parse_shape(list(shape), kind)
    out, inp, *kernel = sizes
    module: nn.Module
    if kind == "linear":
        module = nn.Linear(inp, out, bias=False, device="meta")
    elif kind == "conv1d":
        module = nn.Conv1d(inp, out, kernel[0], bias=False, device="meta")
    elif kind == "conv2d":
        module = nn.Conv2d(inp, out, (kernel[0], kernel[1]), bias=False, device="meta")
    else:
        module = nn.Conv3d(inp, out, (kernel[0], kernel[1], kernel[2]), bias=False, device="meta")
    return module.to_empty(device="cpu")


def mask_picture(
    spec: str,
    module: ModuleKind = "conv2d",
    shape: str | Sequence[int] | None = None,
    sparsity: float | None = None,
    scope: str = "local",
    seed: int = 0,
    **options: Any,
) -> MaskPicture:
    """The mask pattern ``spec`` makes on a small ``module`` (no drawing; no matplotlib).

    Scores are uniform random draws from ``torch.Generator().manual_seed(seed)``, and the
    module's weight holds them too (so magnitude scores would be the same). ``sparsity``
    None: the pattern's own default target (N/M for ``"2:4"``), else 0.5. ``options`` are
    the pattern's config fields (``blocks=4``), given flat as in a config dict.
    """
    sizes = parse_shape(shape, module)
    entry = default_host().patterns.resolve(spec)  # an unknown name fails here, clearly
    _check_drawable(spec, entry.obj)
    target = target_or_default(spec, sparsity)
    generator = torch.Generator().manual_seed(seed)
    scores = torch.rand(sizes, generator=generator)
    op = build_module(module, sizes)
    with torch.no_grad():
        weight = op.weight
        assert isinstance(weight, Tensor)
        weight.copy_(scores)
    config = {
        "pattern": spec,
        "pruning_scope": scope,
        "target_sparsity": target,
        "seed": seed,
        **options,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PruningWarning)  # said below, as an error
        pattern = get_pattern(config, {module: op})
    if module in pattern.skipped:
        raise UnsupportedModuleError(
            f"pattern {spec!r} leaves a {module} weight {tuple(sizes)} unpruned: "
            f"{pattern.skipped[module]}; draw a shape it divides (--shape), or pass "
            "--option indivisible=partial to see partial edge blocks"
        )
    mask = pattern.get_masks({module: scores}, target)[module]
    verdict = getattr(pattern, "is_hardware_valid", None)
    valid = verdict(module, mask) if callable(verdict) else None
    valid = None if valid is None else bool(valid)
    return MaskPicture(spec, module, sizes, target, scope, seed, mask.cpu(), dict(options), valid)


def _check_drawable(spec: str, cls: Any) -> None:
    """Refuse a pattern whose units span several layers: one weight cannot show them."""
    if getattr(cls, "couples_itself", False):
        raise UnsupportedModuleError(
            f"pattern {spec!r} removes units spanning several layers (a head is rows of q, k "
            "and v and columns of the output projection); a picture of one weight cannot "
            "show it: see docs/patterns.md"
        )


def draw_mask(
    spec: str,
    module: ModuleKind = "conv2d",
    shape: str | Sequence[int] | None = None,
    sparsity: float | None = None,
    scope: str = "local",
    seed: int = 0,
    **options: Any,
) -> Figure:
    """A matplotlib Figure (Agg canvas) of the mask pattern ``spec`` makes on a small
    ``module``; the arguments are :func:`mask_picture`'s.

    Raises ImportError (telling how to install the viz extra) without matplotlib, and
    prunekit's usual errors for an unknown pattern or a module it cannot prune.
    """
    require_matplotlib()
    picture = mask_picture(spec, module, shape, sparsity, scope, seed, **options)
    return figure_of(picture)


def save_mask_picture(
    path: str | Path,
    spec: str,
    module: ModuleKind = "conv2d",
    shape: str | Sequence[int] | None = None,
    sparsity: float | None = None,
    scope: str = "local",
    seed: int = 0,
    **options: Any,
) -> MaskPicture:
    """Draw the mask (as :func:`draw_mask`) and save it to ``path`` (PNG, or any format
    matplotlib knows by the suffix); returns what was drawn."""
    require_matplotlib()
    picture = mask_picture(spec, module, shape, sparsity, scope, seed, **options)
    save_figure(figure_of(picture), path)
    return picture


# -- drawing --------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Geometry:
    """Where each weight's cell goes: x, y of its top-left corner (weight-shaped)."""

    x: Tensor
    y: Tensor
    width: float
    height: float
    xticks: list[float]
    xlabels: list[str]
    yticks: list[float]
    ylabels: list[str]
    xlabel: str
    ylabel: str


def _ticks(count: int, start: float, step: float, width: float) -> tuple[list[float], list[str]]:
    every = max(1, math.ceil(count / 16))
    index = list(range(0, count, every))
    return [start + i * step + width / 2 for i in index], [str(i) for i in index]


def _geometry(kind: ModuleKind, shape: tuple[int, ...], gap: float, slice_gap: float) -> _Geometry:
    if kind == "linear":
        out, inp = shape
        y, x = torch.meshgrid(
            torch.arange(out, dtype=torch.float64),
            torch.arange(inp, dtype=torch.float64),
            indexing="ij",
        )
        xt, xl = _ticks(inp, 0.0, 1.0, 1.0)
        yt, yl = _ticks(out, 0.0, 1.0, 1.0)
        labels = ("in (input feature)", "out (output neuron)")
        return _Geometry(x, y, float(inp), float(out), xt, xl, yt, yl, *labels)
    out, inp, *kernel = shape
    kd, kh, kw = [1, 1, *kernel][-3:]
    block_w = kd * kw + (kd - 1) * slice_gap
    f, c, d, i, j = torch.meshgrid(
        *(torch.arange(n, dtype=torch.float64) for n in (out, inp, kd, kh, kw)), indexing="ij"
    )
    x = c * (block_w + gap) + d * (kw + slice_gap) + j
    y = f * (kh + gap) + i
    width = inp * block_w + (inp - 1) * gap
    height = out * kh + (out - 1) * gap
    xt, xl = _ticks(inp, 0.0, block_w + gap, block_w)
    yt, yl = _ticks(out, 0.0, kh + gap, kh)
    what = {
        "conv1d": "one 1 x k kernel each",
        "conv2d": "one kh x kw kernel each",
        "conv3d": "one kernel each: kd slices of kh x kw",
    }[kind]
    return _Geometry(
        x.reshape(shape),
        y.reshape(shape),
        width,
        height,
        xt,
        xl,
        yt,
        yl,
        f"input channel (in): {what}",
        "filter (out)",
    )


def figure_of(picture: MaskPicture) -> Figure:
    """The Figure for a computed :class:`MaskPicture`."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cells = picture.total
    many = cells > _MAX_CELLS
    # With many cells the picture is one image, on an integer grid (gaps of one cell).
    geometry = _geometry(picture.kind, picture.shape, gap=1.0, slice_gap=1.0 if many else 0.4)
    # Fixed margins in inches around a plot area of exactly the drawing's size, so the
    # layout is the same on every run and nothing depends on a layout engine's iterations.
    pad = 0.3  # data units of white around the drawing
    cell = min(0.3, 9.0 / geometry.width, 7.0 / geometry.height)  # inches per weight
    plot_w = (geometry.width + 2 * pad) * cell
    plot_h = (geometry.height + 2 * pad) * cell
    left, right, top, bottom = _MARGINS
    fig_w = round(max(plot_w + left + right, _MIN_WIDTH), 2)
    fig_h = round(plot_h + top + bottom, 2)
    figure = Figure(figsize=(fig_w, fig_h), dpi=DPI)
    FigureCanvasAgg(figure)
    x0 = left + (fig_w - left - right - plot_w) / 2  # centred when the figure is wider
    ax = figure.add_axes((x0 / fig_w, bottom / fig_h, plot_w / fig_w, plot_h / fig_h))
    if many:
        _draw_image(ax, picture, geometry)
    else:
        _draw_cells(ax, picture, geometry, cell)
    ax.set_xlim(-pad, geometry.width + pad)
    ax.set_ylim(geometry.height + pad, -pad)  # row 0 / filter 0 at the top
    _label(figure, ax, picture, geometry)
    return figure


def _label(figure: Figure, ax: Axes, picture: MaskPicture, geometry: _Geometry) -> None:
    """Ticks, axis labels, the title with what was removed, and the legend."""
    from matplotlib.patches import Patch

    ax.set_xticks(geometry.xticks, geometry.xlabels, fontsize=8)
    ax.set_yticks(geometry.yticks, geometry.ylabels, fontsize=8)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_xlabel(geometry.xlabel, fontsize=9)
    ax.set_ylabel(geometry.ylabel, fontsize=9)
    options = ", ".join(f"{k}={v!r}" for k, v in picture.options.items())
    head = f"{picture.spec}" + (f"  ({options})" if options else "")
    ax.set_title(head, fontsize=11, fontweight="bold", loc="center", pad=34)
    ax.text(
        0.5,
        1.0,
        f"{picture.module_label} weight {picture.shape}: {picture.removed} of {picture.total} "
        f"removed = {picture.sparsity:.1%}\ntarget {picture.target * 100:g}%, "
        f"{picture.scope} scope{picture.hardware_note(', ')}",
        transform=ax.transAxes,
        ha="center",
        va="bottom",
        fontsize=9,
        linespacing=1.4,
    )
    handles = [
        Patch(facecolor=KEPT_COLOR, edgecolor=EDGE_COLOR, label="kept"),
        Patch(facecolor=REMOVED_COLOR, edgecolor=EDGE_COLOR, label="removed"),
    ]
    figure.legend(
        handles=handles,
        loc="lower center",
        bbox_to_anchor=(0.5, 0.02),
        ncols=2,
        frameon=False,
        fontsize=8,
    )


def _draw_cells(ax: Axes, picture: MaskPicture, geometry: _Geometry, cell: float) -> None:
    import numpy as np
    from matplotlib.collections import PolyCollection

    x = geometry.x.reshape(-1).numpy()
    y = geometry.y.reshape(-1).numpy()
    corners = np.stack([np.stack([x + dx, y + dy], 1) for dx, dy in _CORNERS], axis=1)
    kept = picture.mask.reshape(-1).numpy()
    colors = np.where(kept, KEPT_COLOR, REMOVED_COLOR).tolist()
    width = min(0.6, cell * 72 * 0.04)  # thin borders, thinner for small cells
    collection = PolyCollection(
        list(corners),
        facecolors=colors,
        edgecolors=EDGE_COLOR if width >= 0.1 else "none",
        linewidths=width,
    )
    ax.add_collection(collection)


def _draw_image(ax: Axes, picture: MaskPicture, geometry: _Geometry) -> None:
    import numpy as np
    from matplotlib.colors import ListedColormap

    height, width = math.ceil(geometry.height), math.ceil(geometry.width)
    canvas = np.full((height, width), np.nan)
    xs = geometry.x.reshape(-1).round().long().numpy()
    ys = geometry.y.reshape(-1).round().long().numpy()
    canvas[ys, xs] = picture.mask.reshape(-1).to(torch.float64).numpy()
    cmap = ListedColormap([REMOVED_COLOR, KEPT_COLOR]).with_extremes(bad="white")
    ax.imshow(
        np.ma.masked_invalid(canvas),
        cmap=cmap,
        vmin=0,
        vmax=1,
        interpolation="nearest",
        extent=(0, width, height, 0),
    )


def option_values(pairs: Sequence[str]) -> dict[str, Any]:
    """``["blocks=4", "n=inf"]`` -> ``{"blocks": 4, "n": "inf"}``: values are JSON when they
    parse as JSON, strings otherwise."""
    import json

    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"option {pair!r} is not key=value (as in blocks=4)")
        try:
            value: Any = json.loads(text)
        except ValueError:
            value = text
        options[key.strip()] = value
    return options
