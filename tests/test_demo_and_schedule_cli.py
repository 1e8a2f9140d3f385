"""The demo job and `prunekit plot-schedule`, run as a user runs them."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "demo.py"
# Fewer epochs and fine-tuning steps than the demo's defaults: every listed setting still
# runs its whole 300-step pruning schedule, in a few seconds.
FAST = ("--dense-epochs", "3", "--finetune-steps", "20")
ACCURACY = re.compile(
    r"test accuracy: dense (?P<dense>\d+\.\d\d%) -> pruned (?P<pruned>\d+\.\d\d%) "
    r"\([+-]\d+\.\d\d points\) at (?P<sparsity>\d+\.\d)% sparsity \((?P<pattern>[^,]+),"
)


def listed_settings() -> dict[str, tuple[str, str]]:
    """The settings the demo's help lists (its docstring's ``python examples/demo.py ...``
    lines): arguments -> the (dense, pruned) accuracy measured for them."""
    doc = ast.get_docstring(ast.parse(DEMO.read_text()))
    assert doc is not None
    found = re.findall(
        r"^\s*python examples/demo\.py(.*?)#\s*(\d+\.\d\d%) -> (\d+\.\d\d%)", doc, re.M
    )
    return {arguments.strip(): (dense, pruned) for arguments, dense, pruned in found}


SETTINGS = listed_settings()


def run_demo(
    arguments: list[str], out: Path, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(DEMO), *arguments, "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def listed_runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[subprocess.CompletedProcess[str], Path]]:
    """Every listed setting run once (FAST), side by side: the demo runs on one thread, so
    as many at a time as there are cores."""
    outs = {setting: tmp_path_factory.mktemp("demo") for setting in SETTINGS}
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        futures = {
            setting: pool.submit(run_demo, [*shlex.split(setting), *FAST], outs[setting])
            for setting in SETTINGS
        }
        return {setting: (future.result(), outs[setting]) for setting, future in futures.items()}


def test_the_demo_lists_the_settings_a_new_user_tries() -> None:
    assert {"", "--pattern 2:4", "--pattern filter", "--pattern channelx1"} <= set(SETTINGS)
    assert len(SETTINGS) >= 6


@pytest.mark.parametrize("setting", list(SETTINGS), ids=lambda s: s or "default")
def test_every_setting_the_demo_lists_runs(
    setting: str, listed_runs: dict[str, tuple[subprocess.CompletedProcess[str], Path]]
) -> None:
    result, out = listed_runs[setting]
    assert result.returncode == 0, result.stderr
    assert "Warning:" not in result.stderr, result.stderr  # warnings are output lines
    assert "dense model: test accuracy" in result.stdout
    assert ACCURACY.search(result.stdout), result.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["ops"]
    assert (out / "masks.safetensors").stat().st_size > 0
    assert (out / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_default_run_prunes_every_layer_to_80_percent_4x1(
    listed_runs: dict[str, tuple[subprocess.CompletedProcess[str], Path]],
) -> None:
    result, out = listed_runs[""]
    assert "pruning conv1, conv2, fc1, fc2 with pattern '4x1' to 80%" in result.stdout
    # the second part: structured pruning, slimmed (half of every class of channels)
    assert "conv2 32x16x3x3 -> 16x8x3x3, fc1 64x128 -> 32x64, fc2 10x64 -> 10x32" in result.stdout
    assert "predictions identical to the masked model's" in result.stdout
    assert re.search(r"slimmed +│ +3,658 │ +17\.3 KiB", result.stdout), result.stdout
    assert "at 80.0% sparsity (4x1, global scope)" in result.stdout
    assert "left dense" not in result.stdout
    report = json.loads((out / "report.json").read_text())
    assert abs(report["achieved"] - 0.8) < 1e-3


def test_2_4_alone_takes_n_over_m_and_leaves_the_indivisible_conv_dense(
    listed_runs: dict[str, tuple[subprocess.CompletedProcess[str], Path]],
) -> None:
    result, out = listed_runs["--pattern 2:4"]
    assert "pruning conv2, fc1, fc2 with pattern '2:4' to 50%" in result.stdout
    assert "left dense: conv1: pattern '2:4' skips it: its 2-D view (16, 9)" in result.stdout
    assert "excluded_op_names: ['^conv1$']" in result.stdout
    assert "not the YAML's 80% (above what it can remove)" in result.stdout
    assert "whole model: 6720 of 13584 weights removed (49.5%); left dense: conv1" in (
        result.stdout
    )
    assert "warning" not in result.stdout + result.stderr  # nothing skipped by surprise
    report = json.loads((out / "report.json").read_text())
    assert [op["name"] for op in report["ops"]] == ["conv2", "fc1", "fc2"]
    assert all(op["hardware_valid"] for op in report["ops"])
    assert report["achieved"] == 0.5


def test_2_4_below_n_over_m_says_the_masks_are_not_hardware_valid(
    listed_runs: dict[str, tuple[subprocess.CompletedProcess[str], Path]],
) -> None:
    result, _ = listed_runs["--pattern 2:4 --sparsity 0.45"]
    assert "at 45.0% sparsity (2:4" in result.stdout
    assert "warning: config 0 (pattern '2:4') at target 0.45" in result.stdout


def test_filter_prunes_the_convolutions_alone(
    listed_runs: dict[str, tuple[subprocess.CompletedProcess[str], Path]],
) -> None:
    result, out = listed_runs["--pattern filter"]
    assert "pruning conv1, conv2 with pattern 'filter' to 80%" in result.stdout
    assert "left dense: fc1: granularity 'filter' does not apply" in result.stdout
    assert "pruning_op_types: ['Conv2d'] (pattern 'filter' cannot prune Linear)" in result.stdout
    assert "left dense: fc1, fc2" in result.stdout
    report = json.loads((out / "report.json").read_text())
    assert [op["name"] for op in report["ops"]] == ["conv1", "conv2"]


def test_channelx1_gets_a_milder_default_and_a_note_when_80_percent_is_asked(
    listed_runs: dict[str, tuple[subprocess.CompletedProcess[str], Path]],
) -> None:
    mild, _ = listed_runs["--pattern channelx1"]
    assert "target 50%, not the YAML's 80%: it removes whole input columns" in mild.stdout
    assert "at 50.0% sparsity (channelx1" in mild.stdout
    asked, out = listed_runs["--pattern channelx1 --sparsity 0.8"]
    assert "expect a large loss: it removes whole input columns" in asked.stdout
    assert "sparsity (channelx1" in asked.stdout
    assert abs(json.loads((out / "report.json").read_text())["achieved"] - 0.8) < 0.005


def test_the_demo_prints_the_same_figures_on_1_and_2_threads(tmp_path: Path) -> None:
    """The full default run, as `make demo` runs it, under OMP_NUM_THREADS=1 and =2: the
    same accuracies, and the ones the demo's help gives."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = [
            pool.submit(run_demo, [], tmp_path / str(n), {"OMP_NUM_THREADS": str(n)})
            for n in (1, 2)
        ]
        results = [run.result() for run in runs]
    found = []
    for result in results:
        assert result.returncode == 0, result.stderr
        match = ACCURACY.search(result.stdout)
        assert match, result.stdout
        found.append((match["dense"], match["pruned"], match["sparsity"]))
    assert found[0] == found[1]
    assert found[0][:2] == SETTINGS[""], "re-measure and update the figures in demo.py's help"


