"""Which model a head belongs to: recorded with every head clipforge fits, checked wherever a head is used.

A head (zero-shot or few-shot) is a set of vectors in one model's embedding space. Used with another model it
still returns labels, just wrong ones, so a head records its model's identity in `meta["model"]`:

    {"name": "runs/digits/final", "dim": 64, "probe_version": 1, "probe": [[...], ...]}   # (5, D) floats

`probe` is the model's own normalised embeddings of a fixed probe (`PROBE_TEXTS` through its tokenizer, two
fixed synthetic images through its preprocessing): one small batch per tower, so cheap to compute at every
use. A hash of the weights would be exact but is neither cheap (every tensor read) nor stable: a bf16 or int8
run of the same model changes every byte. The probe is compared by cosine similarity instead; the same model
measured >= 0.999 per probe vector under bf16/fp16, ONNX Runtime and OpenVINO (fp32 and dynamic int8) on the
tiny model, and ~0.9926 at worst (int8, ONNX Runtime) in docs/bench_int8.md, while two differently initialised
models gave -0.16..0.20. `MIN_COSINE` (0.98) sits between. A model given noise of 1% of each tensor's std
still passes (probe cosine 0.9995): it embeds alike, so its head still fits it.

`check_head_model` refuses a head whose recorded model differs from the one it runs on (one line naming both)
unless `allow_other_model`; a head saved before heads recorded their model (no `meta["model"]`) warns when
loaded (`warn_unrecorded`) and is used as it is.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from clipforge.encode import as_encoder
from clipforge.errors import UsageError

__all__ = ["PROBE_TEXTS", "MIN_COSINE", "model_identity", "record_model", "check_head_model", "warn_unrecorded"]

PROBE_VERSION = 1
PROBE_TEXTS = ("a photo of a dog", "a red bicycle on a street", "0123456789")
MIN_COSINE = 0.98
_DECIMALS = 5  # normalised components are ~1/sqrt(D); 5 decimals keep the cosine exact to ~1e-5


def _probe_images() -> list[Image.Image]:
    """Two fixed 96x96 RGB images with smooth structure (resizing them is well conditioned in any library)."""
    yy, xx = np.mgrid[0:96, 0:96] / 95.0
    a = np.stack([xx, yy, 0.5 + 0.5 * np.sin(6 * np.pi * xx * yy)], -1)
    b = np.stack([0.5 + 0.5 * np.cos(4 * np.pi * yy), 1 - xx, (xx + yy) / 2], -1)
    return [Image.fromarray((im * 255).round().astype(np.uint8)) for im in (a, b)]


def _probe(encoder) -> torch.Tensor:
    """(5, D): the encoder's normalised embeddings of the probe texts, then the probe images."""
    with torch.no_grad():
        t = encoder.encode_texts(list(PROBE_TEXTS))
        i = encoder.encode_images(_probe_images())
    return F.normalize(torch.cat([t, i]).float(), dim=-1)


def model_name(encoder) -> str:
    """How messages name the model: its reference when the encoder knows it, else its config's name."""
    ref = getattr(encoder, "ref", None)
    if ref:
        return str(ref)
    config = getattr(encoder.model, "config", None)
    return getattr(config, "name", None) or type(encoder.model).__name__


def model_identity(model) -> dict:
    """The identity a head records for `model` (a loaded model or an `Encoder`): name, dimension, probe."""
    encoder = as_encoder(model)
    p = _probe(encoder)
    return {"name": model_name(encoder), "dim": int(p.shape[1]), "probe_version": PROBE_VERSION,
            "probe": [[round(float(v), _DECIMALS) for v in row] for row in p.tolist()]}


def record_model(head, model) -> None:
    """Record `model`'s identity in `head.meta["model"]` (saved with the head; `check_head_model` reads it)."""
    meta = getattr(head, "meta", None)
    if isinstance(meta, dict):
        meta["model"] = model_identity(model)


def _cosines(recorded: dict, encoder) -> tuple[torch.Tensor | None, int]:
    """(per-probe cosine of the recorded probe with this model's, this model's dimension); None when the
    dimensions or the probe versions differ (nothing to compare)."""
    now = _probe(encoder)
    probe = recorded.get("probe")
    if recorded.get("probe_version") != PROBE_VERSION or not isinstance(probe, list):
        return None, int(now.shape[1])
    try:
        old = torch.tensor(probe, dtype=torch.float32)
    except (TypeError, ValueError):
        return None, int(now.shape[1])
    if old.shape != now.shape:
        return None, int(now.shape[1])
    return F.cosine_similarity(old, now, dim=-1), int(now.shape[1])


def check_head_model(head, model, *, allow_other_model: bool = False) -> None:
    """Refuse to use `head` with `model` (a loaded model or an `Encoder`) when the head records another model.

    A head without a record (built in memory from plain texts, or saved by an older clipforge: `warn_unrecorded`
    says so when it is loaded) is not checked. `allow_other_model` turns a refusal into a warning.
    """
    recorded = (getattr(head, "meta", None) or {}).get("model")
    if not isinstance(recorded, dict):
        return
    encoder = as_encoder(model)
    cos, dim = _cosines(recorded, encoder)
    if cos is not None and float(cos.min()) >= MIN_COSINE:
        return
    theirs, ours = str(recorded.get("name") or "an unnamed model"), model_name(encoder)
    if cos is None:
        how = f"its {recorded.get('dim', '?')}-d embeddings against this model's {dim}-d"
    else:
        how = f"probe embeddings agree to cosine {float(cos.min()):.2f} < {MIN_COSINE}"
    msg = f"the head was fitted on model {theirs!r}, not on {ours!r} ({how})"
    if allow_other_model:
        warnings.warn(f"{msg}: using it anyway (`allow_other_model`)", stacklevel=2)
        return
    raise UsageError(f"{msg}: use it with its own model, fit it again on this one, or pass `allow_other_model` "
                     "to use it anyway")


def warn_unrecorded(meta, where) -> None:
    """Warn (once per head file) that a saved head records no model, so its model cannot be checked."""
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
        warnings.warn(f"{where} records no model (saved by an older clipforge, or built without one): it cannot be checked against "
                      "the model it runs on; fit it again with `save_head` to record it", stacklevel=3)
