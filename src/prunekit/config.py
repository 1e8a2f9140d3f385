"""``PruningConfig``: one pruning config, validated by pydantic.

Field names follow Intel Neural Compressor's ``WeightPruningConfig`` so INC users can bring
their dicts. Pattern-specific parameters sit flat in the same dict (``{"pattern":
"ln_structured", "n": 2}``); they are moved into ``pattern_options`` and validated by the
pattern's own ``Options`` model. Unknown keys are refused with a did-you-mean.

Errors from :func:`load_config` are :class:`ConfigError`: one ``field: message`` line per
problem, each naming the bad value and what would be valid.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from prunekit.errors import InvalidSpecError, PrunekitError, UnknownNameError
from prunekit.naming import close_matches

Scope = Literal["global", "local"]
DecayType = Literal["linear", "cube", "exp", "cos"]
PruneMode = Literal["Identity", "Static", "Gradual"]
# N2D2's prune modes are schedules under another name.
PRUNE_MODE_SCHEDULES: dict[str, str] = {
    "Identity": "identity",
    "Static": "oneshot",
    "Gradual": "gradual",
}


class ConfigError(PrunekitError, ValueError):
    """A config that failed validation; ``str()`` is one ``field: message`` line each."""

    def __init__(self, lines: Sequence[str], source: str = "config") -> None:
        self.lines = list(lines)
        self.source = source
        super().__init__(f"invalid {source}:\n" + "\n".join(f"  {line}" for line in self.lines))

    @classmethod
    def from_validation_error(cls, error: ValidationError, source: str = "config") -> ConfigError:
        return cls([_render(e) for e in error.errors()], source)


def _render(error: Any) -> str:
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


def _error(field: str, value: Any, message: str) -> InitErrorDetails:
    return InitErrorDetails(
        type=PydanticCustomError("prunekit", "{message}", {"message": message}),
        loc=(field,),
        input=value,
    )


def _raise(errors: list[InitErrorDetails]) -> None:
    if errors:
        raise ValidationError.from_exception_data("PruningConfig", errors)


def _explain(error: Any, pattern: Any, option_fields: set[str]) -> InitErrorDetails:
    """Re-issue one pydantic error, turning "extra inputs" into a did-you-mean."""
    loc = tuple(error["loc"])
    message = error["msg"]
    if error["type"] == "extra_forbidden" and len(loc) == 1:
        valid = sorted((_top_level_keys() - {"pattern_options"}) | option_fields)
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
    return InitErrorDetails(
        type=PydanticCustomError(error["type"], "{message}", {"message": message}),
        loc=loc,
        input=error.get("input"),
    )


def _option_error(error: Any, pattern: Any) -> InitErrorDetails:
    """One error of a pattern's own options, saying which pattern the option belongs to."""
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    return InitErrorDetails(
        type=PydanticCustomError(
            error["type"], "{message}", {"message": f"{message} (an option of pattern {pattern!r})"}
        ),
        loc=tuple(error["loc"]),
        input=error.get("input"),
    )


def _custom(message: str) -> PydanticCustomError:
    return PydanticCustomError("prunekit", "{message}", {"message": message})


