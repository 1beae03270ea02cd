"""Method families by name: a `Registry` whose entries declare their own options.

Losses, inference engines, zero-shot methods and evaluation tasks are each a registry. An entry is a class;
its options are either declared explicitly as a tuple of `Option` (what a command line can offer as flags,
with types and help; a classmethod returning one when it depends on another registry) or read from its
constructor's signature. Building an entry checks the given options
against the declared ones, so a typo'd option is an error that lists the valid ones, never silently ignored.

Messages name parameters in backticks (`k_shot`); the CLI rewrites each one it has a flag for into the flag.

    METHODS = Registry("zero-shot method", param="method")

    @METHODS.register("mean")
    class Mean:
        options = (Option("templates", str, help="template set name or file"),)

    METHODS.create("mean", templates="photo")
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from clipforge.errors import ClipforgeError, UsageError

__all__ = ["Option", "Registry"]


@dataclass(frozen=True)
class Option:
    """One option an entry accepts. `type` converts a command-line string (bool options are switches)."""

    name: str
    type: Callable[[str], Any] = str
    default: Any = None
    help: str = ""
    choices: Optional[tuple] = None
    required: bool = False
    cli: bool = True  # False: Python-only (e.g. a dict of solver settings); a command line does not offer it


def _signature_options(cls) -> tuple[Option, ...]:
    out = []
    for p in inspect.signature(cls).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = None if p.default is p.empty else p.default
        out.append(Option(p.name, type(default) if default is not None else str, default,
                          required=p.default is p.empty))
    return tuple(out)


class Registry:
    """Named entries of one kind (`kind` is used in messages; `param` is the parameter that names an entry)."""

    def __init__(self, kind: str, param: str = "name", plural: Optional[str] = None):
        self.kind, self.param, self.plural = kind, param, plural or f"{kind}s"
        self._entries: dict[str, type] = {}

    def register(self, name: str):
        """Class decorator: make `create(name, ...)` build this class; sets `cls.name`."""

        def deco(cls):
            if name in self._entries and self._entries[name] is not cls:
                raise UsageError(f"{self.kind} {name!r} is already registered (by {self._entries[name].__name__})")
            self._entries[name] = cls
            cls.name = name
            return cls

        return deco

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name) -> bool:
        return name in self._entries

    def get(self, name: str) -> type:
        if name not in self._entries:
            raise UsageError(f"`{self.param}` {name!r} is unknown; the registered {self.plural} are "
                             f"{', '.join(self.names()) or '(none)'}")
        return self._entries[name]

    def options(self, name: str) -> tuple[Option, ...]:
        """The options entry `name` declares (its `options` attribute, else its constructor's parameters)."""
        cls = self.get(name)
        declared = getattr(cls, "options", None)
        if callable(declared):  # computed on demand, e.g. from another registry filled later
            declared = declared()
        return tuple(declared) if declared is not None else _signature_options(cls)

    def all_options(self) -> dict[str, Option]:
        """Every option any entry declares, e.g. to offer them all as flags. Entries sharing an option name
        share its flag, so they must agree on its type and choices (ClipforgeError naming both otherwise)."""
        out: dict[str, Option] = {}
        first: dict[str, str] = {}
        for name in self.names():
            for opt in self.options(name):
                seen = out.setdefault(opt.name, opt)
                first.setdefault(opt.name, name)
                if seen is not opt and (seen.type, seen.choices) != (opt.type, opt.choices):
                    raise ClipforgeError(f"{self.kind} {first[opt.name]!r} and {name!r} both declare option "
                                         f"{opt.name!r} with different types or choices; rename one")
        return out

    def owners(self, option: str) -> list[str]:
        """The entries that declare `option`."""
        return [n for n in self.names() if any(o.name == option for o in self.options(n))]

    def check(self, name: str, given: dict, ignore_none: bool = True) -> dict:
        """`given` restricted to what entry `name` accepts, with defaults filled in.

        An option the entry does not declare is an error naming the entries that do (or listing the valid
        ones); with `ignore_none`, options given as None count as not given (how a CLI passes unset flags).
        """
        opts = {o.name: o for o in self.options(name)}
        given = {k: v for k, v in given.items() if not (ignore_none and v is None)}
        for k in given:
            if k not in opts:
                owners = self.owners(k)
                where = (f"it belongs to {self.kind} {', '.join(owners)}" if owners else
                         f"valid options: {', '.join(f'`{o}`' for o in opts) or '(none)'}")
                raise UsageError(f"`{k}` does not apply to {self.kind} {name!r} ({where})")
        out = {}
        for o in opts.values():
            if o.name in given:
                value = given[o.name]
                if o.choices is not None and value not in o.choices:
                    raise UsageError(f"`{o.name}` {value!r} is not one of {', '.join(map(str, o.choices))}")
                out[o.name] = value
            elif o.required:
                raise UsageError(f"{self.kind} {name!r} needs `{o.name}`" + (f" ({o.help})" if o.help else ""))
            else:
                out[o.name] = o.default
        return out

    def create(self, name: str, *args, **options):
        """Build entry `name` with checked options (None values count as not given)."""
        return self.get(name)(*args, **self.check(name, options))

    def describe(self) -> Iterable[tuple[str, str]]:
        """(name, first docstring line) of every entry."""
        for n in self.names():
            doc = (self._entries[n].__doc__ or "").strip().splitlines()
            yield n, doc[0].rstrip(".") if doc else ""
