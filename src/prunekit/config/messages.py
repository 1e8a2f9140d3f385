"""How config problems read: one ``field: message (got value)`` line each.

pydantic's errors are re-issued here: an unknown key gets a did-you-mean, a pattern option's
error says which pattern it belongs to, and a name no registry knows keeps its name and
suggestions so that the :class:`~prunekit.errors.ConfigError` raised is also that name's
``Unknown*Error``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from prunekit.errors import (
    ConfigError,
    UnknownCriterionError,
    UnknownNameError,
    UnknownPatternError,
    UnknownScheduleError,
    config_error,
)
from prunekit.naming import close_matches

# Error types that carry an unknown name, and the error each stands for.
_UNKNOWN_TYPES: dict[str, type[UnknownNameError]] = {
    "unknown_pattern": UnknownPatternError,
    "unknown_criterion": UnknownCriterionError,
    "unknown_schedule": UnknownScheduleError,
}


def custom(message: str, kind: str = "prunekit") -> PydanticCustomError:
    """A pydantic error whose message is ``message`` as written."""
    return PydanticCustomError(kind, "{message}", {"message": message})


def unknown_name(error: UnknownNameError) -> PydanticCustomError:
    """The pydantic error for a name no registry knows, carrying its suggestions."""
    return PydanticCustomError(
        f"unknown_{error.kind}",
        "{message}",
        {
            "message": str(error),
            "name": error.name,
            "suggestions": list(error.suggestions),
            "list_hint": error.list_hint,
        },
    )


def detail(field: str, value: Any, message: str) -> InitErrorDetails:
    """One problem of ``field`` (whose value was ``value``)."""
    return InitErrorDetails(type=custom(message), loc=(field,), input=value)


def raise_all(errors: list[InitErrorDetails]) -> None:
    """Raise every problem at once (nothing when there are none)."""
    if errors:
        raise ValidationError.from_exception_data("PruningConfig", errors)


def explained(
    error: Any, pattern: Any, option_fields: set[str], top_level: set[str]
) -> InitErrorDetails:
    """Re-issue one pydantic error, turning "extra inputs" into a did-you-mean."""
    loc = tuple(error["loc"])
    message = error["msg"]
    if error["type"] == "extra_forbidden" and len(loc) == 1:
        valid = sorted((top_level - {"pattern_options", "criterion_options"}) | option_fields)
        hint = close_matches(str(loc[0]), valid)
        where = (
            f"PruningConfig's fields and the options of pattern {pattern!r}"
            if option_fields
            else "PruningConfig's fields"
        )
        message = (
            f"unknown key; did you mean {hint[0]!r}?"
            if hint
            else f"unknown key; valid keys ({where}): {', '.join(valid)}"
        )
    ctx = dict(error.get("ctx", {})) if error["type"] in _UNKNOWN_TYPES else {}
    return InitErrorDetails(
        type=PydanticCustomError(error["type"], "{message}", {**ctx, "message": message}),
        loc=loc,
        input=error.get("input"),
    )


def option_error(error: Any, pattern: Any, kind: str = "pattern") -> InitErrorDetails:
    """One error of a pattern's (or a criterion's, ``kind``) own options, saying which
    pattern or criterion the option belongs to."""
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    return InitErrorDetails(
        type=custom(f"{message} (an option of {kind} {pattern!r})", error["type"]),
        loc=tuple(error["loc"]),
        input=error.get("input"),
    )


def render(error: Any) -> str:
    """One ``field: message (got value)`` line (``pruning_configs[2].field`` in lists)."""
    loc = ".".join(str(part) for part in error["loc"]) or "config"
    if (
        isinstance(error["loc"], tuple)
        and len(error["loc"]) >= 2
        and isinstance(error["loc"][1], int)
    ):
        loc = f"{error['loc'][0]}[{error['loc'][1]}]" + "".join(f".{p}" for p in error["loc"][2:])
    message = error["msg"]
    if error["type"] in {"missing"}:
        return f"{loc}: {message}"
    return f"{loc}: {message} (got {error.get('input')!r})"


def from_validation_error(error: ValidationError, source: str = "config") -> ConfigError:
    """The :class:`ConfigError` for a failed validation (also an ``Unknown*Error`` when a
    name was unknown)."""
    problems = error.errors()
    return config_error([render(e) for e in problems], source, _first_unknown(problems))


def _first_unknown(problems: Iterable[Any]) -> UnknownNameError | None:
    for problem in problems:
        kind = _UNKNOWN_TYPES.get(problem["type"])
        if kind is not None:
            ctx = problem.get("ctx", {})
            return kind(ctx.get("name", ""), ctx.get("suggestions", []), ctx.get("list_hint", ""))
    return None
