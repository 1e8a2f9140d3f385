"""prunekit.torch_prune: prunekit patterns through torch.nn.utils.prune's own machinery.

Every test runs on real modules and compares with torch's own methods or prunekit's own
``get_masks``: parity with ``L1Unstructured`` and ``LnStructured`` (tie-free weights: torch
leaves ties unspecified), iterative pruning through ``PruningContainer``, ``prune.remove``,
``prune.is_pruned``, pickles and copies, a plugin pattern, ``global_unstructured``, the
errors, and the runnable snippets of docs/torch-prune.md.
"""

from __future__ import annotations

import copy
import io
import math
import pickle
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils import prune

import prunekit as pk
from prunekit import torch_prune
from prunekit.masks.geometry import removed_blocks
from prunekit.plugins import reset_default_host
from prunekit.testing import Conv1D
from prunekit.torch_prune import PrunekitMethod

DOC = Path(__file__).resolve().parents[1] / "docs" / "torch-prune.md"

MODULES: dict[str, Callable[[], nn.Module]] = {
    "linear": lambda: nn.Linear(12, 10),
    "conv2d": lambda: nn.Conv2d(3, 8, 3),
    "conv1d": lambda: nn.Conv1d(4, 6, 5),
}


def tie_free(module: nn.Module) -> nn.Module:
    """``module`` with weights whose magnitudes (and so their norms) are all distinct: where
    torch's topk may break ties either way, the masks are then defined."""
    weight = module.weight
    assert isinstance(weight, Tensor)
    with torch.no_grad():
        weight.copy_(torch.randperm(weight.numel()).reshape(weight.shape) + 1.0)
        weight.mul_(torch.where(torch.rand(weight.shape) < 0.5, -1.0, 1.0))
    return module


def pair(kind: str) -> tuple[nn.Module, nn.Module]:
    """Two identical tie-free modules: one for torch's method, one for prunekit's."""
    module = tie_free(MODULES[kind]())
    return module, copy.deepcopy(module)


def mask_of(module: nn.Module) -> Tensor:
    mask = module.weight_mask
    assert isinstance(mask, Tensor)
    return mask


def removed(module: nn.Module) -> int:
    return int((mask_of(module) == 0).sum())


def hook_of(module: nn.Module) -> prune.BasePruningMethod:
    (hook,) = [
        h for h in module._forward_pre_hooks.values() if isinstance(h, prune.BasePruningMethod)
    ]
    return hook


def prunekit_masks(spec: str | dict[str, object], module: nn.Module, target: float) -> Tensor:
    """prunekit's own mask for ``module``'s weight at ``target``, local scope, magnitude, on
    an op named "weight" as the adapter names it (random draws are seeded by the name)."""
    config = {"pattern": spec} if isinstance(spec, str) else dict(spec)
    config["pruning_scope"] = "local"
    pattern = pk.get_pattern(config, {"weight": module})
    weight = module.weight
    assert isinstance(weight, Tensor)
    return pattern.get_masks({"weight": weight.detach().abs()}, target)["weight"]


# -- parity with torch's own methods --------------------------------------------------------
@pytest.mark.parametrize("kind", list(MODULES))
@pytest.mark.parametrize("amount", [0.0, 0.3, 0.5, 0.77, 1.0, 0, 1, 17, 60])
def test_1x1_is_torch_l1_unstructured(kind: str, amount: float) -> None:
    theirs, ours = pair(kind)
    prune.l1_unstructured(theirs, "weight", amount)
    torch_prune.apply(ours, "weight", "1x1", amount)
    assert torch.equal(mask_of(ours), mask_of(theirs))
    assert mask_of(ours).dtype == mask_of(theirs).dtype == torch.float32
    assert torch.equal(ours.weight, theirs.weight)


