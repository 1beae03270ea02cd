"""Write tests/golden/tokenizer_fuzz.json.gz: 5,000 seeded strings of exotic Unicode and the ids two reference
tokenizers give them (issue 31, item 3).

Runs in the reference environment and imports nothing from clipforge:

    /work/refenv/bin/pip install open_clip_torch ftfy transformers
    /work/refenv/bin/python tools/make_tokenizer_fuzz.py            # from the repository root

Routes recorded per string:
- `open_clip`: `open_clip.get_tokenizer("ViT-B-32")` (SimpleTokenizer: ftfy, HTML unescape, lower, its regex).
- `hf_files`: transformers' `CLIPTokenizer` built from OpenAI's vocabulary as vocab.json + merges.txt only
  (no tokenizer.json), the route a directory without a tokenizer.json takes.

The strings are stored in the golden file, so the test never has to regenerate them. Rerunning with the same
versions writes the same bytes (gzip mtime 0).
"""
from __future__ import annotations

import gzip
import json
import random
import sys
import tempfile
import unicodedata
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "tests" / "golden"
N, SEED = 5000, 31

# Code point pools: combining marks, letters whose case mapping changes length, scripts, symbols, unassigned
# and newly assigned code points, supplementary planes, controls and odd spaces.
_RANGES = [
    (0x0300, 0x036F), (0x0483, 0x0489), (0x0591, 0x05C7), (0x064B, 0x065F), (0x0900, 0x097F), (0x0E00, 0x0E7F),
    (0x1AB0, 0x1AFF), (0x1DC0, 0x1DFF), (0x20D0, 0x20FF), (0xFE20, 0xFE2F),                    # combining marks
    (0x0100, 0x024F), (0x0370, 0x03FF), (0x0400, 0x04FF), (0x0530, 0x058F), (0x10A0, 0x10FF), (0x1E00, 0x1FFF),
    (0x2C00, 0x2C7F), (0xA640, 0xA69F), (0xA720, 0xA7FF), (0xAB30, 0xAB6F),                    # cased letters
    (0x3040, 0x30FF), (0x4E00, 0x4E80), (0xAC00, 0xAC40), (0x0600, 0x06FF), (0x1100, 0x11FF),  # CJK, Hangul, Arabic
    (0x2000, 0x206F), (0x2100, 0x218F), (0x2460, 0x24FF), (0x2190, 0x23FF), (0xFF00, 0xFFEF),  # punctuation, forms
    (0x1F300, 0x1F6FF), (0x1F900, 0x1F9FF), (0x1D400, 0x1D7FF), (0x10400, 0x1044F),            # emoji, math, Deseret
    (0x20000, 0x20100), (0x2A700, 0x2A800), (0x31350, 0x323AF), (0x323B0, 0x33479),            # CJK extensions
    (0xE0000, 0xE007F), (0xF0000, 0xF0040), (0x0000, 0x001F), (0x007F, 0x00A0), (0xFFF0, 0xFFFF),  # tags, PUA, C0/C1
    (0x0080, 0x00FF), (0x02B0, 0x02FF), (0x1680, 0x1680), (0x3000, 0x3000), (0x2028, 0x2029),
]
_FIXED = [
    "a\u0345b", "\u0130\u031c", "\u0124\u0331", "x\U000324f4y", "\ua7d4", "<|ENDOFTEXT|>", "<|endoftext|>",
    "<|startoftext|>a", "<end_of_text>", "<START_OF_TEXT> x", "a!b", "İstanbul", "ΣΑΣ", "ǅemal", "ﬁne ﬂour",
    "straße", "ß\u0301", "&amp;amp;", "&lt;b&gt;", "e\u0301", "\u1e9e", "ﬀ", "ŉ", "ǰ\u0323", "\u0345", "ᾳ",
    "\u0300a", "\U0001f1fa\U0001f1f8", "\u200d", "a\u00adb", "\ufeffx", "\u2028", "\x00a", "日本語テキスト",
]
_WORDS = ["a", "photo", "of", "the", "cat", "Dog", "RED", "it's", "we'll", "2024", "3.14", "don't", "x", "café",
          "naïve", "Σίσυφος", "москва", "東京", "😀", "—", "...", "#tag", "@user", "http://x.y/z"]


