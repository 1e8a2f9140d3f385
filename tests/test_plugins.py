"""Plugins at three levels: a fresh manager, an in-process plugin, real installed packages.

The failing plugins here are real distributions: a ``*.dist-info`` folder with an
``entry_points.txt`` and a module on ``sys.path``, found by ``importlib.metadata`` exactly as
an installed wheel would be.
"""

from __future__ import annotations

import importlib.metadata as metadata
import itertools
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import PluginWarning
from prunekit.plugins import PluginHost, default_host

_counter = itertools.count()


def install_fake_site(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, plugins: dict[str, str]
) -> tuple[list[str], dict[str, str]]:
    """Write one distribution per (dist name -> module source) into a site folder."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    modules = {}
    for dist, source in plugins.items():
        module = f"{dist.replace('-', '_')}_{next(_counter)}"
        modules[dist] = module
        (site / f"{module}.py").write_text(textwrap.dedent(source))
        info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[prunekit]\n{dist} = {module}\n")
    monkeypatch.syspath_prepend(str(site))
    return [str(site)], modules


GOOD = """
    import torch
    import prunekit

    class Rows(prunekit.Pattern):
        description = "keeps the first row only"
        def get_masks(self, scores, target_sparsity, pre_masks=None):
            self.check_inputs(scores, pre_masks)
            masks = {}
            for name, shape in self.shapes.items():
                mask = torch.zeros(shape, dtype=torch.bool)
                mask[0] = True
                masks[name] = mask
            return masks

    def double(weight, **context):
        return weight.abs() * 2

    @prunekit.hookimpl
    def register_patterns(register):
        register("good_rows", Rows)

    @prunekit.hookimpl
    def register_criteria(register):
        register("double", double)
"""

BROKEN_IMPORT = """
    import prunekit_dependency_that_is_not_installed
"""

RAISES = """
    import prunekit

    class P(prunekit.Pattern):
        pass

    @prunekit.hookimpl
    def register_patterns(register):
        register("half_registered", P)
        raise RuntimeError("boom")
"""

GREEDY = """
    import prunekit

    class P(prunekit.Pattern):
        pass

    @prunekit.hookimpl
    def register_patterns(register):
        register("4x1", P)
        register("NxM", P)
        register("greedy_ok", P)
"""

TYPO = """
    import prunekit

    @prunekit.hookimpl
    def register_pattern(register):
        pass
