"""`shown`: text from a collection (file names, captions, keys, class names) made safe to print or write for a
person.

A file name or caption can hold newlines, escape sequences, NUL and other control characters, bidi overrides,
or (from undecodable file names) lone surrogates. Printed raw, they forge lines of a report, recolour or clear a
terminal, or break a markdown table. Every human-readable output — terminal lines, report.md files, contact-sheet
labels, chart labels — passes such text through `shown` (or one of its forms for a markdown table cell, a
markdown code span, or a matplotlib label); JSON outputs keep it raw (JSON escapes it itself).
"""
from __future__ import annotations

import re

__all__ = ["shown", "shown_cell", "shown_code", "shown_label"]

# Joiners are "format" characters (not printable) but harmless, and emoji sequences need them.
_KEEP = frozenset("\u200c\u200d")
_TICKS = re.compile("`+")


def shown(text) -> str:
    """`text` (made a `str`) with each non-printable character written as its Python escape (`\\n`, `\\x1b`,
    `\\x00`, `\\u202e`, `\\udce9`), so the result is one line of printable, valid Unicode. Printable text,
    non-ASCII included, is returned unchanged."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in _KEEP else ascii(c)[1:-1] for c in text)


def shown_cell(text) -> str:
    """`shown(text)` for a markdown table cell: a `|` would end the cell, so it is escaped too."""
    return shown(text).replace("|", "\\|")


def shown_code(text) -> str:
    """`shown(text)` as a markdown code span, fenced by more backticks than any run inside it (CommonMark), so a
    backtick in a name cannot end the span early."""
    text = shown(text)
    fence = "`" * (1 + max((len(m) for m in _TICKS.findall(text)), default=0))
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def shown_label(text) -> str:
    """`shown(text)` for a matplotlib label: a pair of `$` would start mathtext (and a malformed formula would
    fail the whole figure), so `$` is escaped too."""
    return shown(text).replace("$", "\\$")
