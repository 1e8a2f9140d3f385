"""``prunekit oneshot``: a saved Hugging Face causal LM pruned from calibration text and saved,
equal to the Python API on the same windows; errors are one line and write nothing."""

from __future__ import annotations

import json
import pydoc_data.topics
from pathlib import Path

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.cli import main
from prunekit.integrations.oneshot import calibration_windows, held_out_windows


def text() -> str:
    return "\n".join(pydoc_data.topics.topics.values())[:60_000]


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small LLaMA and a word-level tokenizer, saved as from_pretrained reads them."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = sorted(set(text().split()))[:500]
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    directory = tmp_path_factory.mktemp("model")
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]").save_pretrained(directory)
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, bos_token_id=0, eos_token_id=0,
        tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    return directory


def token_ids(directory: Path) -> torch.Tensor:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory)(text(), return_tensors="pt").input_ids[0]


def test_oneshot_equals_prune_in_place_on_the_same_windows(saved: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    calibration, held_out = tmp_path / "calibration.txt", tmp_path / "held_out.txt"
    calibration.write_text(text())
    held_out.write_text(text()[:20_000])
    output = tmp_path / "pruned"
    code = main([
        "oneshot", str(saved), "--pattern", "2:4", "--criterion", "sparsegpt",
        "--calibration", str(calibration), "--samples", "6", "--length", "32",
        "--output", str(output), "--eval", str(held_out),
    ])  # fmt: skip
    assert code == 0
    pruned = AutoModelForCausalLM.from_pretrained(output)
    expected = AutoModelForCausalLM.from_pretrained(saved).eval()
    windows = calibration_windows(token_ids(saved), 6, 32, seed=0)
    config = {"pattern": "2:4", "criterion": "sparsegpt", "target_sparsity": 0.5}
    pk.prune_in_place(expected, {**config, "op_names": [r"^model\.layers\."]},
                      calibration_data=windows)  # fmt: skip
    for name, tensor in expected.state_dict().items():
        assert torch.equal(pruned.state_dict()[name], tensor), name
    decoder = {n: m for n, m in pruned.named_modules() if n.startswith("model.layers.")}
    linears = [m for m in decoder.values() if isinstance(m, nn.Linear)]
    assert len(linears) == 14
    for linear in linears:  # 2 of every 4 zero; lm_head and the embeddings dense
        groups = linear.weight.reshape(linear.weight.shape[0], -1, 4)
        assert bool(((groups == 0).sum(dim=2) == 2).all())
    assert int((pruned.lm_head.weight == 0).sum()) == 0
    report = json.loads((output / "prunekit_report.json").read_text())
    assert report["achieved"] == 0.5 and len(report["ops"]) == 14
    assert all(op["hardware_valid"] for op in report["ops"])
    assert (output / "tokenizer.json").exists()


def test_a_config_file_without_op_names_prunes_the_decoder_blocks(
    saved: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    (tmp_path / "c.txt").write_text(text())
    (tmp_path / "prune.yaml").write_text("pattern: 4x1\ncriterion: wanda\ntarget_sparsity: 0.5\n")
    code = main(["oneshot", str(saved), "--config", str(tmp_path / "prune.yaml"), "--calibration",
                 str(tmp_path / "c.txt"), "--samples", "2", "--length", "16",
                 "--output", str(tmp_path / "out")])  # fmt: skip
    assert code == 0
    pruned = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    zeros = {n: float((p == 0).float().mean()) for n, p in pruned.named_parameters()}
    assert all(v == 0.5 for n, v in zeros.items() if n.startswith("model.layers.") and "proj" in n)
    assert zeros["lm_head.weight"] == 0.0 and zeros["model.embed_tokens.weight"] == 0.0


def test_windows_are_seeded_and_tile_the_evaluation_text() -> None:
    ids = torch.arange(100)
    first = calibration_windows(ids, 5, 10, seed=3)
    assert [w.shape for w in first] == [torch.Size([1, 10])] * 5
    assert all(
        torch.equal(a, b) for a, b in zip(first, calibration_windows(ids, 5, 10, 3), strict=True)
    )
    assert all(int(w[0, -1] - w[0, 0]) == 9 for w in first)  # consecutive tokens
    tiles = held_out_windows(torch.arange(25), 10)
    assert [w.tolist() for w in tiles] == [[list(range(10))], [list(range(10, 20))]]


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--pattern", "2:5x"], "'2:5x'"),
        (["--pattern", "filtr"], "did you mean 'filter'"),
        (["--pattern", "2:4", "--sparsity", "0.7"], "above N/M"),
        (["--length", "100000"], "fewer than one window of length=100000"),
        (["--config", "c.yaml", "--pattern", "2:4"], "give --config or --pattern, not both"),
    ],
)
def test_errors_are_one_line_and_write_nothing(
    saved: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list, message: str
) -> None:
    calibration = tmp_path / "calibration.txt"
    calibration.write_text(text())
    output = tmp_path / "pruned"
    code = main(["oneshot", str(saved), "--calibration", str(calibration),
                 "--output", str(output), "--samples", "2", "--length", "16", *extra])  # fmt: skip
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert code == 2 and len(errors) == 1, errors  # (transformers' loading bar aside)
    assert errors[0].startswith("prunekit oneshot: error: ") and message in errors[0]
    assert not output.exists()
