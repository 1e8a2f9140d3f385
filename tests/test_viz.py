"""Pictures of masks: ``prunekit.viz``, ``prunekit show``, and docs/patterns.md kept current.

The docs test runs docs/make_patterns_doc.py into a temporary directory and compares the
markdown with the committed docs/patterns.md: when it fails, run
``python docs/make_patterns_doc.py`` and commit docs/patterns.md and docs/img/.
"""

from __future__ import annotations

import gzip
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

import prunekit as pk
from prunekit import viz
from prunekit.cli import main, picture_file_name
from prunekit.errors import UnsupportedModuleError
from prunekit.plugins import default_host

pytest.importorskip("matplotlib", reason="the viz extra is not installed")
from matplotlib.figure import Figure
from PIL import Image, features

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PROGRAM = Path(sys.executable).with_name("prunekit")  # the console script, as users run it


def registered_specs() -> list[str]:
    """Every name a config may use: exact names, and each family's examples."""
    specs: list[str] = []
    for entry in default_host().patterns.entries():
        specs.extend(entry.examples if entry.is_family else [entry.name])
    return specs


@pytest.mark.parametrize("spec", registered_specs())
def test_draw_mask_returns_a_figure_on_every_module_it_applies_to(spec: str) -> None:
    if pk.PATTERNS[spec].couples_itself:  # units across layers: no one-weight picture
        with pytest.raises(UnsupportedModuleError, match="spanning several layers"):
            viz.draw_mask(spec, "linear")
        return
    drawn = []
    for module in ("linear", "conv2d", "conv3d"):
        try:
            figure = viz.draw_mask(spec, module)
        except UnsupportedModuleError:
            continue  # e.g. "kernel" on a Linear: the pattern says it does not apply
        assert isinstance(figure, Figure)
        assert figure.axes[0].get_title() == spec
        drawn.append(module)
    if not drawn:  # N:M with M = 8 divides none of the default views: a shape it divides
        assert isinstance(viz.draw_mask(spec, "linear", shape="8,16"), Figure)


def test_a_weight_the_pattern_leaves_unpruned_is_refused_with_the_remedy() -> None:
    with pytest.raises(
        UnsupportedModuleError,
        match=r"leaves a conv2d weight \(4, 3, 3, 3\) "
        r"unpruned: its 2-D view \(4, 27\) width is not a multiple of M=4.*--shape",
    ):
        viz.mask_picture("2:4", "conv2d")
    partial = viz.mask_picture("2:4", "conv2d", indivisible="partial")
    assert partial.hardware_valid is False


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
    assert main(["show", "4x1", "--module", "conv2d", "--shape", "4,3", "-o", str(out)]) == 2
    assert "does not fit conv2d" in capsys.readouterr().err
    assert main(["show", "2:4", "--sparsity", "0.75", "-o", str(out)]) == 2
    assert "above N/M" in capsys.readouterr().err
    assert main(["show", "block_diagonal", "--option", "blcks=2", "-o", str(out)]) == 2
    assert "did you mean 'blocks'" in capsys.readouterr().err


def _is_svg(data: bytes) -> bool:
    return ET.fromstring(data).tag == "{http://www.w3.org/2000/svg}svg"


# Each format matplotlib writes, and how its file is recognised: magic bytes, then the
# raster formats decoded by Pillow as that format.
FORMATS: dict[str, tuple[bytes, str | None]] = {
    "png": (PNG_MAGIC, "PNG"),
    "jpg": (b"\xff\xd8\xff", "JPEG"),
    "jpeg": (b"\xff\xd8\xff", "JPEG"),
    "tif": (b"II*\x00", "TIFF"),
    "tiff": (b"II*\x00", "TIFF"),
    "webp": (b"RIFF", "WEBP"),
    "gif": (b"GIF8", "GIF"),
    "avif": (b"\x00\x00\x00", "AVIF"),
    "pdf": (b"%PDF-1.", None),
    "ps": (b"%!PS-Adobe-3.0\n", None),
    "eps": (b"%!PS-Adobe-3.0 EPSF-3.0\n", None),
    "svg": (b"<?xml", None),
    "svgz": (b"\x1f\x8b", None),
    "raw": (b"", None),
    "rgba": (b"", None),
}


def test_formats_cover_everything_matplotlib_writes() -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    writable = set(FigureCanvasAgg(Figure()).get_supported_filetypes())
    assert writable - {"pgf"} == set(FORMATS)  # pgf needs LaTeX: see the test below


