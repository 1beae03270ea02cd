"""Reinforced datasets (MobileCLIP): stored teacher embeddings beside a source, keyed by sample id.

The reinforce job (`clipforge.train.reinforce`, CLI `clipforge data reinforce`) writes a *store*: for every
readable sample of the source, N augmentation parameter sets of the train transform
(crop box + flip, `models.transforms.AugParams`), the teacher's image embedding of each of those N views, and
the teacher's text embedding of each caption (the source's captions, then any synthetic ones). Training with
`data.reinforcement: DIR` and `loss: clip+distill` replays one stored view per sample and step — the exact
crop the teacher saw — and hands the stored embeddings to the loss: no teacher runs during training.

Why a sidecar keyed by sample id rather than rewritten shards: it works beside every source kind (folders,
manifests, shards) without copying the images, and the training loader keeps reading the source as it
always does. The store records the source spec and each image's decoded size; a sample whose id is not in the
store, or whose image changed size, is skipped and counted (`not_reinforced`, `reinforcement_mismatch`).

Layout of DIR (all written atomically, as one directory):

    reinforce.json           format, version, source spec, teachers (ref, embed_dim), augmentations, counts
    ids.json                 sample ids, row order
    image_sizes.npy          (S, 2) int32   decoded (width, height)
    aug_params.npy           (S, N, 5) float32   x0, y0, x1, y1, flip
    caption_offsets.npy      (S + 1,) int64  captions of row i: [offsets[i], offsets[i+1])
    captions.json            all caption texts, row order (source captions first, then synthetic ones)
    image_embeds_<e>.npy     (S, N, D_e) teacher e's image embeddings (float16 or float32), L2-normalised
    text_embeds_<e>.npy      (C, D_e) teacher e's text embeddings

Arrays are memory-mapped when read, so a store larger than RAM works and DataLoader workers share pages.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import numpy as np

from clipforge.errors import ClipforgeError, UsageError

FORMAT, VERSION = "clipforge-reinforce", 1
MANIFEST = "reinforce.json"
EMBED_DTYPES = {"float16": np.float16, "float32": np.float32}


class ReinforcementStore:
    """Read a store written by `write_store`. `row_of(sample_id)` -> row or None; then `params(row)`,
    `captions(row)`, `image_embeds(row, aug)` and `text_embeds(row, caption)` per teacher."""

    def __init__(self, path):
        self.path = Path(path)
        man = self.path / MANIFEST
        if not man.is_file():
            raise UsageError(f"`data.reinforcement`: {self.path} is not a reinforcement store (no {MANIFEST}; "
                             "write one with `clipforge data reinforce`)")
        try:
            self.meta = json.loads(man.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ClipforgeError(f"cannot read {man}: {e}") from None
        if self.meta.get("format") != FORMAT or int(self.meta.get("version", 0)) > VERSION:
            raise ClipforgeError(f"{man}: not a {FORMAT} store of version <= {VERSION}")
        self._arrays: dict = {}
        self._index: Optional[dict] = None
        self._captions: Optional[list] = None

    def __getstate__(self):  # DataLoader workers re-open the memory maps themselves
        return {"path": self.path, "meta": self.meta}

    def __setstate__(self, state):
        self.path, self.meta = state["path"], state["meta"]
        self._arrays, self._index, self._captions = {}, None, None

    def _array(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            try:
                self._arrays[name] = np.load(self.path / f"{name}.npy", mmap_mode="r")
            except (OSError, ValueError) as e:
                raise ClipforgeError(f"reinforcement store {self.path}: cannot read {name}.npy: {e}") from None
        return self._arrays[name]

    @property
    def num_teachers(self) -> int:
        return len(self.meta["teachers"])

    @property
    def augmentations(self) -> int:
        return int(self.meta["augmentations"])

    def __len__(self) -> int:
        return int(self.meta["num_samples"])

    def row_of(self, sample_id: str) -> Optional[int]:
        if self._index is None:
            ids = json.loads((self.path / "ids.json").read_text(encoding="utf-8"))
            self._index = {sid: i for i, sid in enumerate(ids)}
        return self._index.get(sample_id)

    def image_size(self, row: int) -> tuple[int, int]:
        w, h = self._array("image_sizes")[row]
        return int(w), int(h)

    def params(self, row: int, aug: int) -> np.ndarray:
        """(5,) float32: x0, y0, x1, y1, flip of view `aug` of row `row`."""
        return np.asarray(self._array("aug_params")[row, aug], dtype=np.float32)

    def captions(self, row: int) -> list[str]:
        if self._captions is None:
            self._captions = json.loads((self.path / "captions.json").read_text(encoding="utf-8"))
        off = self._array("caption_offsets")
        return self._captions[int(off[row]):int(off[row + 1])]

    def image_embeds(self, row: int, aug: int) -> list[np.ndarray]:
        """One (D_e,) float32 vector per teacher."""
        return [np.asarray(self._array(f"image_embeds_{e}")[row, aug], dtype=np.float32)
                for e in range(self.num_teachers)]

    def text_embeds(self, row: int, caption: int) -> list[np.ndarray]:
        pos = int(self._array("caption_offsets")[row]) + int(caption)
        return [np.asarray(self._array(f"text_embeds_{e}")[pos], dtype=np.float32) for e in range(self.num_teachers)]


def write_store(tmp_dir, *, meta: dict, ids: list[str], image_sizes: np.ndarray, aug_params: np.ndarray,
                captions: list[list[str]], image_embeds: list[np.ndarray], text_embeds: list[np.ndarray],
                embed_dtype: str = "float16") -> None:
    """Write a store's files into `tmp_dir` (the caller swaps it into place with `atomic_directory`).

    image_sizes (S, 2); aug_params (S, N, 5); captions: S lists; image_embeds / text_embeds: one array per
    teacher, (S, N, D_e) and (sum of caption counts, D_e)."""
    if embed_dtype not in EMBED_DTYPES:
        raise UsageError(f"`embed_dtype` must be one of {', '.join(EMBED_DTYPES)}, got {embed_dtype!r}")
    d = Path(tmp_dir)
    s = len(ids)
    offsets = np.zeros(s + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(c) for c in captions])
    np.save(d / "image_sizes.npy", np.asarray(image_sizes, dtype=np.int32).reshape(s, 2))
    np.save(d / "aug_params.npy", np.asarray(aug_params, dtype=np.float32))
    np.save(d / "caption_offsets.npy", offsets)
    for e, (im, tx) in enumerate(zip(image_embeds, text_embeds)):
        np.save(d / f"image_embeds_{e}.npy", np.asarray(im).astype(EMBED_DTYPES[embed_dtype]))
        np.save(d / f"text_embeds_{e}.npy", np.asarray(tx).astype(EMBED_DTYPES[embed_dtype]))
    with open(d / "ids.json", "w", encoding="utf-8") as f:
        json.dump(list(ids), f)
    with open(d / "captions.json", "w", encoding="utf-8") as f:
        json.dump([c for caps in captions for c in caps], f)
    full = {"format": FORMAT, "version": VERSION, "num_samples": s, "num_captions": int(offsets[-1]),
            "embed_dtype": embed_dtype, **meta}
    with open(d / MANIFEST, "w", encoding="utf-8") as f:
        json.dump(full, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
