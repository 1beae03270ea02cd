"""Language guess for captions, when the optional `py3langid` package is installed (the `curate` extra).

py3langid (a maintained fork of langid.py) ships its naive Bayes model inside the wheel and runs offline; it
covers 97 languages and returns a normalised probability. Without it, curation runs the same and the score
table simply has no `lang` column. A text with no letters (e.g. "7", "") gets no guess (None).

Short captions are where it errs: "a handwritten nine." comes out Dutch, "Aquarius emoji" Latin. Below
`MIN_LANG_PROB` the guess is reported as `UNKNOWN` (its probability is kept, so a stricter or looser cut can
be applied to the table later). Measured on the demos' captions, all English (docs/curation.md): labelled
non-English before / after the cut: digits 2.9% / 0.0%, photos 1.1% / 0.0%, emoji names 45.2% / 0.9%; 38
short German, French, Spanish, Italian, Portuguese and Dutch captions: 94.7% / 76.3% labelled right, 5.3% /
2.6% labelled wrong, the rest unknown.
"""
from __future__ import annotations

from typing import Optional

from clipforge.errors import UsageError

__all__ = ["language_available", "guess_languages", "resolve_lang", "UNKNOWN", "MIN_LANG_PROB"]

UNKNOWN = "unknown"  # the `lang` of a caption too short or ambiguous to tell
# below this probability a guess is UNKNOWN: 0.5 is the lowest cut with no English demo caption (digits,
# photos) labelled another language; 0.4 leaves 0.1% of digits captions and 3.1% of emoji names mislabelled
MIN_LANG_PROB = 0.5

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


def guess_languages(texts: list[str], min_prob: float = MIN_LANG_PROB
                    ) -> list[tuple[Optional[str], Optional[float]]]:
    """(ISO 639-1 code, probability) per text; (UNKNOWN, probability) below `min_prob`; (None, None) for a
    text without letters."""
    ident = _identifier()
    out = []
    for t in texts:
        if not t or not any(ch.isalpha() for ch in t):
            out.append((None, None))
            continue
        code, prob = ident.classify(t)
        out.append((str(code) if prob >= min_prob else UNKNOWN, float(prob)))
    return out
