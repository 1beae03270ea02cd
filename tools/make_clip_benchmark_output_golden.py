"""Write tests/golden/clip_benchmark_output.json: the files CLIP_benchmark's `clip_benchmark eval` writes (name
and JSON), for the test that `clipforge benchmark --format clip_benchmark` writes the same shape.

Runs in the reference environment, from the repository root (imports nothing from clipforge):

    /work/refenv/bin/python tools/make_clip_benchmark_output_golden.py

CLIP_benchmark's own `cli.run` runs each task with its real metric code (`zeroshot_classification.evaluate`,
`zeroshot_retrieval.evaluate`, `image_caption_selection.evaluate`) on a stand-in model and a stand-in dataset of
seeded random vectors (an image is a 1-element tensor holding its row; a caption "t<row>"), with its default
`--output` template, in a temporary folder; the golden records each written file's name and content (its
`accuracy` helper is run with `.item()` for numpy >= 2.4, see `_accuracy`). Its
`linear_probe` task needs a feature cache and a training loop: its metric keys are read from
`clip_benchmark/metrics/linear_probe.py` instead (lp_acc1, lp_acc5, lp_mean_per_class_recall, ...). The
module `requests` (imported by dataset downloaders the run never calls) is stubbed when it is not installed.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import types
from importlib.metadata import version
from pathlib import Path

import torch

try:
    import requests  # noqa: F401
except ImportError:
    sys.modules["requests"] = types.ModuleType("requests")

import clip_benchmark.cli as cb  # noqa: E402
from clip_benchmark.metrics import zeroshot_classification as cb_zsc  # noqa: E402


def _accuracy(output, target, topk=(1,)):
    """CLIP_benchmark's `accuracy`, with `.item()` where it calls float() on a 1-element array (which numpy
    >= 2.4 refuses); same numbers."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    n = len(target)
    return [correct[:k].reshape(-1).float().sum().item() / n for k in topk]


cb_zsc.accuracy = _accuracy

OUT = Path(__file__).resolve().parents[1] / "tests" / "golden" / "clip_benchmark_output.json"
DIM, N = 8, 12
g = torch.Generator().manual_seed(0)
IMAGES = torch.nn.functional.normalize(torch.randn(N, DIM, generator=g), dim=-1)
TEXTS = torch.nn.functional.normalize(IMAGES + 0.8 * torch.randn(N, DIM, generator=g), dim=-1)


class Model(torch.nn.Module):
    def encode_image(self, x):
        return IMAGES[x.reshape(len(x), -1)[:, 0].long()]

    def encode_text(self, ids):
        return TEXTS[ids.long()]


def tokenizer(texts):
    return torch.tensor([int(t.lstrip("t").split()[0]) % N for t in texts])


class Classification(torch.utils.data.Dataset):
    classes = ["0", "1", "2", "3", "4", "5"]
    templates = ["t{c}"]

    def __len__(self):
        return N

    def __getitem__(self, i):
        return torch.tensor([float(i)]), i % 6


class Retrieval(torch.utils.data.Dataset):
    def __len__(self):
        return N

    def __getitem__(self, i):
        return torch.tensor([float(i)]), [f"t{i}"]


class Selection(torch.utils.data.Dataset):
    def __len__(self):
        return N // 2

    def __getitem__(self, i):
        return torch.tensor([2.0 * i, 2.0 * i + 1]).view(2, 1, 1, 1), [f"t{2 * i}", f"t{2 * i + 1}"]


def _retrieval_collate(batch):
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]


DATASETS = {"zeroshot_classification": (Classification, None), "zeroshot_retrieval": (Retrieval, _retrieval_collate),
            "image_caption_selection": (Selection, _retrieval_collate)}


def main() -> None:
    files = {}
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        for task, (ds, collate) in DATASETS.items():
            sys.argv = ["clip_benchmark", "eval", "--dataset", "mysets/demo", "--task", task, "--model", "ViT-B-32",
                        "--pretrained", "laion400m_e32", "--recall_k", "1", "5"]
            _, args = cb.get_parser_args()
            args.dataset, args.model, args.pretrained, args.language = "mysets/demo", "ViT-B-32", "laion400m_e32", "en"
            cb.load_clip = lambda **kw: (Model(), None, tokenizer)
            cb.build_dataset = lambda ds=ds, **kw: ds()
            cb.get_dataset_collate_fn = lambda name, collate=collate: collate
            cb.run(args)
        for name in sorted(os.listdir(tmp)):
            files[name] = json.loads(Path(tmp, name).read_text())
    golden = {"generator": "tools/make_clip_benchmark_output_golden.py", "clip_benchmark": version("clip-benchmark"),
              "files": files,
              "linear_probe_metric_keys": ["lp_acc1", "lp_acc5", "lp_mean_per_class_recall", "weight_decay", "epochs",
                                           "seed", "fewshot_k", "normalized"]}
    OUT.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUT}: {', '.join(files)}")


if __name__ == "__main__":
    main()