"""


def test_fresh_host_has_only_builtins(tmp_path: Path) -> None:
    host = PluginHost(metadata_path=[str(tmp_path)]).load()
    assert {"NxM", "N:M", "filter", "random"} <= set(host.patterns)
    assert all(host.patterns.resolve(n).builtin for n in host.patterns)
    assert {"magnitude", "l2"} <= set(host.criteria)
    assert {"oneshot", "iterative"} <= set(host.schedules)
    assert all(r.builtin and r.status == "loaded" for r in host.records)
    count = len(host.records)
    assert host.load() is host and len(host.records) == count  # idempotent


def test_in_process_plugin_object_registers_through_the_hook(tmp_path: Path) -> None:
    host = PluginHost(metadata_path=[str(tmp_path)])

    class Plugin:
        @pk.hookimpl
        def register_patterns(self, register):  # type: ignore[no-untyped-def]
            register("inproc", type("InProc", (pk.Pattern,), {"description": "d"}))
            register("4x1", type("Thief", (pk.Pattern,), {}))

    with pytest.warns(PluginWarning, match="'4x1' is taken"):
        record = host.add_plugin(Plugin(), name="inproc-plugin")
    assert record.registered["patterns"] == ["inproc"]
    assert record.status == "partial"
    assert host.patterns.resolve("inproc").owner == "inproc-plugin"
    assert host.patterns.resolve("4x1").name == "NxM"


def test_a_config_is_validated_and_run_against_the_host_it_is_given(tmp_path: Path) -> None:
    """A test's (or an application's) own host: its patterns are valid names there and only
    there; get_pattern and the Pruner resolve against it."""
    host = PluginHost(metadata_path=[str(tmp_path)])

    class Halves(pk.Pattern):
        Options = pk.BlockOptions

        def layout(self, name, module):  # type: ignore[no-untyped-def]
            return pk.GridLayout(self.shapes[name], 1, 2)

    class Plugin:
        @pk.hookimpl
        def register_patterns(self, register):  # type: ignore[no-untyped-def]
            register("halves", Halves)

    host.add_plugin(Plugin(), name="own")
    config = pk.load_config({"pattern": "halves", "target_sparsity": 0.5}, host=host)
    assert config.pattern == "halves"
    with pytest.raises(pk.UnknownPatternError, match="unknown pattern 'halves'"):
        pk.load_config({"pattern": "halves"})  # the default host has no such pattern
    model = nn.Sequential(nn.Linear(8, 4))
    pattern = pk.get_pattern(config, {"0": model[0]}, host=host)
    assert isinstance(pattern, Halves)
    pruner = pk.Pruner(model, {"pattern": "halves", "target_sparsity": 0.5}, host=host)
    pruner.prune_now()
    assert int((model[0].weight == 0).sum()) == 16


def test_installed_plugins_load_and_failures_are_isolated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = install_fake_site(
        tmp_path,
        monkeypatch,
        {
            "prunekit-good": GOOD,
            "prunekit-broken": BROKEN_IMPORT,
            "prunekit-raises": RAISES,
            "aaa-greedy": GREEDY,
            "prunekit-typo": TYPO,
        },
    )
    host = PluginHost(metadata_path=path)
    with pytest.warns(PluginWarning) as caught:
        host.load()
    messages = [str(w.message) for w in caught]
    assert any(
        "'prunekit-broken'" in m and "failed to import (ModuleNotFoundError" in m for m in messages
    )
    assert any(
        "'prunekit-raises'" in m and "raised in register_patterns (RuntimeError: boom)" in m
        for m in messages
    )
    assert any("'aaa-greedy'" in m and "'4x1' is taken" in m for m in messages)
    assert any("'aaa-greedy'" in m and "'NxM' is taken" in m for m in messages)
    assert any("'prunekit-typo'" in m and "did you mean 'register_patterns'" in m for m in messages)
    records = {r.distribution: r for r in host.records if not r.builtin}
    assert records["prunekit-good"].status == "loaded"
    assert records["prunekit-good"].registered == {
        "patterns": ["good_rows"],
        "criteria": ["double"],
        "schedules": [],
    }
    assert records["prunekit-broken"].status == "failed"
    assert records["prunekit-raises"].status == "failed"
    assert "half_registered" not in host.patterns  # nothing of a failing hook is kept
    assert records["aaa-greedy"].status == "partial"
    assert records["aaa-greedy"].registered["patterns"] == ["greedy_ok"]
    assert host.patterns.resolve("4x1").owner == "prunekit"  # built-ins always win
    good = host.patterns.resolve("good_rows")
    assert good.owner == "prunekit-good" and good.description == "keeps the first row only"


def test_load_plugins_env_var_limits_distributions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = install_fake_site(
        tmp_path, monkeypatch, {"prunekit-good": GOOD, "prunekit-broken": BROKEN_IMPORT}
    )
    monkeypatch.setenv("PRUNEKIT_LOAD_PLUGINS", "")
    host = PluginHost(metadata_path=path).load()
    assert "good_rows" not in host.patterns and "NxM" in host.patterns
    assert {r.distribution: r.status for r in host.records if not r.builtin} == {
        "prunekit-good": "skipped",
        "prunekit-broken": "skipped",
    }
    monkeypatch.setenv("PRUNEKIT_LOAD_PLUGINS", "Prunekit_Good")  # names are normalized
    host = PluginHost(metadata_path=path).load()
    assert "good_rows" in host.patterns
    monkeypatch.delenv("PRUNEKIT_LOAD_PLUGINS")
    monkeypatch.setenv("PRUNEKIT_SKIP_PLUGINS", "prunekit-broken")
    host = PluginHost(metadata_path=path).load()  # no warning: the broken one never imports
    skipped = [r for r in host.records if r.status == "skipped"]
    assert [r.distribution for r in skipped] == ["prunekit-broken"]
    assert "PRUNEKIT_SKIP_PLUGINS" in skipped[0].problems[0]


def test_first_distribution_in_name_order_wins_a_shared_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = """
        import prunekit
        class P(prunekit.Pattern):
            pass
        @prunekit.hookimpl
        def register_patterns(register):
            register("shared", P)
    """
    path, _ = install_fake_site(tmp_path, monkeypatch, {"zz-plugin": source, "aa-plugin": source})
    with pytest.warns(PluginWarning, match="'zz-plugin'.*'shared' is taken"):
        host = PluginHost(metadata_path=path).load()
    assert host.patterns.resolve("shared").owner == "aa-plugin"


def test_installed_example_package_is_found_through_its_entry_point() -> None:
    eps = [ep for ep in metadata.entry_points(group="prunekit") if ep.name == "block_diagonal"]
    assert len(eps) == 1 and eps[0].dist is not None
    assert eps[0].dist.metadata["Name"] == "prunekit-example"
    assert eps[0].value == "prunekit_example.plugin"
    entry = pk.PATTERNS.entry("block_diagonal")
    assert entry.owner == "prunekit-example" and not entry.builtin
    record = next(r for r in default_host().records if r.distribution == "prunekit-example")
    assert record.status == "loaded" and record.registered["patterns"] == ["block_diagonal"]
    pattern = pk.get_pattern(
        {"pattern": "block_diagonal", "blocks": 4, "pruning_scope": "local"},
        {"fc": nn.Linear(8, 8)},
    )
    mask = pattern.get_masks({"fc": torch.rand(8, 8)}, 0.5)["fc"]
    assert int((~mask).sum()) == 32


def test_import_is_lazy_and_first_use_loads() -> None:
    code = (
        "import sys, prunekit; lazy = 'prunekit.patterns.nxm' not in sys.modules; "
        "prunekit.PATTERNS['4x1']; print(lazy, 'prunekit.patterns.nxm' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"]
