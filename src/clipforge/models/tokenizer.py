"""CLIP-style byte-level BPE on the Hugging Face `tokenizers` library.

Text is NFC-normalised, whitespace runs collapsed, lower-cased, split with CLIP's regex, byte-level mapped and
BPE-merged with an end-of-word suffix `</w>` — the same pipeline as HF's `CLIPTokenizerFast`. The vocabulary
layout is OpenAI's: 256 byte symbols, the same 256 with `</w>`, one token per merge, then
`<|startoftext|>` and `<|endoftext|>`. With zero merges this is a complete byte-level tokenizer (514 ids): the
default for randomly initialised registered models; `train_tokenizer` learns merges for a domain, and
pretrained models bring their own files.
"""
from __future__ import annotations

import html
import json
import re
import string
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union
from collections import Counter, defaultdict

import regex
import torch
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as _Backend

from clipforge.atomic import atomic_write_text
from clipforge.errors import ClipforgeError, UsageError

SOT, EOT = "<|startoftext|>", "<|endoftext|>"
CLIP_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
# open_clip's SimpleTokenizer: its own special words first, matched case-insensitively (so "'ſ" is a contraction).
OPEN_CLIP_SOT, OPEN_CLIP_EOT = "<start_of_text>", "<end_of_text>"
OPEN_CLIP_PATTERN = r"""(?i)<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
# The same words as open_clip finds them: Python's `regex` module, case-insensitive. Its Unicode tables and its
# case-insensitive classes are not those of the Rust backend's regex engine (newly assigned letters such as
# U+A7D4 or CJK Extension J, and marks whose case fold is a letter such as U+0345, split differently there).
_OPEN_CLIP_WORDS = regex.compile(OPEN_CLIP_PATTERN[4:], regex.IGNORECASE)


@lru_cache()
def bytes_to_unicode() -> Dict[int, str]:
    """OpenAI/GPT-2's reversible map from bytes to printable unicode symbols (order matters: it is the vocab's)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _clip_pipeline(tok: _Backend, pattern: str = CLIP_PATTERN, byte_regex: bool = False) -> _Backend:
    """CLIP's normaliser, word split and byte-level mapping on `tok`. `byte_regex` adds GPT-2's byte-level
    pre-split after CLIP's (as transformers' CLIPTokenizer builds it from vocab.json + merges.txt: "<|" and "|>"
    become words of their own); HF's saved CLIP tokenizer.json files and OpenAI's tokenizer have none."""
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=byte_regex),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok


def build_clip_backend(merges: Sequence[Tuple[str, str]] = (), pattern: str = CLIP_PATTERN) -> _Backend:
    """A CLIP BPE backend with OpenAI's vocab layout for the given merges (in priority order). `pattern` splits
    words: HF's CLIP pattern, or `OPEN_CLIP_PATTERN` for open_clip's tokenizer."""
    base = list(bytes_to_unicode().values())
    vocab_list = base + [b + "</w>" for b in base] + ["".join(m) for m in merges] + [SOT, EOT]
    vocab = {t: i for i, t in enumerate(vocab_list)}
    if len(vocab) != len(vocab_list):
        raise ClipforgeError("merges produce duplicate tokens; not a valid CLIP BPE merge list")
    bpe = models.BPE(vocab=vocab, merges=[tuple(m) for m in merges], end_of_word_suffix="</w>",
                     continuing_subword_prefix="", fuse_unk=False, unk_token=EOT)
    tok = _clip_pipeline(_Backend(bpe), pattern)
    tok.add_special_tokens([SOT, EOT])
    return tok


_CURLY = str.maketrans({"\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2018": "'", "\u2019": "'"})


