"""The Pruner end to end, on real small models with real training steps."""

from __future__ import annotations

import copy
import io
import pickle
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import prunekit as pk


class ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.head(x.mean(dim=(2, 3)))


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4)
    )


def train_steps(
    model: nn.Module,
    pruner: pk.Pruner | None,
    optimizer: torch.optim.Optimizer,
    steps: int,
    shape: tuple[int, ...],
    classes: int,
    seed: int = 0,
) -> list[float]:
    generator = torch.Generator().manual_seed(seed)
    achieved = []
    for _ in range(steps):
        x = torch.randn(8, *shape, generator=generator)
        y = torch.randint(0, classes, (8,), generator=generator)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        if pruner is not None:
            pruner.step()
            achieved.append(pruner.report().achieved)
    return achieved


def weights_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_gradual_schedule_hits_exact_sparsity_at_every_step_and_weights_stay_zero() -> None:
    model = mlp()
    config = {
        "pattern": "1x1",
        "target_sparsity": 0.8,
        "start_step": 0,
        "end_step": 8,
        "pruning_frequency": 2,
        "sparsity_decay_type": "linear",
        "pruning_scope": "local",
    }
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    pruner = pk.Pruner(model, config, optimizer=optimizer)
    achieved = train_steps(model, pruner, optimizer, 10, (20,), 4)
    sizes = [20 * 64, 64 * 32, 32 * 4]
    for step, value in enumerate(achieved):
        target = 0.8 * min((step // 2) * 2, 8) / 8
        expected = sum(round(target * n) for n in sizes) / sum(sizes)
        assert value == pytest.approx(expected, abs=1e-12), step
    for module, mask in zip(pruner.ops.values(), pruner.masks.values(), strict=True):
        assert (module.weight[~mask] == 0).all()
        assert (module.weight.grad[~mask] == 0).all()  # gradients are masked


def test_adam_and_momentum_cannot_revive_pruned_weights_between_steps() -> None:
    for make in (
        lambda p: torch.optim.Adam(p, lr=0.1),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01),
        lambda p: torch.optim.AdamW(p, lr=0.1),
    ):
        model = mlp()
        optimizer = make(model.parameters())
        train_steps(model, None, optimizer, 3, (20,), 4)  # momentum built up before pruning
        pruner = pk.Pruner(model, {"pattern": "4x1", "target_sparsity": 0.5}, optimizer=optimizer)
        pruner.prune_now()
        masks = {n: m.clone() for n, m in pruner.masks.items()}
        # Optimizer steps WITHOUT pruner.step(): gradients and moments are masked.
        train_steps(model, None, optimizer, 5, (20,), 4, seed=1)
        for name, module in pruner.ops.items():
            assert (module.weight[~masks[name]] == 0).all(), (make, name)


def test_cnn_with_batchnorm_filter_pruning_and_bias() -> None:
    torch.manual_seed(0)
    model = ConvBN()
    config = {
        "pattern": "filter",
        "target_sparsity": 0.5,
        "pruning_scope": "local",
        "pruning_op_types": ["Conv2d"],
        "prune_bias": True,
    }
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pruner = pk.Pruner(model, config, optimizer=optimizer)
    assert list(pruner.ops) == ["conv1", "conv2"]
    train_steps(model, pruner, optimizer, 4, (3, 8, 8), 10)
    for module in pruner.ops.values():
        removed_filters = ~module.weight_mask.flatten(1).any(dim=1)
        assert int(removed_filters.sum()) == module.out_channels // 2
        assert (module.bias[removed_filters] == 0).all()
        assert (module.weight[removed_filters] == 0).all()
    report = pruner.report()
    assert report.achieved == pytest.approx(0.5)
    assert [op.name for op in report.ops] == ["conv1", "conv2"]


def test_tiny_transformer_block_with_two_configs() -> None:
    torch.manual_seed(0)
    block = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, batch_first=True)
    configs = [
        {"pattern": "2:4", "op_names": ["linear[12]"], "pruning_scope": "local"},
        {"pattern": "1x1", "op_names": ["out_proj"], "target_sparsity": 0.3},
    ]
    pruner = pk.prune(block, configs)
    assert set(pruner.ops) == {"linear1", "linear2", "self_attn.out_proj"}
    report = {op.name: op for op in pruner.report().ops}
    assert report["linear1"].hardware_valid and report["linear2"].hardware_valid
    assert report["linear1"].achieved == 0.5
    assert report["self_attn.out_proj"].achieved == pytest.approx(round(0.3 * 256) / 256)
    out = block(torch.randn(2, 5, 16))
    out.sum().backward()
    assert (block.linear1.weight.grad[~block.linear1.weight_mask] == 0).all()


