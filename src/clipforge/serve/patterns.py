"""Regular expressions the request schema publishes, written so that every dialect reading them agrees.

A pattern in /openapi.json is read by three engines: pydantic's (Rust `regex`, which decides what the server
accepts), a client's JSON Schema validator (ECMA-262), and Python's `re` (schema-driven test generators).
They differ on shorthand classes — `\\s` is Unicode White_Space in Rust (U+0085 included), ECMA's list
(U+FEFF included, U+0085 not) and `str.isspace` in Python (U+001C..U+001F included) — so these patterns spell
their classes out, and a request the schema calls valid is one the server accepts (and the reverse). One
difference remains: anchored patterns end in `$`, which Python's `re` alone also matches before a final
newline; the server's engine does not (a base64 image or an id ending in a newline is a 422).
"""
from __future__ import annotations

__all__ = ["BASE64_IMAGE", "FILTER", "NON_BLANK", "ONE_IMAGE", "WHITESPACE", "decimal_at_most"]

# Python's whitespace (`str.isspace`, what `str.strip` and `re`'s \s take: the server strips labels and parses
# filters with them), spelled out as \uXXXX escapes, the one spelling all three dialects read the same
WHITESPACE = r"\u0009-\u000d\u001c-\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
NON_BLANK = f"[^{WHITESPACE}]"  # (unanchored: the text holds at least one character that is not whitespace)

_S, _V = f"[{WHITESPACE}]", f"[^{WHITESPACE}]"
# A metadata filter as `retrieval.filters.parse_filter` reads it: COLUMN OP VALUE, the operator the longest one
# at its place (`a<=` is `<=` with no value, not `<` with "="), the value not blank. Columns are ASCII here
# (what metadata columns are named), so no \w.
FILTER = (f"^{_S}*[A-Za-z_][A-Za-z0-9_.]*{_S}*"
          f"(?:(?:!=|<=|>=|\\*=|=|~){_S}*{_V}|[<>](?:{_S}+{_V}|[^{WHITESPACE}=]))")

_B64 = "[A-Za-z0-9+/]"
# What `base64.b64decode(..., validate=True)` takes (the alphabet in groups of four, `=` padding only at the
# end), after an optional data: URL prefix, at least one group. Whether the bytes are an image the schema
# cannot say: that is a 400.
BASE64_IMAGE = f"^(?:data:[^,]*,)?(?:{_B64}{{4}})*(?:{_B64}{{4}}|{_B64}{{3}}=|{_B64}{{2}}==)$"


def decimal_at_most(limit: int) -> str:
    """An anchored pattern for the decimal numbers 0..limit (leading zeros allowed, digits only), with no
    `\\d` (Unicode digits in Python). E.g. 2**63-1: 1 to 18 digits, or 19 digits not above the limit."""
    top = str(limit)
    n = len(top)
    alts = [f"[0-9]{{1,{n - 1}}}"] if n > 1 else []
    for i, c in enumerate(top):  # same first i digits, a smaller digit at i, then anything
        if c != "0":
            rest = f"[0-9]{{{n - i - 1}}}" if n - i - 1 else ""
            alts.append(f"{top[:i]}[0-{int(c) - 1}]{rest}")
    alts.append(top)
    return "^(?:" + "|".join(alts) + ")$"


# A body naming its image either as an upload (`image`) or as an indexed item (`id`), exactly one of them
# (/caption, /explain): published as JSON Schema, so a schema-valid body is one the server accepts.
ONE_IMAGE = {"oneOf": [{"required": ["image"], "properties": {"image": {"type": "string"}}},
                       {"required": ["id"], "properties": {"id": {"type": "integer"}}}]}
