"""Slimming: coupled structured pruning and whole heads end in a smaller model that computes
what the masked one does, reloadable through its plan and through save_pretrained.

Every test prunes a real model (hand-built CNNs; Hugging Face models from small configs),
slims it, and compares outputs with the masked model's; shapes and parameter counts are
asserted exactly.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import prunekit as pk
from models import MobileNetish, ResNetish, bert, gpt2, llama, vit
from prunekit.masks.modules import carries_masks

TOLERANCE = 1e-5


def _output(model: nn.Module, inputs: Any) -> Tensor:
    with torch.no_grad():
        out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    for name in ("logits", "last_hidden_state"):
        if hasattr(out, name):
            return getattr(out, name)  # type: ignore[no-any-return]
    assert isinstance(out, Tensor)
    return out


def _same(a: Tensor, b: Tensor) -> bool:
    return bool(torch.allclose(a, b, rtol=TOLERANCE, atol=TOLERANCE * a.abs().max().item()))


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _randomize_norms(model: nn.Module) -> nn.Module:
    """BatchNorm with statistics and affine parameters away from the identity, so that a
    removed channel's constant (its BatchNorm shift) is not zero."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1, generator=generator)
            module.running_var.uniform_(0.5, 2, generator=generator)
            module.weight.data.uniform_(0.5, 1.5, generator=generator)
            module.bias.data.uniform_(-0.5, 0.5, generator=generator)
    return model.eval()


def _prune_and_slim(
    model: nn.Module, configs: Any, inputs: Any
) -> tuple[pk.Pruner, pk.SlimReport, Tensor, Tensor]:
    pruner = pk.prune(model, configs, example_inputs=inputs)
    masked = _output(model, inputs)
    report = pk.slim(model)
    return pruner, report, masked, _output(model, inputs)


CONV_FILTERS = {
    "pattern": "filter",
    "target_sparsity": 0.5,
    "coupled": True,
    "pruning_scope": "local",
    "pruning_op_types": ["Conv2d"],
}


# -- CNNs -------------------------------------------------------------------------------------
def test_resnet_with_downsample_halves_every_class_and_equals_the_masked_model() -> None:
    model = _randomize_norms(ResNetish())
    x = torch.randn(2, 3, 32, 32)
    _, report, masked, slimmed = _prune_and_slim(model, CONV_FILTERS, x)
    assert _same(masked, slimmed)
    # half of every class of tied channels (the residual streams across their blocks, each
    # block's inner channels): exactly a ResNet of half the widths
    assert report.params_after == _params(ResNetish((8, 16, 32, 64))) == _params(model)
    assert report.params_before == _params(ResNetish())
    assert report.macs_after < report.macs_before / 3
    assert model.layers[2].downsample[0].weight.shape == (16, 8, 1, 1)
    assert model.fc.weight.shape == (10, 64)
    assert report.kept == []


def test_mobilenet_depthwise_blocks_halve_with_their_expand_and_project() -> None:
    model = _randomize_norms(MobileNetish())
    x = torch.randn(2, 3, 32, 32)
    _, report, masked, slimmed = _prune_and_slim(model, CONV_FILTERS, x)
    assert _same(masked, slimmed)
    before = {c.name: c.before for c in report.changes}
    after = {c.name: c.after for c in report.changes}
    for name, shape in before.items():
        new = after[name]
        assert new[0] == shape[0] // 2 or name == "fc.weight", name
        if len(shape) == 4:  # depthwise convs keep their one input per group; stem its RGB
            kept_in = shape[1] if shape[1] in (1, 3) else shape[1] // 2
            assert new[1] == kept_in, name
    assert model.blocks[1].depthwise[0].groups == 48
    assert report.params_after == _params(model) == 5986


