"""The pretrained tour behind `clipforge demo` with its pretrained flag: align two pretrained encoders, then classify and
search with concepts and phrasings the alignment never saw.

EfficientNet-Lite0 (ImageNet) and all-MiniLM-L6-v2 ship inside PyPI packages; their projection heads are
trained on the emoji set's training concepts (Twemoji art, CLDR names) from a feature cache, and the result is
measured zero-shot on the held-out concepts with unseen prompts, then used to search scikit-image's photos
(a domain the heads never saw) with the same unseen phrasings the from-scratch tour uses.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from clipforge.atomic import atomic_write_text
from clipforge.data.demo_emoji import build_emoji
from clipforge.data.demo_sets import build_photos
from clipforge.evaluate.zeroshot_classification import evaluate_zeroshot_classification
from clipforge.models import load_model
from clipforge.retrieval.build import build_index
from clipforge.retrieval.index_searcher import IndexSearcher
from clipforge.retrieval.sheet import contact_sheet
from clipforge.tour import UNSEEN_QUERIES, _say, start_tour
from clipforge.train.config import load_config
from clipforge.train.loop import train
from clipforge.zeroshot.predict import classify

PHOTO_LABELS = ("a cat", "a cup of coffee", "a rocket", "an astronaut", "a horse", "a motorcycle",
                "a cameraman", "coins", "the moon", "a ship", "a chessboard", "a page of text")


def _alignment_manifest(path: Path, *manifests) -> Path:
    """One JSONL of several manifests' rows, image paths made absolute (each manifest's are its own)."""
    rows = []
    for m in manifests:
        for line in Path(m).read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                row["image"] = str((Path(m).parent / row["image"]).resolve())
                rows.append(json.dumps(row))
    atomic_write_text(path, "\n".join(rows) + "\n")
    return path


def run_pretrained_demo(out_dir, quick: bool = False, overwrite: bool = False) -> dict:
    """Align, evaluate and search into `out_dir` (`quick`: fewer images and steps, for smoke tests)."""
    out, t0, summary = start_tour(out_dir, overwrite)

    _say("1/5 real image-text pairs from installed packages: Twemoji art named by Unicode CLDR names")
    emoji = build_emoji(str(out / "data" / "emoji"), max_per_concept=1, limit=300 if quick else None)
    photos = build_photos(str(out / "data" / "photos"))
    print(f"emoji: {emoji['num_train']} training images of {emoji['num_train_concepts']} concepts; "
          f"{emoji['num_val']} held-out images of {emoji['num_heldout_concepts']} concepts never seen in alignment")

    _say("2/5 align EfficientNet-Lite0 (ImageNet) and all-MiniLM-L6-v2: both locked, only the heads train")
    manifest = _alignment_manifest(out / "data" / "align.jsonl", emoji["train_manifest"], photos["manifest"])
    print(f"alignment pairs: the emoji training concepts + the {photos.get('num_photos', '?')} captioned photos "
          "(the search queries below use other words)")
    sets = [f"data.train=jsonl:{manifest}", f"data.val=imagefolder:{emoji['val_dir']}",
            f"data.val_templates={emoji['templates_unseen']}", "run.progress=false", "run.eval_every=0",
            f"run.steps={100 if quick else 500}", f"run.checkpoint_every={100 if quick else 500}",
            f"data.batch_size={64 if quick else 256}"]
    run_dir = out / "runs" / "align"
    res = train(load_config("pretrained-align", sets), run_dir, overwrite=True)  # the tour's own run
    summary["train_time_s"] = res["train_time_s"]
    print(f"{res['steps']} steps on cached features in {res['train_time_s']} s -> {run_dir}/final")

    _say("3/5 zero-shot on held-out emoji concepts, with prompts never seen in alignment")
    model = load_model(run_dir / "final").eval()
    ev = evaluate_zeroshot_classification(model, f"imagefolder:{emoji['val_dir']}",
                                          templates=emoji["templates_unseen"], progress=False)
    m = ev["metrics"]
    chance = 1 / ev["num_classes"]
    print(f"top-1 {m['top1']:.3f}  top-5 {m.get('top5', float('nan')):.3f} over {ev['num_classes']} unseen "
          f"concepts (chance {chance:.4f}: {m['top1'] / chance:.0f}x)")
    summary.update(zeroshot_top1=m["top1"], zeroshot_top5=m.get("top5"), num_classes=ev["num_classes"])

    _say("4/5 index scikit-image's photos (a domain the heads never saw) and search them")
    index_dir = out / "index-photos"
    build_index(f"jsonl:{photos['manifest']}", str(run_dir / "final"), index_dir, batch_size=16, progress=False)
    searcher = IndexSearcher(index_dir)
    n = searcher.stats()["count"]
    ranks = {}
    for query, want in UNSEEN_QUERIES:
        hits = searcher.search(query, k=n)
        names = [Path(h.metadata.get("path") or str(h.id)).stem for h in hits]
        ranks[query] = names.index(want) + 1 if want in names else None
        top = ", ".join(f"{nm} {h.score:.2f}" for nm, h in zip(names[:3], hits[:3]))
        print(f'"{query}": {want} ranks #{ranks[query]} of {n}   (top: {top})')
    summary["query_ranks"] = ranks
    contact_sheet(searcher.search(UNSEEN_QUERIES[0][0], k=8), out / "sheet-pretrained.png",
                  title=f'clipforge (pretrained) search: "{UNSEEN_QUERIES[0][0]}"', overwrite=True)

    _say("5/5 zero-shot labels for the photos")
    probe = sorted(Path(photos["root"]).rglob("*.png"))[:8]
    for pred in classify(model, [str(x) for x in probe], list(PHOTO_LABELS), k=2, progress=False):
        print(f"{Path(pred.id).name:<24} -> {pred.labels[0]} ({pred.scores[0]:.2f}), then {pred.labels[1]}")
    print(f"\ncontact sheet: {out / 'sheet-pretrained.png'}   model: {run_dir / 'final'}")
    print(f"serve it:  clipforge serve {index_dir}   (then open http://127.0.0.1:8000/)")
    summary["total_s"] = round(time.perf_counter() - t0, 1)
    print(f"done in {summary['total_s']:.0f} s")
    atomic_write_text(out / "demo-pretrained-summary.json", json.dumps(summary, indent=2))
    return summary
