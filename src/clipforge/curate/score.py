"""Scoring one batch: image-text cosine per (image, caption) pair, with image and caption statistics.

`score_batch(encoder, batch)` is a pure function of an `Encoder` and one `clipforge.encode.ImageBatch`: it
returns the batch's rows as an Arrow table and writes nothing. The resumable job (`job.py`) calls it batch by
batch on one machine; a scale-out engine calls the same function from its workers.

One row per pair: a sample with k captions gives k rows (`caption_index` 0..k-1) that repeat the sample's
facts; a sample without captions gives one row with `caption_index` -1 and no score; an image that could not
be used gives one row with its `skip_reason` and nothing else. Columns (`SCHEMA` + optional ones):

  id, position, label                 the sample (position in the source; label when it has one)
  caption_index, caption, score       the pair: cosine of the L2-normalised image and caption embeddings
  width, height, aspect               the decoded image (aspect = long side / short side, >= 1)
  file_bytes, bytes_hash, pixel_hash  see `facts.py`
  caption_chars, caption_words        see `facts.py`
  skip_reason                         why the image was not used (a `clipforge.data.decode` reason), else null
  lang, lang_prob                     with a language guess (`lang.py`)
  image_emb                           (embeddings=True) float16 image embedding, on each sample's first row
  pixel_feat                          (pixel_features=True) float16 pixel descriptor, on the first row
  pixel_grid                          (pixel_features=True) uint8 32x32 grey grid, on the first row
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pyarrow as pa
import torch

from clipforge.curate.facts import PIXEL_FEAT_SIDE, PIXEL_GRID_SIDE, caption_facts
from clipforge.curate.lang import guess_languages

__all__ = ["SCHEMA", "PIXEL_DIM", "score_batch", "schema_for"]

PIXEL_DIM = PIXEL_FEAT_SIDE * PIXEL_FEAT_SIDE
GRID_DIM = PIXEL_GRID_SIDE * PIXEL_GRID_SIDE

SCHEMA = pa.schema([
    ("id", pa.string()), ("position", pa.int64()), ("label", pa.int64()),
    ("caption_index", pa.int32()), ("caption", pa.string()), ("score", pa.float32()),
    ("width", pa.int32()), ("height", pa.int32()), ("aspect", pa.float32()),
    ("file_bytes", pa.int64()), ("bytes_hash", pa.string()), ("pixel_hash", pa.string()),
    ("caption_chars", pa.int32()), ("caption_words", pa.int32()), ("skip_reason", pa.string()),
])


def schema_for(*, lang: bool, embed_dim: int | None, pixel_features: bool) -> pa.Schema:
    """The table's schema for these options (every part of one job has the same)."""
    fields = list(SCHEMA)
    if lang:
        fields += [pa.field("lang", pa.string()), pa.field("lang_prob", pa.float32())]
    if embed_dim:
        fields.append(pa.field("image_emb", pa.list_(pa.float16(), embed_dim)))
    if pixel_features:
        fields.append(pa.field("pixel_feat", pa.list_(pa.float16(), PIXEL_DIM)))
        fields.append(pa.field("pixel_grid", pa.list_(pa.uint8(), GRID_DIM)))
    return pa.schema(fields)


def _vectors(rows: list, dim: int, dtype=np.float16) -> pa.Array:
    """Per-row (dim,) arrays or None -> a fixed-size list column of `dtype` (null where None)."""
    flat = np.zeros((len(rows), dim), dtype)
    missing = np.ones(len(rows), bool)
    for i, v in enumerate(rows):
        if v is not None:
            flat[i] = v
            missing[i] = False
    values = pa.array(flat.reshape(-1), pa.from_numpy_dtype(dtype))
    return pa.FixedSizeListArray.from_arrays(values, dim, mask=pa.array(missing))


