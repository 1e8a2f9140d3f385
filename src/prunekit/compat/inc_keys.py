"""INC 3.7.1's pruning keys, each translated to prunekit's config, or named in a warning or
an error when prunekit does not do what it asks.

One INC pruner entry (an entry of ``pruning_configs`` after INC's inheritance, see
:mod:`prunekit.compat.inc_config`) goes key by key through :data:`HANDLERS`: every key INC
3.7.1 reads has exactly one handler, so none can be dropped silently. The rule for keys
prunekit lacks: an **error** when leaving the key out would give a different model than INC
did (regularization, learned or post-training masks, head pruning), a **warning** when the
result is the same or differs only where INC's own behaviour was accidental (ignored keys,
lower-precision scores, progressive interpolation between pruning steps). A key left at
INC's default asks for nothing and produces nothing. docs/migrating-from-inc.md has the
table.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from prunekit.config.model import top_level_keys
from prunekit.errors import ConfigError, PruningWarning
from prunekit.naming import close_matches

INC_VERSION: Final = "3.7.1"
SOURCE: Final = "INC WeightPruningConfig"

PROGRESSIVE_SUFFIX: Final = "_progressive"
PATTERN_LOCK: Final = "pattern_lock"
# INC 3.7.1's pruners prunekit does not have: what they do (why leaving them out changes
# the model) and the nearest thing prunekit does.
_DURING_TRAINING: Final = (
    "prunekit prunes during training: use pruning_type 'snip_momentum' (or 'magnitude') with "
    "start_step/end_step in a training loop"
)
REFUSED_PRUNING_TYPES: Final[dict[str, tuple[str, str]]] = {
    "block_mask": (
        "INC's learned block masks (mask parameters trained by gradient)",
        "use pruning_type 'snip_momentum' with the same pattern for gradual block pruning",
    ),
    "retrain_free": (
        "INC's post-training mask search and rearrangement from a calibration dataloader",
        _DURING_TRAINING,
    ),
    "sparse_gpt": (
        "SparseGPT's one-shot weight reconstruction from a calibration dataloader",
        _DURING_TRAINING,
    ),
}
_NXM: Final = re.compile(r"([0-9]+|channel)x([0-9]+|channel)")
_NM: Final = re.compile(r"[0-9]+:[0-9]+")
_N_IN_M: Final = re.compile(r"([0-9]+)in([0-9]+)")


def inc_defaults() -> dict[str, Any]:
    """INC 3.7.1's default pruner entry: ``default_config`` of ``process_and_check_config``
    (neural_compressor/compression/pruner/utils.py). New lists on every call: INC's own are
    module-level objects its processing mutates, so one config's values leak into the next."""
    return {
        "target_sparsity": 0.9,
        "pruning_type": "snip_momentum",
        "pattern": "4x1",
        "op_names": [],
        "excluded_op_names": [],
        "start_step": 0,
        "end_step": 0,
        "pruning_scope": "global",
        "pruning_frequency": 1,
        "min_sparsity_ratio_per_op": 0.0,
        "max_sparsity_ratio_per_op": 0.98,
        "sparsity_decay_type": "exp",
        "criterion_type": "snip_momentum",
        "pruning_op_types": ["Conv", "Linear"],
        "low_memory_usage": False,
        "resume_from_pruned_checkpoint": False,
        "reg_type": None,
        "criterion_reduce_type": "mean",
        "parameters": {"reg_coeff": 0.0},
        "reg_coeff": 0.0,
    }


_PACKAGE: Final = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def user_stacklevel() -> int:
    """The ``stacklevel`` of the first caller outside prunekit, for a warning issued by the
    function calling this: the warning then points at the script's own line."""
    frame = sys._getframe(1)
    level = 1
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(
        _PACKAGE
    ):
        frame = frame.f_back
        level += 1
    return level


class IncCompatWarning(PruningWarning):
    """An INC key prunekit ignores or reads differently, named with its value; the result is
    the same as INC's or differs only as the message says."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class UnsupportedIncKeyError(ConfigError):
    """INC keys whose behaviour prunekit does not have and without which the model would
    differ from INC's; one ``pruning_configs[i].key: message`` line each, all at once."""

    def __init__(self, lines: Sequence[str], keys: Sequence[str]) -> None:
        super().__init__(lines, SOURCE)
        self.keys = tuple(keys)