@pytest.mark.parametrize("kind", list(MODULES))
@pytest.mark.parametrize("n", [1, 2, 3, math.inf, -math.inf])
@pytest.mark.parametrize("dim", [0, 1, -1])
@pytest.mark.parametrize("amount", [0.25, 0.5, 1.0, 2])
def test_ln_structured_is_torch_ln_structured(kind: str, n: float, dim: int, amount: float) -> None:
    theirs, ours = pair(kind)
    prune.ln_structured(theirs, "weight", amount, n=n, dim=dim)
    torch_prune.apply(ours, "weight", {"pattern": "ln_structured", "n": n, "dim": dim}, amount)
    assert torch.equal(mask_of(ours), mask_of(theirs))


@pytest.mark.parametrize("kind", ["linear", "conv2d"])
def test_importance_scores_are_scored_as_torch_scores_them(kind: str) -> None:
    theirs, ours = pair(kind)
    by_weights = prunekit_masks("1x1", ours, 0.4)
    importance = tie_free(MODULES[kind]()).weight.detach().clone()
    prune.l1_unstructured(theirs, "weight", 0.4, importance_scores=importance)
    torch_prune.apply(ours, "weight", "1x1", 0.4, importance_scores=importance)
    assert torch.equal(mask_of(ours), mask_of(theirs))
    assert not torch.equal(mask_of(ours).bool(), by_weights)  # the scores were used


# -- the same masks as prunekit's own get_masks ----------------------------------------------
SPECS: list[tuple[str | dict[str, object], Callable[[], nn.Module]]] = [
    ("1x1", lambda: nn.Conv2d(8, 16, 3)),
    ("4x1", lambda: nn.Linear(16, 8)),
    ("4x1", lambda: nn.Conv2d(8, 16, 3)),
    ("4x1", lambda: nn.Linear(13, 10)),  # partial edge tiles
    ("2x2", lambda: nn.Conv2d(8, 16, 3)),
    ("channelx1", lambda: nn.Linear(16, 8)),
    ("2:4", lambda: nn.Linear(16, 8)),
    ("2:4", lambda: nn.Conv2d(8, 16, 3)),
    ("filter", lambda: nn.Conv2d(8, 16, 3)),
    ("kernel", lambda: nn.Conv2d(8, 16, 3)),
    ("row", lambda: nn.Linear(16, 8)),
    ({"pattern": "ln_structured", "n": 1, "dim": 0}, lambda: nn.Conv2d(8, 16, 3)),
    ({"pattern": "block_diagonal", "blocks": 4}, lambda: nn.Linear(16, 8)),
    ("random", lambda: nn.Linear(16, 8)),
    ("iter_nonstruct", lambda: nn.Linear(16, 8)),
    ("4x1", lambda: Conv1D(8, 16)),  # GPT-2's transposed Linear
]


@pytest.mark.parametrize("spec, make", SPECS, ids=[f"{s}-{i}" for i, (s, _) in enumerate(SPECS)])
@pytest.mark.parametrize("target", [0.25, 0.5])
def test_masks_are_prunekit_get_masks(
    spec: str | dict[str, object], make: Callable[[], nn.Module], target: float
) -> None:
    module = make()
    expected = prunekit_masks(spec, module, target)
    torch_prune.apply(module, "weight", spec, target)
    assert torch.equal(mask_of(module).bool(), expected)
    assert 0 < removed(module) < mask_of(module).numel()


def test_an_int_amount_counts_the_pattern_s_blocks() -> None:
    module = nn.Conv2d(8, 16, 3)
    torch_prune.apply(module, "weight", "4x1", 5)
    assert removed(module) == 5 * 4
    filters = nn.Conv2d(8, 16, 3)
    torch_prune.apply(filters, "weight", "filter", 3)
    assert int((mask_of(filters).sum(dim=(1, 2, 3)) == 0).sum()) == 3
    assert removed(filters) == 3 * 8 * 3 * 3


def test_a_float_amount_of_n_m_is_the_fraction_of_the_weights() -> None:
    module = nn.Linear(16, 8)
    torch_prune.apply(module, "weight", "2:4", 0.5)
    pattern = pk.get_pattern({"pattern": "2:4"}, {"op": module})
    assert removed(module) == 64
    assert pattern.is_hardware_valid("op", mask_of(module).bool())


