"""Mask-computation speed and memory on a BERT-base-shaped stack of Linear layers.

A benchmark, never a timed test. In one process it times (median of ``--repeat`` runs after a
warm-up) one ``|W|`` pass over every weight written into preallocated buffers (the floor),
``torch.kthvalue`` over all scores, prunekit's patterns, ``torch.nn.utils.prune``,
``torch.ao.pruning.WeightNormSparsifier`` and, where an INC release with its pruner is
installed (the optional ``bench`` extra), INC's patterns. Each contender's extra peak memory
is measured in a fresh subprocess (``--only NAME``): ``ru_maxrss`` after the call minus the
RSS right before it, with the weights, the scores and any untimed setup already built.

``--blocks`` scales the stack (12 blocks: 72 Linear layers, 85M weights); ``--scale`` runs 1x,
2x and 4x the size to show how the cost grows; ``--overhead`` times a training step of one
BERT-base encoder layer with and without a Pruner. ``--markdown`` prints Markdown tables for
docs/performance.md. Run with ``make bench`` (``bench-scale``, ``bench-overhead``).
"""

from __future__ import annotations

import argparse
import copy
import fnmatch
import gc
import importlib
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.utils.prune as torch_prune
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn
from torch.ao.pruning.sparsifier.weight_norm_sparsifier import WeightNormSparsifier

import prunekit as pk
from prunekit.masks.select import counting, passes

BERT_BLOCK = [
    ("q", 768, 768),
    ("k", 768, 768),
    ("v", 768, 768),
    ("o", 768, 768),
    ("fc1", 768, 3072),
    ("fc2", 3072, 768),
]
MB = 1e6
# A first run longer than this is reported on its own: no warm-up, no repeats.
SLOW_SECONDS = 10.0
ROOT = Path(__file__).resolve().parent.parent


def bert_stack(blocks: int) -> dict[str, nn.Linear]:
    """72 Linear layers for 12 blocks, shaped like BERT-base's encoder (weights (out, in))."""
    modules: dict[str, nn.Linear] = {}
    for b in range(blocks):
        for name, inp, out in BERT_BLOCK:
            layer = nn.Linear(inp, out, bias=False)
            modules[f"layer{b}.{name}"] = layer
    return modules


def as_tree(modules: dict[str, nn.Linear]) -> nn.Module:
    """The same Linear modules as a model whose submodule names are the stack's op names
    (``layer0.q``), for APIs that take a model and fully qualified names."""
    root = nn.Module()
    for name, module in modules.items():
        parent = root
        *path, leaf = name.split(".")
        for part in path:
            if not hasattr(parent, part):
                parent.add_module(part, nn.Module())
            parent = getattr(parent, part)
        parent.add_module(leaf, module)
    return root


# -- contenders ---------------------------------------------------------------------------------
@dataclass
class Stack:
    """The weights, the scores (``|W|``, built outside any timing) and the target."""

    modules: dict[str, nn.Linear]
    scores: dict[str, Tensor]
    sparsity: float

    @property
    def total(self) -> int:
        return sum(s.numel() for s in self.scores.values())


@dataclass
class Outcome:
    """What a run left: weights removed (None: the contender makes no mask) and the bytes of
    the masks it returned or left on the modules (subtracted from its extra memory)."""

    removed: int | None
    mask_bytes: int = 0


@dataclass
class Runner:
    """``prepare`` (untimed) runs before every timed ``run``; ``outcome`` reads the result."""

    run: Callable[[], object]
    outcome: Callable[[object], Outcome]
    prepare: Callable[[], None] = lambda: None


@dataclass(frozen=True)
class Contender:
    key: str
    label: str
    target: float | None  # None: the run's --sparsity
    make: Callable[[Stack, float], Runner]
    note: str = ""
    needs: str = ""  # an optional module it needs ("" = always available)


def masks_outcome(result: object) -> Outcome:
    assert isinstance(result, dict)
    masks: list[Tensor] = list(result.values())
    removed = sum(int(m.numel() - torch.count_nonzero(m)) for m in masks)
    return Outcome(removed, sum(m.numel() * m.element_size() for m in masks))


def floor_runner(stack: Stack, target: float) -> Runner:
    weights = [m.weight.detach() for m in stack.modules.values()]
    buffers = [torch.zeros_like(w) for w in weights]  # touched: resident

    def run() -> object:
        for w, buf in zip(weights, buffers, strict=True):
            torch.abs(w, out=buf)
        return None

    return Runner(run, lambda _: Outcome(None))


