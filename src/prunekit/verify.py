"""Check that the zeros of saved weights have a pattern's layout: ``prunekit verify``.

A checkpoint says nothing of how it was pruned, and sparse kernels trust that it was done
right: a 2:4 kernel given a group of three nonzero weights drops one of them. Verify
reads the weights (a safetensors file or a ``torch.save(model.state_dict())`` file) and,
for each tensor of 2 dims or more, asks the pattern itself how that weight splits into
blocks: it builds the pattern for a module of the tensor's shape (``Linear`` for 2-D,
``Conv1d/2d/3d`` for 3- to 5-D, on the meta device, so nothing is allocated) and reads the
tensor's zeros through that pattern's layout (:mod:`prunekit.masks.geometry`), so the
geometry is exactly the one prunekit prunes with, plugins' included.

Two rules, chosen by the layout:

* a layout whose pruned block loses only some of its weights (``blocks_at``: N:M groups
  lose N of M) needs *every* block pruned, the layout sparse hardware needs: every group of
  M consecutive input-side weights of INC's 2-D view has at least N zeros (N counts removed
  weights, as in prunekit);
* any other layout (NxM tiles, channels, filters, rows, columns, ...) needs each block all
  zero or free of zeros: every zero lies in a block that is entirely zero.

Everything is one or two whole-tensor passes (the layout's ``removed``); only the
first offending block is located, with one ``expand`` of a one-hot block vector, and given
in the tensor's own index space (``[1234, 5676:5680]``).
"""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from prunekit.config.resolve import Resolved, resolve
from prunekit.errors import (
    IndivisibleShapeError,
    PrunekitError,
    PruningWarning,
    UnsupportedModuleError,
)
from prunekit.masks.geometry import (
    BlockLayout,
    blocks_at,
    indivisible_reason,
    removed_blocks,
)
from prunekit.naming import natural_key
from prunekit.plugins.host import PluginHost

Status = Literal["pass", "fail", "not applicable"]
Rule = Literal["every block pruned", "all or nothing"]
Box = tuple[tuple[int, int], ...]  # (start, stop) per dim of the tensor

# Pieces of a first offender that is not one box that are kept (the rest are counted).
_MOST_PIECES = 8
# The module whose weight a tensor of this many dims is read as.
_CONV_BY_DIMS: dict[int, type[nn.Module]] = {3: nn.Conv1d, 4: nn.Conv2d, 5: nn.Conv3d}


# To move to prunekit.errors, which holds every other exception, when that file is next changed.
class VerifyError(PrunekitError, ValueError):
    """A file ``verify`` cannot read as tensors, or filters that select none of its tensors."""


# -- the report -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Offender:
    """The first block (lowest flat index in the layout's order) that breaks the rule."""

    block: int  # its flat index among the layout's blocks
    boxes: tuple[Box, ...]  # where its elements are: one box, or the first pieces of it
    pieces: int  # how many boxes the block splits into (more than ``boxes`` holds: cut)
    zeros: int
    elements: int

    @property
    def index(self) -> str:
        """The block in the tensor's index space, as Python slices: ``[1234, 5676:5680]``."""
        shown = " + ".join(_box_text(box) for box in self.boxes)
        more = self.pieces - len(self.boxes)
        return shown + (f" + {more} more pieces" if more > 0 else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "block": self.block,
            "index": self.index,
            "boxes": [[list(span) for span in box] for box in self.boxes],
            "pieces": self.pieces,
            "zeros": self.zeros,
            "elements": self.elements,
        }