def test_every_block_goes_at_amount_one_and_at_an_int_of_all_blocks() -> None:
    fraction, count = nn.Linear(8, 8), nn.Linear(8, 8)
    torch_prune.apply(fraction, "weight", "4x1", 1.0)
    torch_prune.apply(count, "weight", "4x1", 16)
    assert removed(fraction) == removed(count) == 64


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("1x1", "unstructured"),
        ("random", "unstructured"),
        ("4x1", "global"),
        ("2:4", "global"),
        ("ln_structured", "global"),
        ("block_diagonal", "global"),
    ],
)
def test_pruning_type_says_what_torch_s_container_may_hand_over(spec: str, expected: str) -> None:
    module = nn.Linear(16, 8)
    torch_prune.apply(module, "weight", spec, 0.5)
    assert expected == hook_of(module).PRUNING_TYPE


def test_the_config_s_criterion_scores_and_its_seed_makes_it_reproducible() -> None:
    weights = tie_free(nn.Linear(16, 8))
    made = []
    for seed in (0, 0, 1):
        module = copy.deepcopy(weights)
        torch.manual_seed(seed + 100)  # the draws come from config.seed, not the global seed
        config = {"pattern": "1x1", "criterion": "random", "seed": seed}
        torch_prune.apply(module, "weight", config, 0.5)
        made.append(mask_of(module))
    magnitude = copy.deepcopy(weights)
    torch_prune.apply(magnitude, "weight", "1x1", 0.5)
    assert torch.equal(made[0], made[1])
    assert not torch.equal(made[0], made[2])
    assert not torch.equal(made[0], mask_of(magnitude))


# -- iterative pruning -----------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(MODULES))
@pytest.mark.parametrize("amounts", [(0.5, 0.5), (0.3, 0.2), (20, 15), (0.4, 9)])
def test_iterative_1x1_is_torch_s_iterative_l1_unstructured(
    kind: str, amounts: tuple[float, float]
) -> None:
    theirs, ours = pair(kind)
    for amount in amounts:
        prune.l1_unstructured(theirs, "weight", amount)
        torch_prune.apply(ours, "weight", "1x1", amount)
        assert torch.equal(mask_of(ours), mask_of(theirs))
    assert isinstance(hook_of(ours), prune.PruningContainer) and len(hook_of(ours)) == 2


@pytest.mark.parametrize("kind", ["linear", "conv2d"])
@pytest.mark.parametrize("amounts", [(0.5, 0.5), (0.25, 1), (2, 0.5)])
def test_iterative_ln_structured_is_torch_s(kind: str, amounts: tuple[float, float]) -> None:
    theirs, ours = pair(kind)
    for amount in amounts:
        prune.ln_structured(theirs, "weight", amount, n=1, dim=0)
        torch_prune.apply(ours, "weight", {"pattern": "ln_structured", "n": 1, "dim": 0}, amount)
        assert torch.equal(mask_of(ours), mask_of(theirs))


def blocks_removed(spec: str, module: nn.Module) -> int:
    """Whole blocks of ``spec`` the module's current mask removed."""
    pattern = pk.get_pattern({"pattern": spec, "pruning_scope": "local"}, {"op": module})
    mask = mask_of(module).bool()
    return int(removed_blocks(pattern.layouts["op"], mask).sum())


@pytest.mark.parametrize("make", [lambda: nn.Conv2d(8, 16, 3), lambda: nn.Linear(13, 10)])
@pytest.mark.parametrize("amounts", [(0.5, 0.5), (0.3, 0.6), (7, 5), (0.2, 3)])
def test_a_second_pruning_takes_amount_of_what_is_left_and_revives_nothing(
    make: Callable[[], nn.Module], amounts: tuple[float, float]
) -> None:
    module = make()
    blocks = pk.get_pattern({"pattern": "4x1"}, {"op": module}).layouts["op"].num_blocks
    first, second = amounts
    torch_prune.apply(module, "weight", "4x1", first)
    after_first = blocks_removed("4x1", module)
    assert after_first == (first if isinstance(first, int) else round(first * blocks))
    zeros = mask_of(module) == 0
    torch_prune.apply(module, "weight", "4x1", second)
    left = blocks - after_first
    more = second if isinstance(second, int) else round(second * left)
    assert blocks_removed("4x1", module) == after_first + more
    assert bool((mask_of(module)[zeros] == 0).all())