def kthvalue_runner(stack: Stack, target: float) -> Runner:
    k = max(1, int(target * stack.total))

    def run() -> object:
        flat = torch.cat([s.flatten() for s in stack.scores.values()])
        return torch.kthvalue(flat, k).values

    def outcome(threshold: object) -> Outcome:
        assert isinstance(threshold, Tensor)
        removed = sum(int((s <= threshold).sum()) for s in stack.scores.values())
        return Outcome(removed)

    return Runner(run, outcome)


def prunekit_runner(config: dict[str, Any]) -> Callable[[Stack, float], Runner]:
    def make(stack: Stack, target: float) -> Runner:
        pattern = pk.get_pattern({**config, "target_sparsity": target}, stack.modules)
        return Runner(lambda: pattern.get_masks(stack.scores, target), masks_outcome)

    return make


def torch_prune_runner(kind: str) -> Callable[[Stack, float], Runner]:
    """torch.nn.utils.prune mutates the modules: every run gets fresh deep copies (untimed)."""

    def make(stack: Stack, target: float) -> Runner:
        state: dict[str, dict[str, nn.Linear]] = {}

        def prepare() -> None:
            state.clear()
            gc.collect()
            state["modules"] = copy.deepcopy(stack.modules)

        def run() -> object:
            modules = state["modules"]
            if kind == "global":
                torch_prune.global_unstructured(
                    [(m, "weight") for m in modules.values()],
                    pruning_method=torch_prune.L1Unstructured,
                    amount=target,
                )
            else:
                for m in modules.values():
                    torch_prune.ln_structured(m, "weight", amount=target, n=1, dim=0)  # type: ignore[no-untyped-call]
            return modules

        def outcome(result: object) -> Outcome:
            assert isinstance(result, dict)
            return masks_outcome({n: m.weight_mask for n, m in result.items()})

        return Runner(run, outcome, prepare)

    return make


def ao_runner(block: tuple[int, int], zeros: int) -> Callable[[Stack, float], Runner]:
    """WeightNormSparsifier on a deep copy (untimed); prepare() + step() are timed, since
    prepare allocates the masks that step fills (prunekit's get_masks does both)."""

    def make(stack: Stack, target: float) -> Runner:
        state: dict[str, nn.Module] = {}
        # 2:4 at level 1.0 puts 2 zeros in every block of 4: a true 2:4 mask at 50%.
        level = 1.0 if zeros < block[0] * block[1] else target

        def prepare() -> None:
            state.clear()
            gc.collect()
            state["model"] = copy.deepcopy(as_tree(stack.modules))

        def run() -> object:
            model = state["model"]
            sparsifier = WeightNormSparsifier(
                sparsity_level=level, sparse_block_shape=block, zeros_per_block=zeros, norm=1
            )
            fqns = [{"tensor_fqn": f"{n}.weight"} for n in stack.modules]
            sparsifier.prepare(model, fqns)  # type: ignore[no-untyped-call]
            sparsifier.step()
            return model

        def outcome(result: object) -> Outcome:
            assert isinstance(result, nn.Module)
            masks: dict[str, Tensor] = {}
            for n in stack.modules:
                parametrized: Any = result.get_submodule(n)
                masks[n] = parametrized.parametrizations.weight[0].mask
            return masks_outcome(masks)

        return Runner(run, outcome, prepare)

    return make


