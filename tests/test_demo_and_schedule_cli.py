"""The demo job and `prunekit plot-schedule`, run as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_demo_trains_prunes_and_reports(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "demo.py"),
            "--dense-epochs",
            "3",
            "--finetune-steps",
            "20",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "dense model: test accuracy" in result.stdout
    assert "test accuracy: dense" in result.stdout and "at 80.0% sparsity (4x1" in result.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert abs(report["achieved"] - 0.8) < 1e-3
    assert (tmp_path / "masks.safetensors").stat().st_size > 0
    assert (tmp_path / "demo.png").read_bytes()[:4] == b"\x89PNG"


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
