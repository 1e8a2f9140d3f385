"""A new user's first hour (issue 14): every trap reproduced on real models, one test each.

Models: a hand-built ResNet-style CNN with a 7x7 stem and downsample residuals, and Hugging
Face BERT, LLaMA (tied embeddings) and GPT-2 built from small configs.
"""

from __future__ import annotations

import copy
import io
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

import prunekit as pk
from models import ResNetish, gpt2, llama


def train_a_little(model: nn.Module, steps: int = 3) -> None:
    """A few SGD steps with momentum and weight decay on random data."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.randn(2, 3, 32, 32)).square().mean().backward()
        optimizer.step()


def zeros_where_removed(model: nn.Module, masks: dict[str, torch.Tensor]) -> bool:
    modules = dict(model.named_modules())
    return all(bool((modules[n].weight[~m] == 0).all()) for n, m in masks.items())


# -- 1. removed weights stay removed on every copy; a model with masks is adoptable -----------
def pruned_resnet() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = ResNetish()
    pruner = pk.prune(model, {"pattern": "4x1", "target_sparsity": 0.5})
    return model, {n: m.clone() for n, m in pruner.masks.items()}


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch.save"])
def test_training_a_copy_of_a_pruned_model_keeps_removed_weights_at_zero(how: str) -> None:
    model, masks = pruned_resnet()
    if how == "deepcopy":
        twin = copy.deepcopy(model)
    elif how == "pickle":
        twin = pickle.loads(pickle.dumps(model))
    else:
        buffer = io.BytesIO()
        torch.save(model, buffer)
        buffer.seek(0)
        twin = torch.load(buffer, weights_only=False)
    train_a_little(twin)
    assert zeros_where_removed(twin, masks)
    assert not zeros_where_removed(twin, {n: torch.zeros_like(m) for n, m in masks.items()})


def test_a_new_pruner_adopts_the_masks_a_copy_carries() -> None:
    model, masks = pruned_resnet()
    twin = copy.deepcopy(model)
    pruner = pk.Pruner(twin, {"pattern": "4x1", "target_sparsity": 0.7, "end_step": 0})
    for name, mask in masks.items():  # the starting masks are the copy's
        assert torch.equal(pruner.masks[name], mask)
    pruner.step()  # one shot to 70%, on top of what was removed
    for name, mask in masks.items():
        assert not (pruner.masks[name] & ~mask).any()
    assert abs(pruner.report().achieved - 0.7) < 0.01


def test_strip_masks_leaves_a_plain_model_with_the_zeros_baked() -> None:
    model, masks = pruned_resnet()
    twin = copy.deepcopy(model)
    stripped = pk.strip_masks(twin)
    assert sorted(stripped) == sorted(n for n, m in masks.items() if not m.all())
    assert not any(hasattr(m, "weight_mask") for m in twin.modules())
    assert zeros_where_removed(twin, masks)
    pk.Pruner(twin, {"pattern": "1x1", "target_sparsity": 0.3})  # a plain model again


# -- 2. N:M on a ResNet: the stem is skipped, named, and the rest reaches the target --------
@pytest.mark.parametrize("spec, ratio", [("2:4", 0.5), ("1:4", 0.25)])
@pytest.mark.parametrize("scope", ["local", "global"])
def test_n_m_skips_the_stem_and_reaches_the_target_on_the_rest(
    spec: str, ratio: float, scope: str
) -> None:
    model = ResNetish()
    with pytest.warns(
        pk.PruningWarning,
        match=r"leaves 1 of 21 ops unpruned \('conv1': its 2-D "
        r"view \(16, 147\) width is not a multiple of M=4\)",
    ):
        pruner = pk.prune(model, {"pattern": spec, "pruning_scope": scope})
    report = pruner.report()
    stem = next(op for op in report.ops if op.name == "conv1")
    assert stem.removed == 0 and "skipped" in stem.note
    for op in report.ops:
        if op.name != "conv1":
            assert op.achieved == ratio and op.hardware_valid, op


def test_n_m_on_ops_it_all_skips_says_so() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 7), nn.Conv2d(8, 8, 1, groups=8))  # widths 147, 1
    with (
        pytest.warns(pk.PruningWarning),
        pytest.raises(
            pk.ImpossibleTargetError, match=r"every op is left unpruned \('0': its 2-D view"
        ),
    ):
        pk.Pruner(model, {"pattern": "2:4"})


def test_n_m_below_n_over_m_warns_that_masks_are_not_hardware_valid() -> None:
    model = ResNetish()
    with pytest.warns(pk.PruningWarning, match=r"of 20 pruned ops are not hardware-valid"):
        pk.prune(model, {"pattern": "2:4", "target_sparsity": 0.49})


def test_a_target_the_ops_cannot_reach_names_the_limiting_ops_and_the_remedy() -> None:
    """With the stem kept as partial groups (its edge columns dense) 2:4 cannot reach 50%
    of the whole: the error names the op that limits it, why, and the highest target."""
    config = {"pattern": "2:4", "indivisible": "partial", "pruning_scope": "global"}
    with pytest.raises(
        pk.ImpossibleTargetError,
        match=r"config 0 \(pattern '2:4'\): target_sparsity 0.5 cannot be reached: .*What "
        r"limits them: 'conv1' 48\.98% \(at most 2 of every 4 weights, edge columns dense\)"
        r".*Remedy: lower target_sparsity to at most 0\.49",
    ):
        pk.Pruner(ResNetish(), config)


# -- 3. listings and membership agree with what configs accept -------------------------------
def test_listing_by_spec_and_membership_agree_with_validation() -> None:
    assert pk.list_patterns("*x1") == ["NxM"] and pk.list_patterns("16x1") == ["NxM"]
    for bad in ("3:2", "4:4", "0x1", "0:4"):
        assert bad not in pk.PATTERNS
        with pytest.raises(pk.ConfigError):
            pk.load_config({"pattern": bad})
        with pytest.raises(pk.InvalidSpecError, match=bad):
            pk.PATTERNS[bad]
    assert "2:4" in pk.PATTERNS and "16x1" in pk.PATTERNS


# -- 6. the report after remove() tells what was removed -------------------------------------
def test_the_report_after_remove_tells_what_was_removed() -> None:
    model = ResNetish()
    pruner = pk.prune(model, {"pattern": "1x1", "target_sparsity": 0.5})
    before = pruner.report().achieved
    pruner.remove()
    assert pruner.report().achieved == before == 0.5
    zeros = sum(int((m.weight == 0).sum()) for m in pruner.ops.values())
    assert zeros == pruner.report().removed


# -- 7. tied weights are refused unless asked for --------------------------------------------
def test_tied_embeddings_are_refused_naming_both_modules() -> None:
    model = llama(tied=True)
    with pytest.raises(
        pk.OpSelectionError,
        match=r"op 'lm_head' shares its weight with "
        r"'model.embed_tokens' \(Embedding\) \(tied weights\)",
    ):
        pk.Pruner(model, {"pattern": "1x1", "target_sparsity": 0.5})
    embedding = model.model.embed_tokens.weight.detach().clone()
    pk.prune(model, {"pattern": "1x1", "target_sparsity": 0.5, "excluded_op_names": ["lm_head"]})
    assert torch.equal(model.model.embed_tokens.weight, embedding)
    pk.prune(llama(tied=True), {"pattern": "1x1", "prune_shared_weights": True})


# -- 8. surprises are said ------------------------------------------------------------------
def test_a_min_cap_above_the_target_warns() -> None:
    with pytest.warns(
        pk.PruningWarning, match="min_sparsity_ratio_per_op 0.9 is above target_sparsity 0.5"
    ):
        pk.load_config({"pattern": "1x1", "target_sparsity": 0.5, "min_sparsity_ratio_per_op": 0.9})


def test_a_regex_that_matches_nothing_warns_with_a_did_you_mean() -> None:
    model = llama(tied=False)
    with pytest.warns(
        pk.PruningWarning,
        match=r"excluded_op_names: 'lm_haed' matches no "
        r"prunable module of the model; did you mean 'lm_head'\?",
    ):
        pk.Pruner(model, {"pattern": "1x1", "excluded_op_names": ["lm_haed"]})


def test_load_plugins_naming_an_uninstalled_distribution_warns(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PRUNEKIT_LOAD_PLUGINS", "prunekit-exampel")
    with pytest.warns(
        pk.PluginWarning,
        match=r"PRUNEKIT_LOAD_PLUGINS names 'prunekit-exampel'"
        r".*did you mean 'prunekit-example'",
    ):
        pk.PluginHost().load()


# -- 9. YAML's base-60 numbers --------------------------------------------------------------
def test_unquoted_n_m_in_yaml_is_the_pattern(tmp_path: Path) -> None:
    path = tmp_path / "prune.yaml"
    path.write_text("pattern: 2:4\npruning_scope: local\n")
    assert pk.load_config(path).pattern == "2:4"
    with pytest.raises(
        pk.ConfigError,
        match=r"reads an unquoted 2:4 as the base-60 number 124; "
        r"quote it \(pattern: '2:4'\)",
    ):
        pk.load_config({"pattern": 124})  # parsed by someone else's YAML reader


# -- 10. a pattern whose plugin failed to load ---------------------------------------------
def test_an_unknown_pattern_names_the_plugin_that_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    (site / "prunekit_broken-1.0.dist-info").mkdir(parents=True)
    (site / "prunekit_broken-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: prunekit-broken\nVersion: 1.0\n"
    )
    (site / "prunekit_broken-1.0.dist-info" / "entry_points.txt").write_text(
        "[prunekit]\nstripes = prunekit_broken_plugin\n"
    )
    (site / "prunekit_broken_plugin.py").write_text("import not_installed_dependency\n")
    monkeypatch.syspath_prepend(str(site))
    host = pk.PluginHost(metadata_path=[str(site)])
    with pytest.warns(pk.PluginWarning):
        host.load()
    with pytest.raises(
        pk.UnknownPatternError,
        match=r"unknown pattern 'stripes'.*plugin "
        r"'prunekit-broken' \(stripes = prunekit_broken_plugin\) failed to load.*"
        r"ModuleNotFoundError",
    ):
        pk.load_config({"pattern": "stripes"}, host=host)


# -- 11. messages that blame the right thing ----------------------------------------------
def test_start_step_alone_prunes_once_there() -> None:
    config = pk.load_config({"pattern": "4x1", "start_step": 3})
    assert config.end_step == 3 and config.schedule_name == "oneshot"
    with pytest.raises(pk.ConfigError, match=r"end_step: is before start_step \(3\)"):
        pk.load_config({"pattern": "4x1", "start_step": 3, "end_step": 1})


def test_one_shot_snip_without_gradients_says_to_run_backward_first() -> None:
    model = ResNetish()
    with pytest.raises(
        pk.PrunekitError,
        match=r"run a forward pass and loss.backward\(\) on a "
        r"batch before pruning in one shot",
    ):
        pk.prune(model, {"pattern": "4x1", "criterion": "snip"})
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    pk.prune(model, {"pattern": "4x1", "criterion": "snip"})


# -- 12. GPT-2's Conv1D ----------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["4x1", "2:4", "row", "column", "1xchannel", "ln_structured"])
def test_gpt2_conv1d_is_pruned_like_a_linear(spec: str) -> None:
    model = gpt2()
    config = {
        "pattern": spec,
        "pruning_scope": "local",
        "target_sparsity": 0.5,
        "excluded_op_names": ["lm_head"],
    }
    pruner = pk.prune(model, config)  # the default op types ("Conv", "Linear") select Conv1D
    assert "transformer.h.0.mlp.c_fc" in pruner.ops
    weight = model.transformer.h[0].mlp.c_fc.weight  # (in, out) = (64, 256)
    assert abs(float((weight == 0).float().mean()) - 0.5) < 1e-6
    if spec in ("row", "1xchannel"):  # whole output neurons: columns of the stored weight
        assert int((weight == 0).all(dim=0).sum()) == 128
    if spec == "column":  # whole inputs: rows of the stored weight
        assert int((weight == 0).all(dim=1).sum()) == 32
    ids = torch.randint(0, 128, (1, 8))
    assert torch.isfinite(model(ids).logits).all()


def test_gpt2_bias_of_removed_output_neurons_is_zeroed() -> None:
    model = gpt2()
    pk.prune(
        model,
        {
            "pattern": "row",
            "target_sparsity": 0.5,
            "prune_bias": True,
            "op_names": ["mlp.c_fc"],
            "pruning_scope": "local",
        },
    )
    layer = model.transformer.h[0].mlp.c_fc
    gone = (layer.weight == 0).all(dim=0)
    assert int(gone.sum()) == 128 and bool((layer.bias[gone] == 0).all())


def test_copies_keep_their_conv1d_masks_through_training() -> None:
    model = gpt2()
    pruner = pk.prune(model, {"pattern": "2:4", "excluded_op_names": ["lm_head"]})
    masks = {n: m.clone() for n, m in pruner.masks.items()}
    twin = copy.deepcopy(model)
    optimizer = torch.optim.AdamW(twin.parameters(), lr=1e-2)
    ids = torch.randint(0, 128, (2, 8))
    for _ in range(2):
        optimizer.zero_grad()
        twin(ids, labels=ids).loss.backward()
        optimizer.step()
    modules = dict(twin.named_modules())
    assert all(bool((modules[n].weight[~m] == 0).all()) for n, m in masks.items())
