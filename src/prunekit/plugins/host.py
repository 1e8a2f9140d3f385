"""The plugin host: one pluggy manager and the registries it fills, built-ins first, then
third-party entry points, each isolated.

Loading is lazy (the first use of a registry), idempotent, and fault-isolated: a plugin that
fails to import, fails inside its hook, implements a hook prunekit does not define, or claims
a taken name is reported with a :class:`~prunekit.errors.PluginWarning` naming its
distribution and the reason; everything else still loads. pluggy validates hook signatures
(``register``), finds unknown hooks (``check_pending``), blocks skipped plugins
(``set_blocked``) and calls one plugin's hooks (``subset_hook_caller``); what it does not do
is load entry points one by one without letting one failure stop the rest, so that part is
here.

Environment variables (read when plugins load):

``PRUNEKIT_LOAD_PLUGINS``
    Comma-separated distribution names to load; every other third-party plugin is skipped.
    Set but empty (``PRUNEKIT_LOAD_PLUGINS=``) loads no third-party plugin at all.
``PRUNEKIT_SKIP_PLUGINS``
    Comma-separated distribution names never to load.

Built-ins always load and always win: they are registered before any entry point, so no
plugin can take a built-in name or a spec that a built-in family claims.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import inspect
import os
import re
import threading
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pluggy

from prunekit.errors import (
    NameTakenError,
    PluginWarning,
    UnknownCriterionError,
    UnknownPatternError,
    UnknownScheduleError,
)
from prunekit.masks.pattern import Pattern
from prunekit.naming import close_matches, normalize_distribution
from prunekit.plugins import hookspecs
from prunekit.plugins.registry import BUILTIN_OWNER, Entry, Registry

ENTRY_POINT_GROUP = "prunekit"
LOAD_ENV = "PRUNEKIT_LOAD_PLUGINS"
SKIP_ENV = "PRUNEKIT_SKIP_PLUGINS"

# The built-in plugins: modules that implement the same hooks as third-party plugins.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "prunekit.patterns.nxm",
    "prunekit.patterns.ninm",
    "prunekit.patterns.granularity",
    "prunekit.patterns.fillers",
    "prunekit.patterns.ln_structured",
    "prunekit.patterns.head",
    "prunekit.training.criteria",
    "prunekit.training.calibrated",
    "prunekit.training.schedules",
)

Kind = Literal["patterns", "criteria", "schedules"]
KINDS: tuple[Kind, ...] = ("patterns", "criteria", "schedules")
HOOK_OF: dict[Kind, str] = {
    "patterns": "register_patterns",
    "criteria": "register_criteria",
    "schedules": "register_schedules",
}
_UNKNOWN_HOOK = re.compile(r"unknown hook '([^']+)'")


@dataclass
class PluginRecord:
    """What one plugin (one entry point, or one built-in module) did when it loaded."""

    distribution: str
    version: str
    entry_point: str  # "name = module" for entry points, the module name for built-ins
    status: Literal["loaded", "partial", "failed", "skipped"] = "loaded"
    registered: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in KINDS})
    problems: list[str] = field(default_factory=list)

    @property
    def builtin(self) -> bool:
        return self.distribution == BUILTIN_OWNER


def _describe_pattern(cls: Any) -> tuple[str, str | None, tuple[str, ...]]:
    return (
        getattr(cls, "description", "") or _first_line(cls.__doc__),
        getattr(cls, "spec", None),
        tuple(getattr(cls, "spec_examples", ())),
    )


def _describe_callable(obj: Any) -> tuple[str, str | None, tuple[str, ...]]:
    return (getattr(obj, "description", "") or _first_line(obj.__doc__), None, ())


def _first_line(doc: str | None) -> str:
    return inspect.cleandoc(doc).splitlines()[0] if doc and doc.strip() else ""


def _check_pattern(name: str, obj: Any) -> None:
    if not (isinstance(obj, type) and issubclass(obj, Pattern)):
        raise TypeError(f"pattern {name!r} must be a subclass of prunekit.Pattern, got {obj!r}")


def _check_callable(kind: str) -> Callable[[str, Any], None]:
    def check(name: str, obj: Any) -> None:
        if not callable(obj):
            raise TypeError(f"{kind} {name!r} must be callable, got {obj!r}")

    return check


def _env_names(variable: str) -> set[str] | None:
    raw = os.environ.get(variable)
    if raw is None:
        return None
    return {normalize_distribution(n) for n in raw.split(",") if n.strip()}


class PluginHost:
    """One pluggy manager and the registries it fills.

    The process has one default host (:func:`~prunekit.plugins.default_host`); tests build
    fresh ones. ``builtins`` lists the built-in plugin modules; ``metadata_path`` restricts
    entry-point discovery to those directories (``None``: ``sys.path``, as usual).
    """

    def __init__(
        self, builtins: Sequence[str] = BUILTIN_PLUGINS, metadata_path: list[str] | None = None
    ) -> None:
        self.manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.manager.add_hookspecs(hookspecs)
        self.builtins = tuple(builtins)
        self.metadata_path = metadata_path
        self.patterns: Registry[Any] = Registry(
            "pattern",
            UnknownPatternError,
            "run `prunekit patterns` or prunekit.list_patterns() to list every name",
            _describe_pattern,
            _check_pattern,
            lambda cls, spec: cls.parse_spec(spec),
            self.failure_note,
        )
        self.criteria: Registry[Any] = Registry(
            "criterion",
            UnknownCriterionError,
            "see prunekit.CRITERIA for every name",
            _describe_callable,
            _check_callable("criterion"),
            notes=self.failure_note,
        )
        self.schedules: Registry[Any] = Registry(
            "schedule",
            UnknownScheduleError,
            "see prunekit.SCHEDULES for every name",
            _describe_callable,
            _check_callable("schedule"),
            notes=self.failure_note,
        )
        self.records: list[PluginRecord] = []
        self._state: Literal["new", "loading", "loaded"] = "new"
        self._lock = threading.RLock()

    def registry(self, kind: Kind) -> Registry[Any]:
        registry: Registry[Any] = getattr(self, kind)
        return registry

    # -- loading --------------------------------------------------------------------------
    def load(self) -> PluginHost:
        """Load built-ins and entry points once; later calls return at once."""
        if self._state != "new":
            return self
        with self._lock:
            if self._state != "new":
                return self
            self._state = "loading"
            try:
                for module_name in self.builtins:
                    self._load_builtin(module_name)
                for dist_name, version, entry_point in self._entry_points():
                    self._load_entry_point(dist_name, version, entry_point)
            finally:
                self._state = "loaded"
        return self

    def _load_builtin(self, module_name: str) -> None:
        # Built-ins failing is a bug in prunekit itself, not a plugin fault: let it raise.
        module = importlib.import_module(module_name)
        record = PluginRecord(BUILTIN_OWNER, _version(BUILTIN_OWNER), module_name)
        self.manager.register(module, name=f"{BUILTIN_OWNER}:{module_name}")
        self._run_hooks(module, record, builtin=True)
        self.records.append(record)

    def _entry_points(self) -> Iterable[tuple[str, str, metadata.EntryPoint]]:
        """The entry points to load, in a stable order (so that conflicts between two
        plugins resolve the same way on every machine); skipped ones are blocked and
        recorded."""
        allowed, skipped = _env_names(LOAD_ENV), _env_names(SKIP_ENV) or set()
        found: list[tuple[str, str, metadata.EntryPoint]] = []
        seen: set[tuple[str, str]] = set()
        for dist in self._distributions():
            dist_name = dist.metadata["Name"] or "?"
            key = normalize_distribution(dist_name)
            if key == BUILTIN_OWNER:
                continue
            for ep in dist.entry_points:
                if ep.group != ENTRY_POINT_GROUP or (key, ep.name) in seen:
                    continue
                seen.add((key, ep.name))
                if (allowed is not None and key not in allowed) or key in skipped:
                    variable = SKIP_ENV if key in skipped else LOAD_ENV
                    self.manager.set_blocked(f"{dist_name}:{ep.name}")
                    self.records.append(
                        PluginRecord(
                            dist_name,
                            dist.version,
                            f"{ep.name} = {ep.value}",
                            "skipped",
                            problems=[f"skipped by {variable}"],
                        )
                    )
                    continue
                found.append((dist_name, dist.version, ep))
        found.sort(key=lambda item: (normalize_distribution(item[0]), item[2].name))
        self._warn_not_installed(allowed, seen)
        return found

    def _warn_not_installed(self, allowed: set[str] | None, seen: set[tuple[str, str]]) -> None:
        """Names in PRUNEKIT_LOAD_PLUGINS that no installed plugin distribution has (a typo,
        or a plugin not installed in this environment)."""
        installed = {key for key, _ in seen}
        for name in sorted((allowed or set()) - installed):
            hint = close_matches(name, sorted(installed))
            warnings.warn(
                f"{LOAD_ENV} names {name!r}, but no installed distribution with that name has "
                "a prunekit entry point"
                + (f"; did you mean {hint[0]!r}?" if hint else "")
                + f" (installed plugins: {', '.join(sorted(installed)) or 'none'})",
                PluginWarning,
                stacklevel=4,
            )

    def _distributions(self) -> Iterable[metadata.Distribution]:
        if self.metadata_path is None:
            return metadata.distributions()
        return metadata.distributions(path=self.metadata_path)

    def _load_entry_point(self, dist_name: str, version: str, ep: metadata.EntryPoint) -> None:
        record = PluginRecord(dist_name, version, f"{ep.name} = {ep.value}")
        self.records.append(record)
        try:
            plugin = ep.load()
        except Exception as exc:  # any import-time failure of a plugin is isolated
            self._fail(record, f"failed to import ({type(exc).__name__}: {exc})")
            return
        try:
            self.manager.register(plugin, name=f"{dist_name}:{ep.name}")
        except Exception as exc:  # pluggy validates hook signatures here
            self._fail(record, f"was refused by the plugin manager ({type(exc).__name__}: {exc})")
            return
        unknown = self._unknown_hook(plugin)
        if unknown:
            self._fail(record, unknown)
            return
        self._run_hooks(plugin, record, builtin=False)

    def _unknown_hook(self, plugin: object) -> str | None:
        """A reason if ``plugin`` implements a hook prunekit does not define (a typo), found
        by pluggy's ``check_pending``; the plugin is then unregistered."""
        try:
            self.manager.check_pending()
        except pluggy.PluginValidationError as exc:
            self.manager.unregister(plugin)
            found = _UNKNOWN_HOOK.search(str(exc))
            hook_name = found.group(1) if found else str(exc)
            known = list(HOOK_OF.values())
            hint = close_matches(hook_name, known)
            return (
                f"implements unknown hook {hook_name!r}"
                + (f"; did you mean {hint[0]!r}?" if hint else "")
                + f" (prunekit's hooks: {', '.join(known)})"
            )
        return None

    def add_plugin(
        self, plugin: object, name: str | None = None, owner: str | None = None
    ) -> PluginRecord:
        """Register an in-process plugin object (a module or an instance with hookimpls).

        Loads the installed plugins first, so in-process plugins can never shadow them or
        the built-ins. Returns the record of what was registered and refused.
        """
        self.load()
        plugin_name = name or getattr(plugin, "__name__", None) or repr(plugin)
        record = PluginRecord(owner or plugin_name, "", plugin_name)
        self.manager.register(plugin, name=plugin_name)
        self._run_hooks(plugin, record, builtin=False)
        self.records.append(record)
        return record

    def _run_hooks(self, plugin: object, record: PluginRecord, *, builtin: bool) -> None:
        """Call each of ``plugin``'s hooks with a staging callback, then commit.

        A hook that raises discards everything that plugin registered (no half-loaded plugin);
        a name that is taken is refused on its own, with a warning, and the rest is kept.
        """
        staged: list[tuple[Kind, Entry[Any]]] = []
        others = [p for p in self.manager.get_plugins() if p is not plugin]
        for kind in KINDS:

            def register(name: str, obj: Any, _kind: Kind = kind) -> None:
                entry = self.registry(_kind).make_entry(
                    name, obj, record.distribution, builtin=builtin
                )
                staged.append((_kind, entry))

            caller = self.manager.subset_hook_caller(HOOK_OF[kind], remove_plugins=others)
            try:
                caller(register=register)
            except Exception as exc:
                if builtin:
                    raise
                self._fail(record, f"raised in {HOOK_OF[kind]} ({type(exc).__name__}: {exc})")
                return
        self._commit(staged, record, builtin=builtin)

    def _commit(
        self, staged: list[tuple[Kind, Entry[Any]]], record: PluginRecord, *, builtin: bool
    ) -> None:
        for kind, entry in staged:
            registry = self.registry(kind)
            try:
                registry.check_free(entry)
            except NameTakenError as exc:
                if builtin:
                    raise
                record.status = "partial"
                record.problems.append(str(exc))
                warnings.warn(
                    f"prunekit plugin {record.distribution!r}: {exc}", PluginWarning, stacklevel=3
                )
                continue
            registry.add(entry.name, entry.obj, entry.owner, builtin=builtin)
            record.registered[kind].append(entry.name)

    def _fail(self, record: PluginRecord, reason: str) -> None:
        record.status = "failed"
        record.problems.append(reason)
        warnings.warn(
            f"prunekit plugin {record.distribution!r} ({record.entry_point}) {reason}; "
            "its patterns are not available, everything else loaded",
            PluginWarning,
            stacklevel=3,
        )

    def failure_note(self) -> str:
        """What an unknown-name error adds when plugins failed to load: which, and why (a
        name they would have registered is missing for that reason)."""
        failed = [r for r in self.records if r.status == "failed"]
        if not failed:
            return ""
        return "note: " + "; ".join(
            f"plugin {r.distribution!r} ({r.entry_point}) failed to load, so what it "
            f"registers is missing: {r.problems[-1]}"
            for r in failed
        )

    # -- registration from user code ------------------------------------------------------
    def register(
        self, kind: Kind, name: str, obj: Any, *, owner: str, override: bool = False
    ) -> Entry[Any]:
        """Register one object in-process (the decorators' path into the same registry)."""
        self.load()
        return self.registry(kind).add(name, obj, owner, override=override)


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"