@dataclass
class Translation:
    """One INC pruner entry as prunekit sees it: the prunekit config, and what was said
    about the keys that do not carry over."""

    index: int
    config: dict[str, Any] = field(default_factory=dict)
    pattern_options: dict[str, Any] = field(default_factory=dict)
    warnings: list[tuple[str, str]] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    lock: bool = False

    def warn(self, key: str, message: str) -> None:
        """Name ``key`` in a warning: prunekit ignores it or reads it differently."""
        self.warnings.append((key, f"pruning_configs[{self.index}].{key}: {message}"))

    def refuse(self, key: str, message: str) -> None:
        """Name ``key`` in the error (prunekit lacks what it asks)."""
        self.errors.append((key, f"pruning_configs[{self.index}].{key}: {message}"))


Handler = Callable[[Any, Mapping[str, Any], Translation], None]


# -- handlers: the keys prunekit has under the same name ------------------------------------
def _same(field_name: str) -> Handler:
    """The value, unchanged, under prunekit's field of the same meaning."""

    def handle(value: Any, entry: Mapping[str, Any], out: Translation) -> None:
        out.config[field_name] = value

    return handle


def _names(field_name: str) -> Handler:
    """A list of names; INC iterates a plain string character by character (matching
    almost every module), which no one means, so a string is read as a one-item list."""

    def handle(value: Any, entry: Mapping[str, Any], out: Translation) -> None:
        out.config[field_name] = [value] if isinstance(value, str) else list(value or [])

    return handle