def _clean_openai(text: str, parse_special: bool = False) -> str:
    """open_clip's `_clean_lower` (OpenAI's, plus whitespace): ftfy.fix_text (when installed; otherwise only
    its quote straightening), HTML entities unescaped twice, whitespace runs joined, then Python's `str.lower`
    — which, unlike a per-character lower case, turns a word-final capital sigma into "ς"."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        text = text.translate(_CURLY)
    return " ".join(html.unescape(html.unescape(text)).split()).lower()


_SIGLIP_SPECIALS = re.compile(r"(</s>|<unk>)")  # SiglipTokenizer's special tokens: split off before cleaning
_NO_PUNCT = str.maketrans("", "", string.punctuation)


def _clean_siglip(text: str, parse_special: bool = False) -> str:
    """transformers' SiglipTokenizer before SentencePiece: "▁" + text (inner "▁" read as spaces), split at its
    special tokens (only with `parse_special`; otherwise they are text like any other), then each chunk
    canonicalised as big_vision does: lower case, ASCII punctuation removed, whitespace runs collapsed,
    stripped. Python's `str.lower` (final sigma) and `\\s` (U+001C..U+001F) have no exact `tokenizers`
    normaliser, hence a cleaner; the backend is `convert.siglip_tokenizer.siglip_backend`."""
    text = "\u2581" + text.replace("\u2581", " ")
    parts = _SIGLIP_SPECIALS.split(text) if parse_special else [text]
    out = [p if i % 2 else re.sub(r"\s+", " ", p.lower().translate(_NO_PUNCT)).strip() for i, p in enumerate(parts)]
    if len(out) > 1 and out[0] == "\u2581":
        out[0] = ""  # HF drops a lone leading "▁" before a special token
    return " ".join(out)  # the backend's special tokens strip the spaces around them, as HF's do


def valid_text(text: str) -> str:
    """`text` with lone UTF-16 surrogates (from JSON "\\ud800" escapes, or undecodable file names) replaced by
    U+FFFD: the Rust backend only accepts valid Unicode. Valid text is returned unchanged."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:  # a surrogate pair split across escapes rejoins; a lone half becomes U+FFFD
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    except AttributeError:
        raise UsageError(f"texts must be strings, got {type(text).__name__}") from None


# Text cleaning applied before the backend: "none" is HF's CLIPTokenizerFast; "openai" matches OpenAI /
# open_clip; "siglip" is transformers' SiglipTokenizer (with the backend from convert.siglip_tokenizer).
CLEANERS = {"none": lambda t, parse_special=False: t, "openai": _clean_openai, "siglip": _clean_siglip}


TRUNCATE = ("warn", "silent", "error")


class TextTruncatedWarning(UserWarning):
    """Texts longer than the tokenizer's context were cut (shown once per tokenizer)."""


