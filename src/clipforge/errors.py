"""Exceptions shared by the library and the CLI.

The CLI turns a `UsageError` into one line on stderr and exit code 2, any other `ClipforgeError` into one
line and exit code 1. Library code raises these (never `SystemExit`) so callers can catch them.
"""


class ClipforgeError(Exception):
    """A failure the user can understand and act on (bad file, missing checkpoint, ...)."""


class UsageError(ClipforgeError, ValueError):
    """The caller asked for something invalid: an unknown name, a bad flag value, an unknown config key."""
