"""prunekit.testing: the contract battery plugin authors run, run on every registered pattern,
and shown to catch patterns that break the contract."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

import prunekit as pk
from prunekit.plugins import default_host, reset_default_host
from prunekit.testing import check_pattern


def every_spec() -> list[str]:
    """Every pattern whose units are blocks of one weight (``head``'s span layers: its
    tests are in test_slim.py, and the battery refuses it, below)."""
    specs = []
    for entry in default_host().patterns.entries():
        if not entry.obj.couples_itself:
            specs.extend(entry.examples if entry.is_family else [entry.name])
    return specs


@pytest.mark.parametrize("spec", every_spec())
def test_every_registered_pattern_keeps_the_contract(spec: str) -> None:
    check_pattern(spec)


def test_options_are_passed_through() -> None:
    check_pattern("block_diagonal", blocks=2)
    check_pattern("ln_structured", n=1, dim=0)
    with pytest.raises(AssertionError, match="not registered"):
        check_pattern("no_such_pattern")
    with pytest.raises(AssertionError, match="spanning several layers"):
        check_pattern("head")


def lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Keep mask without the ``count`` lowest scores (ties: lower index)."""
    keep = torch.ones(scores.numel(), dtype=torch.bool)
    keep[torch.sort(scores.reshape(-1), stable=True).indices[:count]] = False
    return keep.reshape(scores.shape)


class IgnoresCaps(pk.Pattern):
    """Each op alone at the target, pre-masks kept, whatever the caps."""

    def get_masks(self, scores, target_sparsity, pre_masks=None):  # type: ignore[no-untyped-def]
        target = self.check_target(target_sparsity)
        self.check_inputs(scores, pre_masks)
        masks = {}
        for name, s in scores.items():
            keyed = s.clone()
            if pre_masks and name in pre_masks:
                keyed[~pre_masks[name]] = float("-inf")  # removed before: first again
            masks[name] = lowest(keyed, round(target * s.numel()))
        return masks


class IgnoresScope(pk.Pattern):
    """The caps kept, but each op alone even under global scope."""

    def get_masks(self, scores, target_sparsity, pre_masks=None):  # type: ignore[no-untyped-def]
        target = self.check_target(target_sparsity)
        self.check_inputs(scores, pre_masks)
        low, high = self.config.min_sparsity_ratio_per_op, self.config.max_sparsity_ratio_per_op
        masks = {}
        for name, s in scores.items():
            count = min(
                max(round(target * s.numel()), -(-int(low * s.numel() * 1e6) // 10**6)),
                int(high * s.numel()),
            )
            masks[name] = lowest(s, count)
            if pre_masks and name in pre_masks:
                masks[name] &= pre_masks[name]
        return masks


class Transposes(pk.Pattern):
    """Masks of the wrong shape on 2-D weights."""

    def get_masks(self, scores, target_sparsity, pre_masks=None):  # type: ignore[no-untyped-def]
        self.check_inputs(scores, pre_masks)
        return {n: torch.ones(s.shape[::-1], dtype=torch.bool) for n, s in scores.items()}


class Revives(pk.Pattern):
    """Exact and capped per op, but blind to pre-masks."""

    def get_masks(self, scores, target_sparsity, pre_masks=None):  # type: ignore[no-untyped-def]
        return super().get_masks(scores, target_sparsity)

    def layout(self, name, module):  # type: ignore[no-untyped-def]
        return pk.GridLayout(self.shapes[name], 1, 1)


@pytest.fixture
def registering() -> Iterator[None]:
    reset_default_host()
    yield
    reset_default_host()


@pytest.mark.parametrize(
    "cls, broken",
    [
        (IgnoresCaps, r"its caps|min cap|max cap|outside its caps"),
        (IgnoresScope, r"global scope compares scores across ops|the target asks"),
        (Transposes, r"not shaped like its weight"),
        (Revives, r"revived pre-removed weights"),
    ],
)
def test_the_battery_catches_a_pattern_that_breaks_the_contract(
    registering: None, cls: type[pk.Pattern], broken: str
) -> None:
    pk.register_pattern("broken")(cls)
    with pytest.raises(AssertionError, match=broken):
        check_pattern("broken")


def test_a_get_masks_only_pattern_that_keeps_the_contract_passes(registering: None) -> None:
    class Delegates(pk.Pattern):
        """Overrides get_masks alone (here: to log), keeping the engine's answer."""

        calls = 0

        def get_masks(self, scores, target_sparsity, pre_masks=None):  # type: ignore[no-untyped-def]
            type(self).calls += 1
            return super().get_masks(scores, target_sparsity, pre_masks)

        def layout(self, name, module):  # type: ignore[no-untyped-def]
            return pk.GridLayout(self.shapes[name], 2, 1)

    pk.register_pattern("delegates")(Delegates)
    check_pattern("delegates")
    assert Delegates.calls > 50