class Tokenizer:
    """Callable: list of strings -> LongTensor (B, context_length).

    Each row is [sot] + tokens + [eot], padded with `pad_id`; over-long text is truncated so the end token is
    always kept (pooling reads it). This is the one place texts are truncated, and it is never silent unless
    asked: `truncate="warn"` (default) cuts and warns once per tokenizer (`TextTruncatedWarning`, with the
    count and the longest length), "silent" cuts quietly, "error" refuses the batch (UsageError).
    `num_truncated` counts the texts cut so far. Longer texts need a longer context: `clipforge stretch`. `add_sot=False` gives SigLIP-style rows (tokens + eot, padded).

    Special tokens never come from the text unless `parse_special=True`: by default a caption containing
    "<|endoftext|>" (or "</s>", "<end_of_text>") tokenizes it as ordinary characters. With `parse_special`
    the tokenizer follows its reference: transformers' added-token matching for HF tokenizers (any
    occurrence of a special token string), open_clip's rule for the "openai" cleaner (only the words
    `<start_of_text>` / `<end_of_text>`, found by its word pattern after cleaning), SiglipTokenizer's for
    "siglip" ("</s>", "<unk>").
    """

    def __init__(self, backend: _Backend, context_length: int = 77, *, pad_id: int = 0, add_sot: bool = True,
                 add_eot: bool = True, sot_token: str = SOT, eot_token: str = EOT, clean: str = "none",
                 parse_special: bool = False, truncate: str = "warn"):
        self.backend = backend
        if truncate not in TRUNCATE:
            raise UsageError(f"`truncate` must be one of {', '.join(TRUNCATE)}, got {truncate!r}")
        self.truncate = truncate
        self.num_truncated = 0
        self._warned = False
        self.context_length = int(context_length)
        self.pad_id = int(pad_id)
        self.add_sot, self.add_eot = add_sot, add_eot
        self.sot_token, self.eot_token = sot_token, eot_token
        if clean not in CLEANERS:
            raise UsageError(f"unknown text cleaning {clean!r}; valid: {', '.join(CLEANERS)}")
        self.clean = clean
        self._word_backend: Optional[_Backend] = None  # the "openai" route's BPE on pre-split words
        self.parse_special = bool(parse_special)
        self.sot_id = backend.token_to_id(sot_token) if add_sot else None
        self.eot_id = backend.token_to_id(eot_token) if add_eot else None
        if (add_sot and self.sot_id is None) or (add_eot and self.eot_id is None):
            raise ClipforgeError(f"tokenizer vocabulary lacks {sot_token!r} or {eot_token!r}")

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def _clean(self, text: str) -> str:
        return CLEANERS[self.clean](valid_text(text), self.parse_special)

    def _open_clip_words(self, cleaned: List[str]) -> List[List[int]]:
        """open_clip's encode on cleaned texts: its word pattern (Python `regex`, as open_clip), each word
        byte-mapped and BPE-merged by the backend's model, and — only with `parse_special` — the words
        `<start_of_text>` / `<end_of_text>` as the start / end ids (otherwise ordinary characters)."""
        if self._word_backend is None:
            wb = _Backend(self.backend.model)
            wb.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
            self._word_backend = wb
        words = [_OPEN_CLIP_WORDS.findall(t) for t in cleaned]
        out = [e.ids for e in self._word_backend.encode_batch(words, is_pretokenized=True, add_special_tokens=False)]
        if self.parse_special:
            specials = {OPEN_CLIP_SOT: self.backend.token_to_id(SOT), OPEN_CLIP_EOT: self.backend.token_to_id(EOT)}
            for i, ws in enumerate(words):
                if any(w.lower() in specials for w in ws):
                    enc = self._word_backend.encode_batch([[w] for w in ws], is_pretokenized=True,
                                                          add_special_tokens=False)
                    out[i] = [x for w, e in zip(ws, enc)
                              for x in ([specials[w.lower()]] if w.lower() in specials else e.ids)]
        return out

    def _encode_cleaned(self, texts: List[str]) -> List[List[int]]:
        if self.clean == "openai":
            return self._open_clip_words(texts)
        # The backend matches its added tokens in raw text only for HF-style special parsing (set per call: a
        # backend may be shared).
        self.backend.encode_special_tokens = not self.parse_special
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]

    def with_options(self, **options) -> "Tokenizer":
        """A tokenizer on the same backend with some options changed, e.g. `with_options(parse_special=True)`."""
        return Tokenizer(self.backend, **{**self.config(), "truncate": self.truncate, **options})

    def encode(self, text: str) -> List[int]:
        """Token ids of one text, without start/end tokens or padding."""
        return self._encode_cleaned([self._clean(text)])[0]

    def __call__(self, texts: Union[str, Iterable[str]], context_length: Optional[int] = None,
                 truncate: Optional[str] = None) -> torch.Tensor:
        """(B, L) ids; `truncate` overrides the tokenizer's policy for this call."""
        if isinstance(texts, str):
            texts = [texts]
        texts = [self._clean(t) for t in texts]
        L = int(context_length or self.context_length)
        room = L - int(self.add_sot) - int(self.add_eot)
        encoded = self._encode_cleaned(texts)
        self._check_length(encoded, room, L, self.truncate if truncate is None else truncate)
        out = torch.full((len(texts), L), self.pad_id, dtype=torch.long)
        for i, ids in enumerate(encoded):
            row = ([self.sot_id] if self.add_sot else []) + ids[:room] + ([self.eot_id] if self.add_eot else [])
            out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return out

    def _check_length(self, encoded: List[List[int]], room: int, L: int, policy: str) -> None:
        if policy not in TRUNCATE:
            raise UsageError(f"`truncate` must be one of {', '.join(TRUNCATE)}, got {policy!r}")
        long = [len(ids) for ids in encoded if len(ids) > room]
        if not long:
            return
        specials = int(self.add_sot) + int(self.add_eot)
        what = (f"{len(long)} of {len(encoded)} texts exceed the {L}-token context (longest: "
                f"{max(long) + specials} tokens)")
        if policy == "error":
            raise UsageError(f"{what}; shorten them, allow truncation (`truncate`), or stretch the model's "
                             "context (clipforge.models.stretch)")
        self.num_truncated += len(long)
        if policy == "warn" and not self._warned:
            self._warned = True
            warnings.warn(f"{what} and were truncated (warned once per tokenizer; a stretched model takes "
                          "longer texts)", TextTruncatedWarning, stacklevel=3)

    def decode(self, ids: Iterable[int]) -> str:
        specials = {self.sot_id, self.eot_id, self.pad_id} - {None}
        if self.backend.token_to_id("a</w>") is None:  # not CLIP's byte-level BPE (e.g. SigLIP's unigram)
            return self.backend.decode([int(i) for i in ids if int(i) not in specials]).strip()
        toks = [self.backend.id_to_token(int(i)) for i in ids if int(i) not in specials]
        text = "".join(t for t in toks if t is not None)
        inv = {v: k for k, v in bytes_to_unicode().items()}
        words = [bytes(inv[c] for c in w if c in inv).decode("utf-8", errors="replace") for w in text.split("</w>")]
        return " ".join(w for w in words if w)

    # ----------------------------------------------------------------------------------------- persistence
    def config(self) -> dict:
        return {"context_length": self.context_length, "pad_id": self.pad_id, "add_sot": self.add_sot,
                "add_eot": self.add_eot, "sot_token": self.sot_token, "eot_token": self.eot_token,
                "clean": self.clean, "parse_special": self.parse_special}

    def save(self, directory: Union[str, Path]) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_text(d / "tokenizer.json", self.backend.to_str())
        atomic_write_text(d / "tokenizer_config.json", json.dumps({"clipforge": self.config()}, indent=2))

    @classmethod
    def load(cls, directory: Union[str, Path], **overrides) -> "Tokenizer":
        d = Path(directory)
        path = d / "tokenizer.json" if d.is_dir() else d
        if not path.exists():
            raise ClipforgeError(f"no tokenizer.json in {directory}")
        backend = _Backend.from_file(str(path))
        cfg = {}
        cfg_path = path.parent / "tokenizer_config.json"
        if cfg_path.exists():
            cfg = json.loads(cfg_path.read_text()).get("clipforge", {})
        cfg.update(overrides)
        return cls(backend, **cfg)


