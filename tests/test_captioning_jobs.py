"""Captioning from the CLI, the eval task, recaptioning a source (resumable) and POST /caption."""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from clipforge.cli import main
from clipforge.curate.recaption import recaption_source
from clipforge.data.sources import open_source
from clipforge.encode.captioner import Captioner
from clipforge.errors import UsageError
from clipforge.evaluate import TASKS
from clipforge.evaluate.captioning import evaluate_captioning
from clipforge.models import create_model

FAST = dict(method="greedy", max_tokens=2)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("cap")
    rows = []
    for i, colour in enumerate(("red", "green", "blue", "white", "black")):
        Image.new("RGB", (36, 36), colour).save(d / f"{colour}.png")
        rows.append({"id": colour, "image": f"{colour}.png", "captions": [f"a {colour} square", f"{colour}"],
                     "label": i})
    (d / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


@pytest.fixture(scope="module")
def captioner():
    torch.manual_seed(0)
    return Captioner(create_model("coca-tiny"), ref="coca-tiny")


def test_cli_caption_json(images, capsys):
    files = [str(images / "red.png"), str(images / "blue.png"), str(images / "missing.png")]
    assert main(["caption", *files, "--model", "coca-tiny", "--method", "greedy", "--max-tokens", "2",
                 "--json"]) == 0
    out = capsys.readouterr()
    rows = json.loads(out.out)
    assert [Path(r["image"]).name for r in rows] == ["red.png", "blue.png"]
    assert all(isinstance(r["caption"], str) for r in rows) and "missing.png" in out.err
    assert main(["caption", files[0], "--model", "tiny"]) == 2
    assert "caption decoder" in capsys.readouterr().err


def test_captioning_task_scores_against_every_reference(images, captioner):
    assert "captioning" in TASKS.names()
    res = evaluate_captioning(captioner, f"jsonl:{images / 'pairs.jsonl'}", examples=2, **FAST)
    assert res["num_images"] == 5 and res["num_references"] == 10 and len(res["examples"]) == 2
    assert set(res["metrics"]) == {"bleu_1", "bleu_2", "bleu_3", "bleu_4", "cider"}


def test_recaption_writes_a_source_and_resumes(images, captioner, tmp_path):
    src = open_source(f"jsonl:{images / 'pairs.jsonl'}")
    out = tmp_path / "recap"
    s = recaption_source(src, captioner, out, part_size=2, batch_size=2, progress=False, **FAST)
    assert s["samples"] == 5 and s["captioned_now"] == 5 and s["parts"] == 3
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["red", "green", "blue", "white", "black"]
    assert all(r["captions"] == r["original_captions"] + [r["synthetic_caption"]] * bool(r["synthetic_caption"].strip())
               for r in rows)
    assert s["empty_synthetic"] == sum(not r["synthetic_caption"].strip() for r in rows)
    back = open_source(s["spec"])
    assert len(back) == 5 and back[0].captions == rows[0]["captions"] and Path(back[0].path).is_file()
    # a job killed after its first part: the re-run captions only the parts not listed as done
    job = json.loads((out / "job.json").read_text())
    (out / "job.json").write_text(json.dumps({**job, "done": [0]}))
    (out / "summary.json").unlink()
    again = recaption_source(src, captioner, out, part_size=2, batch_size=2, progress=False, **FAST)
    assert again["captioned_now"] == 3 and (out / "samples.jsonl").read_text().splitlines() == \
        [json.dumps(r, ensure_ascii=False) for r in rows]
    with pytest.raises(UsageError, match="another source, model or setting"):
        recaption_source(src, captioner, out, part_size=2, order="synthetic", progress=False, **FAST)


def _b64(path) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode()


def test_post_caption(images, photos_index, tmp_path):
    from fastapi.testclient import TestClient

    from clipforge.retrieval.build import build_index
    from clipforge.serve.app import create_app

    img = _b64(images / "red.png")
    clip_app = TestClient(create_app(photos_index, reload_interval=None))
    r = clip_app.post("/caption", json={"image": img})
    assert r.status_code == 422 and "cannot caption" in r.json()["error"]["message"]
    build_index(f"jsonl:{images / 'pairs.jsonl'}", "coca-tiny", tmp_path / "idx", batch_size=8, progress=False)
    app = TestClient(create_app(tmp_path / "idx", reload_interval=None))
    r = app.post("/caption", json={"image": img, "method": "greedy", "max_tokens": 2})
    assert r.status_code == 200 and isinstance(r.json()["caption"], str)
    assert app.post("/caption", json={"image": img, "max_tokens": 10_000}).status_code == 422
    assert app.post("/caption", json={"image": "bm90IGFuIGltYWdl"}).status_code == 400
    # the page's caption button: an indexed item by id, offered only when /stats says the model can caption
    assert app.get("/stats").json()["can_caption"] is True and clip_app.get("/stats").json()["can_caption"] is False
    by_id = app.post("/caption", json={"id": 0, "method": "greedy", "max_tokens": 2})
    upload = app.post("/caption", json={"image": _b64(images / "red.png"), "method": "greedy", "max_tokens": 2})
    assert by_id.status_code == 200 and by_id.json()["caption"] == upload.json()["caption"]  # item 0 is red.png
    assert app.post("/caption", json={"id": 10**6}).status_code == 404
    assert app.post("/caption", json={"id": 0, "image": img}).status_code == 422  # exactly one of the two
