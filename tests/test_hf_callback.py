"""PruningCallback in a real Hugging Face Trainer, training a real (tiny) BERT classifier.

Each test trains ``BertForSequenceClassification`` built from a small ``BertConfig`` (never
downloaded) on a small in-test dataset, on the CPU: schedules reached exactly, one Pruner
step per optimizer step under gradient accumulation, checkpoints that resume to the masks of
an uninterrupted run, logs, masks baked and the model slimmed at the end, the best
checkpoint's masks, clear errors, and two DDP processes (gloo) that end with identical masks.
"""

from __future__ import annotations

import os
import shutil
import socket
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file
from torch import Tensor
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

import prunekit as pk
from prunekit.integrations.transformers import (
    SPARSITY_KEY,
    STATE_FILE,
    TARGET_KEY,
    PruningCallback,
    unwrap_model,
)

VOCAB = 64
# 4x1 over the encoder's six Linears: 4 of 32x32 and 2 of 64x32, 8192 weights in 2048 blocks.
# Steps are optimizer steps; linear from 0 at step 0 to 0.5 at step 4, updated every 2 steps.
CONFIG = {
    "pattern": "4x1",
    "target_sparsity": 0.5,
    "end_step": 4,
    "pruning_frequency": 2,
    "op_names": ["encoder"],
    "sparsity_decay_type": "linear",
    "criterion": "snip_momentum",  # reads gradients, keeps state: the demanding case
}
ENCODER_WEIGHTS = 8192


def tiny_bert(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        num_hidden_layers=1, hidden_size=32, intermediate_size=64, num_attention_heads=2,
        vocab_size=VOCAB, max_position_embeddings=16, num_labels=2,
    )  # fmt: skip
    return BertForSequenceClassification(config)


def examples(count: int = 16) -> list[dict[str, Tensor]]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (count, 8), generator=generator)
    return [{"input_ids": ids[i], "labels": torch.tensor(i % 2)} for i in range(count)]


def arguments(output_dir: Path, **overrides: Any) -> TrainingArguments:
    settings: dict[str, Any] = {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": 4,
        "max_steps": 6,
        "learning_rate": 1e-3,
        "report_to": [],
        "use_cpu": True,
        "disable_tqdm": True,
        "logging_strategy": "no",
        "save_strategy": "no",
        "seed": 0,
    }
    settings.update(overrides)
    return TrainingArguments(**settings)


