"""The ``prunekit`` command: list patterns and plugins, print the config schema, draw masks,
verify a checkpoint's zeros against a pattern, prune a saved Hugging Face LLM in one shot.

Pictures go to the file ``-o`` names, else to a file named after what is drawn in the
current directory: the machines it runs on usually have no screen to open a window on.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from prunekit import __version__
from prunekit.config.schema import config_json_schema
from prunekit.errors import ConfigError, PrunekitError
from prunekit.integrations.oneshot import flag_config, oneshot
from prunekit.plugins.default import default_host
from prunekit.plugins.host import KINDS
from prunekit.verify import verify_file
from prunekit.viz.masks import module_for_shape, option_values, save_mask_picture
from prunekit.viz.schedule import save_schedule_plot


def _patterns(args: argparse.Namespace, console: Console) -> int:
    entries = default_host().patterns.entries(args.filter)
    if not entries:
        console.print(f"no pattern matches {args.filter!r}; run `prunekit patterns` for all")
        return 1
    table = Table(title="prunekit patterns", title_justify="left")
    for column in ("name", "family", "registered by", "description"):
        table.add_column(column, overflow="fold")
    for entry in entries:
        family = getattr(entry.obj, "family", "") or ""
        if entry.is_family:
            family += f"{'; ' if family else ''}specs: {', '.join(entry.examples[:4])}, ..."
        table.add_row(entry.name, family, entry.owner_label(), entry.description)
    console.print(table)
    return 0


def _plugins(args: argparse.Namespace, console: Console) -> int:
    host = default_host()
    table = Table(title="prunekit plugins", title_justify="left")
    for column in ("distribution", "version", "entry point", "status", "registered", "problems"):
        table.add_column(column, overflow="fold")
    for record in host.records:
        registered = "; ".join(
            f"{kind}: {', '.join(record.registered[kind])}"
            for kind in KINDS
            if record.registered[kind]
        )
        table.add_row(
            record.distribution,
            record.version,
            record.entry_point,
            record.status,
            registered or "-",
            "\n".join(record.problems) or "-",
        )
    console.print(table)
    return 0


def _schema(args: argparse.Namespace, console: Console) -> int:
    sys.stdout.write(json.dumps(config_json_schema(), indent=2) + "\n")
    return 0


def _show(args: argparse.Namespace, console: Console) -> int:
    """Draw the mask a pattern makes on a small module; user errors are one line, exit 2."""
    try:
        module = args.module or module_for_shape(args.shape)
        output = args.output or picture_file_name(args.pattern, module)
        options = option_values(args.option)
        picture = save_mask_picture(
            output,
            args.pattern,
            module,
            args.shape,
            args.sparsity,
            args.scope,
            args.seed,
            **options,
        )
    except ConfigError as exc:
        return _fail("; ".join(exc.lines))
    except (PrunekitError, ValueError, KeyError, ImportError, OSError) as exc:
        return _fail(str(exc))
    console.print(
        f"wrote {output}: {picture.summary()}", markup=False, highlight=False, soft_wrap=True
    )
    return 0


def _plot_schedule(args: argparse.Namespace, console: Console) -> int:
    """Draw each config's target over steps; user errors are one line, exit 2."""
    try:
        output = args.output or f"{Path(args.config).stem}-schedule.png"
        path = save_schedule_plot(output, args.config, args.steps)
    except ConfigError as exc:
        return _fail("; ".join(exc.lines), "plot-schedule")
    except (ValueError, KeyError, ImportError, OSError) as exc:
        return _fail(str(exc), "plot-schedule")
    console.print(f"wrote {path}", markup=False, highlight=False)
    return 0


def _verify(args: argparse.Namespace, console: Console) -> int:
    """Check every weight's zeros in a file against a pattern: exit 1 when a tensor breaks
    it, 0 when none does, 2 for a usage error (one line, as the other commands)."""
    try:
        report = verify_file(
            args.file,
            args.pattern,
            only=args.only,
            exclude=args.exclude,
            transposed=args.transposed,
            **option_values(args.option),
        )
    except ConfigError as exc:
        return _fail("; ".join(exc.lines), "verify")
    except (PrunekitError, ValueError, KeyError, OSError) as exc:
        return _fail(str(exc), "verify")
    if args.json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
    else:
        sys.stdout.write("\n".join(report.lines()) + "\n")
    return 0 if report.conforms else 1


