"""Who may make clipforge run a program: the user, never a file.

A webdataset `pipe:CMD` shard runs `CMD` in a shell and reads the shard from its output. That is the one
source form that runs a program of the spec's choosing (remote `http://`, `gs://` ... shards run a fixed
transfer tool — curl, gsutil — with the URL as its one argument, no shell). It is honoured when the user
typed the spec on a command line or passed it as a string in Python, and never when the spec was read from a
stored file — an index's `index.json`, a YAML training config, a curation summary — because those files are
data that people share: opening one must not run what its author wrote.

The mechanism is one type and one check:

- `StoredSpec` is a `str` that remembers it was read from a file (`origin`). Every reader of a stored spec
  marks it with `stored_spec(value, origin)`; it survives `str()`, copying, pickling (to decoding workers and
  Ray actors) and `absolute_spec`, and nothing else about it differs from the string.
- `check_commands(urls, spec)` is called where shards are opened (`WdsSource`, before any shard is read) and
  again where a `pipe:` shard is started: a stored spec whose shards include a `pipe:` command is refused with a
  one-line `StoredCommandRefused` (a `UsageError`) that shows the command, escaped, and names `allow_pipe`.
- `accept_stored(spec, allow_pipe)` is the user's explicit yes: with `allow_pipe=True` (a parameter of
  `update_index`, `train` and `curate.write_report`; the CLI has a flag for it) the stored spec becomes a plain
  string again, so the command runs as if typed. Source options read from the same file cannot grant it:
  trust travels in the spec's type, not in an option a file could hold.
"""
from __future__ import annotations

from typing import Iterable

from clipforge.data.display import shown
from clipforge.errors import UsageError

__all__ = ["StoredSpec", "StoredCommandRefused", "stored_spec", "accept_stored", "is_stored", "runs_command",
           "check_commands"]

PIPE = "pipe:"


class StoredSpec(str):
    """A source spec read from a stored file (`origin`: the file, for messages): data, not the user's word."""

    origin: str

    def __new__(cls, value: str, origin: str = "a stored file"):
        self = super().__new__(cls, value)
        self.origin = str(origin)
        return self

    def __str__(self) -> "StoredSpec":  # `str(spec)` keeps the mark (only `accept_stored` removes it)
        return self

    def __reduce__(self):
        return (StoredSpec, (str.__str__(self), self.origin))

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self


class StoredCommandRefused(UsageError):
    """A spec read from a file would run a command, and the user did not accept stored commands."""


def stored_spec(value, origin) -> object:
    """`value` marked as read from `origin` when it is a string (anything else is returned as it is, for the
    reader's own type check to refuse)."""
    if isinstance(value, str) and not isinstance(value, StoredSpec):
        return StoredSpec(value, origin)
    return value


def is_stored(spec) -> bool:
    return isinstance(spec, StoredSpec)


def accept_stored(spec, allow_pipe: bool):
    """`spec` as the user's own when `allow_pipe` (its commands then run); else unchanged."""
    if allow_pipe and isinstance(spec, StoredSpec):
        return str.__str__(spec)  # a plain `str` with the same text
    return spec


def runs_command(url: str) -> bool:
    """True for a shard URL that runs a program of its own choosing (`pipe:CMD`; told as URL parsers tell a
    scheme: leading spaces and control characters dropped, any case)."""
    return isinstance(url, str) and _head(url).lower().startswith(PIPE)


def _head(url: str) -> str:
    return url.lstrip("".join(map(chr, range(33))))


def check_commands(urls: Iterable[str], *specs) -> None:
    """Refuse (`StoredCommandRefused`) when any of `specs` was read from a file and one of `urls` runs a
    command. `specs` are the spec and pattern the urls came from (either one marked is enough)."""
    stored = next((s for s in specs if isinstance(s, StoredSpec)), None)
    if stored is None:
        return
    cmd = next((u for u in urls if runs_command(u)), None)
    if cmd is None:
        return
    command = _head(cmd)[len(PIPE):]
    raise StoredCommandRefused(
        f"{shown(stored.origin)}: its stored source runs a shell command (\"{shown(command)}\"), and a command "
        "read from a file is never run unless you accept it: pass `allow_pipe` to run it, only if you trust "
        "that file")