def default_tokenizer(context_length: int = 77) -> Tokenizer:
    """The byte-level CLIP tokenizer with no merges (514 ids): works for any text, any language."""
    return Tokenizer(build_clip_backend(()), context_length)


def learn_merges(texts: Iterable[str], n_merges: int, min_frequency: int = 2) -> List[Tuple[str, str]]:
    """Learn up to `n_merges` CLIP BPE merges, deterministically: the most frequent adjacent pair wins and ties
    go to the lexicographically smallest pair (the `tokenizers` trainer breaks ties in hash order, so the same
    corpus gave different vocabularies run to run)."""
    probe = _clip_pipeline(_Backend(models.BPE()))
    words: Counter = Counter()
    for text in texts:
        norm = probe.normalizer.normalize_str(valid_text(text))
        words.update(w for w, _ in probe.pre_tokenizer.pre_tokenize_str(norm))
    seqs = {w: list(w[:-1]) + [w[-1] + "</w>"] for w in words}  # symbols; the last carries the word end
    pairs: Counter = Counter()
    where = defaultdict(set)  # pair -> words containing it
    for w, sym in seqs.items():
        for a, b in zip(sym, sym[1:]):
            pairs[(a, b)] += words[w]
            where[(a, b)].add(w)
    merges: List[Tuple[str, str]] = []
    while len(merges) < n_merges and pairs:
        best = min(pairs, key=lambda p: (-pairs[p], p))
        if pairs[best] < min_frequency:
            break
        merges.append(best)
        a, b = best
        for w in sorted(where.pop(best, ())):
            sym, f = seqs[w], words[w]
            for x, y in zip(sym, sym[1:]):  # remove this word's old pairs
                pairs[(x, y)] -= f
                if pairs[(x, y)] <= 0:
                    del pairs[(x, y)]
            out, i = [], 0
            while i < len(sym):
                if i + 1 < len(sym) and sym[i] == a and sym[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(sym[i])
                    i += 1
            seqs[w] = out
            for x, y in zip(out, out[1:]):
                pairs[(x, y)] += f
                where[(x, y)].add(w)
        pairs.pop(best, None)
    return merges


def train_tokenizer(texts: Iterable[str], vocab_size: int, context_length: int = 77) -> Tokenizer:
    """Learn `vocab_size - 514` BPE merges on `texts` (CLIP pipeline, OpenAI vocab layout), deterministically."""
    n_merges = int(vocab_size) - 514
    if n_merges < 0:
        raise UsageError(f"vocab_size must be >= 514 (256 bytes x 2 + start/end tokens), got {vocab_size}")
    return Tokenizer(build_clip_backend(learn_merges(texts, n_merges)), context_length)
