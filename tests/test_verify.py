"""``prunekit verify``: real models pruned by prunekit, saved as real files, checked through
the Python API, ``prunekit.cli.main`` and the console script users run."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import prunekit as pk
from models import gpt2
from prunekit.cli import main
from prunekit.verify import (
    VerifyError,
    VerifyReport,
    boxes_of,
    load_tensors,
    verify_file,
    verify_tensors,
)

ROOT = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).with_name("prunekit")


def pruned(model: nn.Module, config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """``model`` pruned by prunekit, made plain again (``remove()``), as a state dict."""
    pk.prune(model, config).remove()
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def cnn() -> nn.Module:
    """A small CNN whose every conv and linear weight 2:4 divides (input channels of 4)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(4, 16, 3),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64),
        nn.LayerNorm(64),
        nn.Linear(64, 10),
    )


def verdict(report: VerifyReport, name: str) -> Any:
    return next(t for t in report.tensors if t.name == name)


# -- N:M --------------------------------------------------------------------------------------
def test_a_model_pruned_2_4_passes_from_both_file_formats(tmp_path: Path) -> None:
    state = pruned(cnn(), {"pattern": "2:4"})
    torch.save(state, tmp_path / "model.pt")
    save_file(state, str(tmp_path / "model.safetensors"))
    weights = [n for n, t in state.items() if t.dim() >= 2]
    for path in (tmp_path / "model.pt", tmp_path / "model.safetensors"):
        report = verify_file(path, "2:4")
        assert report.conforms and report.failed == 0
        assert sorted(t.name for t in report.tensors) == sorted(weights)
        assert all(t.status == "pass" and t.first_offender is None for t in report.tensors)
        assert all(t.sparsity == pytest.approx(0.5) for t in report.tensors)
        # Biases, BatchNorm's weight/bias/running stats and its 0-D counter, LayerNorm's.
        assert len(report.skipped) == len(state) - len(weights)
        assert {s.reason for s in report.skipped} == {"fewer than 2 dims"}


