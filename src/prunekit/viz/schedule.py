"""``prunekit plot-schedule``: draw each config's target sparsity over training steps."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunekit.config.files import load_configs
from prunekit.config.model import PruningConfig
from prunekit.plugins.default import SCHEDULES
from prunekit.viz.figures import require_matplotlib, save_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def schedule_points(config: PruningConfig, steps: int) -> list[float]:
    """The target sparsity at steps ``0 .. steps - 1`` (what a Pruner would follow)."""
    at = SCHEDULES[config.schedule_name](config)
    return [at(step) for step in range(steps)]


def _last_change(config: PruningConfig) -> int:
    """The step at which ``config``'s schedule reaches its target."""
    if config.schedule_name == "gradual":
        increases = math.ceil(max(config.target_sparsity - config.start, 0.0) / config.gamma)
        return config.start_step + config.stepsize * increases
    return max(config.start_step, config.end_step)


def default_steps(configs: list[PruningConfig]) -> int:
    """Enough steps to see every schedule reach its target, with a margin."""
    last = max(_last_change(config) for config in configs)
    return max(10, int(last * 1.15) + 2)


def draw_schedule(source: Any, steps: int | None = None) -> Figure:
    """A Figure of every config's target over steps (one line per config)."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    configs = load_configs(source)
    count = steps or default_steps(configs)
    figure = Figure(figsize=(7, 3.6), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    for index, config in enumerate(configs):
        values = [100 * v for v in schedule_points(config, count)]
        label = f"config {index}: {config.pattern}, {config.schedule_name}" + (
            f" ({config.sparsity_decay_type})" if config.schedule_name == "iterative" else ""
        )
        axes.step(range(count), values, where="post", label=label)
    axes.set_xlabel("training step (pruner.step() calls)")
    axes.set_ylabel("target sparsity (%)")
    axes.set_ylim(0, 100)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    axes.set_title("prunekit schedule")
    figure.tight_layout()
    return figure


def save_schedule_plot(path: str | os.PathLike[str], source: Any, steps: int | None = None) -> Path:
    save_figure(draw_schedule(source, steps), Path(path))
    return Path(path)