@dataclass(frozen=True)
class TensorVerdict:
    """One weight tensor: its sparsity and whether its zeros have the pattern's layout."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    zeros: int
    elements: int
    status: Status
    reason: str | None = None  # why the pattern does not apply (status "not applicable")
    rule: Rule | None = None
    removes: int | None = None  # zeros a block needs under "every block pruned" (N of N:M)
    blocks: int | None = None
    offending: int | None = None  # blocks that break the rule
    first_offender: Offender | None = None

    @property
    def sparsity(self) -> float:
        return self.zeros / self.elements if self.elements else 0.0

    @property
    def conforms(self) -> bool | None:
        return None if self.status == "not applicable" else self.status == "pass"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "sparsity": self.sparsity,
            "zeros": self.zeros,
            "elements": self.elements,
            "status": self.status,
            "conforms": self.conforms,
            "reason": self.reason,
            "rule": self.rule,
            "blocks": self.blocks,
            "offending_blocks": self.offending,
            "first_offender": None
            if self.first_offender is None
            else self.first_offender.to_dict(),
        }

    def detail(self, spec: str) -> str:
        """What the text report says after the sparsity: how it breaks pattern ``spec``, or
        why that does not apply."""
        if self.status == "not applicable":
            return f"not applicable: {self.reason}"
        if self.status == "pass" or self.first_offender is None:
            return ""
        first = self.first_offender
        need = (
            f"needs at least {self.removes}"
            if self.rule == "every block pruned"
            else "a block is all zero or has none"
        )
        zeros = f"{first.zeros} zero{'' if first.zeros == 1 else 's'}"
        breaks = "breaks" if self.offending == 1 else "break"
        return (
            f"{self.offending:,} of {self.blocks:,} blocks {breaks} {spec}; the first, "
            f"{first.index}, has {zeros} of {first.elements} ({need})"
        )


@dataclass(frozen=True)
class Skipped:
    """A tensor that is no weight to check: fewer than 2 dims (biases, norms, counters)."""

    name: str
    shape: tuple[int, ...]
    reason: str


@dataclass(frozen=True)
class VerifyReport:
    """Every checked tensor's verdict, what was skipped, and the totals."""

    pattern: str
    tensors: tuple[TensorVerdict, ...]
    skipped: tuple[Skipped, ...] = ()
    filtered: int = 0  # tensors --only / --exclude left out
    source: str | None = None

    def count(self, status: Status) -> int:
        return sum(1 for t in self.tensors if t.status == status)

    @property
    def failed(self) -> int:
        return self.count("fail")

    @property
    def conforms(self) -> bool:
        """No checked tensor breaks the pattern (tensors it does not apply to do not count)."""
        return self.failed == 0

    @property
    def sparsity(self) -> float:
        """Zeros over elements of every checked tensor."""
        elements = sum(t.elements for t in self.tensors)
        return sum(t.zeros for t in self.tensors) / elements if elements else 0.0

    def totals(self) -> dict[str, Any]:
        return {
            "tensors": len(self.tensors),
            "passed": self.count("pass"),
            "failed": self.failed,
            "not_applicable": self.count("not applicable"),
            "skipped": len(self.skipped),
            "filtered_out": self.filtered,
            "sparsity": self.sparsity,
            "conforms": self.conforms,
        }

    def to_dict(self) -> dict[str, Any]:
        """The machine-readable report (``prunekit verify --json``)."""
        return {
            "file": self.source,
            "pattern": self.pattern,
            "tensors": [t.to_dict() for t in self.tensors],
            "skipped": [
                {"name": s.name, "shape": list(s.shape), "reason": s.reason} for s in self.skipped
            ],
            "totals": self.totals(),
        }

    def lines(self) -> list[str]:
        """The text report: one line per checked tensor, then the totals."""
        label = {"pass": "PASS", "fail": "FAIL", "not applicable": "N/A"}
        names = max((len(t.name) for t in self.tensors), default=0)
        shapes = max((len(str(t.shape)) for t in self.tensors), default=0)
        found = [
            f"{label[t.status]:<4}  {t.name:<{names}}  {t.shape!s:<{shapes}}  "
            f"sparsity {t.sparsity:6.2%}  {t.detail(self.pattern)}".rstrip()
            for t in self.tensors
        ]
        return [*found, self.summary()]

    def summary(self) -> str:
        totals = self.totals()
        where = f" in {self.source}" if self.source else ""
        count = totals["tensors"]
        text = (
            f"{self.pattern}{where}: {count} weight tensor{'' if count == 1 else 's'}, "
            f"{totals['passed']} pass, {totals['failed']} fail, {totals['not_applicable']} not "
            f"applicable; sparsity {self.sparsity:.2%}"
        )
        if self.skipped:
            text += f"; skipped {len(self.skipped)} with fewer than 2 dims (biases, norms)"
        if self.filtered:
            text += f"; {self.filtered} left out by --only/--exclude"
        return text


