"""``"ln_structured"``: parity with torch.nn.utils.prune.ln_structured, exact hand-made masks,
amount vs target, caps, global scope, pre-masks, and the errors."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import prune

import prunekit as pk
from prunekit.errors import DimOutOfRangeError
from prunekit.patterns.ln_structured import LnStructuredPattern

INF = math.inf
NORMS: list[float | str] = [1, 2, INF, -INF, "fro"]


def pattern(modules: Mapping[str, nn.Module], **options: object) -> pk.Pattern:
    config = {"pattern": "ln_structured", "pruning_scope": "local", **options}
    return pk.get_pattern(config, modules)


def ours(module: nn.Module, n: float | str, dim: int, amount: int | float) -> torch.Tensor:
    """prunekit's mask, configured exactly as the brief's parity config."""
    config = {
        "pattern": "ln_structured",
        "n": n,
        "dim": dim,
        "amount": amount,
        "pruning_scope": "local",
        "max_sparsity_ratio_per_op": 1.0,
        "target_sparsity": 0.5,
    }
    built = pk.get_pattern(config, {"m": module})
    return built.get_masks({"m": module.weight.detach().abs()}, 0.5)["m"]


def torchs(module: nn.Module, n: float | str, dim: int, amount: int | float) -> torch.Tensor:
    """torch's mask, on a copy (torch's prune reparametrizes the module it is given)."""
    pruned = copy.deepcopy(module)
    prune.ln_structured(pruned, "weight", amount=amount, n=n, dim=dim)
    mask: torch.Tensor = pruned.weight_mask
    return mask.bool()


def channel_norms(weight: torch.Tensor, n: float | str, dim: int) -> torch.Tensor:
    dims = [d for d in range(weight.dim()) if d != dim % weight.dim()]
    return torch.linalg.vector_norm(weight, ord=2 if n == "fro" else n, dim=dims)


# -- parity with torch ----------------------------------------------------------------------
@st.composite
def modules(draw: st.DrawFn) -> nn.Module:
    kind = draw(st.sampled_from(["Linear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose2d"]))
    cin, cout = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    if kind == "Linear":
        module: nn.Module = nn.Linear(cin, cout, bias=False)
    elif kind == "Conv1d":
        module = nn.Conv1d(cin, cout, draw(st.integers(1, 4)), bias=False)
    elif kind == "Conv2d":
        module = nn.Conv2d(cin, cout, (draw(st.integers(1, 3)), draw(st.integers(1, 3))))
    elif kind == "Conv3d":
        module = nn.Conv3d(cin, cout, draw(st.integers(1, 2)), bias=False)
    else:
        module = nn.ConvTranspose2d(cin, cout, draw(st.integers(1, 3)), bias=False)
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    with torch.no_grad():
        module.weight.copy_(torch.randn(module.weight.shape, generator=generator))
    return module


@given(data=st.data())
def test_masks_equal_torch_ln_structured(data: st.DataObject) -> None:
    module = data.draw(modules(), label="module")
    weight = module.weight.detach()
    ndim = weight.dim()
    dim = data.draw(st.integers(-ndim, ndim - 1), label="dim")
    # torch.norm only takes 'fro' over at most two dims (Linear, Conv1d); see the test below.
    norms = NORMS if ndim <= 3 else [n for n in NORMS if n != "fro"]
    n = data.draw(st.sampled_from([*norms, 3, 0.5]), label="n")
    channels = weight.shape[dim]
    amount: int | float = data.draw(
        st.one_of(
            st.integers(0, channels),
            st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.75, 1.0]),
            st.floats(0.0, 1.0, allow_nan=False),
        ),
        label="amount",
    )
    values = channel_norms(weight, n, dim)
    assume(values.unique().numel() == values.numel())  # torch breaks ties arbitrarily
    expected = torchs(module, n, dim, amount)
    mask = ours(module, n, dim, amount)
    assert mask.dtype == torch.bool and mask.shape == weight.shape
    assert torch.equal(mask, expected)


@pytest.mark.parametrize("n", NORMS)
@pytest.mark.parametrize("dim", [0, 1, -1, -2])
@pytest.mark.parametrize("amount", [0, 1, 3, 0.0, 0.3, 0.5, 1.0])
def test_masks_equal_torch_on_a_grid(n: float | str, dim: int, amount: int | float) -> None:
    """A fixed grid next to the hypothesis search: every norm, dim sign and amount kind."""
    generator = torch.Generator().manual_seed(7)
    for module in (nn.Linear(5, 4), nn.Conv1d(4, 6, 3), nn.Conv2d(3, 5, 2)):
        if n == "fro" and module.weight.dim() > 3:
            continue
        with torch.no_grad():
            module.weight.copy_(torch.randn(module.weight.shape, generator=generator))
        if isinstance(amount, int) and amount > module.weight.shape[dim]:
            for masks in (ours, torchs):  # both refuse more channels than there are
                with pytest.raises(ValueError, match="amount=3"):
                    masks(module, n, dim, amount)
            continue
        assert torch.equal(ours(module, n, dim, amount), torchs(module, n, dim, amount))


def test_fro_is_l2_on_every_weight_where_torch_only_takes_two_dims() -> None:
    conv = nn.Conv2d(3, 6, 3)
    assert torch.equal(ours(conv, "fro", 0, 0.5), ours(conv, 2, 0, 0.5))
    assert torch.equal(ours(conv, "fro", 0, 0.5), torchs(conv, 2, 0, 0.5))


def test_float64_scores_give_the_same_masks() -> None:
    conv = nn.Conv2d(4, 8, 3)
    built = pattern({"c": conv}, amount=0.5, dim=0)
    scores = conv.weight.detach().abs()
    assert torch.equal(
        built.get_masks({"c": scores}, 0.5)["c"], built.get_masks({"c": scores.double()}, 0.5)["c"]
    )


# -- exact hand-made masks ------------------------------------------------------------------
# Linear weight (3 out, 4 in); dim=-1 makes the 4 input columns the channels.
COLUMNS = torch.tensor([[1.0, 0, 3, 2], [1, 0, 0, 2], [1, 1, 0, 2]])


@pytest.mark.parametrize(
    "n,amount,removed",
    [
        (1, 2, [0, 1]),  # L1 3, 1, 3, 6: the 3s tie, the lower index goes
        (1, 1, [1]),
        (2, 2, [0, 1]),  # L2 1.73, 1, 3, 3.46
        (2, 3, [0, 1, 2]),
        (INF, 2, [0, 1]),  # max 1, 1, 3, 2
        (-INF, 2, [1, 2]),  # min 1, 0, 0, 2
        (-INF, 1, [1]),  # the two zeros tie: the lower index goes
        ("fro", 0.5, [0, 1]),  # round(0.5 * 4) = 2
        (2, 0.3, [1]),  # round(1.2) = 1
        (2, 0.0, []),
        (2, 1.0, [0, 1, 2, 3]),
    ],
)
def test_exact_masks_on_linear_columns(n: float | str, amount: float, removed: list[int]) -> None:
    fc = nn.Linear(4, 3, bias=False)
    built = pattern({"fc": fc}, n=n, amount=amount, max_sparsity_ratio_per_op=1.0)
    mask = built.get_masks({"fc": COLUMNS}, 0.5)["fc"]
    expected = torch.ones(3, 4, dtype=torch.bool)
    expected[:, removed] = False
    assert torch.equal(mask, expected)


def test_dim0_removes_whole_conv_filters() -> None:
    conv = nn.Conv2d(2, 4, 2, bias=False)  # weight (4, 2, 2, 2): filters of 8
    scores = torch.stack([torch.full((2, 2, 2), v) for v in (3.0, 1.0, 4.0, 2.0)])
    mask = pattern({"c": conv}, dim=0, amount=2).get_masks({"c": scores}, 0.5)["c"]
    assert [bool(mask[i].all()) for i in range(4)] == [True, False, True, False]
    assert [bool(mask[i].any()) for i in range(4)] == [True, False, True, False]


def test_transposed_conv_dim1_removes_output_channels() -> None:
    conv = nn.ConvTranspose2d(2, 3, 2, bias=False)  # weight (in=2, out=3, 2, 2)
    scores = torch.ones(2, 3, 2, 2)
    scores[:, 1] = 0.1
    mask = pattern({"t": conv}, dim=1, amount=1).get_masks({"t": scores}, 0.5)["t"]
    assert not mask[:, 1].any() and mask[:, 0].all() and mask[:, 2].all()


def test_default_options_are_l2_over_the_last_dim() -> None:
    fc = nn.Linear(4, 3, bias=False)
    built = pattern({"fc": fc})
    assert (built.options.n, built.options.dim, built.options.amount) == (2.0, -1, None)
    assert isinstance(built, LnStructuredPattern)
    mask = built.get_masks({"fc": COLUMNS}, 0.5)["fc"]
    assert mask.all(dim=0).tolist() == [False, False, True, True]


def test_inf_strings_are_accepted_for_json_configs() -> None:
    fc = nn.Linear(4, 3, bias=False)
    assert pattern({"fc": fc}, n="inf").options.n == INF
    assert pattern({"fc": fc}, n="-inf").options.n == -INF


# -- amount vs target -----------------------------------------------------------------------
def test_target_is_used_when_amount_is_none() -> None:
    fc = nn.Linear(8, 2, bias=False)
    built = pattern({"fc": fc}, n=1)
    scores = torch.arange(16, dtype=torch.float32).reshape(2, 8)  # column norms increase
    for target, count in [(0.0, 0), (0.25, 2), (0.5, 4), (0.9, 7)]:  # round(7.2) = 7
        mask = built.get_masks({"fc": scores}, target)["fc"]
        assert mask.all(dim=0).tolist() == [False] * count + [True] * (8 - count)


@pytest.mark.parametrize("amount,count", [(3, 3), (0, 0), (0.25, 2), (0.5, 4)])
def test_amount_takes_precedence_over_the_target(amount: float, count: int) -> None:
    fc = nn.Linear(8, 2, bias=False)
    built = pattern({"fc": fc}, n=1, amount=amount)
    scores = torch.arange(16, dtype=torch.float32).reshape(2, 8)
    for target in (0.0, 0.5, 0.99):  # even above the default max cap: it is ignored
        mask = built.get_masks({"fc": scores}, target)["fc"]
        assert mask.all(dim=0).tolist() == [False] * count + [True] * (8 - count)


def test_an_int_amount_is_per_op_whatever_the_op_size() -> None:
    mods: dict[str, nn.Module] = {"a": nn.Linear(3, 2), "b": nn.Conv2d(3, 10, 1)}
    built = pattern(mods, dim=0, amount=2, max_sparsity_ratio_per_op=1.0)
    masks = built.get_masks({n: m.weight.detach().abs() for n, m in mods.items()}, 0.5)
    assert int((~masks["a"].any(dim=1)).sum()) == 2  # both outputs of a
    assert int((~masks["b"].flatten(1).any(dim=1)).sum()) == 2  # 2 of b's 10 filters


def test_the_target_passed_with_an_amount_is_still_checked() -> None:
    fc = nn.Linear(4, 3)
    built = pattern({"fc": fc}, amount=1)
    with pytest.raises(ValueError, match=r"target_sparsity: 1.5 is not in \[0, 1\)"):
        built.get_masks({"fc": fc.weight.detach().abs()}, 1.5)


# -- caps -----------------------------------------------------------------------------------
def test_min_cap_raises_an_int_amount() -> None:
    fc = nn.Linear(10, 2, bias=False)
    built = pattern({"fc": fc}, amount=1, min_sparsity_ratio_per_op=0.3)
    mask = built.get_masks({"fc": fc.weight.detach().abs()}, 0.5)["fc"]
    assert int((~mask.all(dim=0)).sum()) == 3  # ceil(0.3 * 10)


def test_int_amount_above_the_max_cap_is_refused_naming_the_op() -> None:
    fc = nn.Linear(10, 2)
    with pytest.raises(
        pk.ImpossibleTargetError,
        match=r"max_sparsity_ratio_per_op 0\.98 lets op 'fc' \(Linear, weight shape \(2, 10\)\) "
        r"remove at most 9 of its 10 channels",
    ):
        pattern({"fc": fc}, amount=10)
    assert pattern({"fc": fc}, amount=10, max_sparsity_ratio_per_op=1.0) is not None


def test_float_amount_above_the_max_cap_is_a_config_error() -> None:
    with pytest.raises(pk.ConfigError, match=r"amount: 0\.99 is above max_sparsity_ratio_per_op"):
        pattern({"fc": nn.Linear(4, 4)}, amount=0.99)


# -- global scope ---------------------------------------------------------------------------
def two_layers() -> tuple[dict[str, nn.Module], dict[str, torch.Tensor]]:
    """fc1: 3 channels of 4 elements, fc2: 2 channels of 16 (dim -1: input columns); each
    channel constant, so the L2 norm is value * sqrt(size) and the power mean is the value."""
    mods: dict[str, nn.Module] = {"fc1": nn.Linear(3, 4), "fc2": nn.Linear(2, 16)}
    scores = {
        "fc1": torch.tensor([1.0, 2.5, 6.0]).expand(4, 3).clone(),  # norms 2, 5, 12
        "fc2": torch.tensor([2.0, 3.0]).expand(16, 2).clone(),  # norms 8, 12
    }
    return mods, scores


def test_global_float_amount_is_the_target_and_channels_compare_by_power_mean() -> None:
    mods, scores = two_layers()
    built = pk.get_pattern(
        {"pattern": "ln_structured", "pruning_scope": "global", "amount": 0.45}, mods
    )
    masks = built.get_masks(scores, 0.1)  # the 0.1 is overridden by amount
    # round(0.45 * 44) = 20 elements: by power mean fc1[0] (1.0, 4) then fc2[0] (2.0, 16) is
    # exactly 20. Raw norms would take fc1[0] (2), fc1[1] (5), fc2[0] (8) = 24 instead.
    assert masks["fc1"].all(dim=0).tolist() == [False, True, True]
    assert masks["fc2"].all(dim=0).tolist() == [False, True]
    assert sum(int((~m).sum()) for m in masks.values()) == 20


def test_global_inf_norm_is_not_rescaled() -> None:
    mods, scores = two_layers()
    scores["fc2"][:, 0] = 0.5  # max 0.5: the lowest channel of all
    built = pk.get_pattern(
        {"pattern": "ln_structured", "pruning_scope": "global", "n": INF, "amount": 0.4}, mods
    )
    masks = built.get_masks(scores, 0.5)  # round(0.4 * 44) = 18 -> fc2[0] (16 elements)
    assert masks["fc1"].all()
    assert masks["fc2"].all(dim=0).tolist() == [False, True]


def test_global_uses_the_target_when_amount_is_none() -> None:
    mods, scores = two_layers()
    built = pk.get_pattern({"pattern": "ln_structured", "pruning_scope": "global"}, mods)
    masks = built.get_masks(scores, 0.45)
    assert sum(int((~m).sum()) for m in masks.values()) == 20


def test_int_amount_with_global_scope_is_refused() -> None:
    with pytest.raises(pk.ConfigError, match=r"amount: an int amount .* use pruning_scope='local'"):
        pk.get_pattern(
            {"pattern": "ln_structured", "pruning_scope": "global", "amount": 2},
            {"fc": nn.Linear(4, 4)},
        )


# -- pre-masks ------------------------------------------------------------------------------
def test_pre_masks_are_monotone_and_count_toward_the_amount() -> None:
    conv = nn.Conv2d(3, 12, 3)
    scores = {"c": conv.weight.detach().abs()}
    first = pattern({"c": conv}, dim=0, amount=0.25).get_masks(scores, 0.5)
    flipped = {"c": 1.0 / (scores["c"] + 1e-3)}  # would prefer the other filters
    second = pattern({"c": conv}, dim=0, amount=0.5).get_masks(flipped, 0.5, pre_masks=first)
    assert not (second["c"] & ~first["c"]).any()  # nothing revived
    removed = ~second["c"].flatten(1).any(dim=1)
    assert int(removed.sum()) == 6  # round(0.5 * 12), the 3 removed before among them
    assert int((~first["c"].flatten(1).any(dim=1)).sum()) == 3


def test_an_amount_below_what_a_pre_mask_removed_removes_nothing_more() -> None:
    fc = nn.Linear(6, 2, bias=False)
    pre = torch.ones(2, 6, dtype=torch.bool)
    pre[:, [1, 3, 4]] = False
    built = pattern({"fc": fc}, amount=1)
    mask = built.get_masks({"fc": torch.rand(2, 6)}, 0.5, pre_masks={"fc": pre})["fc"]
    assert torch.equal(mask, pre)


# -- errors ---------------------------------------------------------------------------------
def test_dim_out_of_range_names_the_op_its_shape_and_the_valid_dims() -> None:
    mods = {"conv": nn.Conv2d(3, 4, 3), "fc": nn.Linear(5, 4)}
    with pytest.raises(
        DimOutOfRangeError,
        match=r"dim=2 is out of range for op 'fc' \(Linear, weight shape \(4, 5\)\): valid "
        r"dims are -2\.\.1",
    ) as info:
        pattern(mods, dim=2)
    assert isinstance(info.value, IndexError)  # as torch's
    assert isinstance(info.value, pk.UnsupportedModuleError)
    with pytest.raises(IndexError, match=r"dim=-3 is out of range for op 'fc'"):
        pattern(mods, dim=-3)
    assert pattern(mods, dim=-2) is not None


def test_dim_beyond_any_supported_weight_is_a_config_error() -> None:
    with pytest.raises(pk.ConfigError, match="dim: Input should be less than or equal to 4"):
        pattern({"fc": nn.Linear(4, 4)}, dim=5)


def test_int_amount_above_the_channel_count_names_the_op_and_counts() -> None:
    mods = {"fc": nn.Linear(5, 4)}
    with pytest.raises(
        pk.ImpossibleTargetError,
        match=r"amount=6 channels, but op 'fc' \(Linear, weight shape \(4, 5\)\) has only 5 "
        r"along dim -1",
    ):
        pattern(mods, amount=6, max_sparsity_ratio_per_op=1.0)
    with pytest.raises(ValueError, match=r"amount=5 channels, .* has only 4 along dim 0"):
        pattern(mods, amount=5, dim=0, max_sparsity_ratio_per_op=1.0)


@pytest.mark.parametrize("bad", [0, -1, -2.5, "nuc", "l2", True, None, float("nan")])
def test_bad_norms_are_config_errors_naming_n(bad: object) -> None:
    with pytest.raises(pk.ConfigError, match=r"\n  n: .* is not a supported norm order"):
        pattern({"fc": nn.Linear(4, 4)}, n=bad)


@pytest.mark.parametrize("bad", [True, False, -1, 1.5, -0.1, "2", float("nan"), [1]])
def test_bad_amounts_are_config_errors_naming_amount(bad: object) -> None:
    with pytest.raises(pk.ConfigError, match=r"\n  amount: .* is not an amount"):
        pattern({"fc": nn.Linear(4, 4)}, amount=bad)


@pytest.mark.parametrize("bad", [True, "0", 1.0])
def test_dim_must_be_an_int(bad: object) -> None:
    with pytest.raises(pk.ConfigError, match=r"\n  dim: "):
        pattern({"fc": nn.Linear(4, 4)}, dim=bad)


def test_unsupported_modules_are_refused() -> None:
    with pytest.raises(pk.UnsupportedModuleError, match="cannot prune op 'emb'"):
        pattern({"emb": nn.Embedding(4, 4)})


def test_registered_as_a_builtin_with_its_options_in_the_schema() -> None:
    from prunekit.config import config_json_schema
    from prunekit.plugins import default_host

    entry = default_host().patterns.resolve("ln_structured")
    assert entry.builtin and entry.obj is LnStructuredPattern
    branches = [
        b["then"]["properties"]
        for b in config_json_schema()["allOf"]
        if b["if"]["properties"]["pattern"] == {"const": "ln_structured"}
    ]
    assert len(branches) == 1 and set(branches[0]) == {"n", "dim", "amount"}
    assert all(p.get("description") for p in branches[0].values())
