"""The docs stay true to the code: every hook documented with its exact signature, every
built-in pattern with a section, the README example runs as written."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import torch

from prunekit.plugins import default_host, hookspecs

ROOT = Path(__file__).resolve().parents[1]


def test_every_hook_is_documented_with_its_signature() -> None:
    text = (ROOT / "docs" / "plugins.md").read_text()
    hooks = [
        name
        for name, _ in inspect.getmembers(hookspecs, inspect.isfunction)
        if name.startswith("register_")
    ]
    assert hooks == ["register_criteria", "register_patterns", "register_schedules"]
    for name in hooks:
        params = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
        assert f"`{name}({params})`" in text, name


def test_every_builtin_pattern_has_a_docs_section() -> None:
    text = (ROOT / "docs" / "patterns.md").read_text()
    headings = set(re.findall(r"^## (.+)$", text, flags=re.M))
    for entry in default_host().patterns.entries():
        if entry.builtin:
            assert entry.name in headings, entry.name


def test_env_variables_are_documented() -> None:
    for doc in ("README.md", "docs/plugins.md"):
        text = (ROOT / doc).read_text()
        assert "PRUNEKIT_LOAD_PLUGINS" in text and "PRUNEKIT_SKIP_PLUGINS" in text


def test_readme_example_runs_and_prunes() -> None:
    text = (ROOT / "README.md").read_text()
    block = text.split("## Prune a model's weights from a config dict")[1].split("```python")[1]
    code = block.split("```")[0]
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    masks = namespace["masks"]
    assert isinstance(masks, dict)
    removed = sum(int((~m).sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    assert abs(removed / total - 0.8) < 1e-3
    model = namespace["model"]
    assert isinstance(model, torch.nn.Module)
    zeros = sum(int((p == 0).sum()) for n, p in model.named_parameters() if n.endswith("weight"))
    assert zeros >= removed


def test_every_config_field_is_in_the_config_table() -> None:
    from prunekit.config import PruningConfig

    text = (ROOT / "docs" / "config.md").read_text()
    rows = set(re.findall(r"^\| `([a-z_]+)`", text, flags=re.M))
    assert set(PruningConfig.model_fields) <= rows, set(PruningConfig.model_fields) - rows