def test_op_selection_errors_name_the_ops() -> None:
    model = mlp()
    with pytest.raises(pk.OpSelectionError, match=r"selects no op.*prunable modules: 0 \(Linear\)"):
        pk.Pruner(model, {"op_names": ["^nothing$"]})
    with pytest.raises(pk.OpSelectionError, match=r"op '2' is claimed by config 0 .* and config 1"):
        pk.Pruner(model, [{"op_names": ["2"]}, {"op_names": ["^[24]$"]}])
    pruner = pk.Pruner(model, {"excluded_op_names": ["^4$"], "pruning_op_types": ["Linear"]})
    assert list(pruner.ops) == ["0", "2"]


def test_copy_pickle_save_state_dict_and_compile_with_a_pruner_attached(tmp_path: Path) -> None:
    model = mlp()
    pruner = pk.prune(model, {"pattern": "4x1", "target_sparsity": 0.6})
    x = torch.randn(3, 20)
    expected = model(x)
    copied = copy.deepcopy(model)
    assert torch.equal(copied(x), expected)
    assert torch.equal(copied[0].weight_mask, model[0].weight_mask)
    unpickled = pickle.loads(pickle.dumps(model))
    assert torch.equal(unpickled(x), expected)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    assert torch.equal(torch.load(buffer, weights_only=False)(x), expected)
    state = model.state_dict()
    assert set(state) == {"0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"}
    plain = mlp()
    plain.load_state_dict(state)  # a plain model loads a pruned model's weights
    assert torch.equal(plain(x), expected)
    compiled = torch.compile(model, backend="eager")
    assert torch.allclose(compiled(x), expected)
    compiled(x).sum().backward()
    assert (model[0].weight.grad[~model[0].weight_mask] == 0).all()
    assert pruner.report().achieved == pytest.approx(0.6, abs=0.01)


def test_remove_bakes_masks_and_leaves_a_plain_model() -> None:
    model = mlp()
    pruner = pk.prune(model, {"pattern": "1x1", "target_sparsity": 0.5, "pruning_scope": "local"})
    masks = {n: m.clone() for n, m in pruner.masks.items()}
    pruner.remove()
    for name, module in pruner.ops.items():
        assert not hasattr(module, "weight_mask")
        assert type(module.weight) is nn.Parameter
        assert (module.weight[~masks[name]] == 0).all()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train_steps(model, None, optimizer, 2, (20,), 4)
    assert (model[0].weight[~masks["0"]] != 0).any()  # plain again: training moves them
    with pytest.raises(pk.PrunekitError, match="was removed"):
        pruner.step()


def test_resume_from_state_dict_equals_an_uninterrupted_run() -> None:
    config = {
        "pattern": "4x1",
        "target_sparsity": 0.75,
        "start_step": 0,
        "end_step": 6,
        "pruning_frequency": 1,
        "criterion": "snip_momentum",
    }

    def run(split: int | None) -> dict[str, torch.Tensor]:
        model = mlp()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        pruner = pk.Pruner(model, config, optimizer=optimizer)
        generator_seed = 3
        if split is None:
            train_steps(model, pruner, optimizer, 8, (20,), 4, seed=generator_seed)
            return pruner.masks
        train_steps(model, pruner, optimizer, split, (20,), 4, seed=generator_seed)
        saved_model = copy.deepcopy(model.state_dict())
        saved_pruner = pruner.state_dict()
        saved_optimizer = copy.deepcopy(optimizer.state_dict())
        fresh = mlp()
        fresh.load_state_dict(saved_model)
        fresh_optimizer = torch.optim.SGD(fresh.parameters(), lr=0.05)
        fresh_optimizer.load_state_dict(saved_optimizer)
        resumed = pk.Pruner(fresh, config, optimizer=fresh_optimizer)
        resumed.load_state_dict(saved_pruner)
        # the remaining steps see the same data as the uninterrupted run
        generator = torch.Generator().manual_seed(generator_seed)
        for _ in range(split):
            torch.randn(8, 20, generator=generator)
            torch.randint(0, 4, (8,), generator=generator)
        for _ in range(8 - split):
            x = torch.randn(8, 20, generator=generator)
            y = torch.randint(0, 4, (8,), generator=generator)
            fresh_optimizer.zero_grad()
            nn.functional.cross_entropy(fresh(x), y).backward()
            fresh_optimizer.step()
            resumed.step()
        return resumed.masks

    straight = run(None)
    resumed = run(3)
    assert all(torch.equal(straight[n], resumed[n]) for n in straight)


