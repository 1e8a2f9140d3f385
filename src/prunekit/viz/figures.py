"""Figures saved the same way every time, and the one check that matplotlib is there.

matplotlib is an optional extra (``pip install 'prunekit[viz]'``): it is imported only when
a picture is drawn, and only through the Agg canvas (no display, no pyplot, no global
backend change).
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 100
VIZ_HINT = "install the viz extra: pip install 'prunekit[viz]'"
_PNG_COLORS = 64
# The metadata each format's writer takes, set so that no date or software version goes in
# the file. The other formats get none: matplotlib refuses any for Pillow's formats (jpeg,
# tiff, webp, gif, avif) and raw/rgba, pgf takes none, and ps/eps read only a Creator
# (their %%CreationDate is always the time of writing).
_METADATA: dict[str, dict[str, Any]] = {
    "pdf": {"Creator": None, "Producer": None, "CreationDate": None},
    "svg": {"Creator": None, "Date": None},
}
# SVG element ids are salted with a fresh uuid unless this is set.
_SVG_SALT = "prunekit"


def save_figure(figure: Figure, path: str | Path) -> None:
    """Save in the format the suffix names (png without one); png, pdf, svg and svgz are
    deterministic: the same figure gives the same bytes (fixed dpi, no date or software).

    A PNG is written with a small palette (the pictures hold two colours, grey lines and
    anti-aliased text), which makes it about four times smaller than matplotlib's RGBA PNG
    and looks the same; other formats are matplotlib's own. A format matplotlib cannot
    write (an unknown suffix, pgf without LaTeX) is a ValueError that says why.
    """
    target = Path(path)
    suffix = target.suffix.lower().lstrip(".") or "png"
    if suffix == "png":
        _save_png(figure, target)
    elif suffix == "svgz":  # matplotlib's gzip header holds the time of writing
        target.write_bytes(gzip.compress(_render(figure, "svg"), mtime=0))
    else:
        target.write_bytes(_render(figure, suffix))


def _render(figure: Figure, fmt: str) -> bytes:
    """The file's bytes, rendered in memory so that a failed format leaves no file behind."""
    import matplotlib

    # Only a format with metadata gets the keyword: pgf fails on it even when it is None.
    options: dict[str, Any] = {"metadata": _METADATA[fmt]} if fmt in _METADATA else {}
    buffer = io.BytesIO()
    try:
        with matplotlib.rc_context({"svg.hashsalt": _SVG_SALT}):
            figure.savefig(buffer, dpi=DPI, format=fmt, **options)
    except (ValueError, RuntimeError) as exc:
        raise ValueError(f"cannot write a .{fmt} file: {exc}") from exc
    return buffer.getvalue()


def _save_png(figure: Figure, target: Path) -> None:
    from PIL import Image  # a dependency of matplotlib

    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=DPI, format="png", metadata={"Software": None})
    buffer.seek(0)
    with Image.open(buffer) as image:
        palette = image.convert("RGB").quantize(_PNG_COLORS, method=Image.Quantize.MEDIANCUT)
    palette.save(target, format="png", optimize=True)  # PIL adds no date or software field


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"prunekit's mask pictures need matplotlib; {VIZ_HINT}") from exc