def test_one_broken_group_in_a_4096x11008_weight_is_found_with_its_indices() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(11008, 4096, bias=False)
    weight = pruned(layer, {"pattern": "2:4"})["weight"]
    assert verify_tensors({"mlp.down": weight}, "2:4").conforms
    weight[1234, 5676:5680] = 1.0  # the whole group nonzero
    report = verify_tensors({"mlp.down": weight}, "2:4")
    found = report.tensors[0]
    assert found.status == "fail" and found.conforms is False
    assert found.offending == 1 and found.blocks == 4096 * 11008 // 4
    assert found.first_offender is not None
    assert found.first_offender.index == "[1234, 5676:5680]"
    assert found.first_offender.block == 1234 * (11008 // 4) + 5676 // 4
    assert (found.first_offender.zeros, found.first_offender.elements) == (0, 4)
    assert found.first_offender.boxes == (((1234, 1235), (5676, 5680)),)


def test_a_group_with_one_zero_fails_and_one_with_three_passes() -> None:
    torch.manual_seed(0)
    weight = pruned(nn.Linear(64, 32), {"pattern": "2:4"})["weight"]
    one_zero = weight.clone()
    zero_at = int((one_zero[5, 8:12] == 0).nonzero()[0])
    one_zero[5, 8 + zero_at] = 0.5
    found = verify_tensors({"w": one_zero}, "2:4").tensors[0]
    assert found.first_offender is not None
    assert (found.first_offender.index, found.first_offender.zeros) == ("[5, 8:12]", 1)
    three_zeros = weight.clone()
    three_zeros[5, 8:11] = 0.0
    assert verify_tensors({"w": three_zeros}, "2:4").conforms


def test_n_counts_removed_weights() -> None:
    torch.manual_seed(0)
    one_in_four = pruned(nn.Linear(64, 32), {"pattern": "1:4"})["weight"]
    assert verify_tensors({"w": one_in_four}, "1:4").conforms
    assert not verify_tensors({"w": one_in_four}, "2:4").conforms
    with pytest.warns(pk.PruningWarning, match="not hardware-valid"):
        half = pruned(nn.Linear(64, 32), {"pattern": "2:4", "target_sparsity": 0.25})["weight"]
    assert not verify_tensors({"w": half}, "2:4").conforms  # half the groups stay dense


def test_a_conv_group_across_kernel_positions_is_given_in_pieces() -> None:
    """Conv2d(3, 8, 4): INC's view is (8, 4*4*3) with in fastest, so a group of 4 columns
    may cover input channels at two kernel positions."""
    torch.manual_seed(0)
    weight = pruned(nn.Conv2d(3, 8, 4), {"pattern": "2:4"})["weight"]
    assert verify_tensors({"c": weight}, "2:4").conforms
    # Group 5 of filter 2 is view columns 20:24: in 2 at kernel position 6 = (1, 2), and
    # in 0..2 at position 7 = (1, 3).
    weight[2, 2, 1, 2] = 1.0
    weight[2, :, 1, 3] = 1.0
    found = verify_tensors({"c": weight}, "2:4").tensors[0]
    assert found.offending == 1 and found.first_offender is not None
    assert found.first_offender.block == 2 * 12 + 5
    assert found.first_offender.index == "[2, 2, 1, 2] + [2, 0:3, 1, 3]"
    assert (found.first_offender.pieces, found.first_offender.elements) == (2, 4)


def test_boxes_of_a_box_and_of_a_run_that_wraps() -> None:
    box = torch.tensor([[3, 0], [3, 1], [4, 0], [4, 1]])
    assert boxes_of(box) == ((((3, 5), (0, 2)),), 1)
    wraps = torch.tensor([[0, 6], [0, 7], [1, 0], [1, 1]])
    assert boxes_of(wraps) == ((((0, 1), (6, 8)), ((1, 2), (0, 2))), 2)


def test_a_width_the_group_does_not_divide_is_not_applicable() -> None:
    torch.manual_seed(0)
    state = {"first.weight": torch.randn(16, 3, 3, 3), "fc.weight": torch.randn(10, 30)}
    report = verify_tensors(state, "2:4")
    assert [t.status for t in report.tensors] == ["not applicable"] * 2
    assert report.conforms and report.tensors[0].conforms is None
    assert "(16, 27) width is not a multiple of M=4" in str(report.tensors[0].reason)
    partial = verify_tensors(state, "2:4", indivisible="partial")  # whole groups checked
    assert [t.status for t in partial.tensors] == ["fail", "fail"]


def test_transposed_weights_are_checked_as_out_in_and_reported_as_stored() -> None:
    torch.manual_seed(0)
    stored = pruned(nn.Linear(64, 32), {"pattern": "2:4"})["weight"].t().contiguous()  # (in, out)
    assert verify_tensors({"h.0.mlp.c_fc.weight": stored}, "2:4", transposed="c_fc").conforms
    assert not verify_tensors({"h.0.mlp.c_fc.weight": stored}, "2:4").conforms
    stored[8:12, 3] = 2.0  # output 3's inputs 8..11: one group of the (out, in) view
    found = verify_tensors({"h.0.mlp.c_fc.weight": stored}, "2:4", transposed="c_fc")
    offender = found.tensors[0].first_offender
    assert offender is not None and offender.index == "[8:12, 3]"


def test_a_gpt2_checkpoint_pruned_2_4_passes_with_its_conv1d_transposed(tmp_path: Path) -> None:
    """GPT-2 stores its Conv1D weights (in, out); prunekit prunes them as (out, in), and
    verify checks them so with --transposed (the embeddings left out: lm_head is tied)."""
    model = gpt2()
    pk.prune(model, {"pattern": "2:4", "excluded_op_names": ["lm_head"]}).remove()
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"},
              str(tmp_path / "gpt2.safetensors"))  # fmt: skip
    path, checks = str(tmp_path / "gpt2.safetensors"), ["--pattern", "2:4", "--json"]
    only = ["--only", r"\.(attn|mlp)\.c_\w+\.weight$"]
    right = subprocess.run(
        [str(CLI), "verify", path, *checks, *only, "--transposed", "attn|mlp"],
        capture_output=True,
        text=True,
    )
    assert right.returncode == 0, right.stdout + right.stderr
    assert json.loads(right.stdout)["totals"]["passed"] == 8  # 4 Conv1D x 2 blocks
    wrong = subprocess.run([str(CLI), "verify", path, *checks, *only], capture_output=True)
    assert wrong.returncode == 1  # read as stored, the groups run along the outputs


# -- NxM and channels -------------------------------------------------------------------------
def test_nxm_blocks_pass_and_a_partly_zero_block_fails() -> None:
    torch.manual_seed(0)
    weight = pruned(nn.Linear(64, 32), {"pattern": "4x1", "target_sparsity": 0.5})["weight"]
    assert verify_tensors({"w": weight}, "4x1").conforms
    assert not verify_tensors({"w": weight}, "2:4").conforms
    assert not verify_tensors({"w": weight}, "1x4").conforms
    removed = (weight[0:4] == 0).all(dim=0).nonzero().flatten()
    column = int(removed[0])
    weight[2, column] = 0.25  # one weight back in a removed 4x1 block
    found = verify_tensors({"w": weight}, "4x1").tensors[0]
    assert found.first_offender is not None
    assert found.first_offender.index == f"[0:4, {column}]"
    assert (found.first_offender.zeros, found.first_offender.elements) == (3, 4)
    dense = pruned(nn.Linear(64, 32), {"pattern": "4x1", "target_sparsity": 0.5})["weight"]
    kept = int((dense[4:8] != 0).all(dim=0).nonzero()[0])
    dense[5, kept] = 0.0  # a zero in a kept block
    offender = verify_tensors({"w": dense}, "4x1").tensors[0].first_offender
    assert offender is not None and offender.index == f"[4:8, {kept}]" and offender.zeros == 1


