"""Adaptation from the command line: few-shot classify (fit, save, reuse the head), the few-shot eval protocol
and its report, and `clipforge adapt info / merge / export` on an adapter directory."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from clipforge.cli import main
from clipforge.models import create_model, load_model
from clipforge.models.adapter import save_adapter
from clipforge.models.lora import LoRAConfig, apply_lora, lora_modules


def _preds(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


def test_classify_few_shot_fits_saves_and_reuses_its_head(ckpt, digits_demo, tmp_path, capsys):
    val = digits_demo["val_dir"]
    test_imgs = sorted(str(p) for p in Path(val, "3").iterdir())[:4]
    head = tmp_path / "tip"
    rc = main(["classify", "-m", ckpt, "--method", "tip-adapter", "--support", f"imagefolder:{val}",
               "--shots", "2", "--templates", "photo", "--search-steps", "5", "--save-head", str(head),
               "-k", "3", "--out", str(tmp_path / "a.jsonl"), *test_imgs])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "fitted tip-adapter on 20 support images (10 classes)" in err
    a = _preds(tmp_path / "a.jsonl")
    assert len(a) == 4 and all(len(p["labels"]) == 3 for p in a)
    # the saved head gives the same predictions without the support set or class names
    assert main(["classify", "-m", ckpt, "--head", str(head), "-k", "3", "--out", str(tmp_path / "b.jsonl"),
                 *test_imgs]) == 0
    b = _preds(tmp_path / "b.jsonl")
    assert [p["labels"] for p in a] == [p["labels"] for p in b]
    assert all(p["scores"] == pytest.approx(q["scores"], abs=1e-5) for p, q in zip(a, b))


@pytest.mark.parametrize("extra, needle", [
    (["--labels", "a,b", "--support", "x"], "--support needs a few-shot method"),
    (["--method", "tip-adapter"], "give --support SRC"),
    (["--labels", "a,b", "--shots", "2"], "--shots applies to few-shot methods"),
    (["--method", "gist", "--support", "SUPPORT"], "--descriptions"),
    (["--method", "coop", "--support", "SUPPORT", "--search-steps", "3"], "--search-steps"),
])
def test_classify_few_shot_bad_flags_name_the_flag(ckpt, digits_demo, capsys, extra, needle):
    extra = [f"imagefolder:{digits_demo['val_dir']}" if e == "SUPPORT" else e for e in extra]
    img = str(next(Path(digits_demo["val_dir"], "0").iterdir()))
    rc = main(["classify", "-m", ckpt, *extra, img])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err, err


def test_eval_few_shot_protocol_and_report_curves(ckpt, digits_demo, tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    rc = main(["eval", "-m", ckpt, "--task", "few-shot", "--dataset", f"imagefolder:{digits_demo['val_dir']}",
               "--test-fraction", "0.5", "--methods", "zero-shot,tip-adapter", "--shots", "1,2", "--seeds", "2",
               "--templates", "photo", "--search-steps", "5", "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(r["config"]["method"], r["config"]["k_shot"]) for r in recs] == [
        ("zero-shot", 1), ("zero-shot", 2), ("tip-adapter", 1), ("tip-adapter", 2)]
    assert all(r["task"] == "few-shot" and len(r["metrics"]["top1_per_seed"]) == 2 for r in recs)
    assert "tip-adapter k=2" in printed
    assert main(["report", str(out), "--out", str(tmp_path / "rep.md")]) == 0
    md = (tmp_path / "rep.md").read_text()
    assert (tmp_path / "rep-shots.png").is_file() and "rep-shots.png" in md
    mean = recs[3]["metrics"]["top1"]
    # the few-shot table: one row per model, dataset, method and k, with top-1 mean ± std over the seeds
    row = next(line for line in md.splitlines() if "| tip-adapter | 2 |" in line and f"{mean:.4f}" in line)
    assert "±" in row


def _adapter(base: str, out: Path) -> Path:
    model = load_model(base)
    apply_lora(model, LoRAConfig(rank=2, targets=("attn.qkv", "mlp.fc")))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.2)
    return save_adapter(model, out, base_model=base)


def test_adapt_info_merge_export(tmp_path, capsys):
    torch.manual_seed(0)  # a tiny model in the shape transformers' CLIPModel has, so its base exports to HF
    ckpt = str(create_model("tiny", vision={"pool": "cls", "act": "quick_gelu"}, text={"act": "quick_gelu"})
               .save_pretrained(tmp_path / "base"))
    adapter_dir = _adapter(ckpt, tmp_path / "adapter")
    assert main(["adapt", "info", str(adapter_dir)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["lora"]["rank"] == 2 and info["base_model"] == ckpt
    assert main(["adapt", "merge", f"{ckpt}+{adapter_dir}", "--out", str(tmp_path / "merged")]) == 0
    px = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = load_model(str(adapter_dir)).eval().encode_image(px)
        got = load_model(str(tmp_path / "merged")).eval().encode_image(px)
        plain = load_model(ckpt).eval().encode_image(px)
    assert (got - want).abs().max() <= 1e-5 and (plain - want).abs().max() > 1e-3
    assert main(["adapt", "export", str(adapter_dir), "--to", "peft", "--out", str(tmp_path / "peft"),
                 "--base-out", str(tmp_path / "hf")]) == 0
    cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 2 and cfg["base_model_name_or_path"] == str(tmp_path / "hf")
    assert (tmp_path / "peft" / "adapter_model.safetensors").is_file() and (tmp_path / "hf" / "config.json").is_file()


def test_adapt_export_of_a_base_transformers_cannot_hold_writes_nothing(ckpt, tmp_path, capsys):
    adapter_dir = _adapter(ckpt, tmp_path / "adapter")  # the default tiny pools by argmax: no HF CLIPModel
    assert main(["adapt", "export", str(adapter_dir), "--to", "peft", "--out", str(tmp_path / "peft"),
                 "--base-out", str(tmp_path / "hf")]) == 2
    assert "vision.pool=cls" in capsys.readouterr().err
    assert not (tmp_path / "peft").exists() and not (tmp_path / "hf").exists()


def test_adapt_merge_refuses_a_model_without_adapter(ckpt, tmp_path, capsys):
    assert main(["adapt", "merge", ckpt, "--out", str(tmp_path / "m")]) == 2
    assert "carries no adapter" in capsys.readouterr().err
