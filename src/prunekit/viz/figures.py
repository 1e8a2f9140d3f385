"""Figures saved the same way every time, and the one check that matplotlib is there.

matplotlib is an optional extra (``pip install 'prunekit[viz]'``): it is imported only when
a picture is drawn, and only through the Agg canvas (no display, no pyplot, no global
backend change).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 100
VIZ_HINT = "install the viz extra: pip install 'prunekit[viz]'"
_PNG_COLORS = 64


def save_figure(figure: Figure, path: str | Path) -> None:
    """Save deterministically: fixed dpi, no software or date metadata.

    A PNG is written with a small palette (the pictures hold two colours, grey lines and
    anti-aliased text), which makes it about four times smaller than matplotlib's RGBA PNG
    and looks the same; other formats are matplotlib's own.
    """
    target = Path(path)
    suffix = target.suffix.lower().lstrip(".") or "png"
    if suffix != "png":
        metadata: dict[str, Any] = {"Creator": None}
        if suffix in {"pdf", "svg"}:
            metadata["Date"] = None
        figure.savefig(target, dpi=DPI, metadata=metadata, format=suffix)
        return
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
