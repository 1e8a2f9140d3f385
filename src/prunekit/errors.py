"""The exceptions prunekit raises.

Every error says what was wrong (the field, layer or name), the value that was given and what
would have been valid, so that a user can fix the input without reading prunekit's code.
"""

from __future__ import annotations

from collections.abc import Sequence


class PrunekitError(Exception):
    """Base class of every error prunekit raises on purpose."""


class UnknownNameError(PrunekitError, KeyError):
    """A pattern, criterion or schedule name that no registry entry claims.

    A ``KeyError`` so that ``PATTERNS[name]``-style code keeps working, but with a readable
    ``str()`` (``KeyError`` would repr-quote the whole message).
    """

    kind = "name"

    def __init__(self, name: str, suggestions: Sequence[str], list_hint: str) -> None:
        self.name = name
        self.suggestions = list(suggestions)
        hint = f"; did you mean {_quoted_or(self.suggestions)}?" if self.suggestions else ""
        self.message = f"unknown {self.kind} {name!r}{hint} ({list_hint})"
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


class UnknownPatternError(UnknownNameError):
    """``config.pattern`` names no registered pattern or family spec."""

    kind = "pattern"


class UnknownCriterionError(UnknownNameError):
    """``config.criterion`` names no registered criterion."""

    kind = "criterion"


class UnknownScheduleError(UnknownNameError):
    """``config.schedule`` names no registered schedule."""

    kind = "schedule"


class NameTakenError(PrunekitError, ValueError):
    """A registration whose name (or family spec) is already claimed by another owner."""


class InvalidSpecError(PrunekitError, ValueError):
    """A spec that a family's grammar claims but whose parameters are invalid (``"0x4"``)."""


class UnsupportedModuleError(PrunekitError, TypeError):
    """A pattern was given a module it cannot lay its blocks on."""


class ScoreError(PrunekitError, ValueError):
    """Scores or pre-masks that do not match the pattern's modules (names, shapes, NaN)."""


class ImpossibleTargetError(PrunekitError, ValueError):
    """The per-op caps make the requested sparsity unreachable."""


class IndivisibleShapeError(PrunekitError, ValueError):
    """A weight whose shape does not divide the block, with ``indivisible="raise"``."""


def _quoted_or(names: Sequence[str]) -> str:
    quoted = [repr(n) for n in names]
    if len(quoted) <= 1:
        return "".join(quoted)
    return ", ".join(quoted[:-1]) + " or " + quoted[-1]
