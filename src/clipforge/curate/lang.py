"""Language guess for captions, when the optional `py3langid` package is installed (the `curate` extra).

py3langid (a maintained fork of langid.py) ships its naive Bayes model inside the wheel and runs offline; it
covers 97 languages and returns a normalised probability. Without it, curation runs the same and the score
table simply has no `lang` column. A text with no letters (e.g. "7", "") gets no guess.
"""
from __future__ import annotations

from typing import Optional

from clipforge.errors import UsageError

__all__ = ["language_available", "guess_languages", "resolve_lang"]

_IDENTIFIER = None


def language_available() -> bool:
    try:
        import py3langid  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_lang(lang) -> bool:
    """`lang` "auto" (guess when py3langid is installed) | True (require it) | False -> whether to guess."""
    if lang == "auto":
        return language_available()
    if lang is True:
        if not language_available():
            raise UsageError("`lang` needs the optional py3langid package: pip install 'clipforge[curate]'")
        return True
    if lang is False or lang is None:
        return False
    raise UsageError(f"`lang` must be 'auto', True or False, got {lang!r}")


def _identifier():
    global _IDENTIFIER
    if _IDENTIFIER is None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        _IDENTIFIER = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    return _IDENTIFIER


def guess_languages(texts: list[str]) -> list[tuple[Optional[str], Optional[float]]]:
    """(ISO 639-1 code, probability) per text; (None, None) for a text without letters."""
    ident = _identifier()
    out = []
    for t in texts:
        if not t or not any(ch.isalpha() for ch in t):
            out.append((None, None))
            continue
        code, prob = ident.classify(t)
        out.append((str(code), float(prob)))
    return out