# -- verifying ------------------------------------------------------------------------------
def verify_tensors(
    tensors: Mapping[str, Tensor],
    spec: str,
    *,
    only: str | None = None,
    exclude: str | None = None,
    transposed: str | None = None,
    host: PluginHost | None = None,
    **options: Any,
) -> VerifyReport:
    """Whether each weight in ``tensors`` (name -> tensor) has the zeros pattern ``spec``
    makes.

    ``only`` / ``exclude``: regular expressions over the names (``re.search``, as
    ``op_names``); ``transposed``: the names of 2-D weights stored ``(in, out)``, as Hugging
    Face's ``Conv1D`` (GPT-2); ``options``: the pattern's config fields
    (``indivisible="partial"``). Tensors are read one at a time, so ``tensors`` may load them
    on demand (:func:`load_tensors` does). Raises :class:`~prunekit.ConfigError` (also an
    ``UnknownPatternError``, with did-you-mean) for a bad spec or option, and
    :class:`VerifyError` for a bad regular expression or filters that select nothing.
    """
    resolved = resolve({"pattern": spec, **options}, host)
    return _verified(tensors, resolved, Filters(only, exclude, transposed))


def verify_file(
    path: str | Path,
    spec: str,
    *,
    only: str | None = None,
    exclude: str | None = None,
    transposed: str | None = None,
    host: PluginHost | None = None,
    **options: Any,
) -> VerifyReport:
    """:func:`verify_tensors` on the tensors of a safetensors or ``torch.save`` file
    (:func:`load_tensors`); the spec is checked first, so a typo costs no file read."""
    resolved = resolve({"pattern": spec, **options}, host)
    filters = Filters(only, exclude, transposed)
    return _verified(load_tensors(path), resolved, filters, source=str(path))


@dataclass(frozen=True)
class Filters:
    """Which tensors are checked and how they are read: regular expressions over their
    names (``re.search``), each None for none."""

    only: str | None = None
    exclude: str | None = None
    transposed: str | None = None  # 2-D weights stored (in, out)


def _verified(
    tensors: Mapping[str, Tensor],
    resolved: Resolved,
    filters: Filters,
    source: str | None = None,
) -> VerifyReport:
    """The report over the tensors ``filters`` select, each read once, in order."""
    names = _selected(list(tensors), filters.only, filters.exclude)
    flip = _compiled(filters.transposed, "transposed")
    verdicts: list[TensorVerdict] = []
    skipped: list[Skipped] = []
    for name in names:
        tensor = tensors[name]
        if tensor.dim() < 2:
            skipped.append(Skipped(name, tuple(tensor.shape), "fewer than 2 dims"))
            continue
        turned = flip is not None and tensor.dim() == 2 and bool(flip.search(name))
        verdicts.append(verify_tensor(name, tensor, resolved, transposed=turned))
    spec = resolved.config.pattern
    return VerifyReport(spec, tuple(verdicts), tuple(skipped), len(tensors) - len(names), source)