def _oneshot(args: argparse.Namespace, console: Console) -> int:
    """Prune a saved causal LM from calibration text and save it; usage errors are one line,
    exit 2 (the model directory is left as it was)."""
    flags = [f"--{f}" for f in ("pattern", "criterion", "sparsity") if getattr(args, f)]
    if args.config and (flags or args.owl):
        return _fail(f"give --config or {', '.join(flags or ['--owl'])}, not both", "oneshot")
    try:
        config: Any = args.config or flag_config(
            args.pattern or "1x1", args.criterion or "wanda", args.sparsity, args.owl
        )
        result = oneshot(
            args.model, config, Path(args.calibration).read_text(), args.output,
            samples=args.samples, length=args.length, seed=args.seed, device=args.device,
            dtype=args.dtype, tokenizer_dir=args.tokenizer,
            evaluation_text=Path(args.eval).read_text() if args.eval else None,
        )  # fmt: skip
    except ImportError as exc:
        return _fail(f"{exc}; prunekit oneshot needs pip install 'prunekit[hf]'", "oneshot")
    except ConfigError as exc:
        return _fail("; ".join(exc.lines), "oneshot")
    except (PrunekitError, ValueError, OSError) as exc:
        return _fail(str(exc), "oneshot")
    console.print(result.report.table())
    if result.perplexity_before is not None:
        console.print(
            f"held-out perplexity: {result.perplexity_before:.3f} dense, "
            f"{result.perplexity_after:.3f} pruned",
            markup=False, highlight=False,
        )  # fmt: skip
    console.print(f"saved to {result.output}", markup=False, highlight=False)
    return 0


def picture_file_name(spec: str, module: str) -> str:
    """``show``'s file without ``-o``: ``"2:4"`` on linear -> ``"2-4-linear.png"``. Runs of
    characters that are unsafe in file names (``:``, ``/``, ``*``, ...) become one ``-``, as
    in docs/img; no leading dot, so the picture is never a hidden file."""
    safe = re.sub(r"[^A-Za-z0-9_.]+", "-", spec).strip("-.") or "pattern"
    return f"{safe}-{module}.png"


def _fail(message: str, command: str = "show") -> int:
    sys.stderr.write(f"prunekit {command}: error: {' '.join(message.split())}\n")
    return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prunekit", description="Neural-network pruning patterns as plugins for PyTorch."
    )
    parser.add_argument("--version", action="version", version=f"prunekit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    patterns = commands.add_parser("patterns", help="list registered patterns")
    patterns.add_argument("filter", nargs="?", help="shell wildcard ('*x1') or substring")
    patterns.set_defaults(run=_patterns)
    plugins = commands.add_parser(
        "plugins", help="installed plugins, what they registered, failures"
    )
    plugins.set_defaults(run=_plugins)
    schema = commands.add_parser("schema", help="print the config JSON Schema (for editors)")
    schema.set_defaults(run=_schema)
    _add_show(commands)
    _add_plot_schedule(commands)
    _add_verify(commands)
    _add_oneshot(commands)
    return parser


def _add_show(commands: Any) -> None:
    show = commands.add_parser(
        "show",
        help="draw the mask a pattern makes on a small weight (needs prunekit[viz])",
        description="Draw the mask PATTERN makes on a small Linear or Conv weight with seeded "
        "random scores: kept weights in blue, removed in light grey; conv filters are drawn "
        "as rows of kernels, one per input channel. Needs matplotlib: "
        "pip install 'prunekit[viz]'.",
    )
    show.add_argument("pattern", help="a pattern name or family spec: 4x1, 2:4, kernel, ...")
    show.add_argument(
        "--module",
        choices=["linear", "conv1d", "conv2d", "conv3d"],
        default=None,
        help="the module whose weight is drawn (default: the one --shape's number of sizes "
        "means, 2 linear, 3 conv1d, 4 conv2d, 5 conv3d; without --shape, conv2d)",
    )
    show.add_argument(
        "--shape",
        help="weight shape, comma-separated: linear out,in (default 8,12); conv2d "
        "out,in,kh,kw (default 4,3,3,3); conv1d out,in,k; conv3d out,in,kd,kh,kw; without "
        "--module, the number of sizes says which",
    )
    show.add_argument(
        "--sparsity",
        type=float,
        default=None,
        help="target sparsity in [0, 1) (default: the pattern's own, N/M for 2:4, else 0.5)",
    )
    show.add_argument("--scope", choices=["local", "global"], default="local")
    show.add_argument("--seed", type=int, default=0, help="seed of the random scores (0)")
    show.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a pattern option, repeatable; values are JSON when they parse (blocks=4)",
    )
    show.add_argument(
        "-o",
        "--output",
        help="the picture file to write; the suffix picks the format: .png, .pdf, .svg, .jpg, "
        "... (default: PATTERN-MODULE.png here, 2:4 on linear -> 2-4-linear.png)",
    )
    show.set_defaults(run=_show)