def test_a_pattern_after_torch_s_own_method_keeps_its_zeros_inside_blocks() -> None:
    module = nn.Linear(16, 8)
    prune.random_unstructured(module, "weight", 0.3)
    zeros = mask_of(module) == 0
    torch_prune.apply(module, "weight", "4x1", 0.5)
    assert bool((mask_of(module)[zeros] == 0).all())
    assert blocks_removed("4x1", module) >= 16
    assert removed(module) > 16 * 4  # the earlier scattered zeros are still there


def test_n_m_after_n_m_prunes_the_fraction_of_the_weights_left() -> None:
    module = nn.Linear(16, 8)
    torch_prune.apply(module, "weight", "2:4", 0.25)
    assert removed(module) == 32
    torch_prune.apply(module, "weight", "2:4", 1 / 3)  # a third of the 96 left: 32 more
    assert removed(module) == 64
    pattern = pk.get_pattern({"pattern": "2:4"}, {"op": module})
    assert pattern.is_hardware_valid("op", mask_of(module).bool())


def test_a_transposed_linear_is_pruned_again_in_its_own_view() -> None:
    module = Conv1D(8, 16)  # weight stored (in=16, out=8)
    torch_prune.apply(module, "weight", "4x1", 0.25)
    zeros = mask_of(module) == 0
    torch_prune.apply(module, "weight", "4x1", 0.5)
    view = mask_of(module).t().reshape(2, 4, 16)  # (out, in) in 4x1 tiles
    tiles_removed = int((view.sum(dim=1) == 0).sum())
    assert tiles_removed == 8 + round(0.5 * 24)
    assert bool((mask_of(module)[zeros] == 0).all())


# -- torch's machinery: remove, is_pruned, forward, pickles, copies --------------------------
def test_remove_leaves_a_plain_parameter_with_the_zeros_baked() -> None:
    module = nn.Conv2d(3, 8, 3)
    x = torch.randn(2, 3, 7, 7)
    torch_prune.apply(module, "weight", "4x1", 0.5)
    mask = mask_of(module).clone()
    original = module.weight_orig.detach().clone()
    pruned_output = module(x)
    prune.remove(module, "weight")
    assert isinstance(module.weight, nn.Parameter)
    assert "weight" in dict(module.named_parameters())
    assert not hasattr(module, "weight_orig") and not hasattr(module, "weight_mask")
    assert not module._forward_pre_hooks
    assert torch.equal(module.weight.detach(), original * mask)
    assert torch.allclose(module(x), pruned_output)


def test_is_pruned_follows_apply_and_remove() -> None:
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    assert not prune.is_pruned(model)
    torch_prune.apply(model[0], "weight", "2:4", 0.5)
    assert prune.is_pruned(model) and prune.is_pruned(model[0]) and not prune.is_pruned(model[2])
    prune.remove(model[0], "weight")
    assert not prune.is_pruned(model)


def test_the_forward_pass_uses_the_masked_weight_and_training_keeps_zeros() -> None:
    module = nn.Linear(16, 8)
    torch_prune.apply(module, "weight", "4x1", 0.5)
    x = torch.randn(4, 16)
    expected = torch.nn.functional.linear(x, module.weight_orig * mask_of(module), module.bias)
    assert torch.allclose(module(x), expected)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    module(x).square().sum().backward()
    optimizer.step()
    module(x)  # the pre-hook recomputes the weight from weight_orig
    assert bool((module.weight[mask_of(module) == 0] == 0).all())