class PruningConfig(BaseModel):
    """One pruning config: which pattern, how sparse, which ops, scored how, on what schedule."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, title="prunekit pruning config"
    )

    pattern: str = Field(
        "4x1",
        description="A registered pattern name or family spec: '4x1', '1x1', "
        "'channelx1', '1xchannel' (NxM), or a plugin's name. `prunekit patterns` lists them.",
    )
    target_sparsity: float = Field(
        0.9,
        ge=0.0,
        lt=1.0,
        allow_inf_nan=False,
        description="Fraction of weights to remove, in [0, 1).",
    )
    pruning_scope: Scope = Field(
        "global",
        description="'global': scores compared across all selected ops; 'local': "
        "each op reaches the target alone.",
    )
    min_sparsity_ratio_per_op: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="Lowest sparsity any op may have, in [0, 1].",
    )
    max_sparsity_ratio_per_op: float = Field(
        0.98,
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="Highest sparsity any op may have, in [0, 1].",
    )
    op_names: list[str] = Field(
        default_factory=list, description="Regular expressions over module names; empty: all."
    )
    excluded_op_names: list[str] = Field(
        default_factory=list, description="Regular expressions over module names to leave out."
    )
    pruning_op_types: list[str] = Field(
        default_factory=lambda: ["Conv", "Linear"],
        description="Module class names (or their prefixes, as 'Conv') to prune.",
    )
    criterion: str = Field(
        "magnitude",
        validation_alias=AliasChoices("criterion", "pruning_type"),
        description="A registered criterion that turns weights (and gradients) into scores. "
        "INC's name for this field, 'pruning_type', is accepted too.",
    )
    schedule: str | None = Field(
        None,
        description="A registered schedule; None: one-shot when end_step == start_step, "
        "else INC's iterative schedule.",
    )
    start_step: int = Field(0, ge=0, description="First step at which pruning happens.")
    end_step: int = Field(0, ge=0, description="Step at which the target is reached.")
    pruning_frequency: int = Field(1, ge=1, description="Steps between mask updates.")
    sparsity_decay_type: DecayType = Field(
        "exp", description="How sparsity rises between start_step and end_step."
    )
    prune_mode: PruneMode | None = Field(
        None,
        description="N2D2's mode: 'Identity' (no pruning), 'Static' (the target at once) or "
        "'Gradual' (start, then + gamma every stepsize steps); sets the schedule.",
    )
    start: float = Field(
        0.0, ge=0.0, lt=1.0, allow_inf_nan=False, description="Gradual: the first sparsity."
    )
    stepsize: int = Field(1, ge=1, description="Gradual: steps between increases.")
    gamma: float = Field(
        0.1,
        gt=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="Gradual: sparsity added per increase.",
    )
    seed: int = Field(0, ge=0, le=2**63 - 1, description="Seed for random criteria and fillers.")
    prune_bias: bool = Field(
        False,
        description="Zero (and keep at zero) the bias of every output channel whose weights "
        "are all removed (filters, rows); off by default, as in torch.nn.utils.prune.",
    )
    pattern_options: dict[str, Any] = Field(
        default_factory=dict,
        description="The pattern's own parameters (may also be given "
        "flat, at the top level of the config).",
    )

    # -- around: flat pattern parameters move into pattern_options; unknown keys get a
    # did-you-mean; every problem is reported at once ---------------------------------------
    @model_validator(mode="wrap")
    @classmethod
    def _split_pattern_options(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        pattern_name: Any = None
        option_fields: set[str] = set()
        option_errors: list[InitErrorDetails] = []
        if isinstance(data, Mapping):
            data = dict(data)
            pattern_name = data.get("pattern", cls.model_fields["pattern"].default)
            pattern_cls = _pattern_class(pattern_name)
            option_fields = (
                set(pattern_cls.Options.model_fields) if pattern_cls is not None else set()
            )
            options = dict(data.get("pattern_options") or {})
            for key in [k for k in data if k in option_fields and k not in _top_level_keys()]:
                options[key] = data.pop(key)
            if pattern_cls is not None and "target_sparsity" not in data:
                try:
                    default = pattern_cls.default_target(pattern_name)
                except InvalidSpecError:
                    default = None  # reported by the pattern field's own validator
                if default is not None:
                    data["target_sparsity"] = default
            if pattern_cls is not None:
                try:
                    data["pattern_options"] = pattern_cls.Options.model_validate(
                        options
                    ).model_dump()
                except ValidationError as exc:
                    option_errors = [_option_error(e, pattern_name) for e in exc.errors()]
                    data.pop("pattern_options", None)
        try:
            validated = handler(data)
        except ValidationError as exc:
            errors = [_explain(e, pattern_name, option_fields) for e in exc.errors()]
            raise ValidationError.from_exception_data(exc.title, option_errors + errors) from None
        _raise(option_errors)
        return validated

    # -- fields -----------------------------------------------------------------------------
    @field_validator("pattern")
    @classmethod
    def _known_pattern(cls, value: str) -> str:
        from prunekit.plugins import default_host

        try:
            entry = default_host().patterns.resolve(value)
            entry.obj.parse_spec(value)
        except (UnknownNameError, InvalidSpecError) as exc:
            raise _custom(str(exc)) from None
        return value

    @field_validator("criterion")
    @classmethod
    def _known_criterion(cls, value: str) -> str:
        from prunekit.plugins import default_host

        try:
            default_host().criteria.resolve(value)
        except UnknownNameError as exc:
            raise _custom(str(exc)) from None
        return value

    @field_validator("schedule")
    @classmethod
    def _known_schedule(cls, value: str | None) -> str | None:
        from prunekit.plugins import default_host

        if value is not None:
            try:
                default_host().schedules.resolve(value)
            except UnknownNameError as exc:
                raise _custom(str(exc)) from None
        return value

    @field_validator("op_names", "excluded_op_names")
    @classmethod
    def _regexes_compile(cls, values: list[str]) -> list[str]:
        for i, expression in enumerate(values):
            try:
                re.compile(expression)
            except re.error as exc:
                raise _custom(
                    f"item {i} {expression!r} is not a valid regular expression: {exc}"
                ) from None
        return values

    @field_validator("pruning_op_types")
    @classmethod
    def _type_names(cls, values: list[str]) -> list[str]:
        for value in values:
            if not value.isidentifier():
                raise _custom(f"{value!r} is not a module class name such as 'Linear' or 'Conv2d'")
        return values

    # -- after: relations between fields, and the pattern's own options --------------------
    @model_validator(mode="after")
    def _consistent(self) -> PruningConfig:
        errors: list[InitErrorDetails] = []
        if self.min_sparsity_ratio_per_op > self.max_sparsity_ratio_per_op:
            errors.append(
                _error(
                    "min_sparsity_ratio_per_op",
                    self.min_sparsity_ratio_per_op,
                    f"is above max_sparsity_ratio_per_op "
                    f"({self.max_sparsity_ratio_per_op}); it must be at most that",
                )
            )
        if self.target_sparsity > self.max_sparsity_ratio_per_op:
            errors.append(
                _error(
                    "target_sparsity",
                    self.target_sparsity,
                    f"is above max_sparsity_ratio_per_op "
                    f"({self.max_sparsity_ratio_per_op}), so no op may reach it; "
                    "lower the target or raise the cap",
                )
            )
        if self.prune_mode == "Gradual" and self.start > self.target_sparsity:
            errors.append(
                _error(
                    "start",
                    self.start,
                    f"is above target_sparsity ({self.target_sparsity}); Gradual rises from "
                    "start to the target",
                )
            )
        if self.prune_mode is not None and self.schedule is not None:
            implied = PRUNE_MODE_SCHEDULES[self.prune_mode]
            if implied != self.schedule:
                errors.append(
                    _error(
                        "schedule",
                        self.schedule,
                        f"contradicts prune_mode {self.prune_mode!r} (which means schedule "
                        f"{implied!r}); give one of them",
                    )
                )
        if self.end_step < self.start_step:
            errors.append(
                _error(
                    "end_step",
                    self.end_step,
                    f"is before start_step ({self.start_step}); it must be >= it",
                )
            )
        pattern_cls = _pattern_class(self.pattern)
        if pattern_cls is not None and not errors:
            for field, message in pattern_cls.check_config(self).items():
                errors.append(_error(field, getattr(self, field, None), message))
        _raise(errors)
        return self

    @property
    def schedule_name(self) -> str:
        """The schedule in force: ``schedule``, else N2D2's ``prune_mode``, else INC's rule
        (one-shot when ``end_step == start_step``, iterative otherwise)."""
        if self.schedule is not None:
            return self.schedule
        if self.prune_mode is not None:
            return PRUNE_MODE_SCHEDULES[self.prune_mode]
        return "oneshot" if self.end_step == self.start_step else "iterative"

    # -- constructors -----------------------------------------------------------------------
    @classmethod
    def load(
        cls, source: PruningConfig | Mapping[str, Any] | str | os.PathLike[str]
    ) -> PruningConfig:
        """A validated config from a dict, a config, or a YAML/JSON file path."""
        return load_config(source)


def _top_level_keys() -> set[str]:
    keys = set(PruningConfig.model_fields)
    keys.add("pruning_type")
    return keys


def _pattern_class(name: Any) -> Any:
    """The class registered for ``name``, or None when it is not a known pattern."""
    if not isinstance(name, str):
        return None
    from prunekit.plugins import default_host

    try:
        return default_host().patterns.resolve(name).obj
    except KeyError:
        return None


def read_config_file(path: str | os.PathLike[str]) -> Any:
    """Parse a ``.yaml``/``.yml``/``.json`` file into plain Python data."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError([f"file: {str(file)!r} does not exist or is not a file"], str(file))
    text = file.read_text(encoding="utf-8")
    try:
        if file.suffix.lower() == ".json":
            return json.loads(text)
        import yaml

        return yaml.safe_load(text)
    except (ValueError, ImportError) as exc:  # yaml.YAMLError and JSONDecodeError are ValueErrors
        raise ConfigError([f"file: cannot parse {str(file)!r}: {exc}"], str(file)) from None
    except Exception as exc:  # yaml raises its own YAMLError family
        raise ConfigError([f"file: cannot parse {str(file)!r}: {exc}"], str(file)) from None