def _add_plot_schedule(commands: Any) -> None:
    plot = commands.add_parser(
        "plot-schedule",
        help="draw the target sparsity over steps of a config file (needs prunekit[viz])",
    )
    plot.add_argument("config", help="a YAML/JSON config file (one config or several)")
    plot.add_argument("--steps", type=int, default=None, help="steps to draw (default: auto)")
    plot.add_argument(
        "-o",
        "--output",
        help="the picture file to write; the suffix picks the format: .png, .pdf, .svg, .jpg, "
        "... (default: CONFIG's name with -schedule.png here, prune.yaml -> "
        "prune-schedule.png)",
    )
    plot.set_defaults(run=_plot_schedule)


def _add_verify(commands: Any) -> None:
    verify = commands.add_parser(
        "verify",
        help="check that a checkpoint's zeros have a pattern's layout (2:4, 4x1, filter, ...)",
        description="For every weight tensor (2 dims or more) of FILE, a safetensors file or "
        "a torch.save(model.state_dict()) file (loaded with weights_only=True): its sparsity "
        "and whether its zeros conform to PATTERN, laid out as prunekit prunes (N:M: at least "
        "N zeros in every group of M consecutive input-side weights; NxM, channels, filters: "
        "every zero in an all-zero block), with the first offending block's indices. Exit "
        "status 1 when a tensor does not conform, 0 when all do, 2 for a usage error.",
    )
    verify.add_argument("file", help="a .safetensors file or a torch.save state dict")
    verify.add_argument(
        "--pattern", required=True, help="a pattern name or family spec: 2:4, 4x1, filter, ..."
    )
    verify.add_argument("--json", action="store_true", help="print a machine-readable report")
    verify.add_argument("--only", metavar="REGEX", help="check only tensors whose name matches")
    verify.add_argument("--exclude", metavar="REGEX", help="leave out tensors whose name matches")
    verify.add_argument(
        "--transposed",
        metavar="REGEX",
        help="2-D weights stored (in, out), as Hugging Face's Conv1D (GPT-2: 'attn|mlp')",
    )
    verify.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a pattern option, repeatable (indivisible=partial); values are JSON when they parse",
    )
    verify.set_defaults(run=_verify)


def _add_oneshot(commands: Any) -> None:
    command = commands.add_parser(
        "oneshot",
        help="prune a saved Hugging Face causal LM from calibration text (Wanda, SparseGPT)",
        description="Load the causal language model saved in MODEL (a save_pretrained "
        "directory; its tokenizer too), prune it in place from --samples windows of --length "
        "tokens of the --calibration text file, and save it, its tokenizer and "
        "prunekit_report.json into --output. Without --config, every Linear of the decoder "
        "blocks is pruned (embeddings and lm_head stay dense). Needs pip install "
        "'prunekit[hf]'.",
    )
    command.add_argument("model", help="a directory saved with save_pretrained")
    command.add_argument("--calibration", required=True, help="a text file to calibrate on")
    command.add_argument("--output", required=True, help="the directory to save into")
    command.add_argument("--config", help="a YAML/JSON config file (instead of the flags below)")
    command.add_argument("--pattern", help="a pattern name or spec: 1x1 (default), 2:4, 4x1, ...")
    command.add_argument(
        "--criterion", help="wanda (default), sparsegpt, magnitude, or a plugin's criterion"
    )
    command.add_argument(
        "--sparsity", type=float, help="target sparsity (default: N/M for N:M patterns, else 0.5)"
    )
    command.add_argument("--owl", action="store_true", help="per-layer targets from OWL")
    command.add_argument("--samples", type=int, default=128, help="calibration windows (128)")
    command.add_argument("--length", type=int, default=2048, help="tokens per window (2048)")
    command.add_argument("--seed", type=int, default=0, help="seed of the window starts (0)")
    command.add_argument(
        "--device", help="where each decoder block runs while calibrated (cuda); default CPU"
    )
    command.add_argument(
        "--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
        help="the dtype to load the model in (auto: the checkpoint's)",
    )  # fmt: skip
    command.add_argument("--tokenizer", help="the tokenizer's directory (default: MODEL)")
    command.add_argument(
        "--eval", metavar="FILE", help="a text file: held-out perplexity before and after"
    )
    command.set_defaults(run=_oneshot)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Wide enough for the tables when stdout is a pipe or a file (rich would assume 80).
    console = Console(width=None if sys.stdout.isatty() else 160)
    # Plugin warnings are shown once, readably, rather than as Python warning lines.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code: int = args.run(args, console)
    for warning in caught:
        Console(stderr=True).print(f"[yellow]warning:[/yellow] {warning.message}")
    return code


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