def import_inc() -> ModuleType | None:
    """INC's pattern module, or None when no INC release with its pruner is installed."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
        try:
            patterns = importlib.import_module("neural_compressor.compression.pruner.patterns")
        except ImportError:
            return None
    logging.getLogger("neural_compressor").setLevel(logging.WARNING)  # a line per layer
    return patterns


def inc_runner(spec: str, scope: str) -> Callable[[Stack, float], Runner]:
    """INC 3.7.1's pattern: a fresh pattern and all-ones pre_masks per run (untimed: INC's
    pattern keeps per-layer state between calls); timed: reduce_score (INC's criterion does
    it; prunekit's get_masks reduces inside) and get_masks, from the same |W| scores."""

    def make(stack: Stack, target: float) -> Runner:
        patterns = import_inc()
        assert patterns is not None
        nc = importlib.import_module("neural_compressor")
        utils = importlib.import_module("neural_compressor.compression.pruner.utils")
        state: dict[str, Any] = {}

        def prepare() -> None:
            state.clear()
            gc.collect()
            config = nc.WeightPruningConfig(
                pruning_configs=[{}],  # INC's default list is shared between configs
                pattern=spec,
                pruning_scope=scope,
                target_sparsity=target,
            )
            state["pattern"] = patterns.get_pattern(utils.process_config(config)[0], stack.modules)
            state["pre"] = {
                n: torch.ones_like(s, dtype=torch.bool) for n, s in stack.scores.items()
            }

        def run() -> object:
            pattern = state["pattern"]
            reduced = {n: pattern.reduce_score(s, n) for n, s in stack.scores.items()}
            masks: dict[str, Tensor] = pattern.get_masks(reduced, target, state.pop("pre"))
            return masks

        return Runner(run, masks_outcome, prepare)

    return make


def pk_config(pattern: str, scope: str, **options: Any) -> dict[str, Any]:
    return {"pattern": pattern, "pruning_scope": scope, **options}


CONTENDERS: list[Contender] = [
    Contender(
        "floor",
        "|W| pass (floor)",
        None,
        floor_runner,
        "torch.abs(w, out=buf) per layer into preallocated buffers: one pass over every weight",
    ),
    Contender(
        "kthvalue",
        "torch.kthvalue over all scores",
        None,
        kthvalue_runner,
        "torch.cat of every score then one kthvalue: the naive global threshold (no masks)",
    ),
    *[
        Contender(
            f"pk-{spec}-{scope}",
            f"prunekit {spec} {scope}",
            None,
            prunekit_runner(pk_config(spec, scope)),
        )
        for spec in ("1x1", "4x1", "channelx1", "1xchannel")
        for scope in ("global", "local")
    ],
    Contender(
        "pk-1x4-local",
        "prunekit 1x4 local",
        None,
        prunekit_runner(pk_config("1x4", "local")),
        "the block torch.ao's sparse_block_shape (1, 4) describes, per layer",
    ),
    Contender(
        "pk-2:4-local",
        "prunekit 2:4 local",
        0.5,
        prunekit_runner(pk_config("2:4", "local")),
        "at 0.5, the most 2:4 allows",
    ),
    Contender(
        "pk-row-local",
        "prunekit row local",
        None,
        prunekit_runner(pk_config("row", "local")),
        "whole output neurons; 'filter' is the conv name and is not defined on Linear",
    ),
    Contender(
        "pk-column-local",
        "prunekit column local",
        None,
        prunekit_runner(pk_config("column", "local")),
        "whole input columns",
    ),
    Contender(
        "pk-ln_structured-local",
        "prunekit ln_structured local",
        None,
        prunekit_runner(pk_config("ln_structured", "local", n=1, dim=0, amount=0.8)),
        "n=1 dim=0 amount=0.8: torch's ln_structured semantics",
    ),
    Contender(
        "tp-global_unstructured",
        "torch prune global_unstructured",
        None,
        torch_prune_runner("global"),
        "L1Unstructured on deep copies (untimed); masks are float32 (4 B/weight) and it also "
        "keeps weight_orig and a masked weight per layer",
    ),
    Contender(
        "tp-ln_structured",
        "torch prune ln_structured",
        None,
        torch_prune_runner("ln"),
        "n=1 dim=0 per layer on deep copies (untimed); float32 masks",
    ),
    Contender(
        "ao-1x4",
        "torch.ao WeightNormSparsifier 1x4",
        None,
        ao_runner((1, 4), 4),
        "sparse_block_shape (1, 4), zeros_per_block 4, norm=1 (mean |w| per block, as "
        "prunekit's 1x4 local); prepare+step timed, on deep copies (untimed); float32 masks",
    ),
    Contender(
        "ao-2:4",
        "torch.ao WeightNormSparsifier 2:4",
        0.5,
        ao_runner((1, 4), 2),
        "sparse_block_shape (1, 4), zeros_per_block 2, sparsity_level 1.0 (every block 2:4; "
        "level 0.8 would leave a fifth of the blocks dense), norm=1; prepare+step timed",
    ),
    *[
        Contender(
            f"inc-{spec}-{scope}",
            f"INC {spec} {scope}",
            None,
            inc_runner(spec, scope),
            "INC 3.7.1 pattern: reduce_score + get_masks timed; fresh pattern and all-ones "
            "pre_masks per run (untimed); default caps (max 0.98 per op)",
            needs="neural_compressor",
        )
        for spec, scope in (("1x1", "global"), ("4x1", "global"), ("4x1", "local"))
    ],
]
BY_KEY = {c.key: c for c in CONTENDERS}


def available(contender: Contender) -> bool:
    return not contender.needs or import_inc() is not None


# -- measuring -----------------------------------------------------------------------------------
def build_stack(blocks: int, sparsity: float) -> Stack:
    torch.manual_seed(0)
    modules = bert_stack(blocks)
    with torch.no_grad():
        scores = {n: m.weight.detach().abs() for n, m in modules.items()}
    return Stack(modules, scores, sparsity)


def time_runner(runner: Runner, repeat: int) -> tuple[float, int, object]:
    """Median seconds over ``repeat`` timed runs after a warm-up, the number of timed runs and
    the last result. A warm-up longer than SLOW_SECONDS is the only run reported."""
    runner.prepare()
    started = time.perf_counter()
    result = runner.run()
    first = time.perf_counter() - started
    if first > SLOW_SECONDS:
        return first, 1, result
    times = []
    for _ in range(repeat):
        del result
        runner.prepare()
        started = time.perf_counter()
        result = runner.run()
        times.append(time.perf_counter() - started)
    return statistics.median(times), repeat, result


def current_rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    """This process's peak RSS: VmHWM, the mark that reset_peak() resets. Not ru_maxrss alone:
    a child started by subprocess (vfork + exec) inherits in ru_maxrss its parent's peak, which
    no reset clears; ru_maxrss is the fallback where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0), so ru_maxrss counts from here."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        return False
    return True


def only(key: str, blocks: int, sparsity: float) -> dict[str, Any]:
    """One contender's first run in this (fresh) process: its extra peak memory."""
    contender = BY_KEY[key]
    stack = build_stack(blocks, sparsity)
    target = sparsity if contender.target is None else contender.target
    runner = contender.make(stack, target)
    runner.prepare()
    gc.collect()
    reset = reset_peak()
    before = current_rss() if reset else max(current_rss(), peak_rss())
    started = time.perf_counter()
    result = runner.run()
    seconds = time.perf_counter() - started
    extra = peak_rss() - before
    outcome = runner.outcome(result)
    return {
        "key": key,
        "extra": extra,
        "mask_bytes": outcome.mask_bytes,
        "removed": outcome.removed,
        "total": stack.total,
        "seconds": seconds,
        "peak_reset": reset,
    }


def measure_memory(key: str, blocks: int, sparsity: float, timeout: float) -> dict[str, Any]:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--only",
        key,
        "--blocks",
        str(blocks),
        "--sparsity",
        str(sparsity),
        "--threads",
        str(torch.get_num_threads()),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    found: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


@dataclass
class Row:
    label: str
    seconds: float
    runs: int
    target: float | None
    removed: int | None
    total: int
    memory: dict[str, Any] = field(default_factory=dict)

    def cells(self, floor: float) -> list[str]:
        achieved = "-" if self.removed is None else f"{self.removed / self.total:.4f}"
        if "extra" in self.memory:
            extra = self.memory["extra"]
            beyond = (extra - self.memory["mask_bytes"]) / self.total
            memory = [f"{extra / MB:.0f}", f"{self.memory['mask_bytes'] / MB:.0f}", f"{beyond:.2f}"]
        else:
            memory = [self.memory.get("error", "-"), "-", "-"]
        return [
            self.label,
            fmt_seconds(self.seconds),
            str(self.runs),
            f"{self.seconds / floor:.1f}",
            *memory,
            "-" if self.target is None else f"{self.target:g}",
            achieved,
        ]


MAIN_COLUMNS = [
    "contender",
    "median",
    "runs",
    "x floor",
    "extra peak MB",
    "masks MB",
    "extra B/weight beyond masks",
    "target",
    "achieved sparsity",
]


def fmt_seconds(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


# -- output --------------------------------------------------------------------------------------
def print_table(
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    markdown: bool,
    text_columns: int = 1,
) -> None:
    """A rich table, or Markdown; the first ``text_columns`` columns are left-aligned."""
    if markdown:
        print(f"**{title}**\n")
        print("| " + " | ".join(columns) + " |")
        print(
            "| "
            + " | ".join("---" if i < text_columns else "---:" for i in range(len(columns)))
            + " |"
        )
        for row in rows:
            print("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
        print()
        return
    table = Table(title=title)
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i < text_columns else "right")
    for row in rows:
        table.add_row(*row)
    Console(width=160).print(table)


def print_notes(notes: Sequence[tuple[str, str]], markdown: bool) -> None:
    """One line per note; contenders that share a note share its line."""
    grouped: dict[str, list[str]] = {}
    for label, note in notes:
        grouped.setdefault(note, []).append(label)
    for note, labels in grouped.items():
        label = ", ".join(labels)
        print(f"- {label}: {note}" if markdown else f"  {label}: {note}")
    print()


def git_commit() -> str:
    """The short commit of this checkout, "+ src modified" when src/ differs from it."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "src"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit} + src modified" if dirty else commit


def machine(commit: str) -> str:
    """The Machine: line; ``commit`` is taken when the run starts (the code measured)."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    inc = "not installed"
    if import_inc() is not None:
        inc = importlib.import_module("neural_compressor").__version__
    threads = torch.get_num_threads()
    others = CPU_WATCH.others()
    busy = "" if others is None else f"; other processes used {others:.0%} of the CPU meanwhile"
    return (
        f"{model}, {os.cpu_count()} cores, {memory:.0f} GiB; python {platform.python_version()}, "
        f"torch {torch.__version__} ({threads} thread{'s' if threads > 1 else ''}), prunekit "
        f"{pk.__version__} @ {commit}, INC {inc}{busy}"
    )


class CpuWatch:
    """How much of the machine's CPU other processes used since it started (from /proc/stat,
    less this process's and its waited-for children's CPU time): a busy machine makes every
    timing here slower and noisier, so the tables say how busy it was."""

    def __init__(self) -> None:
        self.start = self.sample()

    @staticmethod
    def sample() -> tuple[float, float, float] | None:
        try:
            ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        except (OSError, ValueError):
            return None
        busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
        own = 0.0
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
            usage = resource.getrusage(who)
            own += usage.ru_utime + usage.ru_stime
        return busy, own, time.monotonic()

    def others(self) -> float | None:
        """Other processes' share of all cores' time since the start (0 to 1)."""
        end = self.sample()
        if self.start is None or end is None or end[2] <= self.start[2]:
            return None
        capacity = (end[2] - self.start[2]) * (os.cpu_count() or 1)
        used = (end[0] - self.start[0]) - (end[1] - self.start[1])
        return max(0.0, used / capacity)


CPU_WATCH = CpuWatch()


def stack_title(stack: Stack) -> str:
    return (
        f"{len(stack.modules)} Linear layers ({len(stack.modules) // 6} blocks), "
        f"{stack.total / 1e6:.1f}M weights, target {stack.sparsity:g}"
    )


# -- modes ---------------------------------------------------------------------------------------
def run_main(args: argparse.Namespace) -> None:
    chosen = [c for c in CONTENDERS if any(fnmatch.fnmatch(c.key, p) for p in args.select)]
    if not any(c.key == "floor" for c in chosen):
        chosen.insert(0, BY_KEY["floor"])
    skipped = [c for c in chosen if not available(c)]
    chosen = [c for c in chosen if available(c)]
    stack = build_stack(args.blocks, args.sparsity)
    rows: list[Row] = []
    for contender in chosen:
        target = args.sparsity if contender.target is None else contender.target
        runner = contender.make(stack, target)
        seconds, runs, result = time_runner(runner, args.repeat)
        outcome = runner.outcome(result)
        del result, runner
        gc.collect()
        rows.append(
            Row(contender.label, seconds, runs, contender.target, outcome.removed, stack.total)
        )
        if args.verbose:
            print(f"{contender.key}: {fmt_seconds(seconds)}", file=sys.stderr)
    if args.memory:
        for contender, row in zip(chosen, rows, strict=True):
            row.memory = measure_memory(contender.key, args.blocks, args.sparsity, args.timeout)
            if args.verbose:
                print(f"{contender.key}: memory {row.memory}", file=sys.stderr)
    floor = rows[0].seconds
    print(f"Machine: {machine(args.commit)}\n")
    print_table(
        f"Masks: {stack_title(stack)}; median of {args.repeat} runs after a warm-up",
        MAIN_COLUMNS,
        [row.cells(floor) for row in rows],
        args.markdown,
    )
    notes = [(c.label, c.note) for c in chosen if c.note]
    notes += [
        (c.label, "skipped: neural_compressor (the `bench` extra) is not installed")
        for c in skipped
    ]
    print_notes(notes, args.markdown)


def run_scale(args: argparse.Namespace) -> None:
    keys = ["floor", "pk-1x1-global", "pk-4x1-global"]
    rows: list[list[str]] = []
    for factor in (1, 2, 4):
        blocks = args.blocks * factor
        stack = build_stack(blocks, args.sparsity)
        floor = 0.0
        for key in keys:
            contender = BY_KEY[key]
            runner = contender.make(stack, args.sparsity)
            seconds, runs, result = time_runner(runner, args.repeat)
            del result, runner
            gc.collect()
            floor = floor or seconds
            beyond = "-"
            if args.memory:
                memory = measure_memory(key, blocks, args.sparsity, args.timeout)
                if "extra" in memory:
                    beyond = f"{(memory['extra'] - memory['mask_bytes']) / stack.total:.2f}"
                else:
                    beyond = memory["error"]
            rows.append(
                [
                    f"{factor}x ({blocks} blocks)",
                    f"{stack.total / 1e6:.0f}M",
                    contender.label,
                    fmt_seconds(seconds),
                    str(runs),
                    f"{seconds / stack.total * 1e9:.2f}",
                    f"{seconds / floor:.1f}",
                    beyond,
                ]
            )
            if args.verbose:
                print(f"{blocks} blocks {key}: {fmt_seconds(seconds)}", file=sys.stderr)
        del stack
        gc.collect()
    print(f"Machine: {machine(args.commit)}\n")
    print_table(
        f"Scaling: 1x, 2x, 4x the stack, target {args.sparsity:g}, median of {args.repeat} runs",
        [
            "size",
            "weights",
            "contender",
            "median",
            "runs",
            "ns/weight",
            "x floor",
            "extra B/weight beyond masks",
        ],
        rows,
        args.markdown,
        text_columns=3,
    )


def run_overhead(args: argparse.Namespace) -> None:
    """A training step of one BERT-base encoder layer with and without a Pruner, interleaved
    step by step so that drift in the machine's speed hits both alike."""
    torch.manual_seed(0)
    plain = nn.TransformerEncoderLayer(768, 12, 3072, batch_first=True)
    pruned = copy.deepcopy(plain)
    inputs = torch.randn(8, 128, 768)
    plain_opt = torch.optim.AdamW(plain.parameters())
    pruned_opt = torch.optim.AdamW(pruned.parameters())
    pruner = pk.Pruner(pruned, {"pattern": "4x1", "target_sparsity": 0.8}, optimizer=pruned_opt)
    pruner.prune_now()

    def step(layer: nn.Module, opt: torch.optim.Optimizer, prunes: bool) -> tuple[float, float]:
        started = time.perf_counter()
        loss = layer(inputs).square().mean()
        loss.backward()
        opt.step()
        before = time.perf_counter()
        if prunes:
            pruner.step()
        pruner_seconds = time.perf_counter() - before
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - started, pruner_seconds

    without: list[float] = []
    with_pruner: list[float] = []
    in_pruner: list[float] = []
    for i in range(args.warmup + args.steps):
        a, _ = step(plain, plain_opt, prunes=False)
        b, c = step(pruned, pruned_opt, prunes=True)
        if i >= args.warmup:
            without.append(a)
            with_pruner.append(b)
            in_pruner.append(c)
    base = statistics.median(without)
    attached = statistics.median(with_pruner)
    rows = [
        ["without a Pruner", f"{base * 1000:.0f} ms", "-"],
        [
            "with a Pruner (4x1 at 0.8, pruner.step() each step)",
            f"{attached * 1000:.0f} ms",
            f"{(attached / base - 1) * 100:+.1f}%",
        ],
        [
            "of which pruner.step()",
            f"{statistics.median(in_pruner) * 1000:.1f} ms",
            f"{statistics.median(in_pruner) / base * 100:.1f}% of a plain step",
        ],
    ]
    print(f"Machine: {machine(args.commit)}\n")
    print_table(
        f"Training-step overhead: nn.TransformerEncoderLayer(768, 12, 3072), batch 8 x 128 "
        f"tokens, AdamW, CPU; median of {args.steps} interleaved steps after {args.warmup}",
        ["step", "median", "overhead"],
        rows,
        args.markdown,
    )
    print_notes(
        [
            (
                "pruned ops",
                ", ".join(pruner.ops) + " (MultiheadAttention's in_proj_weight is a "
                "raw Parameter, not a Linear, so the q/k/v projection is not pruned)",
            )
        ],
        args.markdown,
    )


class CountedReads(Mapping[str, Tensor]):
    """|W| computed at every access and counted: what a streaming run reads."""

    def __init__(self, modules: dict[str, nn.Linear]) -> None:
        self.modules = modules
        self.reads = 0

    def __getitem__(self, name: str) -> Tensor:
        self.reads += 1
        return self.modules[name].weight.detach().abs()

    def __iter__(self) -> Iterator[str]:
        return iter(self.modules)

    def __len__(self) -> int:
        return len(self.modules)


def counted_passes(run: Callable[[], object]) -> int:
    """How many counting passes ``run`` makes (the engine's own pass function, counted)."""
    calls = 0
    original = passes.count_pass

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return original(*args, **kwargs)

    passes.count_pass, counting.count_pass = counted, counted  # type: ignore[assignment]
    try:
        run()
    finally:
        passes.count_pass, counting.count_pass = original, original  # type: ignore[assignment]
    return calls


def run_engine(args: argparse.Namespace) -> None:
    """The engine's invariants of speed, measured: how often a streaming run reads each op's
    scores, and how many counting passes a global selection makes per op (ops held by their
    caps included: BERT's fc2 at the 0.98 cap)."""
    modules = bert_stack(args.blocks)
    ops = len(modules)
    rows = []
    for spec in ("1x1", "4x1", "2:4"):
        for scope in ("global", "local"):
            target = 0.5 if spec == "2:4" else args.sparsity
            config = pk_config(spec, scope)
            pattern = pk.get_pattern({**config, "target_sparsity": target}, modules)
            scores = CountedReads(modules)
            for _ in pattern.iter_masks(scores, target):
                pass
            reads = scores.reads / ops
            plain = {n: m.weight.detach().abs() for n, m in modules.items()}
            made = counted_passes(lambda p=pattern, s=plain, t=target: p.get_masks(s, t))
            streamed = counted_passes(
                lambda p=pattern, t=target: list(p.iter_masks(CountedReads(modules), t))
            )
            rows.append([f"{spec} {scope}", f"{reads:g}", f"{made / ops:g}", f"{streamed / ops:g}"])
    print(machine(args.commit) + "\n")
    print_table(
        f"Engine: score reads and counting passes per op, {ops} ops, target {args.sparsity}",
        [
            "pattern",
            "score reads per op (iter_masks)",
            "passes per op (get_masks)",
            "passes per op (iter_masks)",
        ],
        rows,
        args.markdown,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--blocks", type=int, default=12, help="encoder blocks (12: BERT-base)")
    parser.add_argument("--sparsity", type=float, default=0.8)
    parser.add_argument("--repeat", type=int, default=5, help="timed runs after the warm-up")
    parser.add_argument(
        "--select",
        nargs="+",
        default=["*"],
        metavar="GLOB",
        help="contender keys to run (shell wildcards; the floor always runs): " + ", ".join(BY_KEY),
    )
    parser.add_argument(
        "--no-memory",
        dest="memory",
        action="store_false",
        help="skip the per-contender subprocesses that measure peak memory",
    )
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="seconds allowed for one memory subprocess"
    )
    parser.add_argument("--scale", action="store_true", help="1x, 2x and 4x --blocks")
    parser.add_argument("--overhead", action="store_true", help="training-step overhead")
    parser.add_argument(
        "--engine", action="store_true", help="score reads and counting passes per op"
    )
    parser.add_argument("--steps", type=int, default=20, help="--overhead: timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="--overhead: warm-up steps")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads (default: torch's own; 1 is steadier on a shared machine)",
    )
    parser.add_argument("--markdown", action="store_true", help="Markdown tables")
    parser.add_argument("--verbose", action="store_true", help="progress on stderr")
    parser.add_argument("--only", choices=list(BY_KEY), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.only:
        print(json.dumps(only(args.only, args.blocks, args.sparsity)))
        return
    args.commit = git_commit()
    if args.engine:
        run_engine(args)
    elif args.overhead:
        run_overhead(args)
    elif args.scale:
        run_scale(args)
    else:
        run_main(args)


if __name__ == "__main__":
    main()