def load_config(
    source: PruningConfig | Mapping[str, Any] | str | os.PathLike[str],
) -> PruningConfig:
    """Validate one config given as a :class:`PruningConfig`, a dict, or a YAML/JSON path.

    Raises :class:`ConfigError` with one ``field: message`` line per problem.
    """
    if isinstance(source, PruningConfig):
        return source
    label = "config"
    data: Any = source
    if isinstance(source, (str, os.PathLike)):
        label = str(source)
        data = read_config_file(source)
    if not isinstance(data, Mapping):
        raise ConfigError(
            [
                f"config: expected a mapping of fields, got {type(data).__name__}"
                + ("; for several configs use load_configs()" if isinstance(data, list) else "")
            ],
            label,
        )
    try:
        return PruningConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError.from_validation_error(exc, label) from None


def _labelled(data: Mapping[str, Any], label: str) -> PruningConfig:
    try:
        return load_config(data)
    except ConfigError as exc:
        raise ConfigError(exc.lines, label) from None


def load_configs(source: Any) -> list[PruningConfig]:
    """Several configs: a list, INC's ``{"pruning_configs": [...], <shared defaults>}``, a
    single config, or a YAML/JSON file holding any of these. Shared defaults apply to every
    entry of ``pruning_configs`` unless the entry sets the field itself."""
    label = "config"
    data = source
    if isinstance(source, (str, os.PathLike)):
        label = str(source)
        data = read_config_file(source)
    if isinstance(data, PruningConfig):
        return [data]
    if isinstance(data, Mapping) and "pruning_configs" in data:
        shared = {k: v for k, v in data.items() if k != "pruning_configs"}
        entries = data["pruning_configs"] or [{}]
        data = [{**shared, **dict(entry)} for entry in entries]
    if isinstance(data, Mapping):
        return [load_config(data) if label == "config" else _labelled(data, label)]
    if not isinstance(data, Sequence) or isinstance(data, (str, bytes)):
        raise ConfigError(
            [f"config: expected a mapping or a list of mappings, got {type(data).__name__}"], label
        )
    configs: list[PruningConfig] = []
    lines: list[str] = []
    for i, item in enumerate(data):
        try:
            configs.append(load_config(item))
        except ConfigError as exc:
            lines.extend(f"pruning_configs[{i}].{line}" for line in exc.lines)
    if lines:
        raise ConfigError(lines, label)
    return configs


