"""Helpers for names: did-you-mean suggestions, natural sorting and wildcard filters."""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Iterable

_DIGITS = re.compile(r"(\d+)")


def close_matches(name: str, candidates: Iterable[str], limit: int = 3) -> list[str]:
    """Names in ``candidates`` that look like ``name`` (case-insensitive), best first."""
    by_lower = {c.lower(): c for c in candidates}
    found = difflib.get_close_matches(name.lower(), list(by_lower), n=limit, cutoff=0.6)
    return [by_lower[f] for f in found]


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders ``"2x1" < "4x1" < "16x1"`` the way a person reads them."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part.lower())
        for part in _DIGITS.split(name)
        if part
    )


def matches_filter(name: str, pattern: str | None) -> bool:
    """Shell-style wildcard match (``"*x1"``, ``"shared_*"``); ``None`` matches everything.

    A filter without wildcards matches as a case-insensitive substring, which is what people
    type at a prompt (``prunekit patterns slice``).
    """
    if not pattern:
        return True
    if any(ch in pattern for ch in "*?["):
        return fnmatch.fnmatchcase(name.lower(), pattern.lower())
    return pattern.lower() in name.lower()


def normalize_distribution(name: str) -> str:
    """PEP 503 normalization, so ``Prunekit_Example`` and ``prunekit-example`` are one name."""
    return re.sub(r"[-_.]+", "-", name).lower()