def train(
    model: torch.nn.Module,
    callbacks: list[TrainerCallback],
    args: TrainingArguments,
    resume: str | bool | None = None,
    **trainer_kwargs: Any,
) -> Trainer:
    trainer = Trainer(
        model=model, args=args, train_dataset=examples(), callbacks=callbacks, **trainer_kwargs
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer


class Probe(TrainerCallback):
    """After each optimizer step: the Trainer's step, the Pruner's, and how many weights are
    removed; and every ``logs`` it is shown."""

    def __init__(self, pruning: PruningCallback) -> None:
        self.pruning = pruning
        self.steps: list[tuple[int, int, int]] = []
        self.logs: list[dict[str, float]] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        pruner = self.pruning.pruner
        assert pruner is not None
        self.steps.append((state.global_step, pruner.current_step, pruner.report().removed))

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        self.logs.append(dict(logs))


def removed_are_zero(model: torch.nn.Module, masks: dict[str, Tensor]) -> bool:
    modules = dict(model.named_modules())
    return all(bool((modules[n].weight.detach()[~m] == 0).all()) for n, m in masks.items())


def test_sparsity_follows_the_schedule_exactly_one_pruner_step_per_optimizer_step(
    tmp_path: Path,
) -> None:
    pruning = PruningCallback(CONFIG, remove_masks=False)
    probe = Probe(pruning)
    # 16 examples in batches of 4, two batches per optimizer step: 2 optimizer steps an epoch
    args = arguments(tmp_path, gradient_accumulation_steps=2)
    trainer = train(tiny_bert(), [pruning, probe], args)
    assert pruning.pruner is not None
    assert trainer.state.global_step == 6
    # the Pruner's step s runs after optimizer step s + 1: targets 0, 0, .25, .25, .5, .5
    assert probe.steps == [
        (1, 1, 0), (2, 2, 0), (3, 3, 2048), (4, 4, 2048), (5, 5, 4096), (6, 6, 4096),
    ]  # fmt: skip
    report = pruning.pruner.report()
    assert report.elements == ENCODER_WEIGHTS and report.removed == 4096  # exactly 0.5
    assert {op.target for op in report.ops} == {0.5}
    masks = pruning.pruner.masks
    assert sum(int((~m).sum()) for m in masks.values()) == 4096
    assert all(n.startswith("bert.encoder.") for n in masks)  # the plain model's names
    assert removed_are_zero(trainer.model, masks)


def test_sparsity_is_in_the_trainer_logs_and_its_log_history(tmp_path: Path) -> None:
    pruning = PruningCallback(CONFIG)
    after = Probe(pruning)  # a callback after ours (like the progress bar) sees the keys
    before = Probe(pruning)  # one before it (like report_to's reporters) does not, until...
    trainer = Trainer(
        model=tiny_bert(), args=arguments(tmp_path, logging_strategy="steps", logging_steps=2),
        train_dataset=examples(), callbacks=[before, pruning, after],
    )  # fmt: skip
    trainer.callback_handler.callbacks.insert(0, trainer.pop_callback(pruning))  # docs' tip
    trainer.train()
    history = [e for e in trainer.state.log_history if "loss" in e]
    # logged after optimizer steps 2, 4 and 6: the Pruner's steps 1, 3 and 5 have run
    assert [(e["step"], e[SPARSITY_KEY], e[TARGET_KEY]) for e in history] == [
        (2, 0.0, 0.0), (4, 0.25, 0.25), (6, 0.5, 0.5),
    ]  # fmt: skip
    for probe in (before, after):
        assert [log[SPARSITY_KEY] for log in probe.logs if "loss" in log] == [0.0, 0.25, 0.5]
        assert SPARSITY_KEY in probe.logs[-1] and "train_runtime" in probe.logs[-1]
    # remove_masks (the default): a plain model at the end, its removed weights at zero
    assert not any(hasattr(m, "weight_mask") for m in trainer.model.modules())
    assert pruning.pruner is not None and pruning.pruner.report().achieved == 0.5
    assert removed_are_zero(trainer.model, pruning.pruner.masks)


def test_a_resumed_run_ends_with_the_masks_and_step_of_an_uninterrupted_run(
    tmp_path: Path,
) -> None:
    config = {**CONFIG, "end_step": 6}  # masks change at steps 2, 4 and 6
    saving = {"max_steps": 8, "save_strategy": "steps", "save_steps": 3}
    whole = PruningCallback(config, remove_masks=False)
    uninterrupted = tiny_bert()
    train(uninterrupted, [whole], arguments(tmp_path / "a", **saving))
    saved = torch.load(tmp_path / "a" / "checkpoint-3" / STATE_FILE, weights_only=True)
    assert saved["step"] == 3 and saved["applied_targets"] == [pytest.approx(0.5 / 3)]

    # a fresh process would do this: a new model (other weights), callback and Trainer
    shutil.copytree(tmp_path / "a" / "checkpoint-3", tmp_path / "b" / "checkpoint-3")
    again = PruningCallback(config, remove_masks=False)
    resumed = tiny_bert(seed=1)
    train(resumed, [again], arguments(tmp_path / "b", **saving), resume=True)

    first, second = whole.pruner, again.pruner
    assert first is not None and second is not None
    assert second.current_step == first.current_step == 8
    assert [g.applied_target for g in second.groups] == [g.applied_target for g in first.groups]
    assert first.masks.keys() == second.masks.keys()
    for name, mask in first.masks.items():
        assert torch.equal(mask, second.masks[name]), name
    assert second.report().removed == first.report().removed == 4096
    # Trainer resumption itself need not be bit-exact on every CPU: weights close, zeros exact
    for (name, p), q in zip(uninterrupted.named_parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-3, rtol=0, msg=name)
    assert removed_are_zero(resumed, second.masks)
    for name, state in first.groups[0].state.items():
        torch.testing.assert_close(state, second.groups[0].state[name], atol=1e-3, rtol=1e-3)


def test_resuming_refuses_a_checkpoint_without_or_with_the_wrong_pruner_state(
    tmp_path: Path,
) -> None:
    saving = {"max_steps": 4, "save_strategy": "steps", "save_steps": 2}
    train(tiny_bert(), [PruningCallback(CONFIG)], arguments(tmp_path, **saving))
    two, four = tmp_path / "checkpoint-2", tmp_path / "checkpoint-4"
    shutil.copy(four / STATE_FILE, two / STATE_FILE)
    with pytest.raises(pk.MaskFileError, match="step 4, but the Trainer resumes at global step 2"):
        train(tiny_bert(), [PruningCallback(CONFIG)], arguments(tmp_path, **saving), str(two))
    (two / STATE_FILE).unlink()
    with pytest.raises(pk.MaskFileError) as missing:
        train(tiny_bert(), [PruningCallback(CONFIG)], arguments(tmp_path, **saving), str(two))
    message = str(missing.value)
    assert f"no {STATE_FILE} is in '{two}'" in message
    assert "saved without PruningCallback" in message and "from_pretrained" in message
    other = {**CONFIG, "target_sparsity": 0.6}
    with pytest.raises(pk.MaskFileError, match=r"target_sparsity = 0\.5 there, 0\.6 here"):
        train(tiny_bert(), [PruningCallback(other)], arguments(tmp_path, **saving), str(four))
    # a checkpoint outside output_dir: the callback is told where it is
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(four, elsewhere)
    named = PruningCallback(CONFIG, remove_masks=False, resume_from_checkpoint=elsewhere)
    train(tiny_bert(), [named], arguments(tmp_path / "new", **saving), str(elsewhere))
    saved = torch.load(elsewhere / STATE_FILE, weights_only=True)
    assert named.pruner is not None and named.pruner.current_step == 4
    assert all(torch.equal(m, saved["masks"][n]) for n, m in named.pruner.masks.items())


def test_arguments_and_configs_are_checked_before_the_trainer_exists() -> None:
    with pytest.raises(pk.ConfigError, match="slim: True needs example_inputs"):
        PruningCallback(CONFIG, slim=True)
    with pytest.raises(pk.ConfigError, match="remove_masks: False contradicts slim=True"):
        PruningCallback(CONFIG, slim=True, remove_masks=False, example_inputs={})
    with pytest.raises(pk.ConfigError, match="did you mean 'target_sparsity'"):
        PruningCallback({"pattern": "4x1", "target_sparsty": 0.5})


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.compile's own imports
def test_the_plain_model_is_pruned_and_a_skipped_event_is_an_error(tmp_path: Path) -> None:
    model = tiny_bert()
    wrapped = torch.nn.DataParallel(torch.compile(model))  # compiles lazily: nothing runs
    assert unwrap_model(wrapped) is model
    pruning = PruningCallback(CONFIG)
    args, state, control = arguments(tmp_path), TrainerState(), TrainerControl()
    pruning.on_train_begin(args, state, control, model=wrapped)
    assert pruning.pruner is not None and pruning.pruner.model is model
    state.global_step = 1  # an optimizer step the Pruner did not see
    with pytest.raises(pk.PrunekitError, match="does not call on_optimizer_step"):
        pruning.on_step_end(args, state, control)
    sharded = torch.nn.Linear(4, 4)
    sharded.weight.data = torch.empty(0)
    sharded.weight.ds_id = 0  # type: ignore[attr-defined]  # what DeepSpeed ZeRO-3 leaves
    with pytest.raises(pk.PrunekitError, match="sharded across ranks"):
        pruning.on_train_begin(args, TrainerState(), control, model=sharded)


def test_at_train_end_the_model_is_slimmed(tmp_path: Path) -> None:
    config = {"pattern": "1xchannel", "target_sparsity": 0.5, "op_names": ["intermediate.dense"],
              "end_step": 2, "pruning_frequency": 1}  # fmt: skip
    example = {"input_ids": torch.randint(0, VOCAB, (2, 8))}
    pruning = PruningCallback(config, slim=True, example_inputs=example)
    model = tiny_bert()
    trainer = train(model, [pruning], arguments(tmp_path, max_steps=3))
    layer = model.bert.encoder.layer[0]
    assert tuple(layer.intermediate.dense.weight.shape) == (32, 32)  # half the neurons gone
    assert tuple(layer.output.dense.weight.shape) == (32, 32)
    assert not any(hasattr(m, "weight_mask") for m in model.modules())
    report = pruning.slim_report
    assert report is not None and report.params_after == report.params_before - 2080
    trainer.save_model(str(tmp_path / "slim"))
    loaded = pk.load_slimmed(tmp_path / "slim")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**example).logits, model.eval()(**example).logits)