def verify_tensor(
    name: str, tensor: Tensor, resolved: Resolved, *, transposed: bool = False
) -> TensorVerdict:
    """One weight's verdict under the resolved pattern (``transposed``: a 2-D weight stored
    ``(in, out)``, checked as its ``(out, in)`` transpose and reported as stored)."""
    view = tensor.t() if transposed else tensor
    keep = view != 0  # True where a weight is left, as a prunekit mask
    elements = tensor.numel()
    zeros = elements - int(torch.count_nonzero(keep))
    base = TensorVerdict(
        name=name,
        shape=tuple(tensor.shape),
        dtype=str(tensor.dtype).removeprefix("torch."),
        zeros=zeros,
        elements=elements,
        status="not applicable",
    )
    found = layout_for(name, tuple(view.shape), resolved)
    if isinstance(found, str):
        return replace(base, reason=found)
    return _judged(base, found, keep, transposed)


def layout_for(name: str, shape: tuple[int, ...], resolved: Resolved) -> BlockLayout | str:
    """The layout the resolved pattern lays on a weight of ``shape`` (seen ``(out, in,
    ...)``), or why it lays none: the pattern's own words (a shape it does not divide, a
    module it does not prune)."""
    if 0 in shape:
        return "it has no elements"
    module = _module_of(shape)
    if module is None:
        return f"a {len(shape)}-D tensor is neither a Linear nor a Conv1d/2d/3d weight"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PruningWarning)  # a skipped op is reported below
            pattern = resolved.pattern(resolved.config, {name: module})
    except (UnsupportedModuleError, IndivisibleShapeError) as exc:
        return str(exc)
    if name in pattern.skipped:
        return pattern.skipped[name]
    layout = pattern.layouts.get(name)
    if layout is None:
        return (
            f"pattern {resolved.config.pattern!r} describes no block layout (it chooses its "
            "masks itself), so there is no layout to check the zeros against"
        )
    return layout


def _judged(
    base: TensorVerdict, layout: BlockLayout, keep: Tensor, transposed: bool
) -> TensorVerdict:
    """The verdict of ``keep`` (True = nonzero) under ``layout``'s rule (:func:`rule_of`):
    the blocks that break it are counted in whole-tensor passes and the first is located."""
    rule = rule_of(layout)
    removes = layout.block_size if rule == "every block pruned" else None
    judged = replace(base, rule=rule, removes=removes, blocks=layout.num_blocks)
    offending = _offending(layout, keep, rule)
    count = int(torch.count_nonzero(offending))
    if count == 0:
        return replace(judged, status="pass", offending=0)
    first = int(torch.argmax(offending.view(torch.uint8)))  # the lowest index that is True
    offender = _offender(layout, first, keep, transposed)
    return replace(judged, status="fail", offending=count, first_offender=offender)


def rule_of(layout: BlockLayout) -> Rule:
    """What conforming zeros are on ``layout``. A layout whose removed block loses fewer
    weights than it holds (``blocks_at``: N:M groups lose N of M, so an op takes more of
    them than it has to become fully sparse) needs every block pruned, the layout sparse
    hardware needs; on any other a block is all zero or free of zeros."""
    return "every block pruned" if blocks_at(layout, 1.0) > layout.num_blocks else "all or nothing"


def _offending(layout: BlockLayout, keep: Tensor, rule: Rule) -> Tensor:
    """1-D bool per block: the blocks that break ``rule``, read through the layout's own
    ``removed`` (what it counts as a removed block): under "every block pruned" each block
    not removed; under "all or nothing" each block neither removed (all zero) nor clean (no
    zero: the blocks the zeros, read as a mask, leave whole)."""
    removed = removed_blocks(layout, keep)
    if rule == "every block pruned":
        return ~removed
    clean = removed_blocks(layout, ~keep)
    return ~(removed | clean)


def _offender(layout: BlockLayout, block: int, keep: Tensor, transposed: bool) -> Offender:
    """Where block ``block`` lies, found by the layout's own ``expand`` of a one-hot block
    vector, so the geometry is never re-derived here. A weight that does not divide into
    whole blocks may have elements in no block, which ``expand`` sets whatever the blocks
    say (N:M's dense edge columns): those are what it expands no block to, and are left
    out."""
    one_hot = torch.zeros(layout.num_blocks, dtype=torch.bool, device=keep.device)
    one_hot[block] = True
    coords = layout.expand(one_hot).nonzero()
    if indivisible_reason(layout) is not None:
        outside = layout.expand(torch.zeros_like(one_hot))
        coords = coords[~outside[coords.unbind(dim=1)]]
    zeros = int(torch.count_nonzero(~keep[coords.unbind(dim=1)]))
    if transposed:
        coords = coords.flip(dims=(1,))
    boxes, pieces = boxes_of(coords)
    return Offender(block, boxes, pieces, zeros, int(coords.shape[0]))


