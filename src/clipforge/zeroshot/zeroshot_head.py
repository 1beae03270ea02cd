"""Linear zero-shot heads built from a text encoder: prompt ensembles ("mean") and CuPL descriptions ("cupl").

Everything works on an `encode_text(list[str]) -> (N, D)` callable, so heads can be built from any model
(`model_text_encoder(model)` wraps a clipforge model or `Encoder`) or from synthetic embeddings in tests. All texts for
all classes are flattened into one list and encoded in batches of `batch_size` (1,000 classes x 80
templates = 80,000 texts is ~79 calls of 1,024), then averaged per class with one `index_add_`.

Mean ensemble: class vector = normalise(mean over its texts of normalise(text embedding)).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from safetensors.torch import load_file, save_file

from clipforge.atomic import atomic_write_path, atomic_write_text
from clipforge.encode import as_encoder
from clipforge.errors import ClipforgeError, UsageError
from clipforge.json_file import read_json_file
from clipforge.output_dirs import OutputFile
from clipforge.progress import Progress
from clipforge.registry import Option
from clipforge.zeroshot.cupl import cupl_groups, load_descriptions
from clipforge.zeroshot.head_model import warn_unrecorded
from clipforge.zeroshot.methods import DESCRIPTIONS, METHODS, TEMPLATES, ZeroShotMethod
from clipforge.zeroshot.templates import fill, get_templates, templates_hash

__all__ = ["ZeroShotHead", "build_classifier", "encode_groups", "encode_prompt_matrix", "model_text_encoder",
           "MeanMethod", "CuplMethod", "encode_normalized"]

EncodeText = Callable[[list[str]], torch.Tensor]
HEAD_METHODS = ("mean", "cupl")


@dataclass
class ZeroShotHead:
    """A linear zero-shot classifier: `logits = logit_scale * normalise(image) @ weights.T`."""

    weights: torch.Tensor  # (C, D)
    classnames: list[str]
    logit_scale: float = 100.0
    meta: dict = field(default_factory=dict)  # method, templates hash, counts, model ... (JSON-serialisable)

    def __post_init__(self):
        if self.weights.ndim != 2 or self.weights.shape[0] != len(self.classnames):
            raise UsageError(f"weights {tuple(self.weights.shape)} do not match {len(self.classnames)} class names")

    def scores(self, image_feats: torch.Tensor) -> torch.Tensor:
        """(N, D) image features -> (N, C) logits (the `Scorer` interface)."""
        return self.logits(image_feats)

    def logits(self, image_feats: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(N, D) image features -> (N, C) logits."""
        f = torch.as_tensor(image_feats).to(self.weights.dtype)
        if normalize:
            f = F.normalize(f, dim=-1)
        return self.logit_scale * f @ self.weights.T

    def probs(self, image_feats: torch.Tensor) -> torch.Tensor:
        return self.logits(image_feats).softmax(-1)

    def topk(self, image_feats: torch.Tensor, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
        """(probabilities, class indices), each (N, min(k, C)), best first."""
        return self.probs(image_feats).topk(min(k, len(self.classnames)), dim=-1)

    def save(self, path, *, overwrite: bool = False) -> Path:
        """Write `<path>.safetensors` (weights) and `<path>.json` (class names, scale, meta), atomically; an
        earlier head there is replaced, anything else only with `overwrite` (`head_output`)."""
        st, side, output = head_output(path, overwrite=overwrite)
        st.parent.mkdir(parents=True, exist_ok=True)
        info = {"classnames": self.classnames, "logit_scale": self.logit_scale, "meta": self.meta}
        atomic_write_path(st, lambda tmp: save_file({"weights": self.weights.contiguous().float()}, tmp),
                          output=output)
        atomic_write_text(side, json.dumps(info, indent=1, ensure_ascii=False), output=output)
        return st

    @classmethod
    def load(cls, path) -> "ZeroShotHead":
        path = Path(path)
        st = path if path.suffix == ".safetensors" else path.with_name(path.name + ".safetensors")
        side = st.with_suffix(".json")
        if not st.is_file() or not side.is_file():
            raise ClipforgeError(f"zero-shot head not found: need {st} and {side}")
        info = json.loads(side.read_text(encoding="utf-8"))
        warn_unrecorded(info.get("meta"), f"head {st.with_suffix('')}")
        return cls(load_file(str(st))["weights"], info["classnames"], info["logit_scale"], info.get("meta", {}))


def head_paths(path) -> tuple[Path, Path]:
    """(`<path>.safetensors`, `<path>.json`): the two files of a saved head (zero-shot or few-shot)."""
    path = Path(path)
    st = path if path.suffix == ".safetensors" else path.with_name(path.name + ".safetensors")
    return st, st.with_suffix(".json")


def _is_head_file(p: Path) -> bool:
    """True when `p` (either file of a pair) belongs to a head clipforge saved: its JSON names class names."""
    try:
        info = read_json_file(head_paths(p.with_suffix(""))[1], max_bytes=256 << 20)
    except ClipforgeError:  # missing, unreadable or not JSON: not a head
        return False
    return isinstance(info, dict) and isinstance(info.get("classnames"), list)


def head_output(path, *, overwrite: bool = False, param: str = "path") -> tuple[Path, Path, OutputFile]:
    """Vet both files of a head to be saved at `path` before anything is computed: an earlier head there is
    replaced; another file only with `overwrite`; a folder, link, device or FIFO never."""
    st, side = head_paths(path)
    output = OutputFile(overwrite=overwrite, param=param, owned=_is_head_file)
    output.vet(st)
    output.vet(side)
    return st, side, output


def encode_normalized(encode_text: EncodeText, texts: list[str], batch_size: int, progress) -> torch.Tensor:
    """Encode texts in batches and L2-normalise.  # (T, D)"""
    chunks = []
    with Progress(len(texts), desc="encoding prompts", unit="text", progress=progress) as bar:
        for i in range(0, len(texts), batch_size):
            emb = torch.as_tensor(encode_text(texts[i : i + batch_size])).detach().float().cpu()
            chunks.append(F.normalize(emb, dim=-1))
            bar.update(len(emb))
    return torch.cat(chunks)


def encode_groups(
    encode_text: EncodeText, groups: Sequence[Sequence[str]], batch_size: int = 1024, progress=None
) -> torch.Tensor:
    """One vector per group: normalise(mean of normalised embeddings of the group's texts).  # (G, D)

    Every text has the same weight within its group. Groups must be non-empty.
    """
    empty = [i for i, g in enumerate(groups) if len(g) == 0]
    if empty:
        raise UsageError(f"{len(empty)} class(es) have no prompt text, e.g. index {empty[0]}")
    texts = [t for g in groups for t in g]
    owner = torch.repeat_interleave(torch.arange(len(groups)), torch.tensor([len(g) for g in groups]))
    emb = encode_normalized(encode_text, texts, batch_size, progress)  # (T, D)
    sums = torch.zeros(len(groups), emb.shape[1]).index_add_(0, owner, emb)
    return F.normalize(sums, dim=-1)  # normalising the sum == normalising the mean


def encode_prompt_matrix(
    encode_text: EncodeText, classnames: Sequence[str], templates: Sequence[str], batch_size: int = 1024,
    progress=None,
) -> torch.Tensor:
    """Normalised embedding of every (template, class) prompt.  # (P, C, D)"""
    texts = [fill(t, c) for t in templates for c in classnames]
    emb = encode_normalized(encode_text, texts, batch_size, progress)
    return emb.reshape(len(templates), len(classnames), -1)


def build_classifier(
    encode_text: EncodeText,
    classnames: Sequence[str],
    templates=None,
    method: str = "mean",
    descriptions: dict[str, list[str]] | str | os.PathLike | None = None,
    pool_templates: bool = False,
    batch_size: int = 1024,
    logit_scale: float = 100.0,
    progress=None,
) -> ZeroShotHead:
    """Build a zero-shot head.

    method="mean": class vector from the template ensemble (`templates`: a set name, a file, or a list;
    default OpenAI's 80). method="cupl": class vector from the class's description sentences
    (`descriptions`: a dict or a CuPL JSON path), pooled with its template prompts when `pool_templates`,
    every text weighted equally. ZPE needs image features and lives in `clipforge.zeroshot.zpe`.
    `progress`: True/False to force the progress bar on/off; None shows it only on a TTY.
    """
    classnames = [str(c) for c in classnames]
    if not classnames:
        raise UsageError("no class names given")
    if len(set(classnames)) != len(classnames):
        raise UsageError("class names must be unique")
    if method not in HEAD_METHODS:
        raise UsageError(f"`method` {method!r} does not build a head from texts alone; choose from "
                         f"{', '.join(HEAD_METHODS)} (ZPE: clipforge.zeroshot.zpe.build_zpe_classifier)")
    tmpl = get_templates(templates)
    meta = {"method": method, "n_templates": len(tmpl), "templates_hash": templates_hash(tmpl)}
    if method == "mean":
        groups = [[fill(t, c) for t in tmpl] for c in classnames]
    else:
        if descriptions is None:
            raise UsageError("method 'cupl' needs `descriptions` (a {class: [sentences]} dict or JSON file)")
        desc = descriptions if isinstance(descriptions, dict) else load_descriptions(descriptions)
        groups = cupl_groups(classnames, desc, tmpl if pool_templates else None)
        meta.update(pool_templates=pool_templates, n_descriptions=sum(len(g) for g in groups))
        if not pool_templates:
            meta.pop("n_templates"), meta.pop("templates_hash")
    weights = encode_groups(encode_text, groups, batch_size, progress)
    return ZeroShotHead(weights, classnames, logit_scale, meta)


def model_text_encoder(model, batch_size: int = 256) -> EncodeText:
    """Wrap a clipforge model (as it is) or an `Encoder` as an `encode_text(list[str]) -> (N, D)` callable."""
    encoder = as_encoder(model)

    def encode(texts: list[str]) -> torch.Tensor:
        return encoder.encode_texts(texts, batch_size)

    return encode


@METHODS.register("mean")
class MeanMethod(ZeroShotMethod):
    """Prompt ensemble: class vector = normalised mean of its normalised template prompts (CLIP)."""

    options = (TEMPLATES,)
    linear = True

    def build(self, encoder, classnames, *, test_features=None, batch_size=256, workers=0, progress=None):
        return build_classifier(model_text_encoder(encoder, batch_size), classnames, self.templates,
                                progress=progress)


@METHODS.register("cupl")
class CuplMethod(ZeroShotMethod):
    """CuPL: class vector from its description sentences, optionally pooled with its template prompts."""

    options = (TEMPLATES, DESCRIPTIONS,
               Option("pool_templates", bool, False, help="cupl: pool the descriptions with the template prompts"))
    linear = True

    def build(self, encoder, classnames, *, test_features=None, batch_size=256, workers=0, progress=None):
        return build_classifier(model_text_encoder(encoder, batch_size), classnames, self.templates, method="cupl",
                                descriptions=self.descriptions, pool_templates=self.pool_templates,
                                progress=progress)