def test_the_best_checkpoint_keeps_its_own_masks(tmp_path: Path) -> None:
    scores = [0.0, 1.0, 0.0]  # evaluated at steps 2, 4 and 6: the checkpoint of step 4 is best

    def compute_metrics(_: Any) -> dict[str, float]:
        return {"score": scores.pop(0) if scores else 0.0}

    args = arguments(
        tmp_path, eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2,
        load_best_model_at_end=True, metric_for_best_model="score", greater_is_better=True,
    )  # fmt: skip
    pruning = PruningCallback(CONFIG)
    model = tiny_bert()
    trainer = train(
        model, [pruning], args, eval_dataset=examples(4), compute_metrics=compute_metrics
    )
    best = tmp_path / "checkpoint-4"
    assert trainer.state.best_model_checkpoint == str(best)
    assert pruning.pruner is not None
    # its masks (0.25, the Pruner's step 3), not the last step's (0.5): those would zero
    # weights the best model has
    assert pruning.pruner.report().removed == 2048
    saved = torch.load(best / STATE_FILE, weights_only=True)
    for name, mask in pruning.pruner.masks.items():
        assert torch.equal(mask, saved["masks"][name])
    weights = load_file(best / "model.safetensors")
    for name, parameter in model.named_parameters():
        assert torch.equal(parameter.detach(), weights[name]), name


