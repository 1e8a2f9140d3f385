"""The prunekit command, run as a user runs it (a real subprocess) and in-process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import prunekit
from prunekit.cli import main


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prunekit", *args], capture_output=True, text=True, check=False
    )


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    program = Path(sys.executable).with_name("prunekit")  # the console script users run
    result = subprocess.run([str(program), "--version"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"prunekit {prunekit.__version__}\n" and result.stderr == ""
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"prunekit {prunekit.__version__}\n"


def test_patterns_table_lists_name_family_owner_description() -> None:
    result = run("patterns")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    nxm = next(line for line in lines if line.startswith("│ NxM"))
    assert "4x1" in nxm and "prunekit (built-in)" in nxm and "N x M tiles" in nxm
    assert "blocks (INC)" in nxm
    diagonal = next(line for line in lines if "block_diagonal" in line)
    assert "prunekit-example" in diagonal
    kernel = next(line for line in lines if line.startswith("│ kernel "))
    assert "granularity (fasterai)" in kernel and "prunekit (built-in)" in kernel


def test_patterns_filter(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["patterns", "block_*"]) == 0
    out = capsys.readouterr().out
    assert "block_diagonal" in out and "NxM" not in out
    assert main(["patterns", "nothing-like-this*"]) == 1
    assert "no pattern matches" in capsys.readouterr().out


def test_plugins_lists_builtins_and_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "prunekit-example" in out and "block_diagonal" in out
    assert "prunekit.patterns.nxm" in out and "loaded" in out


def test_schema_is_json_with_plugin_fields() -> None:
    result = run("schema")
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    assert "target_sparsity" in schema["properties"]
    assert any("blocks" in branch["then"]["properties"] for branch in schema["allOf"])


def test_plugin_failures_are_shown_as_warnings(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    site = tmp_path / "site"
    (site / "prunekit_boom-1.0.dist-info").mkdir(parents=True)
    (site / "prunekit_boom-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: prunekit-boom\nVersion: 1.0\n"
    )
    (site / "prunekit_boom-1.0.dist-info" / "entry_points.txt").write_text(
        "[prunekit]\nboom = prunekit_boom_module\n"
    )
    (site / "prunekit_boom_module.py").write_text("raise ImportError('no luck')\n")
    env_path = f"{site}"
    result = subprocess.run(
        [sys.executable, "-m", "prunekit", "plugins"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert "prunekit-boom" in result.stdout and "failed" in result.stdout
    assert "warning:" in result.stderr and "ImportError: no luck" in result.stderr
