"""prune_in_place: the same zeros as pk.prune, no masks kept, and a failure that puts every
weight back from the records on disk (which are deleted after)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import prunekit as pk
from models import llama
from prunekit.plugins import PluginHost
from prunekit.training.criteria import criterion

LAYERS = ["layers"]


def batches(count: int = 3) -> list[Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randint(0, 128, (2, 10), generator=generator) for _ in range(count)]


def linears(model: nn.Module) -> dict[str, Tensor]:
    return {
        n: m.weight.detach().clone()
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and n.startswith("model.layers.")
    }


CONFIGS = [
    {"pattern": "1x1", "target_sparsity": 0.5, "op_names": LAYERS},
    {"pattern": "4x1", "target_sparsity": 0.5, "op_names": LAYERS, "pruning_scope": "global"},
    {"pattern": "1x1", "criterion": "wanda", "target_sparsity": 0.5, "op_names": LAYERS},
    {"pattern": "2:4", "criterion": "wanda", "target_sparsity": 0.5, "op_names": LAYERS},
    {"pattern": "2:4", "criterion": "sparsegpt", "blocksize": 32, "op_names": LAYERS},
    {
        "pattern": "1x1",
        "criterion": "wanda",
        "target_sparsity": 0.6,
        "op_names": LAYERS,
        "layer_sparsity": "owl",
        "pruning_scope": "global",
    },
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c['pattern']}-{c.get('criterion')}")
def test_the_weights_equal_those_pk_prune_leaves(config: dict, tmp_path: Path) -> None:
    data = batches()
    with_masks = llama()
    reference = pk.prune(with_masks, config, calibration_data=data)
    in_place = llama()
    report = pk.prune_in_place(in_place, config, calibration_data=data, undo_dir=tmp_path)
    expected, got = linears(with_masks), linears(in_place)
    for name, weight in expected.items():
        assert torch.equal(got[name], weight), name
    assert not any(hasattr(m, "weight_mask") for m in in_place.modules())
    assert report.removed == reference.report().removed
    assert [op.target for op in report.ops] == [op.target for op in reference.report().ops]
    valid = [op.hardware_valid for op in report.ops]
    assert valid == [op.hardware_valid for op in reference.report().ops]
    assert valid == [True if config["pattern"] == "2:4" else None] * len(report.ops)
    assert [lay.target for lay in report.layers] == [
        lay.target for lay in reference.report().layers
    ]
    assert list(tmp_path.iterdir()) == []  # the undo directory is gone with its records


def test_a_failure_puts_every_weight_back_from_the_records_on_disk(tmp_path: Path) -> None:
    seen: list[Path] = []
    second_block: set[int] = set()

    @criterion(statistics=("input_norms",))
    def fails_later(weight: Tensor, *, statistics: Mapping | None = None, **_: object) -> Tensor:
        assert statistics is not None
        seen.extend(tmp_path.glob("prunekit-undo-*/undo-*.pt"))
        if weight.data_ptr() in second_block:  # the first block is pruned by now
            raise RuntimeError("boom")
        return weight.abs() * statistics["input_norms"]

    class Plugin:
        @pk.hookimpl
        def register_criteria(self, register: pk.Register) -> None:
            register("fails_later", fails_later)

    host = PluginHost()
    host.add_plugin(Plugin(), name="failing")
    model = llama()
    second_block.update(p.data_ptr() for p in model.model.layers[1].parameters())
    before = copy.deepcopy(model.state_dict())
    config = {"pattern": "1x1", "criterion": "fails_later", "target_sparsity": 0.5}
    with pytest.raises(RuntimeError, match="boom"):
        pk.prune_in_place(
            model, {**config, "op_names": LAYERS}, calibration_data=batches(),
            host=host, undo_dir=tmp_path,
        )  # fmt: skip
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert seen, "the removed values were recorded in files under undo_dir"
    assert list(tmp_path.iterdir()) == []


def test_refuses_before_changing_anything() -> None:
    model = llama()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(pk.PrunekitError, match="criterion 'taylor' needs gradients"):
        pk.prune_in_place(model, {"pattern": "1x1", "criterion": "taylor", "op_names": LAYERS})
    with pytest.raises(pk.CalibrationError, match="criterion 'wanda' reads"):
        pk.prune_in_place(model, {"pattern": "1x1", "criterion": "wanda", "op_names": LAYERS})
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
