"""The commands and snippets the README and docs show, run as a user would run them.

Every `prunekit ...` line of a shell block in README.md and docs/*.md runs through the real
console script in a scratch directory (with the repository's files where a command names
one) and must exit 0; Python snippets that stand alone run, and the Trainer callback the
docs show (docs/huggingface.md) trains a real (tiny) BERT.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import prunekit as pk

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CLI = Path(sys.executable).with_name("prunekit")


def shell_commands() -> list[tuple[str, str]]:
    """(document, command) for every `prunekit` line of a bash/sh block."""
    found = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, flags=re.S):
            for line in block.splitlines():
                command = line.split("  #")[0].split(" # ")[0].strip()
                if command.startswith("prunekit "):
                    found.append((doc.name, command))
    return found


COMMANDS = shell_commands()


def test_the_docs_show_commands() -> None:
    assert len(COMMANDS) >= 8, COMMANDS


@pytest.mark.parametrize("doc, command", COMMANDS, ids=[c for _, c in COMMANDS])
def test_every_documented_command_runs(doc: str, command: str, tmp_path: Path) -> None:
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    words = shlex.split(command)
    output = None
    if ">" in words:  # `prunekit schema > prunekit.schema.json`
        at = words.index(">")
        words, output = words[:at], tmp_path / words[at + 1]
    done = subprocess.run(
        [str(CLI), *words[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"{doc}: {command}\n{done.stderr}"
    if output is not None:
        output.write_text(done.stdout)
        assert output.stat().st_size > 1000
    written = [p for p in tmp_path.iterdir() if p.suffix == ".png"]
    if words[1] in {"show", "plot-schedule"}:
        assert written, f"{doc}: {command} wrote no picture"


def python_block(doc: str, heading: str) -> str:
    text = (ROOT / doc).read_text(encoding="utf-8")
    section = text.split(heading, 1)[1]
    return section.split("```python", 1)[1].split("```", 1)[0]


def test_the_trainer_callback_the_docs_show_prunes_a_bert(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the snippet writes its checkpoints to ./bert-pruned
    namespace: dict[str, object] = {}
    code = python_block("docs/huggingface.md", "# Pruning with the Hugging Face Trainer")
    exec(compile(code, "huggingface.md", "exec"), namespace)
    callback = namespace["callback"]
    report = callback.pruner.report()  # type: ignore[attr-defined]
    assert isinstance(report, pk.PruningReport)
    assert report.achieved == pytest.approx(0.8, abs=1e-3)
    assert not any(hasattr(m, "weight_mask") for m in namespace["model"].modules())  # type: ignore[attr-defined]
    assert (tmp_path / "bert-pruned" / "checkpoint-5" / "prunekit_pruner.pt").is_file()
    logged = [e for e in namespace["trainer"].state.log_history if "loss" in e]  # type: ignore[attr-defined]
    # logged at steps 5 and 10: INC's exp ramp halfway (1 - 0.2 ** 0.5), then the target
    expected = [pytest.approx(1 - 0.2**0.5, abs=1e-3), pytest.approx(0.8, abs=1e-3)]
    assert [e["sparsity"] for e in logged] == expected
