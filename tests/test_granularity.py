"""fasterai's granularities: the removed elements form whole blocks of the named dims."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.patterns.granularity import GRANULARITIES, applicable_names, span_of

CONV_TABLE = {  # SEMANTICS.md: name -> dims of (out, in, kh, kw) that one block spans
    "weight": (),
    "shared_weight": (0,),
    "channel": (1,),
    "column": (2,),
    "row": (3,),
    "shared_channel": (0, 1),
    "shared_column": (0, 2),
    "shared_row": (0, 3),
    "vertical_slice": (1, 2),
    "horizontal_slice": (1, 3),
    "kernel": (2, 3),
    "shared_vertical_slice": (0, 1, 2),
    "shared_horizontal_slice": (0, 1, 3),
    "shared_kernel": (0, 2, 3),
    "filter": (1, 2, 3),
}


def test_all_fifteen_conv2d_names_and_three_linear_names_are_registered() -> None:
    conv, linear = nn.Conv2d(2, 3, 3), nn.Linear(3, 2)
    assert set(CONV_TABLE) <= set(pk.list_patterns())
    assert applicable_names(conv) == [
        n for n in GRANULARITIES if n not in {"depth", "shared_depth"}
    ]
    assert applicable_names(linear) == ["weight", "column", "row"]
    for name, span in CONV_TABLE.items():
        assert span_of(name, conv) == span, name
        assert pk.PATTERNS.entry(name).owner == "prunekit"
    assert span_of("column", linear) == (0,) and span_of("row", linear) == (1,)


@pytest.mark.parametrize("name", list(CONV_TABLE))
def test_conv2d_removed_elements_are_whole_blocks(name: str) -> None:
    conv = nn.Conv2d(3, 4, (2, 3), bias=False)
    scores = torch.rand(conv.weight.shape, generator=torch.Generator().manual_seed(7))
    pattern = pk.get_pattern({"pattern": name, "pruning_scope": "local"}, {"c": conv})
    mask = pattern.get_masks({"c": scores}, 0.5)["c"]
    span = CONV_TABLE[name]
    # Over the spanned dims, a block is all kept or all removed...
    if span:
        assert torch.equal(mask.amin(dim=span), mask.amax(dim=span))
    # ...and exactly round(0.5 * blocks) blocks are removed: the lowest-mean ones.
    block_means = scores.mean(dim=span) if span else scores
    blocks = block_means.numel()
    removed = (~mask.amax(dim=span)) if span else ~mask
    assert int(removed.sum()) == round(0.5 * blocks)
    order = torch.argsort(block_means.reshape(-1), stable=True)
    expected = torch.zeros(blocks, dtype=torch.bool)
    expected[order[: round(0.5 * blocks)]] = True
    assert torch.equal(removed.reshape(-1), expected)


def test_filter_removes_output_channels_and_shared_kernel_input_channels() -> None:
    conv = nn.Conv2d(3, 4, 2, bias=False)
    scores = torch.ones(4, 3, 2, 2)
    scores[1] = 0.1  # filter 1 is weakest
    scores[:, 2] *= 0.5  # input channel 2 is weakest across filters
    f = pk.get_pattern({"pattern": "filter", "pruning_scope": "local"}, {"c": conv})
    mask = f.get_masks({"c": scores}, 0.25)["c"]
    assert not mask[1].any() and mask[[0, 2, 3]].all()
    k = pk.get_pattern({"pattern": "shared_kernel", "pruning_scope": "local"}, {"c": conv})
    mask = k.get_masks({"c": scores}, 0.34)["c"]  # round(0.34 * 3) = 1 input channel
    assert not mask[:, 2].any() and mask[:, [0, 1]].all()


def test_linear_column_removes_inputs_and_row_removes_outputs() -> None:
    fc = nn.Linear(4, 3, bias=False)
    scores = torch.tensor([[1.0, 5, 3, 4], [1, 5, 3, 4], [9, 9, 9, 9]])
    col = pk.get_pattern({"pattern": "column", "pruning_scope": "local"}, {"fc": fc})
    assert col.get_masks({"fc": scores}, 0.5)["fc"].tolist() == [[False, True, False, True]] * 3
    row = pk.get_pattern({"pattern": "row", "pruning_scope": "local"}, {"fc": fc})
    assert row.get_masks({"fc": scores}, 0.34)["fc"].tolist() == [
        [False] * 4,
        [True] * 4,
        [True] * 4,
    ]  # rows 0 and 1 tie: the lower index goes


def test_a_name_that_does_not_apply_names_the_module_and_the_names_that_do() -> None:
    with pytest.raises(pk.UnsupportedModuleError) as info:
        pk.get_pattern({"pattern": "kernel"}, {"head": nn.Linear(4, 2)})
    assert str(info.value) == (
        "granularity 'kernel' does not apply to op 'head' (Linear); names that do: "
        "weight, column, row"
    )
    with pytest.raises(pk.UnsupportedModuleError, match="'depth' does not apply to op 'c'"):
        pk.get_pattern({"pattern": "depth"}, {"c": nn.Conv2d(2, 2, 3)})


def test_conv1d_is_conv2d_with_kh_one() -> None:
    conv1d = nn.Conv1d(3, 4, 5, bias=False)
    conv2d = nn.Conv2d(3, 4, (1, 5), bias=False)
    scores = torch.rand(4, 3, 5, generator=torch.Generator().manual_seed(3))
    for name in CONV_TABLE:
        one = pk.get_pattern({"pattern": name, "pruning_scope": "local"}, {"c": conv1d})
        two = pk.get_pattern({"pattern": name, "pruning_scope": "local"}, {"c": conv2d})
        m1 = one.get_masks({"c": scores}, 0.5)["c"]
        m2 = two.get_masks({"c": scores.unsqueeze(2)}, 0.5)["c"]
        assert torch.equal(m1, m2.squeeze(2)), name


def test_conv3d_kernel_names_span_depth_and_slices_do_not() -> None:
    conv = nn.Conv3d(2, 3, (2, 2, 2))
    assert span_of("kernel", conv) == (2, 3, 4)
    assert span_of("filter", conv) == (1, 2, 3, 4)
    assert span_of("shared_kernel", conv) == (0, 2, 3, 4)
    assert span_of("vertical_slice", conv) == (1, 3)
    assert span_of("depth", conv) == (2,)
    assert "depth" in applicable_names(conv)


def test_conv_transpose_filter_spans_every_dim_but_out() -> None:
    deconv = nn.ConvTranspose2d(3, 5, 2)  # weight (in=3, out=5, 2, 2)
    assert span_of("filter", deconv) == (0, 2, 3)
    assert span_of("shared_kernel", deconv) == (1, 2, 3)
    scores = torch.ones(3, 5, 2, 2)
    scores[:, 4] = 0.0
    pattern = pk.get_pattern({"pattern": "filter", "pruning_scope": "local"}, {"d": deconv})
    mask = pattern.get_masks({"d": scores}, 0.2)["d"]
    assert not mask[:, 4].any() and mask[:, :4].all()


def test_global_scope_compares_granularity_blocks_across_layers() -> None:
    a, b = nn.Conv2d(2, 4, 3), nn.Conv2d(4, 4, 3)
    scores = {"a": torch.full(a.weight.shape, 2.0), "b": torch.full(b.weight.shape, 1.0)}
    pattern = pk.get_pattern({"pattern": "filter", "target_sparsity": 0.5}, {"a": a, "b": b})
    masks = pattern.get_masks(scores, 0.5)
    # 72 + 144 = 216 elements; 108 to remove: b's filters (36 each) go first, 3 of them.
    removed = {n: int((~m).sum()) for n, m in masks.items()}
    assert removed == {"a": 0, "b": 108}


@pytest.mark.parametrize(
    "name,module",
    list(itertools.product(["weight", "column", "row"], [nn.Linear(6, 4), nn.Conv2d(2, 4, 3)])),
)
def test_shared_names_work_on_both_kinds(name: str, module: nn.Module) -> None:
    pattern = pk.get_pattern({"pattern": name, "pruning_scope": "local"}, {"m": module})
    mask = pattern.get_masks({"m": module.weight.detach().abs()}, 0.5)["m"]
    assert int((~mask).sum()) == mask.numel() // 2