def boxes_of(coords: Tensor) -> tuple[tuple[Box, ...], int]:
    """The element coordinates ``coords`` (``(k, dims)``, from ``nonzero()``) as boxes: one
    when they fill their bounding box, else runs along the dim they span most (an N:M group
    of a conv whose input channels do not divide M crosses kernel positions), the first
    :data:`_MOST_PIECES` of them and how many there are."""
    low, high = coords.amin(dim=0), coords.amax(dim=0) + 1
    extent = high - low
    if coords.shape[0] == int(torch.prod(extent)):
        return (tuple(zip(low.tolist(), high.tolist(), strict=True)),), 1
    along = int(torch.argmax(extent))
    others = [d for d in range(coords.shape[1]) if d != along]
    order = [*others, along]
    strides = torch.ones(len(order), dtype=torch.int64, device=coords.device)
    for i in range(len(order) - 2, -1, -1):  # over dims, not elements
        strides[i] = strides[i + 1] * extent[order[i + 1]]
    key = ((coords[:, order] - low[order]) * strides).sum(dim=1)
    key, position = torch.sort(key)
    ordered = coords[position]
    starts = torch.ones(key.shape[0], dtype=torch.bool, device=coords.device)
    starts[1:] = (key[1:] != key[:-1] + 1) | (ordered[1:, others] != ordered[:-1, others]).any(1)
    first = starts.nonzero().flatten()
    ends = torch.cat([first[1:], first.new_tensor([key.shape[0]])]) - 1
    boxes = []
    for start, end in zip(first[:_MOST_PIECES].tolist(), ends[:_MOST_PIECES].tolist(), strict=True):
        at = ordered[start].tolist()
        stop = int(ordered[end, along]) + 1
        boxes.append(tuple((at[d], stop if d == along else at[d] + 1) for d in range(len(at))))
    return tuple(boxes), int(first.shape[0])


def _box_text(box: Box) -> str:
    """``((1234, 1235), (5676, 5680))`` -> ``"[1234, 5676:5680]"``."""
    return "[" + ", ".join(str(a) if b == a + 1 else f"{a}:{b}" for a, b in box) + "]"


def _module_of(shape: tuple[int, ...]) -> nn.Module | None:
    """A module whose weight has ``shape``, on the meta device (nothing allocated): Linear
    for 2 dims, Conv1d/2d/3d for 3 to 5 (a state dict does not say which; these are the
    modules whose weights are stored ``(out, in, *kernel)``); None for more dims."""
    if len(shape) == 2:
        return nn.Linear(shape[1], shape[0], bias=False, device="meta")
    conv = _CONV_BY_DIMS.get(len(shape))
    if conv is None:
        return None
    module: nn.Module = conv(shape[1], shape[0], tuple(shape[2:]), bias=False, device="meta")
    return module


def _compiled(expression: str | None, what: str) -> re.Pattern[str] | None:
    """A filter's regular expression, or a :class:`VerifyError` naming it."""
    if expression is None:
        return None
    try:
        return re.compile(expression)
    except re.error as exc:
        raise VerifyError(f"--{what} {expression!r} is not a regular expression: {exc}") from None