def test_filters_and_channels_of_a_conv_pass_and_a_stray_zero_fails() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Conv2d(16, 32, 3))
    state = pruned(model, {"pattern": "filter", "target_sparsity": 0.5})
    assert verify_tensors(state, "filter").conforms
    assert verify_tensors(state, "1xchannel").conforms  # a row of INC's view is a filter
    assert not verify_tensors(state, "channelx1").conforms
    weight = state["0.weight"]
    kept = int((weight != 0).flatten(1).all(dim=1).nonzero()[0])
    weight[kept, 3, 1, 2] = 0.0
    found = verdict(verify_tensors(state, "filter"), "0.weight")
    assert found.first_offender.index == f"[{kept}, 0:8, 0:3, 0:3]"
    assert (found.first_offender.zeros, found.first_offender.elements) == (1, 72)
    columns = pruned(
        nn.Sequential(nn.Linear(32, 16)), {"pattern": "channelx1", "target_sparsity": 0.5}
    )
    assert verify_tensors(columns, "channelx1").conforms
    assert verify_tensors(columns, "column").conforms  # a Linear column: an input neuron
    assert not verify_tensors(columns, "row").conforms


def test_a_granularity_that_does_not_apply_is_not_applicable() -> None:
    report = verify_tensors({"fc.weight": torch.randn(8, 12)}, "kernel")
    assert report.tensors[0].status == "not applicable"
    assert "does not apply to op 'fc.weight' (Linear)" in str(report.tensors[0].reason)
    six = verify_tensors({"x": torch.randn(2, 2, 2, 2, 2, 2)}, "2:4").tensors[0]
    assert six.status == "not applicable" and "6-D" in str(six.reason)


def test_a_mask_file_verifies_like_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = cnn()
    pruner = pk.prune(model, {"pattern": "2:4"})
    pruner.save_masks(tmp_path / "masks.safetensors")
    report = verify_file(tmp_path / "masks.safetensors", "2:4")
    assert report.conforms and len(report.tensors) == 4
    assert report.sparsity == pytest.approx(0.5)


# -- files and filters ------------------------------------------------------------------------
def test_a_nested_checkpoint_gives_dotted_names(tmp_path: Path) -> None:
    state = pruned(nn.Sequential(nn.Linear(16, 8)), {"pattern": "2:4"})
    torch.save({"model": state, "epoch": 3, "note": "x"}, tmp_path / "ckpt.pt")
    tensors = load_tensors(tmp_path / "ckpt.pt")
    assert sorted(tensors) == ["model.0.bias", "model.0.weight"]


def test_files_that_are_not_tensors_are_refused(tmp_path: Path) -> None:
    torch.save(nn.Linear(4, 4), tmp_path / "module.pt")
    with pytest.raises(VerifyError, match=r"holds a torch\.nn\.modules\.linear\.Linear"):
        load_tensors(tmp_path / "module.pt")
    (tmp_path / "junk.bin").write_bytes(b"not a checkpoint at all")
    with pytest.raises(VerifyError, match=r"neither a safetensors file nor a torch\.save"):
        load_tensors(tmp_path / "junk.bin")
    with pytest.raises(VerifyError, match="cannot read"):
        load_tensors(tmp_path / "missing.pt")
    torch.save({"epoch": 3}, tmp_path / "empty.pt")
    with pytest.raises(VerifyError, match="holds no tensors"):
        load_tensors(tmp_path / "empty.pt")


def test_only_and_exclude_select_by_name() -> None:
    state = pruned(cnn(), {"pattern": "2:4"})
    report = verify_tensors(state, "2:4", only=r"^\d\.weight$", exclude="^0")
    assert [t.name for t in report.tensors] == ["3.weight", "5.weight", "7.weight"]
    assert [s.name for s in report.skipped] == ["1.weight", "6.weight"]  # the norms'
    assert report.filtered == len(state) - 5
    with pytest.raises(VerifyError, match="leaves none of the"):
        verify_tensors(state, "2:4", only="decoder")
    with pytest.raises(VerifyError, match="not a regular expression"):
        verify_tensors(state, "2:4", exclude="((")


def test_an_unknown_pattern_says_did_you_mean() -> None:
    with pytest.raises(pk.UnknownPatternError, match="did you mean 'filter'"):
        verify_tensors({"w": torch.zeros(4, 4)}, "filtr")