def round_trips() -> Iterator[tuple[str, Callable[[nn.Module], nn.Module]]]:
    def pickled(module: nn.Module) -> nn.Module:
        copied: nn.Module = pickle.loads(pickle.dumps(module))
        return copied

    def saved(module: nn.Module) -> nn.Module:
        buffer = io.BytesIO()
        torch.save(module, buffer)
        buffer.seek(0)
        loaded: nn.Module = torch.load(buffer, weights_only=False)
        return loaded

    yield "pickle", pickled
    yield "torch.save", saved


@pytest.mark.parametrize("how, copy_of", list(round_trips()), ids=[h for h, _ in round_trips()])
def test_a_pruned_module_survives_pickling(
    how: str, copy_of: Callable[[nn.Module], nn.Module]
) -> None:
    module = nn.Linear(16, 8)
    torch_prune.apply(module, "weight", {"pattern": "block_diagonal", "blocks": 4}, 1)
    x = torch.randn(3, 16)
    restored = copy_of(module)
    assert isinstance(hook_of(restored), PrunekitMethod)
    assert torch.equal(mask_of(restored), mask_of(module))
    assert torch.allclose(restored(x), module(x))
    zeros = mask_of(restored) == 0
    torch_prune.apply(restored, "weight", {"pattern": "block_diagonal", "blocks": 4}, 1)
    assert removed(restored) == 2 * removed(module)  # one more of the four diagonals
    assert bool((mask_of(restored)[zeros] == 0).all())
    prune.remove(restored, "weight")
    assert isinstance(restored.weight, nn.Parameter)
    assert prune.is_pruned(module)  # the original is untouched


def test_deepcopy_behaves_as_for_torch_s_own_methods() -> None:
    ours, theirs = nn.Linear(16, 8), nn.Linear(16, 8)
    with torch.no_grad():  # torch's pruned weight is a graph leaf only when pruned without grad
        torch_prune.apply(ours, "weight", "4x1", 0.5)
        prune.l1_unstructured(theirs, "weight", 0.5)
    copied = copy.deepcopy(ours)
    copy.deepcopy(theirs)
    assert torch.equal(mask_of(copied), mask_of(ours))
    assert mask_of(copied).data_ptr() != mask_of(ours).data_ptr()
    torch_prune.apply(copied, "weight", "4x1", 0.5)
    assert removed(copied) == 3 * removed(ours) // 2
    # With grad, torch's pruned weight is computed from weight_orig, and deepcopy refuses it
    # for torch's own methods: the adapter behaves the same, whatever torch does.
    ours_grad, theirs_grad = nn.Linear(16, 8), nn.Linear(16, 8)
    torch_prune.apply(ours_grad, "weight", "4x1", 0.5)
    prune.l1_unstructured(theirs_grad, "weight", 0.5)
    outcomes = []
    for module in (ours_grad, theirs_grad):
        try:
            copy.deepcopy(module)
            outcomes.append("copied")
        except RuntimeError as error:
            outcomes.append(type(error).__name__)
    assert outcomes[0] == outcomes[1]


# -- a plugin pattern -----------------------------------------------------------------------
def test_the_example_plugin_s_block_diagonal_works_through_torch() -> None:
    assert pk.PATTERNS.entry("block_diagonal").owner == "prunekit-example"
    module = nn.Linear(16, 16)
    config = {"pattern": "block_diagonal", "blocks": 4}
    expected = prunekit_masks(config, module, 0.5)
    torch_prune.apply(module, "weight", config, 2)
    mask = mask_of(module)
    assert torch.equal(mask.bool(), expected)
    tiles = mask.reshape(4, 4, 4, 4).sum(dim=(1, 3)) > 0  # (tile-row, tile-column) kept
    assert bool((tiles.sum(dim=0) == 2).all()) and bool((tiles.sum(dim=1) == 2).all())
    torch_prune.apply(module, "weight", config, 1)
    assert int((mask_of(module).reshape(4, 4, 4, 4).sum(dim=(1, 3)) > 0).sum()) == 4
    assert bool((mask_of(module)[mask == 0] == 0).all())


