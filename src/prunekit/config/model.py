"""``PruningConfig``: one pruning config, validated by pydantic once.

Field names follow Intel Neural Compressor's ``WeightPruningConfig`` so INC users can bring
their dicts. Pattern-specific parameters sit flat in the same dict (``{"pattern":
"ln_structured", "n": 2}``); they are moved into ``pattern_options`` and validated by the
pattern's own ``Options`` model. Unknown keys are refused with a did-you-mean.

Names (pattern, criterion, schedule) are checked against a plugin host: the one given in
the validation context (``PruningConfig.model_validate(data, context={"host": host})``, or
``load_config(data, host=host)``), else the process's default host. The pattern a config
resolves to, its spec parameters and its validated options are kept with the config, so a
run resolves and validates them once (:mod:`prunekit.config.resolve`).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails

from prunekit.config.criterion_options import (
    criterion_of,
    default_scope,
    move_criterion_options,
    scope_problems,
)
from prunekit.config.messages import (
    custom,
    detail,
    explained,
    option_error,
    raise_all,
    unknown_name,
)
from prunekit.errors import InvalidSpecError, PruningWarning, UnknownNameError
from prunekit.masks.pattern import Pattern
from prunekit.plugins.default import default_host
from prunekit.plugins.host import PluginHost

Scope = Literal["global", "local", "per_output"]
LayerSparsity = Literal["uniform", "owl"]
DecayType = Literal["linear", "cube", "exp", "cos"]
PruneMode = Literal["Identity", "Static", "Gradual"]
# N2D2's prune modes are schedules under another name.
PRUNE_MODE_SCHEDULES: dict[str, str] = {
    "Identity": "identity",
    "Static": "oneshot",
    "Gradual": "gradual",
}
_Options = TypeVar("_Options", bound=BaseModel)


def host_of(info: ValidationInfo) -> PluginHost:
    """The plugin host names are checked against: the validation context's, else the
    default host."""
    context = info.context if isinstance(info.context, Mapping) else {}
    host = context.get("host")
    return host if isinstance(host, PluginHost) else default_host()


@dataclass(frozen=True, eq=False)
class Resolution:
    """The pattern a config resolved to on one host, with its spec parameters and validated
    options. Kept with the config so a run resolves once; not part of the config's value:
    it compares equal to any other (and to none), and a pickled config leaves it behind
    (it refers to a live plugin host)."""

    host: PluginHost
    cls: type[Pattern]
    params: Mapping[str, Any]
    options: BaseModel

    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = None  # type: ignore[assignment]

    def __deepcopy__(self, memo: dict[int, Any]) -> Resolution:
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (_no_resolution, ())


def _no_resolution() -> None:
    return None


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
        "each op reaches the target alone; 'per_output': every output row of every op "
        "reaches it alone (Wanda's comparison group). A criterion may set its own default "
        "(wanda: 'per_output', sparsegpt: 'local').",
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
    coupled: bool = Field(
        False,
        description="Remove whole classes of tied channels (a conv's filters with the next "
        "layer's inputs, a residual stream's channels across blocks), scored over every "
        "weight they touch, so that all that is removed can be slimmed; needs a pattern that "
        "removes whole channels and example_inputs to trace the model.",
    )
    prune_shared_weights: bool = Field(
        False,
        description="Prune an op whose weight another module holds too (tied weights, such "
        "as a language model's lm_head and its input embedding); off by default, so that "
        "tied weights are not pruned by accident.",
    )
    pattern_options: dict[str, Any] = Field(
        default_factory=dict,
        description="The pattern's own parameters (may also be given "
        "flat, at the top level of the config).",
    )
    criterion_options: dict[str, Any] = Field(
        default_factory=dict,
        description="The criterion's own parameters, such as sparsegpt's blocksize and "
        "percdamp (may also be given flat, at the top level of the config).",
    )
    layer_sparsity: LayerSparsity = Field(
        "uniform",
        description="How the target spreads over the model's repeated blocks (calibration): "
        "'uniform' (every block at the target) or 'owl' (blocks with more activation "
        "outliers pruned less, OWL; the mean over all selected weights stays the target).",
    )
    owl_m: float = Field(
        5.0,
        gt=0.0,
        allow_inf_nan=False,
        description="OWL's M: a weight is an outlier when its score |w| * ||x|| exceeds M "
        "times the mean score of its block.",
    )
    owl_lambda: float = Field(
        0.08,
        ge=0.0,
        lt=1.0,
        allow_inf_nan=False,
        description="OWL's lambda: block sparsities spread over target +- lambda (before "
        "the per-op caps).",
    )
    sequential: bool | None = Field(
        None,
        description="Calibration: prune the model's repeated blocks one after another, each "
        "calibrated on the outputs of the blocks already pruned; None: sequential for "
        "calibration criteria and OWL when the model has repeated blocks.",
    )
    sequential_blocks: str | None = Field(
        None,
        description="Calibration: the dotted name of the module list holding the repeated "
        "blocks ('model.layers'); None: found from the module tree.",
    )
    _resolution: Resolution | None = PrivateAttr(default=None)

    # -- around: the pattern resolved once, flat pattern parameters moved into
    # pattern_options, unknown keys given a did-you-mean, every problem reported at once ---
    @model_validator(mode="wrap")
    @classmethod
    def _validate(
        cls, data: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
    ) -> Any:
        if not isinstance(data, Mapping):
            return handler(data)
        data = dict(data)
        if "start_step" in data and "end_step" not in data:  # prune once, at start_step
            data["end_step"] = data["start_step"]
        spec = data.get("pattern", cls.model_fields["pattern"].default)
        host = host_of(info)
        early, pattern_cls, params = _resolve_pattern(spec, host)
        options = None
        option_fields: set[str] = set()
        if pattern_cls is not None:
            option_fields = set(pattern_cls.Options.model_fields)
            options, option_errors = _pattern_options(data, pattern_cls, spec, option_fields)
            early += option_errors
            if "target_sparsity" not in data and pattern_cls.default_target(spec) is not None:
                data["target_sparsity"] = pattern_cls.default_target(spec)
        criterion = criterion_of(data, host)
        if criterion is not None:
            fields, criterion_errors = move_criterion_options(
                data, *criterion, top_level_keys() | option_fields
            )
            option_fields |= fields
            early += criterion_errors
            if "pruning_scope" not in data and default_scope(criterion[1]) is not None:
                data["pruning_scope"] = default_scope(criterion[1])
        try:
            validated = handler(data)
        except ValidationError as exc:
            # A field that already has a problem of its own is not reported twice.
            said = {tuple(e["loc"]) for e in early}
            errors = [
                explained(e, spec, option_fields, top_level_keys())
                for e in exc.errors()
                if tuple(e["loc"]) not in said
            ]
            raise ValidationError.from_exception_data(exc.title, early + errors) from None
        raise_all(early)
        assert pattern_cls is not None and options is not None  # no early error: resolved
        validated._resolution = Resolution(host, pattern_cls, params, options)
        raise_all(_pattern_problems(validated, pattern_cls))
        if criterion is not None:
            raise_all(scope_problems(*criterion, validated.pruning_scope))
        return validated

    # -- fields -----------------------------------------------------------------------------
    @field_validator("criterion")
    @classmethod
    def _known_criterion(cls, value: str, info: ValidationInfo) -> str:
        try:
            host_of(info).criteria.resolve(value)
        except UnknownNameError as exc:
            raise unknown_name(exc) from None
        return value

    @field_validator("schedule")
    @classmethod
    def _known_schedule(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            try:
                host_of(info).schedules.resolve(value)
            except UnknownNameError as exc:
                raise unknown_name(exc) from None
        return value

    @field_validator("op_names", "excluded_op_names")
    @classmethod
    def _regexes_compile(cls, values: list[str]) -> list[str]:
        for i, expression in enumerate(values):
            try:
                re.compile(expression)
            except re.error as exc:
                raise custom(
                    f"item {i} {expression!r} is not a valid regular expression: {exc}"
                ) from None
        return values

    @field_validator("pruning_op_types")
    @classmethod
    def _type_names(cls, values: list[str]) -> list[str]:
        for value in values:
            if not value.isidentifier():
                raise custom(f"{value!r} is not a module class name such as 'Linear' or 'Conv2d'")
        return values

    # -- after: relations between fields ---------------------------------------------------
    @model_validator(mode="after")
    def _consistent(self) -> PruningConfig:
        raise_all(_relation_problems(self))
        if self.min_sparsity_ratio_per_op > self.target_sparsity:
            warnings.warn(
                f"min_sparsity_ratio_per_op {self.min_sparsity_ratio_per_op:g} is above "
                f"target_sparsity {self.target_sparsity:g}: every op removes at least "
                f"{self.min_sparsity_ratio_per_op:.0%}, so the ops together remove more than "
                "the target",
                PruningWarning,
                stacklevel=2,
            )
        return self

    # -- what a run reads ---------------------------------------------------------------------
    @property
    def schedule_name(self) -> str:
        """The schedule in force: ``schedule``, else N2D2's ``prune_mode``, else INC's rule
        (one-shot when ``end_step == start_step``, iterative otherwise)."""
        if self.schedule is not None:
            return self.schedule
        if self.prune_mode is not None:
            return PRUNE_MODE_SCHEDULES[self.prune_mode]
        return "oneshot" if self.end_step == self.start_step else "iterative"

    @property
    def resolution(self) -> Resolution | None:
        """What this config's pattern resolved to when it was validated (None after a
        pickle round trip)."""
        return self._resolution

    def options_for(self, model: type[_Options]) -> _Options:
        """The pattern options validated by ``model``: the ones validation made when they
        are of that model, else validated now."""
        cached = self._resolution.options if self._resolution is not None else None
        if isinstance(cached, model):
            return cached
        return model.model_validate(self.pattern_options)


def top_level_keys() -> set[str]:
    """Every key a config may have at its top level (pattern options aside)."""
    keys = set(PruningConfig.model_fields)
    keys.add("pruning_type")
    return keys


def _resolve_pattern(
    spec: Any, host: PluginHost
) -> tuple[list[InitErrorDetails], type[Pattern] | None, Mapping[str, Any]]:
    """(problems, class, spec parameters) of the pattern ``spec`` names on ``host``."""
    if isinstance(spec, int) and not isinstance(spec, bool) and spec >= 60:
        n, m = divmod(spec, 60)
        return (
            [
                detail(
                    "pattern",
                    spec,
                    f"is a number, not a pattern name: YAML 1.1 reads an unquoted {n}:{m} as the "
                    f"base-60 number {spec}; quote it (pattern: '{n}:{m}'), or load the file with "
                    "prunekit.load_config, which keeps it a string",
                )
            ],
            None,
            {},
        )
    if not isinstance(spec, str):
        return [], None, {}  # the field's own validation reports the type
    try:
        pattern_cls: type[Pattern] = host.patterns.resolve(spec).obj
        params = pattern_cls.parse_spec(spec)
    except UnknownNameError as exc:
        return [InitErrorDetails(type=unknown_name(exc), loc=("pattern",), input=spec)], None, {}
    except InvalidSpecError as exc:
        return [detail("pattern", spec, str(exc))], None, {}
    return [], pattern_cls, params


def _pattern_options(
    data: dict[str, Any], pattern_cls: type[Pattern], spec: str, option_fields: set[str]
) -> tuple[BaseModel | None, list[InitErrorDetails]]:
    """The pattern's options from ``data`` (flat keys moved into ``pattern_options``),
    validated once; ``data["pattern_options"]`` becomes their plain dump."""
    options = dict(data.get("pattern_options") or {})
    for key in [k for k in data if k in option_fields and k not in top_level_keys()]:
        options[key] = data.pop(key)
    try:
        validated = pattern_cls.Options.model_validate(options)
    except ValidationError as exc:
        data.pop("pattern_options", None)
        return None, [option_error(e, spec) for e in exc.errors()]
    data["pattern_options"] = validated.model_dump()
    return validated, []


def _pattern_problems(config: PruningConfig, pattern_cls: type[Pattern]) -> list[InitErrorDetails]:
    """What the pattern itself finds wrong with an otherwise valid config."""
    problems = []
    for field, message in pattern_cls.check_config(config).items():
        value = getattr(config, field, config.pattern_options.get(field))
        problems.append(detail(field, value, message))
    if config.pruning_scope == "per_output" and pattern_cls.layout is Pattern.layout:
        problems.append(
            detail(
                "pruning_scope",
                config.pruning_scope,
                f"pattern {config.pattern!r} chooses its masks itself (it has no block "
                "layout), so it cannot compare weights within output rows; use 'local' or "
                "'global'",
            )
        )
    return problems


def _relation_problems(config: PruningConfig) -> list[InitErrorDetails]:
    """Fields that are valid alone but contradict each other."""
    errors: list[InitErrorDetails] = []
    if config.coupled and config.pruning_scope == "per_output":
        errors.append(
            detail(
                "pruning_scope",
                config.pruning_scope,
                "coupled: true removes whole classes of tied channels across ops, which are "
                "not rows of one op; use 'local' or 'global'",
            )
        )
    if config.min_sparsity_ratio_per_op > config.max_sparsity_ratio_per_op:
        errors.append(
            detail(
                "min_sparsity_ratio_per_op",
                config.min_sparsity_ratio_per_op,
                f"is above max_sparsity_ratio_per_op ({config.max_sparsity_ratio_per_op}); "
                "it must be at most that",
            )
        )
    if config.target_sparsity > config.max_sparsity_ratio_per_op:
        errors.append(
            detail(
                "target_sparsity",
                config.target_sparsity,
                f"is above max_sparsity_ratio_per_op ({config.max_sparsity_ratio_per_op}), so "
                "no op may reach it; lower the target or raise the cap",
            )
        )
    if config.prune_mode == "Gradual" and config.start > config.target_sparsity:
        errors.append(
            detail(
                "start",
                config.start,
                f"is above target_sparsity ({config.target_sparsity}); Gradual rises from "
                "start to the target",
            )
        )
    if config.prune_mode is not None and config.schedule is not None:
        implied = PRUNE_MODE_SCHEDULES[config.prune_mode]
        if implied != config.schedule:
            errors.append(
                detail(
                    "schedule",
                    config.schedule,
                    f"contradicts prune_mode {config.prune_mode!r} (which means schedule "
                    f"{implied!r}); give one of them",
                )
            )
    if config.end_step < config.start_step:
        errors.append(
            detail(
                "end_step",
                config.end_step,
                f"is before start_step ({config.start_step}); it must be >= it",
            )
        )
    return errors
