"""prunekit demo: train a CNN on real digits, prune it gradually from a YAML config, fine-tune.

Runs on an embedded default with nothing to download: scikit-learn's 8x8 handwritten digits
(1,797 images that ship inside the package), a small CNN trained on 2 CPU cores in seconds,
and ``examples/digits-4x1.yaml`` (4x1 blocks to 80% sparsity, global scope, INC's cos
schedule). Prints test accuracy before and after with the per-layer report, and writes a plot
of accuracy and sparsity over steps, the masks (safetensors) and the report (JSON) to
``--out``.

    python examples/demo.py                       # the default job
    python examples/demo.py --pattern 2:4 --sparsity 0.5
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import yaml
from rich.console import Console
from rich.progress import Progress
from torch import nn

import prunekit as pk

HERE = Path(__file__).resolve().parent


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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=HERE / "digits-4x1.yaml")
    parser.add_argument("--pattern", help="override the config's pattern (e.g. 2:4, filter)")
    parser.add_argument("--sparsity", type=float, help="override the config's target_sparsity")
    parser.add_argument("--dense-epochs", type=int, default=20)
    parser.add_argument(
        "--finetune-steps", type=int, default=150, help="steps after the schedule ends"
    )
    parser.add_argument("--out", type=Path, default=Path("out"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    console = Console(width=None if sys.stdout.isatty() else 120)
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
        pruner = pk.Pruner(model, config)
    except (pk.ConfigError, pk.PrunekitError) as error:
        raise SystemExit(f"error: {error}") from None

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
    console.print(
        f"dense model: test accuracy {dense_accuracy:.2%} "
        f"({time.perf_counter() - started:.1f} s on {torch.get_num_threads()} threads)"
    )

    total_steps = pk.load_config(config).end_step + args.finetune_steps
    history: list[tuple[int, float, float]] = [(0, 0.0, dense_accuracy)]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    pruner.optimizer = optimizer
    step = 0
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(
            f"pruning to {config['target_sparsity']:.0%} {config['pattern']} and fine-tuning",
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
    console.print(
        f"test accuracy: dense {dense_accuracy:.2%} -> pruned {pruned_accuracy:.2%} "
        f"({(pruned_accuracy - dense_accuracy) * 100:+.2f} points) at "
        f"{report.achieved:.1%} sparsity ({config['pattern']}, "
        f"{config.get('pruning_scope', 'global')} scope); "
        f"total {time.perf_counter() - started:.1f} s"
    )

    args.out.mkdir(parents=True, exist_ok=True)
    pruner.save_masks(args.out / "masks.safetensors")
    (args.out / "report.json").write_text(report.to_json())
    written = [args.out / "masks.safetensors", args.out / "report.json"]
    try:
        written.append(plot(history, args.out / "demo.png", config))
    except ImportError:
        console.print("matplotlib is not installed: no plot (pip install 'prunekit[viz]')")
    console.print("wrote " + ", ".join(str(p) for p in written))


def plot(history: list[tuple[int, float, float]], path: Path, config: dict[str, object]) -> Path:
    """Accuracy and sparsity over steps, on two axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h[0] for h in history]
    figure, left = plt.subplots(figsize=(7, 4), dpi=100)
    left.plot(steps, [100 * h[2] for h in history], color="tab:blue", label="test accuracy")
    left.set_xlabel("pruning step")
    left.set_ylabel("test accuracy (%)", color="tab:blue")
    right = left.twinx()
    right.plot(steps, [100 * h[1] for h in history], color="tab:red", label="sparsity")
    right.set_ylabel("sparsity (%)", color="tab:red")
    right.set_ylim(0, 100)
    left.set_title(
        f"prunekit demo: {config['pattern']} to {config['target_sparsity']:.0%} on sklearn digits"
    )
    figure.tight_layout()
    figure.savefig(path, metadata={"Software": None})
    plt.close(figure)
    return path


if __name__ == "__main__":
    main()
