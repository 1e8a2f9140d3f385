"""The registry: exact names, family grammars, taken names, did-you-mean, listing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.plugins import reset_default_host
from prunekit.plugins.registry import Registry


@pytest.fixture
def restore_registry() -> Iterator[None]:
    """In-process registrations land in the default host: each test gets a fresh one, and
    the next use after it loads a fresh one again."""
    reset_default_host()
    yield
    reset_default_host()


class KeepEverything(pk.Pattern):
    """A complete pattern that overrides get_masks alone."""

    description = "keeps every weight"

    def get_masks(self, scores, target_sparsity, pre_masks=None):  # type: ignore[no-untyped-def]
        self.check_target(target_sparsity)
        self.check_inputs(scores, pre_masks)
        return {n: torch.ones(s, dtype=torch.bool) for n, s in self.shapes.items()}


def test_family_grammar_resolves_specs() -> None:
    assert pk.PATTERNS["4x1"] is pk.PATTERNS["NxM"]
    assert "channelx1" in pk.PATTERNS and "1xchannel" in pk.PATTERNS and "16x16" in pk.PATTERNS
    assert "4x" not in pk.PATTERNS and 4 not in pk.PATTERNS
    assert pk.PATTERNS.entry("2x2").name == "NxM"
    assert pk.PATTERNS.entry("2x2").owner == "prunekit" and pk.PATTERNS.entry("2x2").builtin


def test_unknown_pattern_is_a_key_error_with_close_matches() -> None:
    with pytest.raises(pk.UnknownPatternError) as info:
        pk.PATTERNS["4X1"]
    assert isinstance(info.value, KeyError)
    assert "did you mean '4x1'" in str(info.value)
    assert "prunekit patterns" in str(info.value)
    assert info.value.suggestions[0] == "4x1"


def test_register_pattern_decorator_and_use_from_config(restore_registry: None) -> None:
    pk.register_pattern("keep_all")(KeepEverything)
    assert "keep_all" in pk.list_patterns()
    assert pk.PATTERNS.entry("keep_all").owner == __name__
    pattern = pk.get_pattern({"pattern": "keep_all"}, {"fc": nn.Linear(3, 2)})
    assert isinstance(pattern, KeepEverything)
    assert pattern.get_masks({"fc": torch.rand(2, 3)}, 0.5)["fc"].all()


def test_taken_names_are_refused_with_both_owners(restore_registry: None) -> None:
    with pytest.raises(pk.NameTakenError) as info:
        pk.register_pattern("4x1")(KeepEverything)
    message = str(info.value)
    assert "family 'NxM' already claims it (owner prunekit (built-in))" in message
    assert f"owner {__name__}" in message
    with pytest.raises(pk.NameTakenError, match="'NxM'"):
        pk.register_pattern("NxM")(KeepEverything)
    pk.register_pattern("mine")(KeepEverything)
    with pytest.raises(pk.NameTakenError, match="override=True"):
        pk.register_pattern("mine")(KeepEverything)
    pk.register_pattern("mine", override=True)(KeepEverything)  # explicit replacement
    with pytest.raises(pk.NameTakenError):
        pk.register_pattern("NxM", override=True)(KeepEverything)  # never over a built-in


def test_a_family_whose_grammar_overlaps_is_refused(restore_registry: None) -> None:
    class Tiles(KeepEverything):
        spec = r"[0-9]+x[0-9]+"
        spec_examples = ("3x3",)

    with pytest.raises(pk.NameTakenError, match="'3x3'"):
        pk.register_pattern("tiles")(Tiles)

    class Stripes(KeepEverything):
        spec = r"stripe[0-9]+"
        spec_examples = ("stripe2",)

    pk.register_pattern("stripes")(Stripes)
    assert pk.PATTERNS["stripe7"] is Stripes


def test_registering_a_non_pattern_is_a_type_error(restore_registry: None) -> None:
    with pytest.raises(TypeError, match=r"subclass of prunekit\.Pattern"):
        pk.register_pattern("bad")(object)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not valid"):
        pk.register_pattern("has space")(KeepEverything)


def test_list_patterns_wildcards_and_natural_order(restore_registry: None) -> None:
    for name in ("blk10", "blk2", "blk1"):
        pk.register_pattern(name)(type(name, (KeepEverything,), {}))
    assert pk.list_patterns("blk*") == ["blk1", "blk2", "blk10"]
    assert pk.list_patterns("BLK?") == ["blk1", "blk2"]
    assert pk.list_patterns("nxm") == ["NxM"]  # no wildcard: substring, any case
    assert pk.list_patterns("zzz*") == []


def test_registry_resolution_order_is_registration_order() -> None:
    registry: Registry[object] = Registry(
        "thing",
        pk.UnknownPatternError,
        "list them",
        lambda obj: ("", getattr(obj, "spec", None), ()),
    )

    class A:
        spec = r"a[0-9]+"

    registry.add("beta1", object(), "me")
    registry.add("fam", A, "me")
    assert registry.resolve("beta1").name == "beta1"
    assert registry.resolve("a7").name == "fam"
    with pytest.raises(pk.NameTakenError, match="family 'fam' already claims it"):
        registry.add("a1", object(), "you")  # an exact name inside a family's grammar
    with pytest.raises(pk.UnknownPatternError, match="did you mean 'beta1'"):
        registry.resolve("beta2")
