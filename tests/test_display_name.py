"""One rule names a model wherever a person sees it: a run's checkpoint by its run, never as `final`."""

import json

from clipforge.evaluate.report import _panels, markdown_report, model_names
from clipforge.evaluate.results import make_record
from clipforge.models.display_name import display_name
from clipforge.serve.public import public_stats


def test_run_checkpoints_are_named_by_their_run(tmp_path):
    assert display_name("/home/me/runs/digits-resnet/final") == "digits-resnet"
    assert display_name("runs/digits/final/") == "digits"
    assert display_name("/home/me/runs/digits/checkpoints/step-00000120") == "digits@step-00000120"
    assert display_name("/srv/models/my-clip") == "my-clip"
    assert display_name("C:\\runs\\photos\\final") == "photos"
    for ref in ("tiny", "tiny-resnet", "hf:openai/clip-vit-base-patch32", "open_clip:ViT-B-32"):
        assert display_name(ref) == ref
    assert display_name("hf:/srv/models/run7/final") == "hf:run7"
    named = tmp_path / "runs" / "x" / "final"
    named.mkdir(parents=True)
    (named / "config.json").write_text(json.dumps({"format": "clipforge", "name": "digits, 5 epochs"}))
    assert display_name(named) == "digits, 5 epochs"


def test_stats_and_report_show_the_run_not_final():
    stats = {"model": "/srv/runs/photos-v2/final", "source": "files:/srv/photos", "columns": [],
             "rerank": {"model": "/srv/runs/rr/final", "index": "/srv/idx"}}
    pub = public_stats(stats)
    assert pub["model"] == "photos-v2" and pub["rerank"]["model"] == "rr" and pub["source"] == "files:photos"
    recs = [make_record(f"/home/u/runs/{run}/final", "/data/digits/val", "zeroshot-classification", {"top1": v})
            for run, v in (("digits-a", 0.5), ("digits-b", 0.7))]
    md = markdown_report(recs)
    assert "| digits-a | 0.5000 |" in md and "| digits-b | 0.7000 |" in md
    assert _panels(recs) == {"zeroshot-classification (top1)": {"val": {"digits-a": 0.5, "digits-b": 0.7}}}
    # two references that would be shown alike keep the part of their paths that tells them apart
    assert model_names(["/a/runs/digits/final", "/b/runs/digits/final", "tiny"]) == {
        "/a/runs/digits/final": "a/runs/digits/final", "/b/runs/digits/final": "b/runs/digits/final", "tiny": "tiny"}


def test_fewshot_table_has_model_dataset_method_and_k():
    recs = [make_record("/runs/d/final", "/data/val", "few-shot", {"top1": 0.1 * k, "top1_std": 0.01},
                        config={"task": "few-shot", "method": method, "k_shot": k, "seeds": [0, 1, 2]})
            for method in ("linear-probe", "tip-adapter") for k in (1, 4)]
    md = markdown_report(recs)
    assert "| model | dataset | method | k (shots) | top-1 | seeds |" in md
    assert "| d | /data/val | tip-adapter | 4 | 0.4000 ± 0.0100 | 3 |" in md
    assert "| d | /data/val | linear-probe | 1 | 0.1000 ± 0.0100 | 3 |" in md