def test_global_scope_compares_classes_across_the_network() -> None:
    model = _randomize_norms(ResNetish())
    x = torch.randn(2, 3, 32, 32)
    config = {**CONV_FILTERS, "pattern": "1xchannel", "pruning_scope": "global"}
    _, report, masked, slimmed = _prune_and_slim(model, config, x)
    assert _same(masked, slimmed)
    assert report.params_after < report.params_before / 2
    widths = {model.layers[i].conv1.out_channels for i in range(8)}
    assert len(widths) > 2  # classes lose different shares under global scope


def test_filters_pruned_without_coupling_keep_what_a_padded_conv_would_see() -> None:
    """Plain filter masks leave the next conv reading a removed channel's BatchNorm shift;
    a zero-padded conv would see 0 at the borders instead, so those channels stay, said."""
    model = _randomize_norms(ResNetish())
    x = torch.randn(2, 3, 32, 32)
    config = {"pattern": "filter", "target_sparsity": 0.5, "pruning_op_types": ["Conv2d"]}
    pk.prune(model, config)
    masked = _output(model, x)
    report = pk.slim(model, x)
    assert _same(masked, _output(model, x))
    assert report.kept and any("pad" in kept.why for kept in report.kept)


def test_the_plan_rebuilds_a_fresh_model_that_loads_the_slimmed_weights() -> None:
    model = _randomize_norms(ResNetish())
    x = torch.randn(2, 3, 32, 32)
    _, report, _, slimmed = _prune_and_slim(model, CONV_FILTERS, x)
    plan = json.loads(json.dumps(report.plan))  # plain JSON
    fresh = pk.apply_slim_plan(ResNetish(), plan)
    fresh.load_state_dict(model.state_dict())
    assert _same(slimmed, _output(fresh.eval(), x))
    with pytest.raises(pk.SlimPlanError, match="should be a Conv2d"):
        pk.apply_slim_plan(MobileNetish(), plan)


# -- transformers -------------------------------------------------------------------------------
def _heads_and_ffn(ffn: str) -> list[dict[str, Any]]:
    return [
        {"pattern": "head", "target_sparsity": 0.5, "pruning_scope": "local"},
        {
            "pattern": "row",
            "target_sparsity": 0.5,
            "coupled": True,
            "pruning_scope": "local",
            "op_names": [ffn],
        },
    ]


TOKENS = {"input_ids": torch.randint(1, 128, (2, 8), generator=torch.Generator().manual_seed(0))}


def _reloads(model: nn.Module, tmp_path: Path, inputs: Any, expected: Tensor) -> nn.Module:
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["prunekit_slim_plans"][0]["format"] == "prunekit.slim"
    back = pk.load_slimmed(tmp_path)
    assert type(back) is type(model)
    assert _params(back) == _params(model)
    assert _same(expected, _output(back, inputs))
    return back


def test_bert_heads_and_ffn_halved(tmp_path: Path) -> None:
    model = bert().eval()
    _, report, masked, slimmed = _prune_and_slim(
        model, _heads_and_ffn("intermediate.dense"), TOKENS
    )
    assert _same(masked, slimmed)
    hidden, layers = 64, 2
    attention = 3 * (hidden * 32 + 32) + 32 * hidden  # q, k, v rows and output columns halved
    ffn = 2 * 64 * hidden + 64 + 0  # 128 -> 64 neurons: up (rows, bias) and down (columns)
    removed = layers * (attention + ffn)
    assert report.params_before - report.params_after == removed
    self_attention = model.encoder.layer[0].attention.self
    assert (self_attention.num_attention_heads, self_attention.all_head_size) == (2, 32)
    _reloads(model, tmp_path, TOKENS, slimmed)