def load_demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("prunekit_demo", DEMO)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def test_the_picture_marks_the_dense_accuracy_and_where_fine_tuning_starts() -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    import prunekit as pk

    demo = load_demo()
    config = pk.load_config(ROOT / "examples" / "digits-4x1.yaml")
    history = [(0, 0.0, 0.9778), (150, 0.4, 0.98), (300, 0.8, 0.97), (450, 0.8, 0.9722)]
    figure = demo.draw(history, config)
    try:
        labels = [text.get_text() for text in figure.legends[0].get_texts()]
        assert labels == [
            "test accuracy",
            "dense accuracy 97.78%",
            "sparsity",
            "schedule ends, fine-tuning starts (step 300)",
        ]
        lines = {line.get_label(): line for line in figure.axes[0].get_lines()}
        assert list(lines["dense accuracy 97.78%"].get_ydata()) == [97.78, 97.78]
        assert list(lines["schedule ends, fine-tuning starts (step 300)"].get_xdata()) == [
            300,
            300,
        ]
    finally:
        plt.close(figure)


def test_an_editable_install_prints_no_setuptools_deprecation() -> None:
    """`pip install -e .` once warned that `project.license` is a TOML table; a dry run
    builds the same metadata with the installed setuptools, offline, installing nothing."""
    pytest.importorskip("pip")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--no-index",
         "--no-build-isolation", "-e", str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Would install prunekit" in result.stdout
    assert "deprecat" not in (result.stdout + result.stderr).lower(), result.stderr


