"""Registries of named things (patterns, criteria, schedules).

A :class:`Registry` maps names to objects and knows who registered each (a distribution for
plugins, ``"prunekit"`` for built-ins, a module for in-process ``@register_pattern`` use). A
name may also stand for a *family* whose spec grammar (a regular expression) claims many
specs: ``"NxM"`` claims ``"4x1"`` and ``"channelx1"``. Resolution tries exact names first,
then the families' grammars in registration order, so built-ins (registered first) win.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from prunekit.errors import NameTakenError, UnknownNameError
from prunekit.naming import close_matches, matches_filter, natural_key

T = TypeVar("T")
BUILTIN_OWNER = "prunekit"
_VALID_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_:.\-]*$")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered name: the object, who registered it, and the grammar it claims."""

    name: str
    obj: T
    owner: str
    builtin: bool
    description: str
    spec: re.Pattern[str] | None = None
    examples: tuple[str, ...] = ()

    @property
    def is_family(self) -> bool:
        return self.spec is not None

    def claims(self, name: str) -> bool:
        """Whether this entry answers to ``name``: exactly, or through its grammar."""
        return name == self.name or (
            self.spec is not None and self.spec.fullmatch(name) is not None
        )

    def owner_label(self) -> str:
        return f"{self.owner} (built-in)" if self.builtin else self.owner


@dataclass
class Registry(Generic[T]):
    """Names to objects, with owners, family grammars and did-you-mean errors.

    ``describe`` turns an object into (description, spec regex or None, spec examples);
    ``check`` validates an object before it is accepted (raising ``TypeError``);
    ``validate(obj, spec)`` refuses a spec a family's grammar claims but whose values are
    invalid (raising :class:`~prunekit.errors.InvalidSpecError`), so that membership agrees
    with what configs accept; ``notes()`` adds what an unknown-name error should also say
    (a plugin that failed to load).
    """

    kind: str
    error_cls: type[UnknownNameError]
    list_hint: str
    describe: Callable[[Any], tuple[str, str | None, tuple[str, ...]]]
    check: Callable[[str, Any], None] = lambda name, obj: None
    validate: Callable[[Any, str], object] = lambda obj, spec: None
    notes: Callable[[], str] = lambda: ""
    # name -> entry, in registration order (built-ins first, so their grammars win).
    _entries: dict[str, Entry[T]] = field(default_factory=dict)

    # -- registration ---------------------------------------------------------------------
    def add(
        self, name: str, obj: T, owner: str, *, builtin: bool = False, override: bool = False
    ) -> Entry[T]:
        """Register ``obj`` under ``name`` for ``owner``; refuse a name that is taken."""
        entry = self.make_entry(name, obj, owner, builtin=builtin)
        self.check_free(entry, override=override)
        if override:
            self._entries.pop(name, None)
        self._entries[name] = entry
        return entry

    def make_entry(self, name: str, obj: T, owner: str, *, builtin: bool = False) -> Entry[T]:
        if not isinstance(name, str) or not _VALID_NAME.match(name):
            raise ValueError(
                f"{self.kind} name {name!r} is not valid: use letters, digits and _ : . - "
                "(starting with a letter or digit)"
            )
        self.check(name, obj)
        description, spec, examples = self.describe(obj)
        compiled = re.compile(spec) if spec else None
        return Entry(name, obj, owner, builtin, description, compiled, tuple(examples))

    def check_free(self, new: Entry[T], *, override: bool = False) -> None:
        """Raise :class:`NameTakenError` if ``new`` claims a name another entry claims."""
        for old in self._entries.values():
            if override and old.name == new.name and not old.builtin:
                continue
            clash = _clash(old, new)
            if clash is not None:
                raise NameTakenError(
                    f"{self.kind} name {clash!r} is taken: {_label(old)} already claims it "
                    f"(owner {old.owner_label()}); refused for {_label(new)} (owner "
                    f"{new.owner}). Pick another name"
                    + ("" if old.builtin else ", or pass override=True to replace it")
                    + "."
                )

    # -- lookup ---------------------------------------------------------------------------
    def resolve(self, spec: str) -> Entry[T]:
        """The entry for ``spec``: an exact name first, then the first family that claims it."""
        entry = self._entries.get(spec)
        if entry is not None:
            return entry
        for family in self._entries.values():
            if family.spec is not None and family.spec.fullmatch(spec):
                self.validate(family.obj, spec)
                return family
        raise self.unknown(spec)

    def unknown(self, spec: object) -> UnknownNameError:
        candidates = [*self._entries]
        for entry in self._entries.values():
            candidates.extend(entry.examples)
        suggestions = close_matches(str(spec), candidates) if isinstance(spec, str) else []
        notes = self.notes()
        return self.error_cls(
            str(spec), suggestions, self.list_hint + (f"; {notes}" if notes else "")
        )

    def entries(self, filter: str | None = None) -> list[Entry[T]]:
        """Entries that match ``filter`` (shell wildcards, or a substring), in natural name
        order: by their name, one of their spec examples, or (a family) a spec their
        grammar claims, so that ``'*x1'`` and ``'16x1'`` find the NxM family."""
        found = [e for e in self._entries.values() if self._matches(e, filter)]
        return sorted(found, key=lambda e: natural_key(e.name))

    def _matches(self, entry: Entry[T], filter: str | None) -> bool:
        if matches_filter(entry.name, filter) or any(
            matches_filter(example, filter) for example in entry.examples
        ):
            return True
        if entry.spec is None or not filter or entry.spec.fullmatch(filter) is None:
            return False
        try:
            self.validate(entry.obj, filter)
        except ValueError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries


def _label(entry: Entry[Any]) -> str:
    return f"family {entry.name!r}" if entry.is_family else repr(entry.name)


def _clash(old: Entry[Any], new: Entry[Any]) -> str | None:
    """The first name that both entries would answer to, or None."""
    if old.claims(new.name):
        return new.name
    for example in new.examples:
        if old.claims(example):
            return example
    if new.spec is not None:
        for name in (old.name, *old.examples):
            if new.spec.fullmatch(name):
                return name
    return None