def score_batch(encoder, batch, *, texts: bool = True, lang: bool = False, embeddings: bool = False,
                pixel_features: bool = False, planned: Optional[Sequence[int]] = None) -> pa.Table:
    """The rows of one `ImageBatch` (with `feats`, or `pixels` still to encode) as a table of `schema_for(...)`.

    texts: encode the captions and score each pair (False: image facts only, e.g. for de-duplication).
    lang: add a language guess per caption. embeddings / pixel_features: keep the image embedding / pixel
    descriptor (from `batch.info["pixel_feat"]`) on each sample's first row. planned: the source positions this
    batch was planned with, so the rows of unusable images get their positions too.
    """
    feats = batch.feats if batch.feats is not None else encoder.encode_pixels(batch.pixels)  # (B, D)
    schema = schema_for(lang=lang, embed_dim=encoder.embed_dim if embeddings else None,
                        pixel_features=pixel_features)
    cols: dict[str, list] = {f.name: [] for f in schema}
    pair_rows, pair_owner, pair_texts = [], [], []  # table row, batch row (image) and caption of every pair
    emb_rows, pix_rows, grid_rows = [], [], []
    for b, sid in enumerate(batch.ids):
        info = batch.info[b] if b < len(batch.info) else {}
        caps = batch.captions[b] if texts else []
        w, h = info.get("width"), info.get("height")
        sample = {"id": sid, "position": batch.positions[b], "label": batch.labels[b], "width": w, "height": h,
                  "aspect": (max(w, h) / max(min(w, h), 1)) if w and h else None,
                  "file_bytes": info.get("file_bytes"), "bytes_hash": info.get("bytes_hash"),
                  "pixel_hash": info.get("pixel_hash"), "skip_reason": None}
        for k, cap in enumerate(caps or [None]):
            for name, value in sample.items():
                cols[name].append(value)
            cols["caption_index"].append(k if cap is not None else -1)
            cols["caption"].append(cap)
            cols["score"].append(None)
            facts = caption_facts(cap) if cap is not None else {"caption_chars": None, "caption_words": None}
            for name, value in facts.items():
                cols[name].append(value)
            if cap is not None:
                pair_rows.append(len(cols["id"]) - 1)
                pair_owner.append(b)
                pair_texts.append(cap)
            emb_rows.append(feats[b].numpy() if embeddings and k == 0 else None)
            pix_rows.append(info.get("pixel_feat") if pixel_features and k == 0 else None)
            grid_rows.append(info.get("pixel_grid") if pixel_features and k == 0 else None)
    read = set(batch.positions)
    missing = [p for p in planned if p not in read] if planned is not None else []
    skips = batch.skipped.samples
    for n, (sid, reason) in enumerate(skips):  # unusable images: one row each, with the reason
        for name in cols:
            if name not in ("lang", "lang_prob"):
                cols[name].append(None)
        cols["id"][-1], cols["skip_reason"][-1], cols["caption_index"][-1] = sid, reason, -1
        if len(missing) == len(skips):  # skips are recorded in plan order
            cols["position"][-1] = missing[n]
        emb_rows.append(None)
        pix_rows.append(None)
        grid_rows.append(None)
    if pair_texts:
        txt = encoder.encode_texts(pair_texts)  # (P, D)
        scores = (feats[torch.tensor(pair_owner)] * txt).sum(-1).tolist()
        for r, s in zip(pair_rows, scores):
            cols["score"][r] = float(s)
    if lang:
        guesses = guess_languages([c or "" for c in cols["caption"]])
        cols["lang"] = [g[0] for g in guesses]
        cols["lang_prob"] = [g[1] for g in guesses]
    arrays = []
    for field in schema:
        if field.name == "image_emb":
            arrays.append(_vectors(emb_rows, encoder.embed_dim))
        elif field.name == "pixel_feat":
            arrays.append(_vectors(pix_rows, PIXEL_DIM))
        elif field.name == "pixel_grid":
            arrays.append(_vectors(grid_rows, GRID_DIM, np.uint8))
        else:
            arrays.append(pa.array(cols[field.name], field.type))
    return pa.Table.from_arrays(arrays, schema=schema)