# -- two DDP processes -------------------------------------------------------------------------
def rank_local(
    weight: Tensor,
    *,
    grad: Tensor | None = None,
    state: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """|w| with noise that differs by rank: a criterion scoring from data local to a rank."""
    noise = torch.Generator().manual_seed(int(os.environ["RANK"]))
    return weight.abs() * (1 + torch.rand(weight.shape, generator=noise))


class RankLocalPlugin:
    @staticmethod
    @pk.hookimpl
    def register_criteria(register: pk.Register) -> None:
        register("rank_local", pk.criterion(rank_local))


def ddp_worker(rank: int, world: int, port: int, folder: str) -> None:
    """One DDP rank: the Trainer finds the process group in the environment, as torchrun
    would set it."""
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    torch.set_num_threads(1)
    out = Path(folder)
    results = {}
    host = pk.PluginHost(metadata_path=[folder])
    host.add_plugin(RankLocalPlugin(), name="rank-local")
    cases = {"built-in": CONFIG, "rank-local": {**CONFIG, "criterion": "rank_local"}}
    for case, config in cases.items():
        pruning = PruningCallback(config, remove_masks=False, host=host)
        model = tiny_bert()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer = train(model, [pruning], arguments(out / case))
        assert pruning.pruner is not None
        results[case] = {
            "wrapped": type(trainer.model_wrapped).__name__ == "DistributedDataParallel",
            "masks": pruning.pruner.masks,
            "step": pruning.pruner.current_step,
            "weights": {n: p.detach().clone() for n, p in model.named_parameters()},
            "warned": any("computed different masks" in str(w.message) for w in caught),
        }
    torch.save(results, out / f"rank{rank}.pt")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_ddp_processes_end_with_identical_masks(tmp_path: Path) -> None:
    mp.spawn(ddp_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for case in ("built-in", "rank-local"):
        zero, one = ranks[0][case], ranks[1][case]
        assert zero["wrapped"] and one["wrapped"]
        assert zero["step"] == one["step"] == 6
        for name, mask in zero["masks"].items():
            assert torch.equal(mask, one["masks"][name]), (case, name)
        assert sum(int((~m).sum()) for m in zero["masks"].values()) == 4096
        for name, weight in zero["weights"].items():
            assert torch.equal(weight, one["weights"][name]), (case, name)
    # built-in criteria agree by construction (identical weights, averaged gradients); a
    # rank-local one disagreed, and the callback gave every rank rank 0's masks and weights
    assert not ranks[0]["built-in"]["warned"] and not ranks[1]["built-in"]["warned"]
    assert ranks[0]["rank-local"]["warned"] and ranks[1]["rank-local"]["warned"]