def config_json_schema() -> dict[str, Any]:
    """The JSON Schema of a config, with every registered pattern's own fields.

    Each pattern's options are added under an ``if`` on the ``pattern`` field (its exact
    name, or its family grammar), and ``unevaluatedProperties: false`` keeps unknown keys
    out, so editors can complete and check configs, plugin fields included.
    """
    from prunekit.plugins import default_host

    schema = PruningConfig.model_json_schema(by_alias=False)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    properties = schema.setdefault("properties", {})
    properties["pruning_type"] = {
        "$ref": "#/properties/criterion",
        "description": "INC's name for 'criterion'.",
    }
    schema.pop("additionalProperties", None)
    schema["unevaluatedProperties"] = False
    names: list[str] = []
    families: list[dict[str, str]] = []
    branches: list[dict[str, Any]] = []
    defs = schema.setdefault("$defs", {})
    for entry in default_host().patterns.entries():
        if entry.spec is not None:
            # JSON Schema regexes are ECMA-262: named groups are written (?<name>...).
            regex = "^(?:" + entry.spec.pattern.replace("(?P<", "(?<") + ")$"
            families.append({"pattern": regex, "description": f"{entry.name}: {entry.description}"})
            condition: dict[str, Any] = {"pattern": regex}
        else:
            names.append(entry.name)
            condition = {"const": entry.name}
        option_schema = entry.obj.Options.model_json_schema()
        option_properties = option_schema.get("properties", {})
        if not option_properties:
            continue
        defs.update(option_schema.pop("$defs", {}))
        branches.append(
            {
                "if": {"properties": {"pattern": condition}},
                "then": {"properties": option_properties},
            }
        )
    properties["pattern"]["anyOf"] = [*([{"enum": names}] if names else []), *families]
    if branches:
        schema["allOf"] = branches
    return schema
