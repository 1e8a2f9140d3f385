"""prunekit demo: train a CNN on real digits, prune it gradually from a YAML config, fine-tune.

Runs on an embedded default with nothing to download: scikit-learn's 8x8 handwritten digits
(1,797 images that ship inside the package; 360 of them are the test set), a small CNN
(conv1 16x1x3x3, conv2 32x16x3x3, fc1 64x128, fc2 10x64) trained in seconds, and
``examples/digits-4x1.yaml`` (4x1 blocks to 80% sparsity, global scope, INC's cos schedule
over 300 steps, then 150 steps of fine-tuning). Prints what it prunes, the test accuracy
before and after with the per-layer report, and writes to ``--out`` a plot of accuracy and
sparsity over steps (with the dense accuracy as a line and the end of the schedule, where
fine-tuning starts, marked), the masks (safetensors) and the report (JSON). Then it shows
what structured pruning buys (``examples/slim_payoff.py``): from the same dense model, half
of every layer's channels and neurons removed by one coupled config, fine-tuned, and
``pk.slim`` makes the model physically smaller; it prints parameters, size on disk and the
test set's forward latency, dense, masked and slimmed (13,706 -> 3,658 parameters, 56.5 ->
17.3 KiB; the slimmed model predicts exactly what the masked one does).

Every setting below runs (about 2 s of training each); the test accuracy, dense -> pruned,
as measured on this project's 2-core CPU machine with torch 2.13 (CPU build):

  python examples/demo.py                                 # 97.78% -> 97.22% (4x1, 80%)
  python examples/demo.py --pattern 2:4                   # 97.78% -> 99.17% (2:4, 50%)
  python examples/demo.py --pattern 2:4 --sparsity 0.45   # 97.78% -> 98.89% (2:4, 45%)
  python examples/demo.py --pattern 1x1                   # 97.78% -> 98.33% (1x1, 80%)
  python examples/demo.py --pattern filter                # 97.78% -> 97.50% (convs, 80%)
  python examples/demo.py --pattern channelx1             # 97.78% -> 98.06% (channelx1, 50%)
  python examples/demo.py --pattern channelx1 --sparsity 0.8   # 97.78% -> 78.61% (80%)

What the demo does so that each of them runs, and says in its output:

- A layer the pattern cannot prune is left dense. N:M skips a weight whose 2-D view width
  M does not divide: conv1's view is 16x9, so 2:4 excludes it (``excluded_op_names``) and
  prunes the other 13,440 of the 13,584 weights. Conv-only granularities such as
  ``filter`` refuse Linear layers, so ``filter`` prunes the convolutions alone
  (``pruning_op_types: [Conv2d]``): 78.8% of their 4,752 weights (80% as near as whole
  filters of 9 and 144 weights allow), 27.6% of the model. The target always counts the
  pruned layers; a line gives the whole model's share too.
- ``--pattern`` without ``--sparsity`` keeps the YAML's 80% where it suits the pattern. An
  N:M pattern gets its own default instead, N/M (2:4: 50%, every group 2:4, the layout
  sparse hardware runs; 80% is above what 2:4 can remove). ``channelx1`` gets 50%: it
  removes whole input columns, and at 80% it takes 94.5% of fc1's inputs and the model
  loses 19.17 points (the last example; the output warns when it is asked for). Below N/M
  (``--sparsity 0.45``), 2:4 makes the lowest groups 2:4 and leaves the others dense, which
  sparse hardware cannot run; a warning says so.

The numbers do not depend on the machine's core count: the demo runs torch on one thread
(``torch.set_num_threads(1)``) with ``torch.use_deterministic_algorithms(True)``. With more
threads torch splits its sums differently, and the pruned accuracy moved by a test image
(97.22% on 1 thread, 97.50% on 2); one thread costs about half a second here.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml
from rich.console import Console
from rich.progress import Progress
from torch import nn

import prunekit as pk
from prunekit.training import select_ops

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the second part lives beside it
from slim_payoff import payoff

if TYPE_CHECKING:  # matplotlib is optional: imported where the picture is drawn
    from matplotlib.figure import Figure

HERE = Path(__file__).resolve().parent

# Targets for a --pattern given without --sparsity where the YAML's 80% (chosen for 4x1
# tiles) costs far more accuracy than the pattern needs to, with why: channelx1 removes
# whole input columns, and at 80% it takes 94.5% of fc1's inputs; the demo loses 19.17
# points there, none at 50% (measured, see above).
PATTERN_TARGETS: dict[str, tuple[float, str]] = {
    "channelx1": (
        0.5,
        "it removes whole input columns, and at 80% (94.5% of fc1's inputs) this CNN loses "
        "about 19 points",
    ),
}


class DigitsCNN(nn.Module):
    """A LeNet-style CNN for 1x8x8 digit images."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 2 * 2, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def load_digits(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as tensors: a fixed 80/20 train/test split."""
    from sklearn.datasets import load_digits as sklearn_digits

    data = sklearn_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(data.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    split = int(0.8 * len(labels))
    train, test = order[:split], order[split:]
    return images[train], labels[train], images[test], labels[test]


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        correct = (model(images).argmax(dim=1) == labels).float().mean().item()
    model.train()
    return correct


def batches(count: int, size: int, generator: torch.Generator) -> list[torch.Tensor]:
    order = torch.randperm(count, generator=generator)
    return list(order.split(size))


def deterministic() -> None:
    """One thread and torch's deterministic algorithms: with several threads torch splits
    its reductions differently, and the demo's pruned accuracy moved by a test image with
    the machine's core count. The training is small enough that one thread costs little
    (about half a second in all)."""
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


@dataclass
class Plan:
    """The config the demo runs, and what it changed to make the pattern fit the model."""

    config: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    dense: dict[str, str] = field(default_factory=dict)  # op left unpruned -> why


def choose_target(config: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """Set the target of a ``--pattern`` given without ``--sparsity`` where the YAML's
    (chosen for the YAML's own pattern) does not suit it, and say why (the notes returned).

    An N:M pattern gets its own default N/M, the target config validation gives it when
    none is named (so the demo drops the YAML's): N/M is the layout sparse tensor cores
    run, and the YAML's 80% is above what 2:4 can remove. A pattern of ``PATTERN_TARGETS``
    gets the target there (see why there), and a note when a higher one is asked for."""
    spec = str(config["pattern"])
    chosen = PATTERN_TARGETS.get(spec)
    if (
        chosen is not None
        and config.get("target_sparsity", 0.0) > chosen[0]
        and (args.pattern is None or args.sparsity is not None)
    ):  # asked for: run it, and say what to expect
        return [
            f"expect a large loss: {chosen[1]} (the demo's default target for {spec!r} is "
            f"{chosen[0]:.0%})"
        ]
    if args.pattern is None or args.sparsity is not None or "target_sparsity" not in config:
        return []
    yaml_target = float(config["target_sparsity"])
    untargeted = {key: value for key, value in config.items() if key != "target_sparsity"}
    validated = pk.load_config(untargeted)  # a bad pattern name fails here, before training
    own = validated.resolution.cls.default_target(spec) if validated.resolution else None
    if own is not None:
        del config["target_sparsity"]
        why = "above what it can remove" if yaml_target > own else "set for another pattern"
        return [
            f"target {own:.0%}, the default of pattern {spec!r} (an N:M pattern's is N/M: "
            f"every group N:M, the layout sparse hardware runs), not the YAML's "
            f"{yaml_target:.0%} ({why}); --sparsity to choose another"
        ]
    if chosen is not None and yaml_target > chosen[0]:
        target, why = chosen
        config["target_sparsity"] = target
        return [
            f"target {target:.0%}, not the YAML's {yaml_target:.0%}: {why}; --sparsity "
            f"{yaml_target:g} to see it"
        ]
    return []


def fit(model: nn.Module, config: dict[str, Any], args: argparse.Namespace) -> Plan:
    """The config with the layers its pattern cannot prune left out, and why.

    Each layer the config selects is tried alone: a pattern that refuses the module type
    (conv-only granularities such as ``filter`` refuse Linear) or skips its weight (N:M
    skips a weight whose 2-D view width M does not divide) would otherwise stop the run or
    warn; the demo leaves such layers dense instead (``pruning_op_types`` when a whole
    type goes, else ``excluded_op_names``) and says so."""
    config = dict(config)
    notes = choose_target(config, args)
    validated = pk.load_config(config)
    ops = select_ops(model, validated)
    dense: dict[str, str] = {}
    for name, module in ops.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", pk.PruningWarning)
                pattern = pk.get_pattern(validated, {name: module})
        except pk.UnsupportedModuleError as error:
            dense[name] = str(error)
            continue
        if name in pattern.skipped:
            dense[name] = f"pattern {validated.pattern!r} skips it: {pattern.skipped[name]}"
    if not dense:
        return Plan(config, notes)
    if len(dense) == len(ops):
        listed = "; ".join(f"{name}: {why}" for name, why in dense.items())
        raise SystemExit(f"error: pattern {validated.pattern!r} prunes no layer ({listed})")
    types = {name: type(module).__name__ for name, module in ops.items()}
    refused_types = {
        t for t in types.values() if all(n in dense for n, u in types.items() if u == t)
    }
    if refused_types:
        config["pruning_op_types"] = sorted(set(types.values()) - refused_types)
        notes.append(
            f"pruning_op_types: {config['pruning_op_types']} (pattern "
            f"{validated.pattern!r} cannot prune {', '.join(sorted(refused_types))})"
        )
    excluded = [n for n in dense if types[n] not in refused_types]
    if excluded:
        config["excluded_op_names"] = [
            *validated.excluded_op_names,
            *(f"^{n}$" for n in excluded),
        ]
        notes.append(f"excluded_op_names: {config['excluded_op_names']}")
    return Plan(config, notes, dense)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=HERE / "digits-4x1.yaml")
    parser.add_argument(
        "--pattern",
        help="override the config's pattern (e.g. 2:4, 1x1, filter, channelx1); layers it "
        "cannot prune are left dense, and the target may change: see above",
    )
    parser.add_argument(
        "--sparsity",
        type=float,
        help="override the target_sparsity (default: the config's, or the pattern's: see above)",
    )
    parser.add_argument("--dense-epochs", type=int, default=20)
    parser.add_argument(
        "--finetune-steps", type=int, default=150, help="steps after the schedule ends"
    )
    parser.add_argument("--out", type=Path, default=Path("out"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    # Plain text (notes quote configs, "['^conv1$']", and specs, "N:M:"; not rich markup),
    # and lines that do not wrap (the tables fit the width).
    console = Console(
        width=None if sys.stdout.isatty() else 120, markup=False, emoji=False, soft_wrap=True
    )
    deterministic()
    show_warnings(console)
    torch.manual_seed(args.seed)
    x_train, y_train, x_test, y_test = load_digits(args.seed)
    model = DigitsCNN()
    generator = torch.Generator().manual_seed(args.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()

    config = yaml.safe_load(args.config.read_text())
    if args.pattern:
        config["pattern"] = args.pattern
    if args.sparsity is not None:
        config["target_sparsity"] = args.sparsity
    try:  # validated before any training: a bad config costs nothing
        plan = fit(model, config, args)
        validated = pk.load_config(plan.config)
        pruner = pk.Pruner(model, validated)
    except (pk.ConfigError, pk.PrunekitError) as error:
        raise SystemExit(f"error: {error}") from None
    describe(console, validated, pruner.ops, plan)

    started = time.perf_counter()
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("training the dense model", total=args.dense_epochs)
        for _ in range(args.dense_epochs):
            for index in batches(len(y_train), 64, generator):
                optimizer.zero_grad()
                loss_fn(model(x_train[index]), y_train[index]).backward()
                optimizer.step()
            progress.advance(task)
    dense_accuracy = accuracy(model, x_test, y_test)
    dense_state = {name: value.clone() for name, value in model.state_dict().items()}
    console.print(
        f"dense model: test accuracy {dense_accuracy:.2%} "
        f"({time.perf_counter() - started:.1f} s on {torch.get_num_threads()} thread: "
        "deterministic, see --help)"
    )

    total_steps = validated.end_step + args.finetune_steps
    history: list[tuple[int, float, float]] = [(0, 0.0, dense_accuracy)]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    pruner.optimizer = optimizer
    step = 0
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(
            f"pruning to {validated.target_sparsity:.0%} {validated.pattern} and fine-tuning",
            total=total_steps,
        )
        while step < total_steps:
            for index in batches(len(y_train), 64, generator):
                if step >= total_steps:
                    break
                optimizer.zero_grad()
                loss_fn(model(x_train[index]), y_train[index]).backward()
                optimizer.step()
                pruner.step()
                step += 1
                if step % 10 == 0 or step == total_steps:
                    history.append(
                        (step, pruner.report().achieved, accuracy(model, x_test, y_test))
                    )
                progress.advance(task)
    pruned_accuracy = accuracy(model, x_test, y_test)
    report = pruner.report()
    console.print(report.table())
    weights = sum(m.weight.numel() for m in (model.conv1, model.conv2, model.fc1, model.fc2))
    if plan.dense:
        console.print(
            f"whole model: {report.removed} of {weights} weights removed "
            f"({report.removed / weights:.1%}); left dense: {', '.join(plan.dense)}"
        )
    console.print(
        f"test accuracy: dense {dense_accuracy:.2%} -> pruned {pruned_accuracy:.2%} "
        f"({(pruned_accuracy - dense_accuracy) * 100:+.2f} points) at "
        f"{report.achieved:.1%} sparsity ({validated.pattern}, "
        f"{validated.pruning_scope} scope); total {time.perf_counter() - started:.1f} s"
    )

    args.out.mkdir(parents=True, exist_ok=True)
    pruner.save_masks(args.out / "masks.safetensors")
    (args.out / "report.json").write_text(report.to_json())
    written = [args.out / "masks.safetensors", args.out / "report.json"]
    try:
        written.append(plot(history, args.out / "demo.png", validated))
    except ImportError:
        console.print("matplotlib is not installed: no plot (pip install 'prunekit[viz]')")
    console.print("wrote " + ", ".join(str(p) for p in written))

    console.print()
    dense_model = DigitsCNN()
    dense_model.load_state_dict(dense_state)
    payoff(
        dense_model,
        lambda m, p, steps: fine_tune(m, p, steps, (x_train, y_train), generator),
        lambda m: accuracy(m, x_test, y_test),
        x_test,
        console,
    )


def fine_tune(
    model: nn.Module,
    pruner: pk.Pruner,
    steps: int,
    data: tuple[torch.Tensor, torch.Tensor],
    generator: torch.Generator,
) -> None:
    """``steps`` Adam steps on ``data``, the Pruner following its schedule."""
    images, labels = data
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    pruner.optimizer = optimizer
    loss_fn = nn.CrossEntropyLoss()
    step = 0
    while step < steps:
        for index in batches(len(labels), 64, generator):
            if step >= steps:
                return
            optimizer.zero_grad()
            loss_fn(model(images[index]), labels[index]).backward()
            optimizer.step()
            pruner.step()
            step += 1


def show_warnings(console: Console) -> None:
    """Warnings (prunekit's: a target below N/M, an op skipped) as lines of the demo's
    output, not in Python's ``file:line: PruningWarning:`` form, which points into the
    demo's own code rather than at what to do."""

    def show(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
        console.print(f"warning: {message}", style="yellow")

    warnings.showwarning = show


def describe(
    console: Console, config: pk.PruningConfig, ops: Mapping[str, nn.Module], plan: Plan
) -> None:
    """What will be pruned, to what, and what the demo changed in the config to get there."""
    console.print(
        f"pruning {', '.join(ops)} with pattern {config.pattern!r} to "
        f"{config.target_sparsity:.0%} ({config.pruning_scope} scope, "
        f"{config.schedule_name} schedule to step {config.end_step})"
    )
    for name, why in plan.dense.items():
        console.print(f"  left dense: {name}: {why}")
    for note in plan.notes:
        console.print(f"  demo: {note}")


def plot(history: list[tuple[int, float, float]], path: Path, config: pk.PruningConfig) -> Path:
    """The picture of :func:`draw`, written to ``path``."""
    import matplotlib.pyplot as plt

    figure = draw(history, config)
    figure.savefig(path, metadata={"Software": None})
    plt.close(figure)
    return path


def draw(history: list[tuple[int, float, float]], config: pk.PruningConfig) -> Figure:
    """Accuracy and sparsity over steps (``history``: step, sparsity, accuracy), on two
    axes, with the dense accuracy (the first point) as a line and the schedule's end, where
    fine-tuning at the final sparsity starts, marked: the two things the picture is read
    against. A figure of its own, so a test can read what it shows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h[0] for h in history]
    dense = history[0][2]
    figure, left = plt.subplots(figsize=(7, 4.6), dpi=100)
    accuracy_line = left.plot(
        steps, [100 * h[2] for h in history], color="tab:blue", label="test accuracy"
    )
    dense_line = left.axhline(
        100 * dense, color="tab:blue", linestyle=":", label=f"dense accuracy {dense:.2%}"
    )
    end_line = left.axvline(
        config.end_step,
        color="grey",
        linestyle="--",
        label=f"schedule ends, fine-tuning starts (step {config.end_step})",
    )
    left.text(
        config.end_step,
        0.97,
        " fine-tuning →",
        transform=left.get_xaxis_transform(),
        color="grey",
        fontsize="small",
        verticalalignment="top",
    )
    left.set_xlabel("step (after dense training)")
    left.set_ylabel("test accuracy (%)", color="tab:blue")
    right = left.twinx()
    sparsity_line = right.plot(
        steps, [100 * h[1] for h in history], color="tab:red", label="sparsity"
    )
    right.set_ylabel("sparsity (%)", color="tab:red")
    right.set_ylim(0, 100)
    handles = [*accuracy_line, dense_line, *sparsity_line, end_line]
    # Below the axes, where it hides no line.
    figure.legend(handles=handles, loc="lower center", ncol=2, fontsize="small", frameon=False)
    left.set_title(
        f"prunekit demo: {config.pattern} to {config.target_sparsity:.0%} on sklearn digits"
    )
    figure.tight_layout(rect=(0, 0.1, 1, 1))
    return figure


if __name__ == "__main__":
    main()