# -- global_unstructured ---------------------------------------------------------------------
@pytest.mark.parametrize("amount", [0.3, 25])
def test_global_unstructured_with_1x1_is_torch_s(amount: float) -> None:
    theirs = nn.Sequential(tie_free(nn.Linear(10, 6)), nn.ReLU(), tie_free(nn.Conv1d(2, 3, 2)))
    ours = copy.deepcopy(theirs)
    for model, method, kwargs in (
        (theirs, prune.L1Unstructured, {}),
        (ours, PrunekitMethod, {"config_or_spec": "1x1"}),
    ):
        parameters = [(model[0], "weight"), (model[2], "weight")]
        prune.global_unstructured(parameters, pruning_method=method, amount=amount, **kwargs)
        prune.global_unstructured(parameters, pruning_method=method, amount=amount, **kwargs)
    for index in (0, 2):
        assert torch.equal(mask_of(ours[index]), mask_of(theirs[index]))


@pytest.mark.parametrize("spec", ["4x1", "2:4", "filter", "ln_structured"])
def test_global_unstructured_refuses_patterns_that_need_the_module(spec: str) -> None:
    model = nn.Sequential(nn.Conv2d(8, 16, 3))
    with pytest.raises(TypeError, match="needs the module"):
        prune.global_unstructured(
            [(model[0], "weight")], pruning_method=PrunekitMethod, config_or_spec=spec, amount=0.5
        )
    assert not prune.is_pruned(model)


# -- errors ----------------------------------------------------------------------------------
def assert_untouched(module: nn.Module) -> None:
    assert not prune.is_pruned(module)
    assert isinstance(module.weight, nn.Parameter) and not hasattr(module, "weight_orig")


def test_an_unknown_pattern_is_prunekit_s_error_with_did_you_mean() -> None:
    module = nn.Conv2d(3, 8, 3)
    with pytest.raises(pk.UnknownPatternError, match="did you mean 'filter'") as info:
        torch_prune.apply(module, "weight", "fiter", 0.5)
    assert info.value.suggestions[0] == "filter"
    assert_untouched(module)
    with pytest.raises(pk.ConfigError, match="did you mean 'dim'"):
        torch_prune.apply(module, "weight", {"pattern": "ln_structured", "dimm": 0}, 0.5)


@pytest.mark.parametrize(
    "module, spec, words",
    [
        (nn.Embedding(10, 8), "4x1", "cannot prune op 'weight' (Embedding)"),
        (nn.Linear(8, 8), "filter", "does not apply"),
        (nn.Linear(6, 4), "2:4", "not a multiple of M=4"),
    ],
)
def test_a_module_the_pattern_cannot_prune_is_refused(
    module: nn.Module, spec: str, words: str
) -> None:
    with pytest.raises(pk.UnsupportedModuleError, match=re.escape(words)):
        torch_prune.apply(module, "weight", spec, 0.5)
    assert_untouched(module)


def test_only_the_weight_is_pruned_by_patterns() -> None:
    module = nn.Linear(8, 8)
    with pytest.raises(pk.UnsupportedModuleError, match="'bias'"):
        torch_prune.apply(module, "bias", "1x1", 0.5)
    assert_untouched(module)


@pytest.mark.parametrize(
    "amount, error",
    [(-1, ValueError), (1.5, ValueError), (-0.1, ValueError), (math.nan, ValueError),
     ("0.5", TypeError), (True, TypeError), (None, TypeError)],
)  # fmt: skip
def test_a_bad_amount_is_refused_as_torch_refuses_it(
    amount: object, error: type[Exception]
) -> None:
    module = nn.Linear(8, 8)
    with pytest.raises(error, match="amount"):
        torch_prune.apply(module, "weight", "1x1", amount)  # type: ignore[arg-type]
    assert_untouched(module)
    if error is ValueError and not math.isnan(float(amount)):  # type: ignore[arg-type]
        with pytest.raises(error):
            prune.l1_unstructured(nn.Linear(8, 8), "weight", amount)


