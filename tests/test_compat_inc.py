"""prunekit.compat.inc: scripts written for Intel Neural Compressor 3.7.1's pruner run with
only their imports changed. Real models and real Pruners, no mocks: every example config of
INC's docs and tests loads (or is refused by name), INC's training loops (the callbacks, and
prepare_pruning's hooked optimizer) reach the target at INC's steps, every key that does not
carry over is named, pruning_configs inherit as in INC, and the defaults are INC's."""

from __future__ import annotations

import copy
import inspect
import io
import math
import pickle
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from inc_configs import EXAMPLES, INC_PROCESS_DEFAULTS, INC_SIGNATURE, Example
from prunekit import PruningConfig
from prunekit.compat.inc import (
    BasicPruning,
    CompressionManager,
    IncCompatWarning,
    UnsupportedIncKeyError,
    WeightPruningConfig,
    classifier_head,
    prepare_compression,
    prepare_pruning,
)
from prunekit.compat.inc_config import pruner_entries
from prunekit.compat.inc_keys import inc_defaults, translate
from prunekit.errors import ConfigError, ImpossibleTargetError, OpSelectionError, PrunekitError

# -- models ---------------------------------------------------------------------------------------


class Block(nn.Module):
    """A ResNet-style block named as torchvision's (conv1, conv2, downsample.0)."""

    def __init__(self, inp: int, out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inp, out, 3, padding=1)
        self.conv2 = nn.Conv2d(out, out, 3, padding=1)
        self.downsample = nn.Sequential(nn.Conv2d(inp, out, 1))

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.conv2(torch.relu(self.conv1(x))) + self.downsample(x))


class TinyResNet(nn.Module):
    """layer1..layer4 as in torchvision's ResNet (the names INC's tests select), widths
    that every pattern of those tests divides, and a classifier head ``fc``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.layer1 = nn.Sequential(Block(8, 16))
        self.layer2 = nn.Sequential(Block(16, 32))
        self.layer3 = nn.Sequential(Block(32, 40))
        self.layer4 = nn.Sequential(Block(40, 48))
        self.fc = nn.Linear(48, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.conv1(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean(dim=(2, 3)))


class Conv1dModel(nn.Module):
    """test_conv_pruning.py's model: two Conv1d and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(4, 4, 2)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv1d(4, 4, 2)
        self.linear = nn.Linear(32, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.conv2(self.act(self.conv1(x))).flatten(1))


class HFConv1DModel(nn.Module):
    """test_conv_pruning.py's model of Hugging Face Conv1D layers (GPT-2's Linear)."""

    def __init__(self) -> None:
        super().__init__()
        from transformers.pytorch_utils import Conv1D

        self.conv1 = Conv1D(4, 4)
        self.act = nn.ReLU()
        self.conv2 = Conv1D(4, 4)
        self.linear = nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.conv2(self.act(self.conv1(x))).flatten(1))


class NaiveMLP(nn.Module):
    """test_auto_excluding_classifier.py's model."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.linear1 = nn.Linear(hidden, hidden, bias=False)
        self.ac1 = nn.ReLU()
        self.linear2 = nn.Linear(hidden, hidden)
        self.ac2 = nn.ReLU()
        self.linear3 = nn.Linear(hidden, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear3(self.ac2(self.linear2(self.ac1(self.linear1(x)))))


def bert() -> nn.Module:
    """A small BertForSequenceClassification built from its config (never downloaded)."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=2,
    )
    return BertForSequenceClassification(config)


Batch = tuple[dict[str, Tensor], Tensor]


def batches(model_name: str, n: int) -> Iterator[Batch]:
    """``n`` random training batches for a test model: keyword inputs and labels."""
    generator = torch.Generator().manual_seed(1)
    for _ in range(n):
        if model_name == "bert":
            ids = torch.randint(0, 64, (4, 12), generator=generator)
            yield {"input_ids": ids}, torch.randint(0, 2, (4,), generator=generator)
        elif model_name == "resnet":
            yield {"x": torch.randn(4, 3, 8, 8, generator=generator)}, torch.randint(0, 10, (4,))
        elif model_name == "conv1d":
            yield {"x": torch.randn(1, 4, 10, generator=generator)}, torch.randint(0, 3, (1,))
        else:
            yield {"x": torch.randn(1, 4, 4, generator=generator)}, torch.randint(0, 3, (1,))