# -- the command ------------------------------------------------------------------------------
@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """A correct 2:4 checkpoint (safetensors) and a broken one (torch.save)."""
    state = pruned(cnn(), {"pattern": "2:4"})
    good, bad = tmp_path / "good.safetensors", tmp_path / "bad.pt"
    save_file(state, str(good))
    broken = {name: tensor.clone() for name, tensor in state.items()}
    broken["5.weight"][40, 100:104] = 1.0
    torch.save(broken, bad)
    return {"good": good, "bad": bad, "dir": tmp_path}


def test_exit_codes_through_main(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", str(files["good"]), "--pattern", "2:4"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^PASS  5\.weight\s+\(64, 512\)\s+sparsity 50\.00%$", out, flags=re.M)
    assert "4 weight tensors, 4 pass, 0 fail" in out
    assert main(["verify", str(files["bad"]), "--pattern", "2:4"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  5.weight" in out and "the first, [40, 100:104], has 0 zeros of 4" in out
    assert main(["verify", str(files["good"]), "--pattern", "filtr"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("prunekit verify: error: ") and "did you mean 'filter'" in err
    assert main(["verify", str(files["dir"] / "missing.pt"), "--pattern", "2:4"]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["verify", str(files["good"]), "--pattern", "2:4", "--only", "nothing"]) == 2
    assert main(["verify", str(files["good"]), "--pattern", "2:4", "--option", "indivisble=1"]) == 2
    assert "did you mean 'indivisible'" in capsys.readouterr().err


def test_json_report_has_every_field(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", str(files["bad"]), "--pattern", "2:4", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["file"] == str(files["bad"]) and report["pattern"] == "2:4"
    entries = {t["name"]: t for t in report["tensors"]}
    for entry in entries.values():
        assert {"name", "shape", "sparsity", "conforms", "first_offender"} <= set(entry)
    assert entries["0.weight"]["conforms"] is True and entries["0.weight"]["first_offender"] is None
    bad = entries["5.weight"]
    assert bad["shape"] == [64, 512] and bad["conforms"] is False and bad["status"] == "fail"
    assert bad["first_offender"]["index"] == "[40, 100:104]"
    assert bad["first_offender"]["boxes"] == [[[40, 41], [100, 104]]]
    totals = report["totals"]
    assert (totals["tensors"], totals["passed"], totals["failed"]) == (4, 3, 1)
    assert totals["conforms"] is False and totals["skipped"] == len(report["skipped"]) > 0


def test_the_console_script(files: dict[str, Path]) -> None:
    bad = subprocess.run(
        [str(CLI), "verify", str(files["bad"]), "--pattern", "2:4", "--json", "--only", "5"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1, bad.stderr
    assert json.loads(bad.stdout)["tensors"][0]["first_offender"]["index"] == "[40, 100:104]"
    good = subprocess.run(
        [str(CLI), "verify", str(files["good"]), "--pattern", "2:4"], capture_output=True, text=True
    )
    assert good.returncode == 0 and "4 pass, 0 fail" in good.stdout, good.stderr
    typo = subprocess.run(
        [str(CLI), "verify", str(files["good"]), "--pattern", "2:4x"],
        capture_output=True,
        text=True,
    )
    assert typo.returncode == 2 and "unknown pattern '2:4x'" in typo.stderr
    usage = subprocess.run([str(CLI), "verify", str(files["good"])], capture_output=True, text=True)
    assert usage.returncode == 2 and "--pattern" in usage.stderr


# -- the docs ---------------------------------------------------------------------------------
def test_the_docs_example_runs_as_shown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/verify.md's Python blocks run in order in one namespace, then every ``$
    prunekit ...`` line of its console block prints exactly what the page shows and exits
    with the status its comment says (0 without one); its JSON is the broken tensor's."""
    text = (ROOT / "docs" / "verify.md").read_text(encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    for block in re.findall(r"```python\n(.*?)```", text, flags=re.S):
        exec(compile(block, "verify.md", "exec"), namespace)
    session = re.findall(r"```console\n(.*?)```", text, flags=re.S)
    assert len(session) == 1
    commands = re.split(r"^\$ ", session[0], flags=re.M)[1:]
    assert len(commands) == 5
    for command in commands:
        line, *shown = command.splitlines()
        words, _, comment = line.partition("  # exit status ")
        done = subprocess.run(
            [str(CLI), *shlex.split(words)[1:]], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == int(comment or 0), f"{line}\n{done.stderr}"
        assert done.stdout.splitlines() == shown, line
    shown_json = json.loads(re.findall(r"```json\n(.*?)```", text, flags=re.S)[0])
    report = verify_file("broken.pt", "2:4").to_dict()
    assert verdict_entry(report, shown_json["name"]) == shown_json


def verdict_entry(report: dict[str, Any], name: str) -> dict[str, Any]:
    entry: dict[str, Any] = next(t for t in report["tensors"] if t["name"] == name)
    return entry