def _selected(names: list[str], only: str | None, exclude: str | None) -> list[str]:
    """The names ``only`` matches and ``exclude`` does not (``re.search``); refuses filters
    that leave nothing, which is a typo more often than a wish."""
    keep, drop = _compiled(only, "only"), _compiled(exclude, "exclude")
    chosen = [
        n
        for n in names
        if (keep is None or keep.search(n)) and (drop is None or not drop.search(n))
    ]
    if names and not chosen and (keep is not None or drop is not None):
        shown = ", ".join(repr(n) for n in names[:4]) + (", ..." if len(names) > 4 else "")
        given = " and ".join(
            f"--{flag} {value!r}" for flag, value in (("only", only), ("exclude", exclude)) if value
        )
        raise VerifyError(
            f"{given} leave{'s' if ' and ' not in given else ''} none of the {len(names)} "
            f"tensors (names such as {shown})"
        )
    return chosen


# -- reading files --------------------------------------------------------------------------
class SafetensorsTensors(Mapping[str, Tensor]):
    """The tensors of a safetensors file, each read when asked for (a large checkpoint is
    checked tensor by tensor, never held whole), in natural name order."""

    def __init__(self, path: Path) -> None:
        from safetensors import SafetensorError, safe_open

        try:
            self._file = safe_open(str(path), framework="pt")
        except (SafetensorError, OSError) as exc:
            raise VerifyError(f"{path} is not a readable safetensors file: {exc}") from None
        self._names = sorted(self._file.keys(), key=natural_key)  # type: ignore[no-untyped-call]
        self._known = set(self._names)

    def __getitem__(self, name: str) -> Tensor:
        if name not in self._known:
            raise KeyError(name)
        tensor: Tensor = self._file.get_tensor(name)  # type: ignore[no-untyped-call]
        return tensor

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def _flatten(value: object, prefix: str, into: dict[str, Tensor]) -> None:
    """The tensors in a loaded object into ``into``, by dotted name (nested dicts, as a
    checkpoint's ``{"model": state_dict}``, give ``model.fc.weight``); other values are not
    weights and are left out."""
    if isinstance(value, Tensor):
        into[prefix or "tensor"] = value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else str(key), into)


def load_tensors(path: str | Path) -> Mapping[str, Tensor]:
    """The tensors of ``path``: a safetensors file (read lazily) or a ``torch.save`` file of
    a state dict, loaded with ``weights_only=True`` (no code from the file runs) and memory-
    mapped; nested dicts (``{"model": state_dict}``) give dotted names, other values are
    ignored. Raises :class:`VerifyError` for a file that is neither."""
    file = Path(path)
    try:
        with file.open("rb") as stream:
            head = stream.read(9)
    except OSError as exc:
        raise VerifyError(f"cannot read {file}: {exc.strerror or exc}") from None
    if _is_safetensors(head, file):
        return SafetensorsTensors(file)
    loaded = _torch_load(file, mmap=head.startswith(b"PK\x03\x04"))
    tensors: dict[str, Tensor] = {}
    _flatten(loaded, "", tensors)
    if not tensors:
        raise VerifyError(
            f"{file} holds no tensors (a {type(loaded).__name__}); save model.state_dict()"
        )
    return tensors


def _is_safetensors(head: bytes, file: Path) -> bool:
    """A safetensors file starts with its header's length (8 bytes, little-endian) and the
    header's ``{``; the suffix also says so (then a broken header is reported as such)."""
    if file.suffix == ".safetensors":
        return True
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 0


def _torch_load(file: Path, *, mmap: bool) -> object:
    """``torch.load(file, weights_only=True)`` with its refusals in one line: torch raises
    several kinds of error for a file that is not its own, and a long story for one that
    holds objects a state dict does not."""
    try:
        loaded: object = torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found is not None:
            raise VerifyError(
                f"{file} holds a {found[1]}, which torch.load(weights_only=True) does not load "
                "(it would run code from the file); save model.state_dict() instead"
            ) from None
        raise VerifyError(_not_tensors(file)) from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise VerifyError(f"{_not_tensors(file)} ({' '.join(str(exc).split())[:200]})") from None
    return loaded


def _not_tensors(file: Path) -> str:
    return f"{file} is neither a safetensors file nor a torch.save file of tensors"
