"""SigLIP's SentencePiece tokenizer (`spiece.model`) as a `tokenizers` backend with transformers' exact ids.

transformers' `SiglipTokenizer` (slow, sentencepiece) tokenizes in two stages, reproduced here:
1. Python: "▁" + text, split at the special tokens ("</s>", "<unk>", kept whole), each chunk canonicalised as
   big_vision does (lower case, ASCII punctuation removed, whitespace collapsed, stripped). Python's `str.lower`
   (final sigma) and `\\s` have no exact `tokenizers` normaliser, so this stage is the clipforge Tokenizer's
   `clean="siglip"` cleaner (`clipforge.models.tokenizer.CLEANERS`).
2. SentencePiece on "<unk>" + chunk, the "<unk>" pieces then dropped (HF's way to skip the dummy prefix): the
   model's precompiled normaliser and whitespace rules, then the unigram lattice — here `Precompiled` and
   `Replace` normalisers and `models.Unigram` with the file's pieces and scores (`siglip_backend`).
Measured: identical ids to SiglipTokenizer on 2000 varied captions for nmt_nfkc, nfkc and identity models. One
known difference: `Precompiled` maps a short grapheme by its first mapped prefix and drops the rest, so a
combining mark right after a character the normaliser rewrites ("①\u0301", "ﬁ\u0301") is lost.

The `.model` file is a protobuf `ModelProto`; the few fields needed are read (and, for HF export, written)
with a small wire-format codec, so loading a SigLIP directory needs neither `sentencepiece` nor `protobuf`.
"""
from __future__ import annotations

import base64
import json
import re
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Tuple, Union

from tokenizers import AddedToken, Regex, decoders, models, normalizers
from tokenizers import Tokenizer as _Backend

from clipforge.errors import ClipforgeError
from clipforge.models.tokenizer import Tokenizer

# SentencePiece piece types (sentencepiece_model.proto: SentencePiece.Type).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_UNIGRAM = 1  # TrainerSpec.ModelType


@dataclass
class SpieceModel:
    """The parts of a SentencePiece ModelProto a tokenizer needs."""
    pieces: List[Tuple[str, float, int]]          # (piece, score, type) in id order
    model_type: int = _UNIGRAM
    charsmap: bytes = b""                          # NormalizerSpec.precompiled_charsmap
    norm_name: str = ""
    add_dummy_prefix: bool = True                  # proto2 defaults of NormalizerSpec
    remove_extra_whitespaces: bool = True
    escape_whitespaces: bool = True

    @property
    def unk_id(self) -> int:
        ids = [i for i, (_, _, t) in enumerate(self.pieces) if t == UNKNOWN]
        if len(ids) != 1:
            raise ClipforgeError(f"SentencePiece model has {len(ids)} unknown pieces; expected exactly one")
        return ids[0]