@pytest.mark.parametrize("suffix", sorted(FORMATS))
def test_show_writes_every_format_matplotlib_writes(
    suffix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if suffix == "avif" and not features.check("avif"):
        pytest.skip("this Pillow cannot write avif")
    out = tmp_path / f"mask.{suffix}"
    assert main(["show", "2:4", "--module", "linear", "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""  # no metadata warning either
    assert captured.out.startswith(f"wrote {out}: 2:4 on a Linear weight (8, 12)")
    data = out.read_bytes()
    magic, pillow_format = FORMATS[suffix]
    assert data.startswith(magic)
    size = (520, 433)  # the 2:4 linear picture at 100 dpi
    if pillow_format is not None:
        with Image.open(out) as image:
            assert image.format == pillow_format and image.size == size
            image.load()  # decodes, so a truncated file fails here
    elif suffix in ("raw", "rgba"):
        assert len(data) == 4 * size[0] * size[1]  # RGBA bytes, nothing else
    elif suffix in ("pdf", "ps"):
        assert data.rstrip().endswith(b"%%EOF")
    elif suffix == "eps":
        assert b"\n%%BoundingBox: " in data and data.rstrip().endswith(b"showpage")
    else:
        assert _is_svg(gzip.decompress(data) if suffix == "svgz" else data)


def test_show_writes_a_jpeg_as_a_user_runs_it(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(PROGRAM), "show", "2:4", "--module", "linear", "-o", "out.jpg"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    with Image.open(tmp_path / "out.jpg") as image:
        assert image.format == "JPEG" and image.size == (520, 433)


@pytest.mark.parametrize("suffix", ["png", "pdf", "svg", "svgz"])
def test_png_pdf_and_svg_are_deterministic(suffix: str, tmp_path: Path) -> None:
    a, b = tmp_path / f"a.{suffix}", tmp_path / f"b.{suffix}"
    viz.save_mask_picture(a, "4x1", "linear", seed=3)
    viz.save_mask_picture(b, "4x1", "linear", seed=3)
    data = a.read_bytes()
    assert data == b.read_bytes()
    text = gzip.decompress(data) if suffix == "svgz" else data
    for field in (b"CreationDate", b"<dc:date>", b"Software", b"Matplotlib v", b"Producer"):
        assert field not in text, field


def test_a_format_matplotlib_cannot_write_is_one_line_and_no_file(tmp_path: Path) -> None:
    result = show("4x1", "-o", "out.txt", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(
        "prunekit show: error: cannot write a .txt file: Format 'txt' is not supported "
        "(supported formats: avif, eps, gif, jpeg, jpg, pdf, pgf, png, ps, raw, rgba, svg, "
    )
    assert len(result.stderr.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(shutil.which("xelatex") is not None, reason="LaTeX is installed")
def test_pgf_without_latex_is_one_line_and_no_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["show", "4x1", "-o", str(tmp_path / "mask.pgf")]) == 2
    assert capsys.readouterr().err == (
        "prunekit show: error: cannot write a .pgf file: 'xelatex' not found; install it or "
        "change rcParams['pgf.texsystem'] to an available TeX implementation\n"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("shape", "drawn"),
    [
        ("8,12", "Linear weight (8, 12)"),
        ("4,3,5", "Conv1d weight (4, 3, 5)"),
        ("4x3x3x3", "Conv2d weight (4, 3, 3, 3)"),
        ("4,2,3,3,3", "Conv3d weight (4, 2, 3, 3, 3)"),
    ],
)
def test_show_infers_the_module_from_the_shape(
    shape: str, drawn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mask.png"
    assert main(["show", "4x1", "--shape", shape, "-o", str(out)]) == 0
    assert f"4x1 on a {drawn}: removed" in capsys.readouterr().out
    assert out.read_bytes().startswith(PNG_MAGIC)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--shape", "8,12", "--module", "conv2d"],
            "shape '8,12' does not fit conv2d: give 4 sizes (out, in, kh, kw), e.g. 4,3,3,3 "
            "(every size >= 1)",
        ),
        (
            ["--shape", "4,3,3,3", "--module", "linear"],
            "shape '4,3,3,3' does not fit linear: give 2 sizes (out, in), e.g. 8,12 "
            "(every size >= 1)",
        ),
        (
            ["--shape", "1,2,3,4,5,6"],
            "shape '1,2,3,4,5,6' has 6 sizes, which fits no module: give 2 (linear), "
            "3 (conv1d), 4 (conv2d) or 5 (conv3d)",
        ),
        (
            ["--shape", "7"],
            "shape '7' has 1 size, which fits no module: give 2 (linear), 3 (conv1d), "
            "4 (conv2d) or 5 (conv3d)",
        ),
    ],
)
def test_show_shape_and_module_that_disagree(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mask.png"
    assert main(["show", "4x1", *args, "-o", str(out)]) == 2
    assert capsys.readouterr().err == f"prunekit show: error: {message}\n"
    assert not out.exists()


def test_show_without_o_writes_a_png_named_after_the_drawing(tmp_path: Path) -> None:
    for args, name, drawn in [
        (["2:4", "--module", "linear"], "2-4-linear.png", "2:4 on a Linear weight (8, 12)"),
        (["4x1", "--shape", "8,12"], "4x1-linear.png", "4x1 on a Linear weight (8, 12)"),
        (["4x1"], "4x1-conv2d.png", "4x1 on a Conv2d weight (4, 3, 3, 3)"),
    ]:
        result = subprocess.run(
            [str(PROGRAM), "show", *args],
            capture_output=True,
            text=True,
            check=False,
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"wrote {name}: {drawn}: removed ")
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "2-4-linear.png",
        "4x1-conv2d.png",
        "4x1-linear.png",
    ]


def test_show_without_o_writes_nothing_on_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["show", "kernel", "--module", "linear"]) == 2
    assert "does not apply to op 'linear' (Linear)" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("spec", "module", "name"),
    [
        ("2:4", "linear", "2-4-linear.png"),
        ("ln_structured", "conv2d", "ln_structured-conv2d.png"),
        ("channelx1", "conv3d", "channelx1-conv3d.png"),
        ("a/b*c?", "conv1d", "a-b-c-conv1d.png"),
        ("../up", "linear", "up-linear.png"),
        (":::", "linear", "pattern-linear.png"),
    ],
)
def test_default_picture_names_are_safe_file_names(spec: str, module: str, name: str) -> None:
    assert picture_file_name(spec, module) == name


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