def _char(rng: random.Random) -> str:
    lo, hi = rng.choice(_RANGES)
    return chr(rng.randint(lo, hi))


def fuzz_strings(n: int = N, seed: int = SEED) -> list[str]:
    rng = random.Random(seed)
    out = list(_FIXED)
    while len(out) < n:
        r = rng.random()
        if r < 0.35:  # random code points
            s = "".join(_char(rng) for _ in range(rng.randint(1, 8)))
        elif r < 0.7:  # words with marks and exotic characters woven in
            parts = []
            for _ in range(rng.randint(1, 6)):
                w = rng.choice(_WORDS)
                if rng.random() < 0.5:
                    i = rng.randint(0, len(w))
                    w = w[:i] + "".join(_char(rng) for _ in range(rng.randint(1, 3))) + w[i:]
                parts.append(w.upper() if rng.random() < 0.2 else w)
            s = rng.choice([" ", "", "  ", "\t", "-", "\u3000"]).join(parts)
        elif r < 0.85:  # a base letter and a run of combining marks, NFC/NFD forms
            base = rng.choice("aeiouAEIOUİıΣσςßkKℌ" + chr(rng.randint(0x0100, 0x024F)))
            s = base + "".join(chr(rng.randint(0x0300, 0x036F)) for _ in range(rng.randint(1, 4)))
            s = unicodedata.normalize(rng.choice(["NFC", "NFD", "NFKC", "NFKD"]), s) + rng.choice(["", " b", "x"])
        else:  # specials, entities and cases
            s = rng.choice(["<|endoftext|>", "<|ENDOFTEXT|>", "<|StartOfText|>", "&amp;", "&#233;", "&nbsp;",
                            "<end_of_text>", "'S", "'LL", "\u2019s"]) + rng.choice(["", "x", " y", "!", "1"])
            if rng.random() < 0.5:
                s = _char(rng) + s
        out.append(s)
    return out[:n]


def _hf_files_tokenizer(tmp: Path):
    """transformers' CLIPTokenizer from OpenAI's BPE written as vocab.json + merges.txt (no tokenizer.json)."""
    import open_clip
    from transformers import CLIPTokenizer

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1: 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    from open_clip.tokenizer import bytes_to_unicode

    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    (tmp / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False), "utf-8")
    (tmp / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", "utf-8")
    return CLIPTokenizer.from_pretrained(str(tmp))


def main() -> int:
    import ftfy
    import open_clip
    import transformers

    texts = fuzz_strings()
    oc = open_clip.get_tokenizer("ViT-B-32")
    oc_ids = [r[: int((r != 0).nonzero().max()) + 1].tolist() for r in oc(texts)]
    with tempfile.TemporaryDirectory() as tmp:
        hf = _hf_files_tokenizer(Path(tmp))
        hf_ids = [hf(t)["input_ids"] for t in texts]
    payload = {
        "generator": "tools/make_tokenizer_fuzz.py (reference environment; imports nothing from clipforge)",
        "versions": {"open_clip": open_clip.__version__, "ftfy": ftfy.__version__,
                     "transformers": transformers.__version__, "python": sys.version.split()[0],
                     "unicodedata": unicodedata.unidata_version},
        "texts": texts, "open_clip": oc_ids, "hf_files": hf_ids,
    }
    data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    with open(OUT / "tokenizer_fuzz.json.gz", "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        f.write(data)
    print(f"{len(texts)} strings; {sum(len(r) >= 77 for r in oc_ids)} fill the context")
    return 0


if __name__ == "__main__":
    sys.exit(main())