def test_demo_refuses_a_bad_pattern_before_training(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "demo.py"),
            "--pattern",
            "4y1",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode != 0
    assert "did you mean '4x1'" in result.stderr
    assert "dense model" not in result.stdout


def test_plot_schedule_writes_a_png_and_fails_cleanly(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("pattern: 4x1\ntarget_sparsity: 0.8\nstart_step: 0\nend_step: 50\n")
    out = tmp_path / "s.png"
    ok = subprocess.run(
        [sys.executable, "-m", "prunekit", "plot-schedule", str(config), "-o", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert out.read_bytes()[:4] == b"\x89PNG"
    config.write_text("pattern: 4x1\ntarget_sparsity: 1.5\n")
    bad = subprocess.run(
        [sys.executable, "-m", "prunekit", "plot-schedule", str(config), "-o", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2
    assert bad.stderr.startswith("prunekit plot-schedule: error: target_sparsity: Input should")


def test_plot_schedule_without_o_writes_config_stem_schedule_png(tmp_path: Path) -> None:
    config = ROOT / "examples" / "digits-4x1.yaml"
    result = subprocess.run(
        [str(Path(sys.executable).with_name("prunekit")), "plot-schedule", str(config)],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "wrote digits-4x1-schedule.png\n"
    assert [p.name for p in tmp_path.iterdir()] == ["digits-4x1-schedule.png"]
    assert (tmp_path / "digits-4x1-schedule.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (ROOT / "examples" / "digits-4x1-schedule.png").exists()  # here, not there


@pytest.mark.parametrize(
    ("suffix", "magic"), [("jpg", b"\xff\xd8\xff"), ("pdf", b"%PDF-"), ("svg", b"<?xml")]
)
def test_plot_schedule_writes_other_formats(
    suffix: str, magic: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from prunekit.cli import main

    out = tmp_path / f"schedule.{suffix}"
    assert main(["plot-schedule", str(ROOT / "examples" / "digits-4x1.yaml"), "-o", str(out)]) == 0
    assert capsys.readouterr().err == ""
    assert out.read_bytes().startswith(magic)


def test_schedule_points_follow_the_registered_schedule() -> None:
    import prunekit as pk
    from prunekit.viz.schedule import default_steps, schedule_points

    config = pk.load_config(
        {"target_sparsity": 0.5, "prune_mode": "Gradual", "start": 0.1, "gamma": 0.2, "stepsize": 5}
    )
    assert default_steps([config]) == 13  # reaches 0.5 at step 10; 15% margin
    assert schedule_points(config, 12) == [0.1] * 5 + [0.30000000000000004] * 5 + [0.5] * 2