def test_save_and_load_masks_round_trip_and_errors(tmp_path: Path) -> None:
    model = mlp()
    pruner = pk.prune(model, {"pattern": "2x2", "target_sparsity": 0.5})
    path = tmp_path / "masks.safetensors"
    pruner.save_masks(path)
    other = mlp()
    target = pk.Pruner(other, {"pattern": "2x2", "target_sparsity": 0.5})
    target.load_masks(path)
    assert all(torch.equal(target.masks[n], pruner.masks[n]) for n in pruner.masks)
    assert all((other.get_submodule(n).weight[~m] == 0).all() for n, m in target.masks.items())

    from safetensors.torch import save_file

    masks = {n: m.clone() for n, m in pruner.masks.items()}
    bad = {**masks, "extra": torch.ones(2, 2, dtype=torch.bool)}
    del bad["4"]
    bad["2"] = torch.ones(3, 3, dtype=torch.bool)
    save_file(bad, str(tmp_path / "bad.safetensors"))
    fresh = mlp()
    before = weights_of(fresh)
    loader = pk.Pruner(fresh, {"pattern": "2x2"})
    with pytest.raises(pk.MaskFileError) as info:
        loader.load_masks(tmp_path / "bad.safetensors")
    message = str(info.value)
    assert "missing masks for '4'" in message
    assert "masks for ops this Pruner does not prune: 'extra'" in message
    assert "'2': mask shape (3, 3) does not match the weight's shape (32, 64)" in message
    assert "Nothing was changed" in message
    assert all(torch.equal(before[k], v) for k, v in weights_of(fresh).items())
    assert not hasattr(fresh[0], "weight_mask")
    with pytest.raises(pk.MaskFileError, match="cannot read masks"):
        loader.load_masks(tmp_path / "missing.safetensors")


def test_failures_leave_the_model_exactly_as_it_was() -> None:
    model = mlp()
    before = weights_of(model)
    modules_before = [type(m) for m in model.modules()]
    with pytest.raises(pk.ConfigError):
        pk.Pruner(model, [{"pattern": "4x1"}, {"pattern": "4x1", "target_sparsity": 2}])
    with pytest.raises(pk.UnsupportedModuleError):
        pk.Pruner(model, {"pattern": "kernel"})
    pruner = pk.Pruner(model, {"pattern": "1x1", "criterion": "snip"})
    with pytest.raises(pk.PrunekitError, match="needs gradients"):
        pruner.step()  # no backward yet: refused before anything changes
    with pytest.raises(pk.MaskFileError, match="not a prunekit Pruner state dict"):
        pruner.load_state_dict({"masks": {}})
    other = pk.Pruner(mlp(), {"pattern": "1x1", "target_sparsity": 0.4})
    with pytest.raises(pk.MaskFileError, match=r"target_sparsity = 0\.4 there, 0\.9 here"):
        pruner.load_state_dict(other.state_dict())
    assert all(torch.equal(before[k], v) for k, v in weights_of(model).items())
    assert [type(m) for m in model.modules()] == modules_before
    assert not any(hasattr(m, "weight_mask") for m in model.modules())


def test_report_json_and_text() -> None:
    model = mlp()
    pruner = pk.prune(model, {"pattern": "2:4", "target_sparsity": 0.25, "pruning_scope": "local"})
    report = pruner.report()
    data = report.to_dict()
    assert data["achieved"] == pytest.approx(0.25)
    assert {op["hardware_valid"] for op in data["ops"]} == {False}
    assert "not hardware-valid" in data["ops"][0]["note"]
    assert "prunekit report" in str(report) and "total" in str(report)
    import json

    assert json.loads(report.to_json())["removed"] == report.removed


