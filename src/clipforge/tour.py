"""The offline tour behind `clipforge demo`: data -> train -> evaluate -> train on photos -> index -> search.

Everything runs on data that ships inside installed packages (scikit-learn's digits, scikit-image's photos),
so it works on a machine with no network. Each phase prints what it did and where its files are.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from clipforge.atomic import atomic_write_text
from clipforge.output_dirs import claim_output_dir
from clipforge.data.demo_sets import build_digits, build_photos
from clipforge.evaluate.report import write_report
from clipforge.evaluate.results import append_result, make_record
from clipforge.evaluate.zeroshot_classification import evaluate_zeroshot_classification
from clipforge.models import load_model
from clipforge.retrieval.build import build_index
from clipforge.retrieval.index_searcher import IndexSearcher
from clipforge.retrieval.sheet import contact_sheet
from clipforge.train.config import config_from_dict, load_config
from clipforge.train.loop import train

# Text queries for the photo search, worded unlike any of the photo captions the model was trained on, with
# the photo each one is about. (Querying with the training captions themselves would only show memorisation.)
UNSEEN_QUERIES = (
    ("a cup of espresso", "coffee"),
    ("a tabby cat", "chelsea"),
    ("the night sky full of galaxies", "hubble_deep_field"),
    ("a motorbike in a garage", "motorcycle"),
    ("a rocket ready for launch", "rocket"),
)


def _say(msg: str) -> None:
    print(f"\n== {msg}", flush=True)


def _caption(hit) -> str:
    cap = hit.metadata.get("caption") or hit.metadata.get("captions") or ""
    return cap[0] if isinstance(cap, list) and cap else str(cap)


def start_tour(out_dir, overwrite: bool = False):
    """(the output directory, created; the start time; the summary dict) of a tour. `out_dir` must be new, empty
    or an earlier tour's folder (anything else is refused unless `overwrite`); the tour's runs start afresh."""
    out, _ = claim_output_dir(out_dir, "demo-tour", overwrite=overwrite,
                              recognise=lambda p: (p / "data").is_dir() and (p / "runs").is_dir())
    return out, time.perf_counter(), {"out": str(out)}


def run_demo(out_dir, quick: bool = False, overwrite: bool = False) -> dict:
    """Run the whole tour into `out_dir` (`quick`: a few steps per phase, for smoke tests)."""
    out, t_start, summary = start_tour(out_dir, overwrite)

    _say("1/6 demo data (scikit-learn digits, scikit-image photos; no network)")
    digits = build_digits(str(out / "data" / "digits"))
    photos = build_photos(str(out / "data" / "photos"))
    print(f"digits: {digits['num_train']} train / {digits['num_val']} held-out images -> {digits['root']}")
    print(f"photos: {photos.get('num_photos', '?')} photos with hand-written captions -> {photos['root']}")

    _say("2/6 train a tiny CLIP from scratch on digits (the packaged config demo-digits)")
    sets = [f"data.train=jsonl:{digits['train_manifest']}", f"data.val=imagefolder:{digits['val_dir']}",
            f"data.val_classnames={digits['classnames']}", f"data.val_templates={digits['templates_unseen']}"]
    if quick:
        sets += ["run.steps=30", "run.eval_every=0", "run.checkpoint_every=30"]
    cfg = load_config("demo-digits", sets)
    run_dir = out / "runs" / "digits"
    res = train(cfg, run_dir, overwrite=True)  # the tour's own run, started again
    print(f"{res['steps']} steps in {res['train_time_s']} s; final loss {res['final'].get('loss', float('nan')):.3f}"
          f" -> {run_dir}/final (curves: {run_dir}/curves.png)")

    _say("3/6 zero-shot evaluation on held-out digits with prompt templates never seen in training")
    model = load_model(run_dir / "final").eval()
    ev = evaluate_zeroshot_classification(model, f"imagefolder:{digits['val_dir']}",
                                          classnames=digits["classnames"], templates=digits["templates_unseen"],
                                          progress=False)
    m = ev["metrics"]
    print(f"top-1 {m['top1']:.3f}  top-5 {m.get('top5', float('nan')):.3f}  "
          f"mean per-class recall {m['mean_per_class_recall']:.3f}  ({m['n']} images)")
    results = out / "results.jsonl"
    append_result(results, make_record(task="zeroshot-classification", dataset="digits-val",
                                       model=str(run_dir / "final"), metrics=m))
    summary["zeroshot_top1"] = m["top1"]

    _say("4/6 train a second tiny model on the photo captions (its own tokenizer; ~20 s)")
    ft = config_from_dict({
        "model": {"name": "tiny", "tokenizer": "train", "tokenizer_vocab_size": 768,
                  "overrides": {"preprocess": {"per_image_norm": True}}},
        "data": {"train": f"jsonl:{photos['manifest']}", "batch_size": 22},
        "optim": {"lr": 3e-3, "weight_decay": 0.05},
        "schedule": {"warmup_steps": 10},
        "run": {"steps": 20 if quick else 200, "log_every": 20, "checkpoint_every": 1000, "keep_checkpoints": 1,
                "progress": False},
    }).validate()
    ft_dir = out / "runs" / "photos"
    train(ft, ft_dir)

    _say("5/6 index the photos (embeddings + faiss index)")
    index_dir = out / "index-photos"
    info = build_index(f"jsonl:{photos['manifest']}", str(ft_dir / "final"), index_dir, batch_size=32,
                       progress=False)
    print(f"indexed {info.get('count', info.get('num_items', '?'))} photos -> {index_dir}")

    _say("6/6 search by text (phrasings the model never saw) and by image")
    print("Scores are cosine similarities between the query and each photo's embedding (-1..1): they rank the\n"
          "photos of this index for this model, and are not probabilities. A model this small, trained on 88\n"
          "captions, gives its own training captions scores near 0.9 (memorised); new wordings score lower, and\n"
          "the right photo ranks high only where the query shares words and meaning with what it learned.")
    searcher = IndexSearcher(index_dir)
    found = 0
    for query, want in UNSEEN_QUERIES:
        hits = searcher.search(query, k=searcher.stats()["count"])
        names = [Path(h.metadata.get("path") or str(h.id)).stem for h in hits]
        rank = names.index(want) + 1 if want in names else None
        found += rank == 1
        print(f'"{query}"  ({want} is #{rank}):')
        for h in hits[:3]:
            name = Path(h.metadata.get("path") or str(h.id)).name
            print(f"   {h.rank + 1}. {h.score:.3f}  {name:<22} {_caption(h)}"[:110])
    print(f"{found} of {len(UNSEEN_QUERIES)} unseen phrasings put their photo first")
    summary["unseen_queries_first"] = found
    coffee = UNSEEN_QUERIES[0][0]
    contact_sheet(searcher.search(coffee, k=10), out / "sheet-coffee.png", title=f'clipforge search: "{coffee}"',
                  overwrite=True)
    probe = sorted(Path(photos["root"]).rglob("astronaut*.png"))
    if probe:
        hits = searcher.search(image=str(probe[0]), k=3)
        print(f"image query {probe[0].name}: " + ", ".join(Path(h.metadata.get('path', '?')).name for h in hits))
    _, report, _ = write_report(results, out / "report.md", overwrite=True)
    print(f"\ncontact sheet: {out / 'sheet-coffee.png'}   report: {report}")
    print(f"serve it:  clipforge serve {index_dir}   (then open http://127.0.0.1:8000/)")
    print(f"done in {time.perf_counter() - t_start:.0f} s")
    summary.update(index=str(index_dir), run=str(run_dir))
    atomic_write_text(out / "demo-summary.json", json.dumps(summary, indent=2))
    return summary