def test_llama_with_grouped_query_attention_loses_whole_key_value_groups(tmp_path: Path) -> None:
    model = llama().eval()  # 4 query heads of 16, 2 key/value heads
    *_, masked, slimmed = _prune_and_slim(model, _heads_and_ffn("mlp.(gate|up)_proj"), TOKENS)
    assert _same(masked, slimmed)
    attention = model.model.layers[0].self_attn
    assert attention.q_proj.weight.shape == (32, 64)
    assert attention.k_proj.weight.shape == attention.v_proj.weight.shape == (16, 64)
    assert attention.o_proj.weight.shape == (64, 32)
    assert attention.num_key_value_groups == 2  # query heads per key/value head, unchanged
    mlp = model.model.layers[0].mlp
    assert mlp.gate_proj.out_features == mlp.up_proj.out_features == mlp.down_proj.in_features
    assert mlp.down_proj.in_features == 64
    back = _reloads(model, tmp_path, TOKENS, slimmed)
    generated = back.generate(**TOKENS, max_new_tokens=3, do_sample=False)
    assert generated.shape == (2, 11)


def test_gpt2_fused_attention_and_conv1d_ffn(tmp_path: Path) -> None:
    model = gpt2().eval()  # 4 heads of 16 in one c_attn (Conv1D, stored (in, out))
    *_, masked, slimmed = _prune_and_slim(model, _heads_and_ffn("mlp.c_fc"), TOKENS)
    assert _same(masked, slimmed)
    attention = model.transformer.h[0].attn
    assert attention.c_attn.weight.shape == (64, 96)
    assert attention.c_proj.weight.shape == (32, 64)
    assert (attention.num_heads, attention.split_size) == (2, 32)
    assert model.transformer.h[0].mlp.c_fc.weight.shape == (64, 128)
    _reloads(model, tmp_path, TOKENS, slimmed)


def test_vit(tmp_path: Path) -> None:
    model = vit().eval()
    pixels = {"pixel_values": torch.randn(2, 3, 16, 16)}
    _, report, masked, slimmed = _prune_and_slim(model, _heads_and_ffn("mlp.fc1"), pixels)
    assert _same(masked, slimmed)
    assert report.params_after < report.params_before
    _reloads(model, tmp_path, pixels, slimmed)


# -- the head pattern's masks ---------------------------------------------------------------
class Attention(nn.Module):
    """Grouped-query attention's layers by LLaMA's names: 4 query heads of 2, 2 kv heads."""

    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(8, 8)
        self.k_proj = nn.Linear(8, 4)
        self.v_proj = nn.Linear(8, 4)
        self.o_proj = nn.Linear(8, 8)


def _block() -> dict[str, nn.Module]:
    attention = Attention()
    return {f"attn.{name}": module for name, module in attention.named_children()}


def test_head_masks_are_whole_key_value_groups_exactly() -> None:
    ops = _block()
    pattern = pk.get_pattern(
        {"pattern": "head", "num_heads": 4, "num_key_value_heads": 2, "pruning_scope": "local"},
        ops,
    )
    scores = {name: torch.ones_like(m.weight) for name, m in ops.items()}
    scores["attn.k_proj"][2:] = 0.1  # the second key/value head scores lowest
    masks = pattern.get_masks(scores, 0.5)
    assert masks["attn.q_proj"].all(dim=1).tolist() == [True] * 4 + [False] * 4
    assert masks["attn.k_proj"].all(dim=1).tolist() == [True, True, False, False]
    assert masks["attn.v_proj"].all(dim=1).tolist() == [True, True, False, False]
    assert masks["attn.o_proj"].all(dim=0).tolist() == [True] * 4 + [False] * 4
    assert not masks["attn.o_proj"][:, 4:].any() and masks["attn.o_proj"][:, :4].all()


def test_head_without_grouped_query_removes_single_heads() -> None:
    ops = _block()
    ops["attn.k_proj"] = nn.Linear(8, 8)
    ops["attn.v_proj"] = nn.Linear(8, 8)
    pattern = pk.get_pattern({"pattern": "head", "num_heads": 4}, ops)
    scores = {name: torch.ones_like(m.weight) for name, m in ops.items()}
    scores["attn.q_proj"][2:4] = 0.0  # head 1
    masks = pattern.get_masks(scores, 0.25)
    assert masks["attn.q_proj"].all(dim=1).tolist() == [True, True, False, False] + [True] * 4
    assert masks["attn.v_proj"].all(dim=1).tolist() == [True, True, False, False] + [True] * 4


