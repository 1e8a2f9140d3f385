"""Pictures of masks: ``prunekit.viz``, ``prunekit show``, and docs/patterns.md kept current.

The docs test runs docs/make_patterns_doc.py into a temporary directory and compares the
markdown with the committed docs/patterns.md: when it fails, run
``python docs/make_patterns_doc.py`` and commit docs/patterns.md and docs/img/.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prunekit import viz
from prunekit.cli import main
from prunekit.errors import UnsupportedModuleError
from prunekit.plugins import default_host

pytest.importorskip("matplotlib", reason="the viz extra is not installed")
from matplotlib.figure import Figure

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def registered_specs() -> list[str]:
    """Every name a config may use: exact names, and each family's examples."""
    specs: list[str] = []
    for entry in default_host().patterns.entries():
        specs.extend(entry.examples if entry.is_family else [entry.name])
    return specs


@pytest.mark.parametrize("spec", registered_specs())
def test_draw_mask_returns_a_figure_on_every_module_it_applies_to(spec: str) -> None:
    drawn = []
    for module in ("linear", "conv2d", "conv3d"):
        try:
            figure = viz.draw_mask(spec, module)
        except UnsupportedModuleError:
            continue  # e.g. "kernel" on a Linear: the pattern says it does not apply
        assert isinstance(figure, Figure)
        assert figure.axes[0].get_title() == spec
        drawn.append(module)
    assert drawn, f"{spec!r} could be drawn on no module"


def test_the_picture_is_the_patterns_mask() -> None:
    picture = viz.mask_picture("filter", "conv2d", sparsity=0.5, seed=3)
    assert picture.shape == viz.DEFAULT_SHAPES["conv2d"] == (4, 3, 3, 3)
    per_filter = picture.mask.reshape(4, -1)
    assert all(bool(row.all()) or not bool(row.any()) for row in per_filter)  # whole filters
    assert picture.removed == 54 and picture.sparsity == 0.5
    nm = viz.mask_picture("2:4", "linear", sparsity=0.25)
    assert nm.hardware_valid is False and "not hardware-valid" in nm.summary()
    assert viz.mask_picture("2:4", "linear").hardware_valid is True  # default target N/M
    assert viz.mask_picture("4x1", "linear").hardware_valid is None


def test_pictures_are_deterministic(tmp_path: Path) -> None:
    first = viz.mask_picture("4x1", "linear", seed=7)
    again = viz.mask_picture("4x1", "linear", seed=7)
    assert torch.equal(first.mask, again.mask)
    assert not torch.equal(first.mask, viz.mask_picture("4x1", "linear", seed=8).mask)
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    viz.save_mask_picture(a, "block_diagonal", "linear", blocks=2)
    viz.save_mask_picture(b, "block_diagonal", "linear", blocks=2)
    data = a.read_bytes()
    assert data.startswith(PNG_MAGIC) and data == b.read_bytes()
    assert b"Software" not in data and b"matplotlib" not in data


def test_bad_shapes_are_clear_value_errors() -> None:
    with pytest.raises(ValueError, match=r"does not fit conv2d: give 4 sizes"):
        viz.parse_shape("4,3", "conv2d")
    with pytest.raises(ValueError, match="not a list of whole numbers"):
        viz.parse_shape("a,b", "linear")
    with pytest.raises(ValueError, match="not one of"):
        viz.parse_shape(None, "lstm")  # type: ignore[arg-type]
    assert viz.parse_shape("16x8", "linear") == (16, 8)


def test_without_matplotlib_the_error_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=re.escape("pip install 'prunekit[viz]'")):
        viz.draw_mask("4x1")


def test_option_values_parse_json_when_they_can() -> None:
    assert viz.option_values(["blocks=4", "n=inf", "dim=-1", "x=[1, 2]"]) == {
        "blocks": 4,
        "n": "inf",
        "dim": -1,
        "x": [1, 2],
    }
    with pytest.raises(ValueError, match="key=value"):
        viz.option_values(["blocks"])


# -- prunekit show ------------------------------------------------------------------------
def show(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prunekit", "show", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
    )


def test_show_writes_a_png(tmp_path: Path) -> None:
    result = show("4x1", "-o", "out.png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = (tmp_path / "out.png").read_bytes()
    assert len(data) > 1000 and data.startswith(PNG_MAGIC)
    assert "4x1" in result.stdout and "Conv2d" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["no_such_pattern"], "unknown pattern 'no_such_pattern'"),
        (["kernel", "--module", "linear"], "does not apply to op 'linear' (Linear); names that"),
    ],
)
def test_show_errors_are_one_readable_line(tmp_path: Path, args: list[str], message: str) -> None:
    result = show(*args, "-o", "out.png", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prunekit show: error: ")
    assert message in lines[0]
    assert not (tmp_path / "out.png").exists()


def test_show_in_process_options_and_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bd.png"
    args = ["show", "block_diagonal", "--module", "linear", "--option", "blocks=2"]
    assert main([*args, "--shape", "4,6", "-o", str(out)]) == 0
    assert out.read_bytes().startswith(PNG_MAGIC)
    assert "blocks=2" in capsys.readouterr().out
    assert main(["show", "4x1", "--shape", "4,3", "-o", str(out)]) == 2
    assert "does not fit conv2d" in capsys.readouterr().err
    assert main(["show", "2:4", "--sparsity", "0.75", "-o", str(out)]) == 2
    assert "above N/M" in capsys.readouterr().err
    assert main(["show", "block_diagonal", "--option", "blcks=2", "-o", str(out)]) == 2
    assert "did you mean 'blocks'" in capsys.readouterr().err


# -- docs/patterns.md ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("docs")
    result = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "make_patterns_doc.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return out


def test_committed_patterns_doc_is_what_the_script_generates(generated: Path) -> None:
    text = (generated / "patterns.md").read_text()
    committed = (ROOT / "docs" / "patterns.md").read_text()
    assert text == committed, (
        "docs/patterns.md is stale: run `python docs/make_patterns_doc.py` and commit "
        "docs/patterns.md and docs/img/"
    )
    links = re.findall(r"!\[[^\]]*\]\((img/[^)]+)\)", text)
    assert links
    for link in links:
        picture = generated / link
        assert picture.is_file(), link
        assert picture.read_bytes().startswith(PNG_MAGIC), link
        assert (ROOT / "docs" / link).is_file(), f"docs/{link} is not committed"
    assert sorted(p.name for p in (generated / "img").iterdir()) == sorted(
        {Path(link).name for link in links}
    )


def test_generated_doc_has_a_section_per_builtin(generated: Path) -> None:
    text = (generated / "patterns.md").read_text()
    headings = set(re.findall(r"^## (.+)$", text, flags=re.M))
    for entry in default_host().patterns.entries():
        if entry.builtin:
            assert entry.name in headings, entry.name
    assert "### block_diagonal" in text  # the example plugin's pattern, with its pictures
    assert "img/block_diagonal-linear.png" in text
    assert "N counts the REMOVED weights" in text
