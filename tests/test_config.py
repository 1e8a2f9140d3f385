"""PruningConfig: bounds on every field, unknown keys, pattern options, files, schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError
from torch import nn

import prunekit as pk
from prunekit.config import config_json_schema


def error_lines(config: dict) -> list[str]:
    with pytest.raises(pk.ConfigError) as info:
        pk.load_config(config)
    return info.value.lines


def test_defaults_follow_inc() -> None:
    config = pk.PruningConfig()
    assert (config.pattern, config.target_sparsity, config.pruning_scope) == ("4x1", 0.9, "global")
    assert (config.min_sparsity_ratio_per_op, config.max_sparsity_ratio_per_op) == (0.0, 0.98)
    assert config.pruning_op_types == ["Conv", "Linear"]
    assert config.pattern_options == {"criterion_reduce_type": "mean", "indivisible": "partial"}


@pytest.mark.parametrize(
    "field,value,fragment",
    [
        ("target_sparsity", 1.0, "less than 1"),
        ("target_sparsity", -0.1, "greater than or equal to 0"),
        ("target_sparsity", float("nan"), "finite"),
        ("target_sparsity", "lots", "valid number"),
        ("min_sparsity_ratio_per_op", 1.5, "less than or equal to 1"),
        ("max_sparsity_ratio_per_op", -1, "greater than or equal to 0"),
        ("pruning_scope", "globl", "'global', 'local' or 'per_output'"),
        ("start_step", -1, "greater than or equal to 0"),
        ("end_step", -5, "greater than or equal to 0"),
        ("pruning_frequency", 0, "greater than or equal to 1"),
        ("sparsity_decay_type", "quadratic", "'linear', 'cube', 'exp' or 'cos'"),
        ("seed", -3, "greater than or equal to 0"),
        ("op_names", ["fc[0-9"], "not a valid regular expression"),
        ("excluded_op_names", ["(head"], "not a valid regular expression"),
        ("pruning_op_types", ["Linear", "not a type"], "is not a module class name"),
        ("criterion", "magnitud", "did you mean 'magnitude'"),
        ("schedule", "iterativ", "did you mean 'iterative'"),
        ("pattern", "4x0", "block size M=0 must be >= 1"),
        ("pattern", "4:x", "unknown pattern '4:x'"),
        ("criterion_reduce_type", "avg", "'mean', 'sum' or 'max' (an option of pattern '4x1')"),
        ("indivisible", "drop", "'partial', 'skip' or 'raise'"),
    ],
)
def test_each_field_names_the_value_and_what_is_valid(
    field: str, value: object, fragment: str
) -> None:
    lines = error_lines(
        {field: value, "target_sparsity": 0.5} if field != "target_sparsity" else {field: value}
    )
    line = next(line for line in lines if line.startswith(f"{field}:"))
    assert fragment in line
    assert f"(got {value!r})" in line


def test_unknown_keys_get_did_you_mean_and_all_errors_come_together() -> None:
    lines = error_lines({"target_sparsty": 0.5, "pruning_scope": "globl", "indivisble": "skip"})
    assert "target_sparsty: unknown key; did you mean 'target_sparsity'? (got 0.5)" in lines
    assert "indivisble: unknown key; did you mean 'indivisible'? (got 'skip')" in lines
    assert any(line.startswith("pruning_scope:") for line in lines)
    (line,) = error_lines({"zzzz": 1})
    assert line.startswith(
        "zzzz: unknown key; valid keys (PruningConfig's fields and the "
        "options of pattern '4x1'): coupled, criterion, criterion_reduce_type"
    )


def test_cross_field_rules() -> None:
    lines = error_lines(
        {
            "min_sparsity_ratio_per_op": 0.5,
            "max_sparsity_ratio_per_op": 0.3,
            "target_sparsity": 0.4,
            "start_step": 10,
            "end_step": 5,
        }
    )
    assert any(
        line.startswith("min_sparsity_ratio_per_op: is above max_sparsity_ratio_per_op (0.3)")
        for line in lines
    )
    assert any(
        line.startswith("target_sparsity: is above max_sparsity_ratio_per_op") for line in lines
    )
    assert any(line.startswith("end_step: is before start_step (10)") for line in lines)


def test_pruning_type_is_incs_name_for_criterion() -> None:
    assert pk.PruningConfig.model_validate({"pruning_type": "l2"}).criterion == "l2"
    assert pk.load_config({"criterion": "l2"}).criterion == "l2"


def test_pattern_options_flat_or_nested_and_validated_by_the_pattern() -> None:
    flat = pk.load_config({"pattern": "2x2", "criterion_reduce_type": "max"})
    nested = pk.load_config({"pattern": "2x2", "pattern_options": {"criterion_reduce_type": "max"}})
    assert flat == nested and flat.pattern_options["criterion_reduce_type"] == "max"
    assert pk.load_config(flat.model_dump()) == flat  # round trip
    # A plugin pattern's own field is validated by its model, and unknown to others.
    assert pk.load_config({"pattern": "block_diagonal", "blocks": 8}).pattern_options["blocks"] == 8
    lines = error_lines({"pattern": "block_diagonal", "blocks": 1})
    assert any(line.startswith("blocks:") and "block_diagonal" in line for line in lines)
    assert error_lines({"pattern": "4x1", "blocks": 8})[0].startswith("blocks: unknown key")


def test_direct_construction_raises_pydantic_errors_with_the_same_text() -> None:
    with pytest.raises(ValidationError, match="did you mean 'target_sparsity'"):
        pk.PruningConfig.model_validate({"target_sparsty": 0.5})
    with pytest.raises(ValueError):  # ConfigError and ValidationError are both ValueErrors
        pk.load_config({"target_sparsity": 3})


def test_config_is_frozen() -> None:
    config = pk.PruningConfig()
    with pytest.raises(ValidationError):
        config.target_sparsity = 0.1  # type: ignore[misc]


def test_yaml_and_json_files(tmp_path: Path) -> None:
    yaml_file = tmp_path / "prune.yaml"
    yaml_file.write_text("pattern: 1x1\ntarget_sparsity: 0.7\npruning_scope: local\n")
    json_file = tmp_path / "prune.json"
    json_file.write_text(json.dumps({"pattern": "channelx1", "target_sparsity": 0.3}))
    assert pk.load_config(yaml_file).pattern == "1x1"
    assert pk.load_config(str(json_file)).target_sparsity == 0.3
    assert pk.load_config(yaml_file).pruning_scope == "local"
    bad = tmp_path / "bad.yaml"
    bad.write_text("pattern: 4x1\ntarget_sparsity: 2\n")
    with pytest.raises(pk.ConfigError) as info:
        pk.load_config(bad)
    assert str(bad) in str(info.value) and "target_sparsity: Input should be less than 1" in str(
        info.value
    )
    with pytest.raises(pk.ConfigError, match="does not exist"):
        pk.load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("pattern: [unclosed\n")
    with pytest.raises(pk.ConfigError, match="cannot parse"):
        pk.load_config(broken)


def test_load_configs_accepts_incs_pruning_configs_with_shared_defaults(tmp_path: Path) -> None:
    source = {
        "target_sparsity": 0.8,
        "pruning_configs": [
            {"op_names": ["conv.*"], "pattern": "4x1"},
            {"op_names": ["fc.*"], "pattern": "1x1", "target_sparsity": 0.5},
        ],
    }
    configs = pk.load_configs(source)
    assert [(c.pattern, c.target_sparsity) for c in configs] == [("4x1", 0.8), ("1x1", 0.5)]
    with pytest.raises(pk.ConfigError) as info:
        pk.load_configs([{"pattern": "4x1"}, {"pattern": "nope"}])
    assert info.value.lines[0].startswith("pruning_configs[1].pattern: unknown pattern 'nope'")
    with pytest.raises(pk.ConfigError, match="for several configs use load_configs"):
        pk.load_config([{"pattern": "4x1"}])  # type: ignore[arg-type]


def test_json_schema_has_builtin_and_plugin_fields() -> None:
    schema = config_json_schema()
    assert schema["unevaluatedProperties"] is False
    assert schema["properties"]["target_sparsity"]["exclusiveMaximum"] == 1.0
    regexes = [branch["if"]["properties"]["pattern"] for branch in schema["allOf"]]
    assert {"const": "block_diagonal"} in regexes
    nxm = next(b for b in schema["allOf"] if "pattern" in b["if"]["properties"]["pattern"])
    assert "criterion_reduce_type" in nxm["then"]["properties"]
    assert "(?<n>" in nxm["if"]["properties"]["pattern"]["pattern"]  # ECMA named groups
    diagonal = next(
        b
        for b in schema["allOf"]
        if b["if"]["properties"]["pattern"] == {"const": "block_diagonal"}
    )
    assert "blocks" in diagonal["then"]["properties"]
    json.dumps(schema)


def test_an_unknown_pattern_is_both_a_config_error_and_an_unknown_pattern_error() -> None:
    """get_pattern validates the dict: the error is a ConfigError (``field: message`` lines,
    a ValueError) and the documented UnknownPatternError (a KeyError, with suggestions);
    catching either works."""
    modules = {"conv": nn.Conv2d(3, 8, 3)}
    for caught in (pk.UnknownPatternError, pk.ConfigError, KeyError, ValueError):
        with pytest.raises(caught) as info:
            pk.get_pattern({"pattern": "filtr"}, modules)
        assert isinstance(info.value, pk.UnknownPatternError)
        assert isinstance(info.value, pk.ConfigError)
    error = info.value
    assert error.suggestions[0] == "filter"
    assert "pattern: unknown pattern 'filtr'; did you mean 'filter'" in str(error)
    assert error.lines == [line.strip() for line in str(error).splitlines()[1:]]


def test_several_configs_keep_the_unknown_name_error() -> None:
    with pytest.raises(pk.UnknownCriterionError) as info:
        pk.load_configs([{"pattern": "4x1"}, {"pattern": "1x1", "criterion": "magnitud"}])
    assert isinstance(info.value, pk.ConfigError)
    assert "pruning_configs[1].criterion: unknown criterion 'magnitud'" in str(info.value)
    assert info.value.suggestions == ["magnitude"]
