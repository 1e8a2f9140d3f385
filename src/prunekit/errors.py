"""Every exception (and the one warning) prunekit raises on purpose.

Every error says what was wrong (the field, op or name), the value that was given and what
would have been valid, so that a user can fix the input without reading prunekit's code.
This module imports nothing of prunekit's: every layer may raise these.
"""

from __future__ import annotations

from collections.abc import Sequence


class PrunekitError(Exception):
    """Base class of every error prunekit raises on purpose."""


class PluginWarning(UserWarning):
    """A plugin could not be loaded, or part of what it registered was refused."""


class PruningWarning(UserWarning):
    """Something a user would not expect and should know: an op left unpruned, a cap that
    overrides the target, a regular expression that selects nothing, masks that sparse
    hardware cannot use."""


# -- names --------------------------------------------------------------------------------
class UnknownNameError(PrunekitError, KeyError):
    """A pattern, criterion or schedule name that no registry entry claims.

    A ``KeyError`` so that ``PATTERNS[name]``-style code keeps working, but with a readable
    ``str()`` (``KeyError`` would repr-quote the whole message).
    """

    kind = "name"

    def __init__(self, name: str, suggestions: Sequence[str], list_hint: str) -> None:
        self.name = name
        self.suggestions = list(suggestions)
        self.list_hint = list_hint
        hint = f"; did you mean {quoted_or(self.suggestions)}?" if self.suggestions else ""
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


class InvalidSpecError(PrunekitError, ValueError, KeyError):
    """A spec that a family's grammar claims but whose parameters are invalid (``"0x4"``).
    Also a ``KeyError``: ``"3:2" in PATTERNS`` is False, and ``PATTERNS["3:2"]`` raises it."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# -- configs --------------------------------------------------------------------------------
class ConfigError(PrunekitError, ValueError):
    """A config that failed validation; ``str()`` is one ``field: message`` line each.

    When one of the problems is a name no registry knows, the error raised is also that
    name's error (:func:`config_error` picks the class), so ``except UnknownPatternError``
    and ``except ConfigError`` both catch ``get_pattern({"pattern": "filtr"}, ...)``.
    """

    def __init__(self, lines: Sequence[str], source: str = "config") -> None:
        self.lines = list(lines)
        self.source = source
        self.message = f"invalid {source}:\n" + "\n".join(f"  {line}" for line in self.lines)
        Exception.__init__(self, self.message)

    def __str__(self) -> str:
        return self.message


class UnknownPatternInConfigError(ConfigError, UnknownPatternError):
    """A config whose ``pattern`` no registry entry claims (its other problems listed too)."""


class UnknownCriterionInConfigError(ConfigError, UnknownCriterionError):
    """A config whose ``criterion`` no registry entry claims."""


class UnknownScheduleInConfigError(ConfigError, UnknownScheduleError):
    """A config whose ``schedule`` no registry entry claims."""


_IN_CONFIG: dict[type[UnknownNameError], type[ConfigError]] = {
    UnknownPatternError: UnknownPatternInConfigError,
    UnknownCriterionError: UnknownCriterionInConfigError,
    UnknownScheduleError: UnknownScheduleInConfigError,
}


def config_error(
    lines: Sequence[str], source: str = "config", unknown: UnknownNameError | None = None
) -> ConfigError:
    """The :class:`ConfigError` for ``lines``; also an ``Unknown*Error`` when ``unknown`` (the
    first unknown name among the problems) is given, carrying its name and suggestions."""
    for base, combined in _IN_CONFIG.items():
        if isinstance(unknown, base):
            error = combined(lines, source)
            assert isinstance(error, UnknownNameError)
            error.name, error.suggestions = unknown.name, list(unknown.suggestions)
            error.list_hint = unknown.list_hint
            return error
    return ConfigError(lines, source)


# -- models and ops -----------------------------------------------------------------------
class OpSelectionError(PrunekitError, ValueError):
    """A config that selects no op, or two configs that claim the same op."""


class UnsupportedModuleError(PrunekitError, TypeError):
    """A pattern was given a module it cannot lay its blocks on."""


class DimOutOfRangeError(UnsupportedModuleError, IndexError):
    """``dim`` does not index an op's weight. An ``IndexError`` as in torch, and an
    :class:`UnsupportedModuleError` since that op cannot be pruned this way."""


class IndivisibleShapeError(PrunekitError, ValueError):
    """A weight whose shape does not divide the block, with ``indivisible="raise"``."""


# -- masks ----------------------------------------------------------------------------------
class ScoreError(PrunekitError, ValueError):
    """Scores or pre-masks that do not match the pattern's ops (names, shapes, NaN)."""


class ImpossibleTargetError(PrunekitError, ValueError):
    """The per-op caps (or the pattern's geometry) make the requested sparsity unreachable."""


class CalibrationError(PrunekitError, ValueError):
    """Calibration that cannot work as asked: no calibration data for a criterion that reads
    it, a model whose repeated blocks cannot be found or are not chained, a pattern that
    cannot be applied column block by column block."""


class MaskFileError(PrunekitError, ValueError):
    """Masks (from a file or a state dict) that do not fit the Pruner's ops."""


def quoted_or(names: Sequence[str]) -> str:
    """``'a'``, ``'a' or 'b'``, ``'a', 'b' or 'c'``: names for a did-you-mean."""
    quoted = [repr(n) for n in names]
    if len(quoted) <= 1:
        return "".join(quoted)
    return ", ".join(quoted[:-1]) + " or " + quoted[-1]
