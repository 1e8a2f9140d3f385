"""Schedules: step -> target sparsity, with INC's, fasterai's and N2D2's formulas."""

from __future__ import annotations

import math

import pytest

import prunekit as pk


def schedule(**fields: object) -> list[float]:
    config = pk.load_config({"target_sparsity": 0.8, **fields})
    at = pk.SCHEDULES[config.schedule_name](config)
    return [round(at(step), 10) for step in range(0, 12)]


def test_inc_rule_picks_oneshot_or_iterative() -> None:
    assert pk.load_config({}).schedule_name == "oneshot"
    assert pk.load_config({"start_step": 2, "end_step": 10}).schedule_name == "iterative"
    assert schedule(start_step=3, end_step=3) == [0.0] * 3 + [0.8] * 9


@pytest.mark.parametrize(
    "kind,formula",
    [
        ("linear", lambda p: 0.8 * p),
        ("cube", lambda p: 0.8 * p**3),
        ("cos", lambda p: 0.8 * (1 - math.cos(p * math.pi / 2))),
        ("exp", lambda p: 1 - (0.2) ** p),
    ],
)
def test_iterative_decay_types(kind: str, formula) -> None:  # type: ignore[no-untyped-def]
    values = schedule(start_step=0, end_step=10, pruning_frequency=2, sparsity_decay_type=kind)
    expected = [formula(((s // 2) * 2) / 10) if s < 10 else 0.8 for s in range(12)]
    assert values == pytest.approx(expected)


def test_agp_is_zhu_and_gupta_cubic() -> None:
    values = schedule(schedule="agp", start_step=0, end_step=10)
    assert values == pytest.approx(
        [0.8 * (1 - (1 - s / 10) ** 3) if s < 10 else 0.8 for s in range(12)]
    )


def test_n2d2_modes() -> None:
    assert schedule(prune_mode="Identity") == [0.0] * 12
    assert schedule(prune_mode="Static") == [0.8] * 12
    assert schedule(prune_mode="Gradual", start=0.2, gamma=0.25, stepsize=4) == pytest.approx(
        [0.2] * 4 + [0.45] * 4 + [0.7] * 4
    )
    assert schedule(prune_mode="Gradual", start=0.5, gamma=0.25, stepsize=1)[2:] == [0.8] * 10


@pytest.mark.parametrize(
    "fields,line",
    [
        (
            {"prune_mode": "gradual"},
            "prune_mode: Input should be 'Identity', 'Static' or 'Gradual'",
        ),
        ({"prune_mode": "Gradual", "start": 0.9}, "start: is above target_sparsity (0.8)"),
        ({"gamma": 0}, "gamma: Input should be greater than 0"),
        ({"stepsize": 0}, "stepsize: Input should be greater than or equal to 1"),
        ({"prune_mode": "Static", "schedule": "agp"}, "schedule: contradicts prune_mode 'Static'"),
    ],
)
def test_n2d2_fields_are_validated(fields: dict, line: str) -> None:
    with pytest.raises(pk.ConfigError) as info:
        pk.load_config({"target_sparsity": 0.8, **fields})
    assert any(text.startswith(line) for text in info.value.lines), info.value.lines