def test_an_amount_above_what_is_left_is_a_value_error_and_keeps_the_pruning() -> None:
    module = nn.Linear(8, 8)
    with pytest.raises(ValueError, match="16 blocks left to prune, fewer than the 17"):
        torch_prune.apply(module, "weight", "4x1", 17)
    assert_untouched(module)
    torch_prune.apply(module, "weight", "4x1", 10)
    mask = mask_of(module).clone()
    for spec, amount in (("4x1", 7), ("1x1", 25), ("1x4", 17), ("2:4", 17)):
        with pytest.raises(ValueError, match="left to prune"):
            torch_prune.apply(module, "weight", spec, amount)
        assert prune.is_pruned(module) and torch.equal(mask_of(module), mask)
    torch_prune.apply(module, "weight", "4x1", 6)  # exactly what is left
    assert removed(module) == 64


def test_a_tensor_of_another_shape_is_refused_by_the_method() -> None:
    module = nn.Linear(16, 8)
    torch_prune.apply(module, "weight", "4x1", 0.5)
    with pytest.raises(pk.ScoreError, match=r"shape \(3, 3\).*\(8, 16\)"):
        hook_of(module).prune(torch.ones(3, 3))


def test_a_module_carrying_a_pruner_s_mask_is_refused() -> None:
    model = nn.Sequential(nn.Linear(16, 8))
    pk.prune(model, {"pattern": "4x1", "target_sparsity": 0.5})
    with pytest.raises(ValueError, match="strip_masks"):
        torch_prune.apply(model[0], "weight", "4x1", 0.5)
    assert not prune.is_pruned(model) and not hasattr(model[0], "weight_orig")
    pk.strip_masks(model)
    torch_prune.apply(model[0], "weight", "4x1", 0.25)  # the baked zeros count as weights
    assert prune.is_pruned(model)


def test_a_criterion_that_needs_gradients_is_refused() -> None:
    module = nn.Linear(8, 8)
    with pytest.raises(pk.ConfigError, match="'snip' needs the weight's gradient"):
        torch_prune.apply(module, "weight", {"pattern": "4x1", "criterion": "snip"}, 0.5)
    assert_untouched(module)


def test_amount_belongs_to_the_call_not_the_config() -> None:
    module = nn.Linear(8, 8)
    with pytest.raises(pk.ConfigError, match="amount is the pruning call's argument"):
        torch_prune.apply(module, "weight", {"pattern": "ln_structured", "amount": 2}, 0.5)
    assert_untouched(module)


class CountsItsOwnWay(pk.Pattern):
    """Single weights, but it always asks for one block fewer than the target says."""

    def layout(self, name: str, module: nn.Module) -> pk.BlockLayout | None:
        return pk.GridLayout(self.shapes[name], 1, 1)

    def local_block_count(self, name: str, target: float) -> int:
        return max(super().local_block_count(name, target) - 1, 0)


@pytest.fixture
def own_way() -> Iterator[str]:
    """A pattern registered in-process, in a fresh default host dropped afterwards."""
    reset_default_host()
    pk.register_pattern("counts_its_own_way")(CountsItsOwnWay)
    yield "counts_its_own_way"
    reset_default_host()


def test_a_pattern_that_counts_its_own_way_is_refused_not_misapplied(own_way: str) -> None:
    module = nn.Linear(8, 8)
    with pytest.raises(pk.ImpossibleTargetError, match="counts its blocks its own way"):
        torch_prune.apply(module, "weight", own_way, 10)
    assert_untouched(module)


# -- the page's snippets run -----------------------------------------------------------------
def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


def test_the_page_has_snippets() -> None:
    assert len(python_blocks()) >= 3


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_every_snippet_of_the_page_runs_standalone(index: int) -> None:
    code = python_blocks()[index]
    exec(compile(code, f"{DOC.name} block {index + 1}", "exec"), {"__name__": "__main__"})