def test_head_errors_name_what_is_missing() -> None:
    ops = _block()
    del ops["attn.o_proj"]
    with pytest.raises(pk.OpSelectionError, match=r"without 'attn.o_proj'.*select all of them"):
        pk.get_pattern({"pattern": "head", "num_heads": 4}, ops)
    with pytest.raises(pk.OpSelectionError, match="found no attention block"):
        pk.get_pattern({"pattern": "head", "num_heads": 4}, {"fc": nn.Linear(4, 4)})
    pattern = pk.get_pattern({"pattern": "head"}, _block())
    scores = {name: torch.ones_like(m.weight) for name, m in _block().items()}
    with pytest.raises(pk.UnsupportedModuleError, match="give num_heads"):
        pattern.get_masks(scores, 0.5)
    with pytest.raises(pk.IndivisibleShapeError, match="3 query heads do not divide"):
        pk.get_pattern({"pattern": "head", "num_heads": 3}, _block())


# -- errors and failures ----------------------------------------------------------------------
class Branchy(nn.Module):
    """Control flow on a tensor's value: torch.export cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x)
        if h.sum() > 0:
            h = h * 2
        return self.fc2(h)


def test_an_untraceable_model_is_refused_by_name_and_keeps_its_masks() -> None:
    model = Branchy()
    pk.prune(model, {"pattern": "row", "target_sparsity": 0.5, "op_names": ["fc1"]})
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(pk.TraceError, match="cannot trace Branchy"):
        pk.slim(model, torch.randn(3, 4))
    assert carries_masks(model.fc1)
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    with pytest.raises(pk.TraceError, match="cannot trace Branchy"):
        pk.prune(model, {"pattern": "row", "coupled": True}, example_inputs=torch.randn(3, 4))


def test_a_failed_check_puts_back_modules_and_masks() -> None:
    model = _randomize_norms(ResNetish())
    x = torch.randn(2, 3, 32, 32)
    pruner = pk.prune(model, CONV_FILTERS, example_inputs=x)
    masks = {name: mask.clone() for name, mask in pruner.masks.items()}
    with pytest.raises(pk.SlimError):
        pk.slim(model, tolerance=-1.0)  # no output can be that close
    assert _params(model) == _params(ResNetish())
    assert all(torch.equal(masks[n], m) for n, m in pruner.masks.items())
    pruner.step()  # the Pruner still owns the model


def test_a_pruner_is_done_once_its_model_is_slimmed() -> None:
    model = _randomize_norms(ResNetish())
    pruner = pk.prune(model, CONV_FILTERS, example_inputs=torch.randn(1, 3, 32, 32))
    pk.slim(model)
    with pytest.raises(pk.PrunekitError, match="no longer carries this Pruner's masks"):
        pruner.step()


def test_coupled_needs_inputs_and_a_pattern_that_removes_channels() -> None:
    with pytest.raises(pk.CouplingError, match="needs example_inputs"):
        pk.Pruner(ResNetish(), CONV_FILTERS)
    with pytest.raises(pk.CouplingError, match="'4x1' does not remove whole channels"):
        pk.Pruner(
            ResNetish(), {**CONV_FILTERS, "pattern": "4x1"}, example_inputs=torch.randn(1, 3, 8, 8)
        )


class Neurons(pk.Pattern):
    """A plugin's pattern: whole output neurons of a Linear, saying so to coupled pruning."""

    Options = pk.BlockOptions

    def layout(self, name: str, module: nn.Module) -> pk.AxisLayout:
        return pk.AxisLayout(self.shapes[name], (1,))

    def channel_side(self, name: str) -> Literal["out", "in"] | None:
        return "out"


class NeuronsPlugin:
    @pk.hookimpl
    def register_patterns(self, register: Callable[[str, Any], None]) -> None:
        register("neurons", Neurons)
        register("silent_neurons", type("Silent", (Neurons,), {"channel_side": _no_side}))