def _end_step(value: Any, entry: Mapping[str, Any], out: Translation) -> None:
    """INC prunes at ``start_step + k * pruning_frequency`` up to ``end_step`` and reaches the
    target at the last of these, which is prunekit's ``end_step``."""
    start, frequency = entry.get("start_step"), entry.get("pruning_frequency")
    if (
        isinstance(value, int)
        and isinstance(start, int)
        and isinstance(frequency, int)
        and frequency >= 1
        and value >= start >= 0
    ):
        value = start + ((value - start) // frequency) * frequency
    out.config["end_step"] = value


# -- handlers: keys that change meaning -------------------------------------------------------
def _pruning_type(value: Any, entry: Mapping[str, Any], out: Translation) -> None:
    """INC's ``pruning_type`` names the criterion and the kind of pruner at once."""
    name = str(value)
    if name == PATTERN_LOCK:
        out.lock = True
        return
    if name.endswith(PROGRESSIVE_SUFFIX):
        name = name[: -len(PROGRESSIVE_SUFFIX)]
        out.warn("pruning_type", _progressive_message(str(value), name, entry))
    refused = _refused_pruner(name)
    if refused is not None:
        what, instead = refused
        out.refuse(
            "pruning_type",
            f"{value!r} ({what}) is not in prunekit; without it the model would differ. "
            + instead[0].upper()
            + instead[1:],
        )
        return
    out.config["criterion"] = name


def _refused_pruner(name: str) -> tuple[str, str] | None:
    """What INC's pruner of this type does, when prunekit has no such pruner (INC sends any
    type containing 'gpt', 'retrain' or 'block' to these pruners)."""
    if name in REFUSED_PRUNING_TYPES:
        return REFUSED_PRUNING_TYPES[name]
    for marker, kind in (
        ("gpt", "sparse_gpt"),
        ("retrain", "retrain_free"),
        ("block", "block_mask"),
    ):
        if marker in name:
            return REFUSED_PRUNING_TYPES[kind]
    return None


def _progressive_message(given: str, base: str, entry: Mapping[str, Any]) -> str:
    """Why dropping the progressive part keeps the result's kind, and when INC itself ran
    the entry non-progressively."""
    message = (
        f"{given!r}: prunekit has no progressive pruning (INC's unstructured masks "
        f"interpolated between pruning steps); pruned with {base!r}: the same pattern, "
        "target and schedule, removed in whole blocks at each pruning step"
    )
    start, end, frequency = (
        entry.get("start_step"),
        entry.get("end_step"),
        entry.get("pruning_frequency"),
    )
    if frequency == 1 or (isinstance(start, int) and isinstance(end, int) and end - start <= 4):
        message += (
            f" (INC {INC_VERSION} runs this entry non-progressively too: pruning_frequency 1 "
            "or end_step - start_step <= 4)"
        )
    return message


def _pattern(value: Any, entry: Mapping[str, Any], out: Translation) -> None:
    """INC reads the text after the last '_' ('tile_pattern_4x1' is '4x1'); NxM skips a
    weight the block does not divide, as INC does."""
    text = str(value)
    tail = text.split("_")[-1]
    if "mha" in tail:
        out.refuse(
            "pattern",
            f"{value!r} (INC's attention-head pruning with model slimming) is not in prunekit; "
            "without it the model would differ. Prune the attention projections with an NxM "
            "pattern instead, e.g. pattern '1xchannel' with op_names ['attention']",
        )
        return
    n_in_m = _N_IN_M.fullmatch(tail)
    if n_in_m is not None:
        out.refuse(
            "pattern", f"{value!r} is not a pattern; INC writes N:M as '{n_in_m[1]}:{n_in_m[2]}'"
        )
        return
    if _NXM.fullmatch(tail):
        out.config["pattern"] = tail
        out.pattern_options.setdefault("indivisible", "skip")
    elif _NM.fullmatch(tail):
        out.config["pattern"] = tail
    else:
        out.config["pattern"] = text  # a prunekit or plugin pattern, checked by prunekit


def _reduce_type(value: Any, entry: Mapping[str, Any], out: Translation) -> None:
    """INC's block score reduction, the option of the same name of prunekit's block
    patterns (mean is both defaults, so it is passed only when it differs)."""
    if value != "mean":
        out.pattern_options["criterion_reduce_type"] = value


# -- handlers: keys prunekit does not have ---------------------------------------------------
def _low_memory(value: Any, entry: Mapping[str, Any], out: Translation) -> None:
    """INC's lower-precision scores; prunekit's are float32."""
    if value:
        out.warn(
            "low_memory_usage",
            f"{value!r} is ignored: INC keeps snip_momentum scores in bfloat16/float16 to save "
            "memory; prunekit keeps float32 scores, so masks can differ only where INC's "
            "rounding made scores tie",
        )


def _criterion_type(value: Any, entry: Mapping[str, Any], out: Translation) -> None:
    """INC overwrites ``criterion_type`` with ``pruning_type``."""
    pruning_type = str(entry.get("pruning_type", ""))
    base = pruning_type.removesuffix(PROGRESSIVE_SUFFIX)
    if value not in (None, inc_defaults()["criterion_type"], base, pruning_type):
        out.warn(
            "criterion_type",
            f"{value!r} is ignored, as INC {INC_VERSION} ignores it (it overwrites "
            f"criterion_type with pruning_type); the criterion is pruning_type {base!r}",
        )


def _resume(value: Any, entry: Mapping[str, Any], out: Translation) -> None:
    """INC checks ``resume_from_pruned_checkpoint`` and never uses it."""
    if value:
        out.warn(
            "resume_from_pruned_checkpoint",
            f"{value!r} is ignored, as INC {INC_VERSION} ignores it (it checks that it is a "
            "bool and never reads it); resume with Pruner.state_dict()/load_state_dict()",
        )


def _reg_type(value: Any, entry: Mapping[str, Any], out: Translation) -> None:
    """INC's regularization changes the weights during training: refused."""
    if value is not None:
        out.refuse(
            "reg_type",
            f"{value!r} (INC's regularization of the weights during training, with "
            f"reg_coeff {entry.get('reg_coeff')!r}) is not in prunekit; without it the model "
            "would differ. Remove reg_type (and reg_coeff) to prune without regularization",
        )


def _reg_coeff(value: Any, entry: Mapping[str, Any], out: Translation) -> None:
    """A coefficient without a regularization has no effect, in INC too."""
    if entry.get("reg_type") is None and value not in (None, 0, 0.0):
        out.warn(
            "reg_coeff",
            f"{value!r} is ignored: without reg_type it has no effect (in INC {INC_VERSION} too)",
        )


def _parameters(value: Any, entry: Mapping[str, Any], out: Translation) -> None:
    """INC's ``parameters`` dict is merged into the entry before its keys are read
    (:func:`flatten_parameters`), so each of its keys has its own handler."""
    if value is not None and not isinstance(value, Mapping):
        out.refuse("parameters", f"{value!r} must be a dict of keys, as in INC")


def _lock_init(value: Any, entry: Mapping[str, Any], out: Translation) -> None:
    """Schedules from the weights' existing sparsity are not prunekit's: refused."""
    if value:
        out.refuse(
            "lock_init_sparsity",
            f"{value!r} (INC starts the schedule from the sparsity the weights already have "
            "and keeps those zeros) is not in prunekit, whose schedules start from 0; without "
            "it the model would differ. Remove it",
        )


def _progressive(value: Any, entry: Mapping[str, Any], out: Translation) -> None:
    """INC derives ``progressive`` from the pruning type itself."""
    if value is not None:
        out.warn(
            "progressive",
            f"{value!r} is ignored, as INC {INC_VERSION} ignores it (it sets it itself from "
            "pruning_type's '_progressive' suffix)",
        )


HANDLERS: Final[dict[str, Handler]] = {
    "target_sparsity": _same("target_sparsity"),
    "pruning_type": _pruning_type,
    "pattern": _pattern,
    "op_names": _names("op_names"),
    "excluded_op_names": _names("excluded_op_names"),
    "start_step": _same("start_step"),
    "end_step": _end_step,
    "pruning_scope": _same("pruning_scope"),
    "pruning_frequency": _same("pruning_frequency"),
    "min_sparsity_ratio_per_op": _same("min_sparsity_ratio_per_op"),
    "max_sparsity_ratio_per_op": _same("max_sparsity_ratio_per_op"),
    "sparsity_decay_type": _same("sparsity_decay_type"),
    "pruning_op_types": _names("pruning_op_types"),
    "criterion_reduce_type": _reduce_type,
    "low_memory_usage": _low_memory,
    "criterion_type": _criterion_type,
    "resume_from_pruned_checkpoint": _resume,
    "reg_type": _reg_type,
    "reg_coeff": _reg_coeff,
    "parameters": _parameters,
    "lock_init_sparsity": _lock_init,
    "progressive": _progressive,
}


def passthrough_keys() -> frozenset[str]:
    """prunekit's own config fields an INC entry may add (``prune_bias``, ``seed``,
    ``schedule``, ``pattern_options`` ...): INC never had them, so no INC script is changed
    by them. ``criterion`` is not one: in an INC entry the criterion is ``pruning_type``."""
    return frozenset(top_level_keys() - set(HANDLERS) - {"criterion"})


def flatten_parameters(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The entry with its ``parameters`` dict merged in, over the entry's own keys, as INC's
    ``update_params`` does."""
    flat = dict(entry)
    parameters = entry.get("parameters")
    if isinstance(parameters, Mapping):
        flat.update(parameters)
    return flat


def translate(entry: Mapping[str, Any], index: int) -> Translation:
    """One INC pruner entry (INC's defaults filled in) as a prunekit config, with a warning
    or an error for every key that does not carry over."""
    flat = flatten_parameters(entry)
    out = Translation(index)
    _warn_overridden(entry, out)
    passthrough = passthrough_keys()
    for key, value in flat.items():
        if key in HANDLERS:
            HANDLERS[key](value, flat, out)
        elif key in passthrough:
            out.config[key] = value
        else:
            out.warn(key, unknown_key_message(key))
    if out.lock:
        _as_lock(flat, out)
    options = {**out.pattern_options, **dict(out.config.get("pattern_options") or {})}
    if options:
        out.config["pattern_options"] = options
    return out


def _warn_overridden(entry: Mapping[str, Any], out: Translation) -> None:
    """A key the entry sets itself that its ``parameters`` dict replaces (INC's default
    ``parameters`` is ``{"reg_coeff": 0.0}``, so a plain ``reg_coeff`` never counts in INC)."""
    parameters = entry.get("parameters")
    if not isinstance(parameters, Mapping):
        return
    defaults = inc_defaults()
    for key, value in parameters.items():
        own = entry.get(key)
        if key in entry and own != value and own != defaults.get(key):
            out.warn(
                key,
                f"{own!r} is replaced by parameters' {value!r}, as INC {INC_VERSION} does "
                f"(its update_params); set parameters={{{key!r}: ...}} to change it",
            )


def unknown_key_message(key: str) -> str:
    """INC logs '<key> is not supported for config' and goes on; so does prunekit, loudly."""
    known = sorted(set(HANDLERS) | passthrough_keys())
    hint = close_matches(key, known)
    return (
        f"not an INC {INC_VERSION} pruning key; ignored, as INC ignores it (it logs '{key} is "
        "not supported for config')" + (f"; did you mean {hint[0]!r}?" if hint else "")
    )


def _as_lock(entry: Mapping[str, Any], out: Translation) -> None:
    """INC's pattern_lock keeps the zeros the weights have at ``start_step`` and prunes
    nothing more: a config that never raises its target, whose masks are set from the
    weights at that step (by :mod:`prunekit.compat.inc_pruning`)."""
    start, end = entry.get("start_step"), entry.get("end_step")
    if start != end:
        out.refuse(
            "pruning_type",
            f"'pattern_lock' keeps the zeros of one step, so it needs start_step == end_step "
            f"(got {start!r} and {end!r}), as in INC {INC_VERSION}",
        )
    out.config.update(
        criterion="magnitude",
        schedule="identity",
        target_sparsity=0.0,
        min_sparsity_ratio_per_op=0.0,
        end_step=out.config.get("start_step", 0),
    )