MODELS: dict[str, Callable[[], nn.Module]] = {
    "resnet": TinyResNet,
    "conv1d": Conv1dModel,
    "hf_conv1d": HFConv1DModel,
    "bert": bert,
}


def loss_of(model: nn.Module, batch: Batch) -> Tensor:
    inputs, labels = batch
    out = model(**inputs)
    logits = out.logits if hasattr(out, "logits") else out
    return nn.functional.cross_entropy(logits, labels)


def sparsity(modules: dict[str, nn.Module]) -> float:
    """Zero weights over all weights of ``modules``, read from the weights themselves."""
    weights = [m.weight.detach() for m in modules.values()]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def inc_target(target: float, start: int, end: int, frequency: int, step: int, kind: str) -> float:
    """INC 3.7.1's target in force from the start of ``step`` (its IterativeScheduler and
    pruning steps), written from INC's formulas independently of prunekit's schedules."""
    total = max((end - start + frequency) // frequency - 1, 1)
    if step < start:
        return 0.0
    done = min((step - start) // frequency, total)
    if start == end:
        return target
    p = done / total
    return {
        "exp": 1 - (1 - target) ** p,
        "cos": target * (1 - math.cos(p * math.pi / 2)),
        "linear": target * p,
        "cube": target * p**3,
    }[kind]


def inc_loop(
    model: nn.Module,
    manager: CompressionManager,
    steps: int,
    model_name: str,
    after_step_begin: Callable[[int], None] | None = None,
) -> None:
    """INC's documented training loop (docs/source/pruning.md, "Stable Option"), as an INC
    script writes it: only the imports differ."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    manager.callbacks.on_train_begin()
    data = list(batches(model_name, steps))
    for epoch in range(1):
        model.train()
        manager.callbacks.on_epoch_begin(epoch)
        for step, batch in enumerate(data):
            manager.callbacks.on_step_begin(step)
            if after_step_begin is not None:
                after_step_begin(step)
            loss = loss_of(model, batch)
            optimizer.zero_grad()
            loss.backward()
            manager.callbacks.on_before_optimizer_step()
            optimizer.step()
            manager.callbacks.on_after_optimizer_step()
            manager.callbacks.on_step_end()
        manager.callbacks.on_epoch_end()
    manager.callbacks.on_train_end()
    manager.callbacks.on_before_eval()
    manager.callbacks.on_after_eval()


def incompat_warnings(record: list[warnings.WarningMessage]) -> list[IncCompatWarning]:
    return [w.message for w in record if isinstance(w.message, IncCompatWarning)]


# -- every example config of INC's docs and tests -------------------------------------------------


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_every_inc_example_config_loads_or_is_refused_by_name(example: Example) -> None:
    model = MODELS[example.model]()
    config = WeightPruningConfig(example.pruning_configs, **example.kwargs)
    if example.refused:
        with pytest.raises(UnsupportedIncKeyError) as caught:
            prepare_compression(model, config)
        assert caught.value.keys == example.refused
        for key, line in zip(example.refused, caught.value.lines, strict=True):
            assert re.match(rf"pruning_configs\[\d+\]\.{key}: ", line)
        return
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        manager = prepare_compression(model, config)
    assert {w.key for w in incompat_warnings(record)} == set(example.warned)
    assert manager.prunekit_pruners, "a prunekit Pruner runs the example"
    steps = 12
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inc_loop(model, manager, steps, example.model)
    _assert_targets_reached(manager, steps)


def _assert_targets_reached(manager: CompressionManager, steps: int) -> None:
    """Each config whose end_step fell within the loop holds its target on its ops, to the
    whole blocks (pattern locks keep the zeros they found: none in a fresh model)."""
    for pruner in manager.prunekit_pruners:
        for group in pruner.groups:
            if group.config.end_step >= steps:
                continue
            layouts = group.pattern.layouts
            grain = max(
                layouts[n].block_size / m.weight.numel()
                for n, m in group.ops.items()
                if n in layouts
            )
            reached = sparsity({n: m for n, m in group.ops.items() if n in layouts})
            target = group.config.target_sparsity
            assert abs(reached - target) <= 0.02 + grain, (group.index, reached, target)


def test_inc_test_pruning_config_assertions_hold() -> None:
    """INC's own assertions of test_pruning_config.py, on the same config."""
    example = next(e for e in EXAMPLES if e.name == "test-pruning-config")
    config = WeightPruningConfig(example.pruning_configs, **example.kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        manager = prepare_compression(TinyResNet(), config)
    pruners = manager.callbacks.callbacks_list[0].pruners
    assert pruners[0].config["pruning_frequency"] == 2
    assert pruners[0].config["target_sparsity"] == 0.6
    assert pruners[1].config["target_sparsity"] == 0.8
    assert pruners[0].config["pattern"] == "channelx1"
    assert pruners[1].config["pruning_type"] == "pattern_lock"
    assert manager.conf.pruning is config


# -- INC's training loops on a CNN and on BERT, imports changed only ------------------------------


@pytest.mark.parametrize("criterion", ["snip_momentum", "magnitude"])
def test_documented_loop_on_a_cnn_reaches_the_target_at_end_step(criterion: str) -> None:
    model = TinyResNet()
    config = WeightPruningConfig(
        [{"op_names": ["layer2", "layer3"], "excluded_op_names": ["downsample"]}],
        target_sparsity=0.8,
        pruning_type=criterion,
        pattern="4x1",
        start_step=2,
        end_step=10,
        pruning_frequency=2,
    )
    manager = prepare_compression(model, config)
    ops = manager.callbacks.callbacks_list[0].pruners[0].modules
    assert sorted(ops) == [f"layer{i}.0.conv{j}" for i in (2, 3) for j in (1, 2)]
    seen: dict[int, float] = {}
    inc_loop(model, manager, 14, "resnet", lambda step: seen.__setitem__(step, sparsity(ops)))
    elements = sum(m.weight.numel() for m in ops.values())
    for step, reached in seen.items():  # the sparsity the model has from the start of each step
        assert abs(reached - inc_target(0.8, 2, 10, 2, step, "exp")) <= 4 / elements, step
    assert seen[9] < 0.79 and abs(seen[10] - 0.8) <= 4 / elements
    assert manager.report().achieved == pytest.approx(sparsity(ops))


def test_documented_loop_on_bert_reaches_the_target_at_end_step() -> None:
    model = bert()
    config = WeightPruningConfig(
        [
            {
                "pruning_type": "snip_momentum",
                "pruning_scope": "global",
                "sparsity_decay_type": "exp",
                "excluded_op_names": ["pooler"],
                "pruning_op_types": ["Linear"],
                "max_sparsity_ratio_per_op": 0.98,
            }
        ],
        target_sparsity=0.8,
        pattern="4x1",
        pruning_frequency=2,
        start_step=1,
        end_step=7,
    )
    manager = prepare_compression(model, config)
    ops = manager.callbacks.callbacks_list[0].pruners[0].modules
    assert "classifier" not in ops and "bert.pooler.dense" not in ops and len(ops) == 12
    seen: dict[int, float] = {}
    inc_loop(model, manager, 10, "bert", lambda step: seen.__setitem__(step, sparsity(ops)))
    elements = sum(m.weight.numel() for m in ops.values())
    assert seen[6] < 0.79
    assert abs(seen[7] - 0.8) <= 4 / elements and abs(sparsity(ops) - 0.8) <= 4 / elements
    assert manager.model.model is model


def test_gradient_criteria_score_before_the_optimizer_step_as_inc() -> None:
    """snip_momentum's scores are INC's, 0.9 * score + |w * g| at every
    on_before_optimizer_step from the weights before the update, and the masks INC makes at
    the start of step 3 (from the scores of steps 0..2) are in force from then on."""
    model = TinyResNet()
    config = WeightPruningConfig(
        [{"op_names": ["layer2.0.conv1"]}], target_sparsity=0.5, start_step=3, end_step=3
    )
    manager = prepare_compression(model, config)
    conv = model.layer2[0].conv1
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    expected = torch.zeros_like(conv.weight)
    at_masking = expected
    for step, batch in enumerate(batches("resnet", 4)):
        manager.callbacks.on_step_begin(step)
        assert sparsity({"c": conv}) == (0.5 if step == 3 else 0.0)
        optimizer.zero_grad()
        loss_of(model, batch).backward()
        expected = 0.9 * expected + (conv.weight.detach() * conv.weight.grad).abs()
        at_masking = expected.clone() if step == 2 else at_masking
        manager.callbacks.on_before_optimizer_step()
        optimizer.step()
        manager.callbacks.on_after_optimizer_step()
    state = manager.prunekit_pruners[0].state_dict()["criterion_state"]["layer2.0.conv1"]
    assert torch.allclose(state, expected)
    # 4x1 blocks on INC's (out, kernel * in) view: the removed ones scored lowest
    blocks = at_masking.permute(0, 2, 3, 1).reshape(8, 4, -1).mean(1)
    kept = (conv.weight != 0).permute(0, 2, 3, 1).reshape(8, 4, -1)[:, 0, :]
    assert blocks[~kept].max() <= blocks[kept].min()


def test_magnitude_prunes_at_step_begin_before_the_forward_as_inc() -> None:
    model = TinyResNet()
    config = WeightPruningConfig(
        [{"op_names": ["layer1.0.conv2"]}],
        pruning_type="magnitude",
        pattern="1x1",
        target_sparsity=0.5,
        start_step=2,
        end_step=2,
    )
    manager = prepare_compression(model, config)
    conv = model.layer1[0].conv2
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for step, batch in enumerate(batches("resnet", 3)):
        before = conv.weight.detach().clone()
        manager.callbacks.on_step_begin(step)
        if step == 2:  # the weights INC scores are those after step 1's update
            threshold = before.abs().flatten().kthvalue(before.numel() // 2).values
            assert sparsity({"c": conv}) == pytest.approx(0.5, abs=4 / before.numel())
            assert bool((before.abs()[conv.weight == 0] <= threshold + 1e-6).all())
        else:
            assert sparsity({"c": conv}) == 0.0
        optimizer.zero_grad()
        loss_of(model, batch).backward()
        manager.callbacks.on_before_optimizer_step()
        optimizer.step()
        manager.callbacks.on_after_optimizer_step()


def test_the_compression_manager_docstring_loop_without_after_step_still_advances() -> None:
    """INC's CompressionManager docstring calls on_step_end but not on_after_optimizer_step."""
    model = TinyResNet()
    config = WeightPruningConfig(
        [{"op_names": ["layer3.0.conv2"]}], target_sparsity=0.6, start_step=1, end_step=4
    )
    manager = prepare_compression(model, config)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    manager.callbacks.on_train_begin()
    for step, batch in enumerate(batches("resnet", 6)):
        manager.callbacks.on_step_begin(step)
        loss = manager.callbacks.on_after_compute_loss(batch[0], None, loss_of(model, batch))
        optimizer.zero_grad()
        loss.backward()
        manager.callbacks.on_before_optimizer_step()
        optimizer.step()
        manager.callbacks.on_step_end()
    manager.callbacks.on_train_end()
    assert manager.pruning.global_step == 6
    assert sparsity({"c": model.layer3[0].conv2}) == pytest.approx(0.6, abs=0.01)


def test_gradient_accumulation_counts_optimizer_steps() -> None:
    model = TinyResNet()
    config = WeightPruningConfig(
        [{"op_names": ["layer2.0.conv2"]}], target_sparsity=0.5, start_step=2, end_step=2
    )
    manager = prepare_compression(model, config)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for micro, batch in enumerate(batches("resnet", 8)):
        manager.callbacks.on_step_begin(micro)
        loss_of(model, batch).backward()
        if micro % 2 == 1:
            manager.callbacks.on_before_optimizer_step()
            optimizer.step()
            manager.callbacks.on_after_optimizer_step()
            optimizer.zero_grad()
        manager.callbacks.on_step_end()
    assert manager.pruning.global_step == 4


def test_manager_model_save_and_export(tmp_path: Any) -> None:
    model = TinyResNet()
    manager = prepare_compression(
        model, [WeightPruningConfig(pruning_type="magnitude", target_sparsity=0.5)]
    )
    inc_loop(model, manager, 2, "resnet")
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(manager.model(x), model(x))
    path = manager.save(tmp_path)
    fresh = TinyResNet()
    fresh.load_state_dict(torch.load(path))
    ops = manager.callbacks.callbacks_list[0].pruners[0].modules
    assert sparsity({n: fresh.get_submodule(n) for n in ops}) == pytest.approx(0.5, abs=0.01)
    with pytest.raises(NotImplementedError, match=r"torch\.onnx\.export"):
        manager.export("model.onnx", None)
    with pytest.raises(TypeError, match="pruning only"):
        prepare_compression(model, object())


# -- prepare_pruning: the optimizer's step prunes -------------------------------------------------


def test_prepare_pruning_prunes_inside_optimizer_step() -> None:
    model = TinyResNet()
    example = next(e for e in EXAMPLES if e.name == "test-2plus-pruning")
    with pytest.warns(IncCompatWarning):
        config = WeightPruningConfig(example.pruning_configs, **example.kwargs)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        pruning = prepare_pruning(model, config, optimizer)
    assert isinstance(pruning, BasicPruning)
    layer1, layer2 = (p.modules for p in pruning.pruners)
    for _epoch in range(2):
        model.train()
        for batch in batches("resnet", 4):  # INC's loop: no callback at all
            loss = loss_of(model, batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if pruning.global_step == 4:
                assert sparsity(layer1) < 0.59  # magnitude prunes at the start of step 4
    assert pruning.global_step == 8
    assert sparsity(layer1) == pytest.approx(0.6, abs=0.01)
    assert sparsity(layer2) == pytest.approx(0.5, abs=0.01)
    assert all(0.49 <= sparsity({n: m}) <= 0.51 for n, m in layer2.items())  # local 2:4


def test_prepare_pruning_leaves_saving_and_copies_working() -> None:
    model = TinyResNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    config = WeightPruningConfig(target_sparsity=0.5, start_step=1, end_step=1)
    pruning = prepare_pruning(model, config, optimizer)
    for batch in batches("resnet", 3):
        optimizer.zero_grad()
        loss_of(model, batch).backward()
        optimizer.step()
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    torch.save(model, buffer)  # INC patched torch.save for this; torch's own works here
    pickle.dumps(optimizer)
    twin = copy.deepcopy(model)
    twin(torch.randn(1, 3, 8, 8))  # a copy's forward does not drive the original's pruning
    assert pruning.global_step == 3
    conv = model.layer2[0].conv1
    zeros = conv.weight == 0
    for batch in batches("resnet", 2):
        optimizer.zero_grad()
        loss_of(model, batch).backward()
        optimizer.step()
    assert bool((conv.weight[zeros] == 0).all())  # Adam moves no removed weight
    pruning.remove()
    assert not model._forward_pre_hooks


def test_prepare_pruning_refuses_what_inc_refuses() -> None:
    model = TinyResNet()
    config = WeightPruningConfig()
    with pytest.raises(PrunekitError, match="needs the training optimizer"):
        prepare_pruning(model, config)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(ValueError, match="'pytorch' framework only"):
        prepare_pruning(model, config, optimizer, framework="keras")


# -- keys: one named warning or error each --------------------------------------------------------

REFUSED: list[tuple[dict[str, Any], str, str]] = [
    ({"reg_type": "group_lasso", "reg_coeff": 0.1}, "reg_type", "regularization"),
    ({"pruning_type": "block_mask"}, "pruning_type", "learned block masks"),
    ({"pruning_type": "snip_momentum_block"}, "pruning_type", "learned block masks"),
    ({"pruning_type": "retrain_free"}, "pruning_type", "post-training mask search"),
    ({"pruning_type": "sparse_gpt"}, "pruning_type", "SparseGPT"),
    ({"pattern": "mha"}, "pattern", "attention-head pruning"),
    ({"pattern": "2in4"}, "pattern", "INC writes N:M as '2:4'"),
    ({"lock_init_sparsity": True}, "lock_init_sparsity", "schedules start from 0"),
    (
        {"pruning_type": "pattern_lock", "start_step": 1, "end_step": 5},
        "pruning_type",
        "needs start_step == end_step",
    ),
    ({"parameters": 3}, "parameters", "must be a dict"),
]


@pytest.mark.parametrize(
    ("entry", "key", "why"), REFUSED, ids=[r[1] + str(i) for i, r in enumerate(REFUSED)]
)
def test_keys_prunekit_lacks_and_that_change_results_are_refused_by_name(
    entry: dict[str, Any], key: str, why: str
) -> None:
    config = WeightPruningConfig([{"op_names": ["layer1"], **entry}])
    with pytest.raises(UnsupportedIncKeyError) as caught:
        prepare_compression(TinyResNet(), config)
    assert caught.value.keys == (key,)
    assert f"pruning_configs[0].{key}: " in str(caught.value) and why in str(caught.value)
    assert isinstance(caught.value, ConfigError)


WARNED: list[tuple[dict[str, Any], str, str]] = [
    ({"pruning_type": "snip_momentum_progressive"}, "pruning_type", "no progressive pruning"),
    ({"low_memory_usage": True}, "low_memory_usage", "float32 scores"),
    ({"criterion_type": "gradient"}, "criterion_type", "overwrites criterion_type"),
    ({"resume_from_pruned_checkpoint": True}, "resume_from_pruned_checkpoint", "never reads"),
    ({"reg_coeff": 0.5}, "reg_coeff", "is replaced by parameters' 0.0"),
    ({"parameters": {"reg_coeff": 0.5}}, "reg_coeff", "without reg_type"),
    ({"progressive": True}, "progressive", "sets it itself"),
    ({"false_key": "x"}, "false_key", "not an INC 3.7.1 pruning key"),
    ({"target_sparsty": 0.5}, "target_sparsty", "did you mean 'target_sparsity'?"),
]


@pytest.mark.parametrize(
    ("entry", "key", "why"), WARNED, ids=[r[1] + str(i) for i, r in enumerate(WARNED)]
)
def test_keys_whose_loss_is_harmless_are_named_in_a_warning(
    entry: dict[str, Any], key: str, why: str
) -> None:
    config = WeightPruningConfig([{"op_names": ["layer1"], **entry}], start_step=1, end_step=5)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        prepare_compression(TinyResNet(), config)
    (warning,) = incompat_warnings(record)
    assert warning.key == key and why in str(warning)
    assert str(warning).startswith(f"pruning_configs[0].{key}: ")


def test_progressive_warning_says_when_inc_ran_it_non_progressively() -> None:
    (entry,) = pruner_entries(WeightPruningConfig(pruning_type="magnitude_progressive", end_step=3))
    ((key, message),) = translate(entry.config, 0).warnings
    assert key == "pruning_type" and "non-progressively too" in message


def test_inc_keys_at_their_defaults_say_nothing() -> None:
    config = WeightPruningConfig(
        [{**INC_PROCESS_DEFAULTS, "op_names": ["layer1"]}],
        low_memory_usage=False,
        start_step=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", IncCompatWarning)
        prepare_compression(TinyResNet(), config)


def test_top_level_keys_inc_does_not_pass_down_are_named() -> None:
    config = WeightPruningConfig([{"op_names": ["layer1"]}], backend="itrex", made_up=1)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        prepare_compression(TinyResNet(), config)
    keys = sorted(w.key for w in incompat_warnings(record))
    assert keys == ["backend", "made_up"]


def test_an_entry_whose_every_op_the_pattern_skips_is_named_as_inc_s_entry() -> None:
    config = WeightPruningConfig(
        [
            {"op_names": ["nowhere"]},
            {"op_names": ["layer3"]},
            {"op_names": ["layer1"], "pattern": "5x1"},
        ]
    )
    expected = r"^pruning_configs\[2\] \(pattern '5x1'\)"
    with pytest.raises(ImpossibleTargetError, match=expected), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepare_compression(TinyResNet(), config)


def test_a_top_level_inc_key_inc_does_not_pass_down_is_named() -> None:
    config = WeightPruningConfig([{"op_names": ["layer1"]}], lock_init_sparsity=True)
    with pytest.warns(IncCompatWarning, match="lock_init_sparsity: ignored at the top level"):
        prepare_compression(TinyResNet(), config)


def test_a_pruner_that_selects_nothing_is_left_out_with_a_warning() -> None:
    config = WeightPruningConfig([{"op_names": ["layer1"]}, {"op_names": ["nowhere"]}])
    with pytest.warns(IncCompatWarning, match=r"pruning_configs\[1\] selects no op"):
        manager = prepare_compression(TinyResNet(), config)
    pruners = manager.callbacks.callbacks_list[0].pruners
    assert pruners[1].modules == {} and len(pruners[0].modules) == 3
    with pytest.raises(OpSelectionError, match="no pruner"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepare_compression(TinyResNet(), WeightPruningConfig(op_names=["nowhere"]))


def test_ops_two_pruners_select_and_module_types_prunekit_lacks_are_errors() -> None:
    overlap = WeightPruningConfig([{"op_names": ["layer1"]}, {"op_names": ["layer1.0.conv1"]}])
    with pytest.raises(OpSelectionError, match=r"pruning_configs\[0\] and pruning_configs\[1\]"):
        prepare_compression(TinyResNet(), overlap)
    embeddings = WeightPruningConfig(
        pruning_op_types=["Embedding"], pruning_type="magnitude", target_sparsity=0.5
    )
    with pytest.raises(UnsupportedIncKeyError, match="word_embeddings' \\(Embedding\\)"):
        prepare_compression(bert(), embeddings)


# -- the key mapping ------------------------------------------------------------------------------


def prunekit_config(**kwargs: Any) -> PruningConfig:
    manager = prepare_compression(TinyResNet(), WeightPruningConfig(**kwargs))
    return manager.callbacks.callbacks_list[0].pruners[0].prunekit_config


def test_inc_keys_map_onto_prunekit_fields() -> None:
    config = prunekit_config(
        op_names="layer2",
        pattern="tile_pattern_1x4",
        pruning_type="gradient",
        start_step=1,
        end_step=10,
        pruning_frequency=4,
        sparsity_decay_type="cos",
        pruning_scope="local",
        target_sparsity=0.7,
        min_sparsity_ratio_per_op=0.1,
        max_sparsity_ratio_per_op=0.9,
        criterion_reduce_type="max",
        prune_bias=True,
    )
    assert config.op_names == ["layer2"] and config.pattern == "1x4"
    assert config.criterion == "gradient" and config.schedule_name == "iterative"
    assert (config.start_step, config.end_step, config.pruning_frequency) == (1, 9, 4)
    assert (config.sparsity_decay_type, config.pruning_scope) == ("cos", "local")
    assert (config.target_sparsity, config.min_sparsity_ratio_per_op) == (0.7, 0.1)
    assert config.max_sparsity_ratio_per_op == 0.9 and config.prune_bias
    assert config.pattern_options == {"criterion_reduce_type": "max", "indivisible": "skip"}
    assert config.excluded_op_names == ["fc"]  # INC's classifier head, as INC adds it


def test_the_classifier_head_is_found_as_inc_finds_it() -> None:
    assert classifier_head(NaiveMLP()) == "linear3"
    assert classifier_head(bert()) == "classifier"
    assert classifier_head(nn.Sequential(nn.Linear(4, 4), nn.ReLU())) is None


def test_pattern_lock_keeps_the_zeros_of_start_step() -> None:
    model = TinyResNet()
    conv = model.layer4[0].conv1
    with torch.no_grad():
        conv.weight[:, ::2] = 0.0
    example = next(e for e in EXAMPLES if e.name == "test-pruning-types")
    manager = prepare_compression(
        model, WeightPruningConfig(example.pruning_configs, **example.kwargs)
    )
    zeros = conv.weight == 0
    inc_loop(model, manager, 5, "resnet")
    assert torch.equal(conv.weight == 0, zeros)
    assert sparsity({"c": conv}) == 0.5


# -- pruning_configs inherit the top-level values -------------------------------------------------


def test_entries_inherit_top_level_values_and_inc_defaults() -> None:
    config = WeightPruningConfig(
        [{"target_sparsity": 0.5}, {"pattern": None, "op_names": ["layer2"]}],
        target_sparsity=0.7,
        pattern="2:4",
        pruning_frequency=3,
        excluded_op_names=["downsample"],
    )
    first, second = (e.config for e in pruner_entries(config))
    assert (first["target_sparsity"], first["pattern"], first["pruning_frequency"]) == (
        0.5,
        "2:4",
        3,
    )
    assert (second["target_sparsity"], second["pattern"]) == (0.7, "2:4")
    assert second["op_names"] == ["layer2"] and first["op_names"] == []
    assert second["excluded_op_names"] == ["downsample"]
    assert first["criterion_reduce_type"] == "mean" and first["reg_type"] is None


def test_no_entries_means_one_pruner_of_the_top_level_values() -> None:
    (entry,) = pruner_entries(WeightPruningConfig([], target_sparsity=0.6))
    assert entry.config["target_sparsity"] == 0.6 and entry.config["pattern"] == "4x1"


def test_parameters_override_the_entry_as_in_inc() -> None:
    (entry,) = pruner_entries(
        WeightPruningConfig([{"reg_coeff": 0.3, "parameters": {"reg_coeff": 0.0}}])
    )
    translation = translate(entry.config, 0)
    ((key, message),) = translation.warnings  # INC's parameters win: reg_coeff 0.0
    assert key == "reg_coeff" and "0.3 is replaced by parameters' 0.0" in message


def test_inc_mutable_default_bug_is_not_copied() -> None:
    """In INC 3.7.1 the default ``pruning_configs=[{}]`` is one shared list whose dict INC
    fills in place, so a second default config inherits the first one's target."""
    first = WeightPruningConfig(target_sparsity=0.5, pattern="1x1")
    manager = prepare_compression(TinyResNet(), first)
    second = WeightPruningConfig(target_sparsity=0.7)
    assert first.pruning_configs is not second.pruning_configs
    assert first.pruning_configs == [{}] == second.pruning_configs
    assert first.weight_compression.op_names is not second.weight_compression.op_names
    (entry,) = pruner_entries(second)
    assert (entry.config["target_sparsity"], entry.config["pattern"]) == (0.7, "4x1")
    assert manager.callbacks.callbacks_list[0].pruners[0].config["target_sparsity"] == 0.5
    users = [{"op_names": ["layer1"]}]
    prepare_compression(TinyResNet(), WeightPruningConfig(users, excluded_op_names=["downsample"]))
    assert users == [{"op_names": ["layer1"]}]


# -- INC 3.7.1's defaults -------------------------------------------------------------------------


def test_signature_and_defaults_are_inc_3_7_1() -> None:
    parameters = list(inspect.signature(WeightPruningConfig).parameters.values())
    assert [p.name for p in parameters] == [name for name, _ in INC_SIGNATURE] + ["kwargs"]
    assert parameters[-1].kind is inspect.Parameter.VAR_KEYWORD
    config = WeightPruningConfig()
    for parameter, (name, inc_default) in zip(parameters, INC_SIGNATURE, strict=False):
        if isinstance(inc_default, list):
            assert parameter.default is None  # INC's shared list, built fresh instead
        else:
            assert parameter.default == inc_default, name
        stored: Any = config.pruning_configs if name == "pruning_configs" else None
        if name == "backend":
            stored = config.backend
        elif name != "pruning_configs":
            stored = config.weight_compression[name]
        assert stored == inc_default, name
    assert config.weight_compression.pruning_type == "snip_momentum"
    assert config.weight_compression.pattern == "4x1"


def test_processing_defaults_are_inc_3_7_1() -> None:
    assert inc_defaults() == INC_PROCESS_DEFAULTS
    (entry,) = pruner_entries(WeightPruningConfig())
    assert {k: entry.config[k] for k in INC_PROCESS_DEFAULTS} == INC_PROCESS_DEFAULTS


def test_the_default_config_prunes_with_snip_momentum_4x1() -> None:
    model = TinyResNet()
    manager = prepare_compression(model, WeightPruningConfig())
    (pruner,) = manager.prunekit_pruners
    config = pruner.groups[0].config
    assert (config.criterion, config.pattern, config.target_sparsity) == (
        "snip_momentum",
        "4x1",
        0.9,
    )
    assert config.pruning_scope == "global" and config.schedule_name == "oneshot"
    inc_loop(model, manager, 1, "resnet")
    ops = manager.callbacks.callbacks_list[0].pruners[0].modules
    assert "fc" not in ops and abs(sparsity(ops) - 0.9) < 0.001


# -- the migration guide's scripts ----------------------------------------------------------------


def guide_blocks() -> list[str]:
    """The python blocks of docs/migrating-from-inc.md's "Side by side" section."""
    root = Path(__file__).resolve().parents[1]
    text = (root / "docs" / "migrating-from-inc.md").read_text(encoding="utf-8")
    section = text.split("## Side by side", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def encoder_sparsity(model: nn.Module) -> float:
    linears = {
        n: m for n, m in model.named_modules() if "encoder" in n and isinstance(m, nn.Linear)
    }
    assert len(linears) == 12
    return sparsity(linears)


def test_the_guides_inc_script_runs_with_only_its_import_changed() -> None:
    inc_script, prunekit_script, automatic = guide_blocks()
    changed = [
        (a, b)
        for a, b in zip(inc_script.splitlines(), prunekit_script.splitlines(), strict=True)
        if a != b
    ]
    assert changed == [
        (
            "from neural_compressor.training import prepare_compression, WeightPruningConfig",
            "from prunekit.compat.inc import prepare_compression, WeightPruningConfig",
        )
    ]
    namespace: dict[str, Any] = {}
    exec(compile(prunekit_script, "migrating-from-inc.md", "exec"), namespace)
    assert abs(encoder_sparsity(namespace["model"]) - 0.8) < 0.001
    namespace["model"] = model = bert()
    namespace["optimizer"] = torch.optim.AdamW(model.parameters(), lr=1e-3)
    exec(compile(automatic, "migrating-from-inc.md", "exec"), namespace)
    assert abs(encoder_sparsity(model) - 0.8) < 0.001