def _no_side(self: pk.Pattern, name: str) -> None:
    return None


def test_a_plugin_pattern_that_removes_channels_couples_and_slims() -> None:
    host = pk.PluginHost()
    host.add_plugin(NeuronsPlugin(), name="neurons-plugin")
    model = _mlp([6, 12, 10, 3])
    x = torch.randn(4, 6)
    config = {"pattern": "neurons", "target_sparsity": 0.5, "coupled": True}
    config |= {"pruning_scope": "local", "op_names": ["^0$", "^2$"]}
    pruner = pk.Pruner(model, config, host=host, example_inputs=x)
    pruner.prune_now()
    masked = _output(model, x)
    pk.slim(model)
    assert _same(masked, _output(model, x))
    assert (model[0].out_features, model[2].out_features, model[4].in_features) == (6, 5, 5)
    with pytest.raises(pk.CouplingError, match="'silent_neurons' does not remove whole"):
        pk.Pruner(_mlp([6, 12, 3]), {**config, "pattern": "silent_neurons"}, host=host,
                  example_inputs=x)  # fmt: skip


def test_a_head_config_leaves_the_feed_forward_layers_to_another_config() -> None:
    model = bert()
    pruner = pk.Pruner(model, _heads_and_ffn("intermediate.dense"), example_inputs=TOKENS)
    owners = {name: group.index for group in pruner.groups for name in group.pruned}
    assert owners["encoder.layer.0.intermediate.dense"] == 1
    assert owners["encoder.layer.0.attention.self.query"] == 0
    with pytest.raises(pk.OpSelectionError, match=r"claimed by config 0 .* and config 1"):
        pk.Pruner(model, [{"pattern": "row"}, {"pattern": "4x1"}])


def test_the_slimming_guide_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every python block of docs/slimming.md, in order, in one namespace (as a reader
    pastes them)."""
    monkeypatch.chdir(tmp_path)
    text = (Path(__file__).resolve().parents[1] / "docs" / "slimming.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 4
    namespace: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile("\n".join(blocks), "slimming.md", "exec"), namespace)
    assert namespace["report"].params_after < namespace["report"].params_before


def test_the_readme_snippet_slims_a_bert(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("## Smaller and faster", 1)[1]
    block = section.split("```python\n", 1)[1].split("```", 1)[0]
    model = bert().eval()
    namespace: dict[str, Any] = {"pk": pk, "model": model, "input_ids": TOKENS["input_ids"]}
    exec(compile(block, "README.md", "exec"), namespace)
    assert _params(namespace["model"]) == namespace["report"].params_after < _params(bert())


# -- properties -----------------------------------------------------------------------------------
def _mlp(widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for inp, out in itertools.pairwise(widths):
        layers += [nn.Linear(inp, out), nn.GELU()]
    return nn.Sequential(*layers[:-1])


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    widths=st.lists(st.integers(2, 12), min_size=3, max_size=4),
    target=st.sampled_from([0.25, 0.5, 0.75]),
    seed=st.integers(0, 2**16),
)
def test_coupled_rows_slim_to_exact_widths(widths: list[int], target: float, seed: int) -> None:
    torch.manual_seed(seed)
    model = _mlp(widths)
    x = torch.randn(3, widths[0])
    hidden = [f"{2 * i}" for i in range(len(widths) - 2)]  # every layer but the last
    config = {"pattern": "row", "target_sparsity": target, "coupled": True}
    config |= {"pruning_scope": "local", "op_names": [f"^{n}$" for n in hidden]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, _, masked, slimmed = _prune_and_slim(model, config, x)
    assert _same(masked, slimmed)
    for i, width in enumerate(widths[1:-1]):  # round(target * width), within the 0.98 cap
        removed = min(round(target * width), math.floor(0.98 * width + 1e-9))
        assert model[2 * i].out_features == width - removed