def test_an_unreachable_target_is_refused_before_training() -> None:
    conv = nn.Sequential(nn.Conv2d(1, 8, 3))  # 2-D view (8, 9): no whole 2:4 group per row
    with (
        pytest.warns(pk.PruningWarning),
        pytest.raises(
            pk.ImpossibleTargetError,
            match=r"every op is left unpruned \('0': its 2-D view \(8, 9\)",
        ),
    ):
        pk.Pruner(conv, {"pattern": "2:4", "target_sparsity": 0.5})
    partial = {"pattern": "2:4", "target_sparsity": 0.5, "indivisible": "partial"}
    with pytest.raises(
        pk.ImpossibleTargetError,
        match=r"allow at most 32 \(44\.4444%\).*'0' 44\.44% \(at most 2 of every 4 weights, "
        r"edge columns dense\).*lower target_sparsity to at most 0\.4444",
    ):
        pk.Pruner(conv, partial)
    # 72 weights, max cap 0.9: at most floor(0.9 * 72) = 64 of them may go. A target of
    # 0.89 asks for round(64.08) = 64 (reached); 0.9 asks for round(64.8) = 65.
    capped = {"pattern": "1x1", "target_sparsity": 0.89, "max_sparsity_ratio_per_op": 0.9}
    pk.Pruner(conv, capped)
    with pytest.raises(
        pk.ImpossibleTargetError,
        match=r"config 0 \(pattern '1x1'\): target_sparsity 0\.9 cannot be reached: it asks for "
        r"65 of the 72 weights.*at most 64 .*'0' 88\.89% \(max_sparsity_ratio_per_op 0\.9\)"
        r".*raise max_sparsity_ratio_per_op \(now 0\.9\), which limits '0'",
    ):
        pk.Pruner(conv, {**capped, "target_sparsity": 0.9})
    assert not hasattr(conv[0], "weight_mask")


def mixtral() -> nn.Module:
    """transformers' Mixtral: its experts are fused 3-D tensors, no module's weight."""
    from transformers import MixtralConfig, MixtralForCausalLM

    config = MixtralConfig(
        vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
    )  # fmt: skip
    torch.manual_seed(0)
    return MixtralForCausalLM(config).eval()


def test_matrices_that_are_no_modules_weight_are_named_in_a_warning() -> None:
    model = mixtral()
    config = {"pattern": "1x1", "target_sparsity": 0.5, "op_names": ["layers"]}
    with pytest.warns(pk.PruningWarning) as caught:
        pruner = pk.Pruner(model, config)
    (message,) = [str(w.message) for w in caught if "stay dense" in str(w.message)]
    assert message.startswith(
        "config with pattern '1x1': 4 matrices its op_names reach are not the weight of a "
        "module and stay dense: model.layers.0.mlp.experts.gate_up_proj (MixtralExperts, "
        "(4, 256, 64)), model.layers.0.mlp.experts.down_proj (MixtralExperts, (4, 64, 128)), "
        "model.layers.1.mlp.experts.gate_up_proj (MixtralExperts, (4, 256, 64)) and 1 more, "
        "89% of the weights reached."
    )
    assert len(pruner.ops) == 8  # the attention projections; the router is not a Linear
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pk.Pruner(mixtral(), {**config, "op_names": ["self_attn"]})  # reaches no expert
        pk.Pruner(mlp(), {"target_sparsity": 0.5})


def test_reparametrized_weights_are_not_taken_for_fused_matrices() -> None:
    from torch.nn.utils import parametrize, prune

    model = nn.ModuleDict({"fc": nn.Linear(8, 8), "a": nn.Conv1d(8, 8, 3), "b": nn.Conv1d(8, 8, 3)})
    prune.l1_unstructured(model["a"], "weight", amount=0.5)  # weight_orig behind weight
    parametrize.register_parametrization(model["b"], "weight", nn.Identity())  # ...original
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pk.Pruner(model, {"target_sparsity": 0.5, "pruning_op_types": ["Linear"]})