# ------------------------------------------------------------------------------------ protobuf wire format
def _varint(buf: bytes, i: int) -> Tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _fields(buf: bytes) -> Iterator[Tuple[int, int, Union[int, bytes]]]:
    """(field number, wire type, value) of each field of one message."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(buf, i)
        elif wt == 1:
            v, i = buf[i:i + 8], i + 8
        elif wt == 2:
            n, i = _varint(buf, i)
            v, i = buf[i:i + n], i + n
        elif wt == 5:
            v, i = buf[i:i + 4], i + 4
        else:
            raise ClipforgeError(f"not a SentencePiece model (protobuf wire type {wt})")
        yield num, wt, v


def read_spiece(path: Union[str, Path]) -> SpieceModel:
    """Parse a SentencePiece `.model` file (ModelProto: pieces=1, trainer_spec=2, normalizer_spec=3)."""
    buf = Path(path).read_bytes()
    m = SpieceModel(pieces=[])
    try:
        for num, _, v in _fields(buf):
            if num == 1:  # SentencePiece: piece=1, score=2 (float), type=3
                piece, score, typ = "", 0.0, NORMAL
                for n, _, x in _fields(v):
                    if n == 1:
                        piece = x.decode("utf-8")
                    elif n == 2:
                        score = struct.unpack("<f", x)[0]
                    elif n == 3:
                        typ = x
                m.pieces.append((piece, score, typ))
            elif num == 2:  # TrainerSpec: model_type=3
                for n, _, x in _fields(v):
                    if n == 3:
                        m.model_type = x
            elif num == 3:  # NormalizerSpec: name=1, precompiled_charsmap=2, three flags
                for n, _, x in _fields(v):
                    if n == 1:
                        m.norm_name = x.decode("utf-8")
                    elif n == 2:
                        m.charsmap = bytes(x)
                    elif n == 3:
                        m.add_dummy_prefix = bool(x)
                    elif n == 4:
                        m.remove_extra_whitespaces = bool(x)
                    elif n == 5:
                        m.escape_whitespaces = bool(x)
    except (IndexError, UnicodeDecodeError, struct.error) as e:
        raise ClipforgeError(f"{path}: not a readable SentencePiece model ({e})") from e
    if not m.pieces:
        raise ClipforgeError(f"{path}: SentencePiece model has no pieces")
    return m


def _key(num: int, wt: int) -> bytes:
    return _enc_varint(num << 3 | wt)


def _enc_varint(v: int) -> bytes:
    if v < 0:
        v += 1 << 64
    out = bytearray()
    while True:
        b, v = v & 0x7F, v >> 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _bytes_field(num: int, b: bytes) -> bytes:
    return _key(num, 2) + _enc_varint(len(b)) + b


def write_spiece(m: SpieceModel, path: Union[str, Path]) -> None:
    """Write `m` as a `.model` file that `sentencepiece` (and so transformers' SiglipTokenizer) loads."""
    out = bytearray()
    for piece, score, typ in m.pieces:
        body = _bytes_field(1, piece.encode("utf-8")) + _key(2, 5) + struct.pack("<f", score) + _key(3, 0) + \
            _enc_varint(typ)
        out += _bytes_field(1, body)
    specials = {t: i for i, (_, _, t) in reversed(list(enumerate(m.pieces)))}
    # TrainerSpec: model_type=3, vocab_size=4, byte_fallback=35, unk_id=40 (bos/eos/pad ids: -1 = none;
    # sentencepiece only checks them against the piece table, control pieces are kept by type).
    trainer = _key(3, 0) + _enc_varint(m.model_type) + _key(4, 0) + _enc_varint(len(m.pieces))
    trainer += _key(35, 0) + _enc_varint(int(BYTE in specials)) + _key(40, 0) + _enc_varint(m.unk_id)
    for num in (41, 42, 43):
        trainer += _key(num, 0) + _enc_varint(-1)
    out += _bytes_field(2, trainer)
    norm = _bytes_field(1, m.norm_name.encode("utf-8")) + _bytes_field(2, m.charsmap)
    for num, flag in ((3, m.add_dummy_prefix), (4, m.remove_extra_whitespaces), (5, m.escape_whitespaces)):
        norm += _key(num, 0) + _enc_varint(int(flag))
    out += _bytes_field(3, norm)
    Path(path).write_bytes(bytes(out))


# -------------------------------------------------------------------------------------------- backend
def siglip_backend(m: SpieceModel, specials=("</s>", "<unk>")) -> _Backend:
    """A unigram backend encoding cleaned text exactly as SiglipTokenizer's sentencepiece stage does."""
    if m.model_type != _UNIGRAM:
        raise ClipforgeError(f"SentencePiece model_type {m.model_type} is not unigram (1); SigLIP uses unigram")
    byte_fallback = any(t == BYTE for _, _, t in m.pieces)
    tok = _Backend(models.Unigram([(p, s) for p, s, _ in m.pieces], unk_id=m.unk_id, byte_fallback=byte_fallback))
    # sentencepiece's normaliser as HF runs it: on "<unk>" + chunk, so a chunk's leading space (the "▁" the
    # cleaner puts first, which nmt_nfkc maps to " ") is never leading, never stripped; trailing and runs are.
    norms = []
    if m.charsmap:
        # `Precompiled` maps whole graphemes and drops a combining mark after a leading "▁" ("▁\u0301" -> " ");
        # sentencepiece maps the "▁" alone, so do that first (nmt_nfkc: "▁" -> " ").
        lead = normalizers.Precompiled(m.charsmap).normalize_str("▁")
        if lead != "▁":
            norms.append(normalizers.Replace("▁", lead))
        norms.append(normalizers.Precompiled(m.charsmap))
    space = "▁" if m.escape_whitespaces else " "
    if m.remove_extra_whitespaces:  # sentencepiece: only spaces count, other whitespace is left alone
        norms.append(normalizers.Replace(Regex(" {2,}"), " "))
    if m.escape_whitespaces:
        norms.append(normalizers.Replace(" ", "▁"))
    if m.remove_extra_whitespaces:  # trailing ones go after escaping: a literal trailing "▁" goes too
        norms.append(normalizers.Replace(Regex(space + "+\\z"), ""))
    tok.normalizer = normalizers.Sequence(norms)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    # SiglipTokenizer's AddedTokens eat the whitespace around them (lstrip/rstrip) and are never normalised.
    tok.add_special_tokens([AddedToken(s, lstrip=True, rstrip=True, normalized=False, special=True)
                            for s in dict.fromkeys(specials) if s])
    return tok


# SiglipTokenizer's special tokens; the "siglip" cleaner keeps exactly these whole (tokenizer.CLEANERS).
SIGLIP_SPECIALS = ("</s>", "<unk>")


def load_siglip_tokenizer(spiece: Path, context_length: int, *, eos: str = "</s>", pad: Optional[str] = "</s>",
                          unk: str = "<unk>") -> Tokenizer:
    """The clipforge Tokenizer giving SiglipTokenizer's ids (padding="max_length"): tokens + eos, then pad."""
    m = read_spiece(spiece)
    pad = pad or eos
    odd = [t for t in (eos, pad, unk) if t not in SIGLIP_SPECIALS]
    if odd:
        warnings.warn(f"{spiece}: special tokens {odd} differ from SigLIP's {SIGLIP_SPECIALS}: text containing "
                      "them literally tokenizes differently from transformers (the cleaner removes their punctuation)")
    backend = siglip_backend(m, (eos, unk, pad))
    ids = {t: backend.token_to_id(t) for t in (eos, pad)}
    if None in ids.values():
        raise ClipforgeError(f"{spiece}: special token(s) {[t for t, i in ids.items() if i is None]} not in the vocab")
    return Tokenizer(backend, context_length, pad_id=ids[pad], add_sot=False, add_eot=True, eot_token=eos,
                     clean="siglip")


_CONTROL = re.compile(r"<[^<>\s]+>")
_BYTE = re.compile(r"<0x[0-9A-F]{2}>")


def spiece_from_backend(backend: _Backend) -> SpieceModel:
    """Invert `siglip_backend`: the SentencePiece model a saved SigLIP backend was built from (for HF export).
    Piece types are not stored in tokenizer.json: special tokens and score-0 "<...>" pieces are control pieces,
    "<0xNN>" byte pieces when byte fallback is on, the rest normal — sentencepiece's own layout."""
    j = json.loads(backend.to_str())
    model = j["model"]
    if model.get("type") != "Unigram":
        raise ClipforgeError(f"a SigLIP tokenizer needs a Unigram backend, this one is {model.get('type')}")
    specials = {t["content"] for t in j.get("added_tokens", []) if t.get("special")}
    unk_id, byte_fallback = model.get("unk_id"), bool(model.get("byte_fallback"))
    if unk_id is None:
        raise ClipforgeError("the Unigram backend has no unk_id; sentencepiece needs one")
    pieces = []
    for i, (piece, score) in enumerate(model["vocab"]):
        typ = UNKNOWN if i == unk_id else CONTROL if piece in specials or (score == 0 and _CONTROL.fullmatch(piece)) \
            else BYTE if byte_fallback and _BYTE.fullmatch(piece) else NORMAL
        pieces.append((piece, float(score), typ))
    norms = (j.get("normalizer") or {}).get("normalizers", [])
    m = SpieceModel(pieces=pieces, remove_extra_whitespaces=False, escape_whitespaces=False)
    for n in norms:
        pat = n.get("pattern", {})
        if n["type"] == "Precompiled":
            m.charsmap = base64.b64decode(n["precompiled_charsmap"])
        elif n["type"] == "Replace" and pat.get("Regex") == " {2,}":
            m.remove_extra_whitespaces = True
        elif n["type"] == "Replace" and pat.get("String") == " " and n.get("content") == "▁":
            m.escape_whitespaces = True
    m.norm_name = "precompiled" if m.charsmap else "identity"
    return m


def save_siglip_tokenizer(tok: Tokenizer, out: Path) -> None:
    """spiece.model + tokenizer_config.json + special_tokens_map.json: what transformers' SiglipTokenizer loads."""
    m = spiece_from_backend(tok.backend)
    write_spiece(m, out / "spiece.model")
    specials = {"eos_token": tok.eot_token, "pad_token": tok.backend.id_to_token(tok.pad_id),
                "unk_token": m.pieces[m.unk_id][0]}
    conf = {"tokenizer_class": "SiglipTokenizer", **specials, "model_max_length": tok.context_length,
            "do_lower_case": True, "clipforge": tok.config()}
    (out / "tokenizer_config.json").write_text(json.dumps(conf, indent=2), encoding="utf-8")
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2), encoding="utf-8")
