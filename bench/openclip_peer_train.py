"""open_clip trains the peer of a clipforge run from a work folder written by `openclip_peer_prepare.py`.

Runs standalone in an environment with torch, numpy and open_clip (`open_clip_torch`, which ships both `open_clip`
and `open_clip_train`); it never imports clipforge. Prints one JSON line of results on stdout (logs on stderr).

    /work/refenv/bin/python bench/openclip_peer_train.py WORK [--fused-adamw] [--channels-last]

What is open_clip's own code here: the model (`create_model_and_transforms` on the folder's
`open_clip_config.json` through the `local-dir:` schema: `open_clip.model.CLIP` with a ModifiedResNet image
tower), the train and eval transforms it returns (RandomResizedCrop bicubic at the config's crop scale; resize +
centre crop), `ClipLoss`, the AdamW parameter groups of `open_clip_train/main.py` (no weight decay where
`ndim < 2` or the name has bn / ln / bias / logit_scale), `open_clip_train.scheduler.cosine_lr`, the training
loop `open_clip_train.train.train_one_epoch` (forward, loss, backward, grad-norm clip, step, logit-scale clamp
to ln 100) and the zero-shot evaluation (`build_zero_shot_classifier`: mean of normalised prompt embeddings
per class, renormalised; then `open_clip_train.zero_shot.run`'s scoring, re-typed here because its accuracy()
fails under numpy 2.4).

What is this script's: feeding those pieces. A "chunk" of training is one `train_one_epoch` call over the steps
between two evaluations (its step counter restarts at 0, so the scheduler is given the chunk's offset); batches
replay the folder's schedule (the images and captions clipforge's loader gave at each step), decoded images come
from arrays (open_clip's CsvDataset would decode PNG files), captions and prompts are already token ids (from
the clipforge run's trained BPE: open_clip has no tokenizer for it), and the evaluation steps, seed, threads and
every hyper-parameter come from peer.json.

--fused-adamw and --channels-last are NOT open_clip's defaults (its main.py builds a plain AdamW, its ResNet runs
NCHW); they are clipforge's two CPU speed choices, to see how much of a time difference they explain.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import time
from pathlib import Path
from types import SimpleNamespace


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work", help="folder written by openclip_peer_prepare.prepare")
    ap.add_argument("--fused-adamw", action="store_true", help="AdamW(fused=True) (clipforge's choice)")
    ap.add_argument("--channels-last", action="store_true", help="image tower in channels-last (clipforge's choice)")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")

    import numpy as np
    import torch
    import open_clip
    from open_clip.loss import ClipLoss
    from open_clip.zero_shot_classifier import build_zero_shot_classifier
    from open_clip_train.scheduler import const_lr, cosine_lr
    from open_clip_train.train import train_one_epoch
    from PIL import Image

    load0 = os.getloadavg()[0]
    t_wall, t_cpu = time.perf_counter(), time.process_time()
    work = Path(a.work)
    peer = json.loads((work / "peer.json").read_text())
    arr = {k: np.load(work / f"{k}.npy") for k in ("train_images", "train_caption_tokens", "schedule_images",
                                                    "schedule_captions", "val_images", "val_labels", "prompt_tokens")}
    B, steps, seed = peer["batch_size"], peer["steps"], peer["seed"]
    torch.set_num_threads(peer["threads"])

    def random_seed(s):  # open_clip_train.main.random_seed (rank 0)
        torch.manual_seed(s)
        np.random.seed(s)
        random.seed(s)

    random_seed(seed)
    model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
        f"local-dir:{work / 'model'}", precision="fp32", device="cpu", output_dict=True,
        aug_cfg={"scale": tuple(peer["crop_scale"])})
    if a.channels_last:
        model.visual.to(memory_format=torch.channels_last)
    random_seed(seed)  # main.py seeds again after building the model, before the data

    # open_clip_train/main.py's AdamW parameter groups
    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
    named = list(model.named_parameters())
    gain_or_bias = [p for n, p in named if exclude(n, p) and p.requires_grad]
    rest = [p for n, p in named if not exclude(n, p) and p.requires_grad]
    opt = torch.optim.AdamW([{"params": gain_or_bias, "weight_decay": 0.0},
                             {"params": rest, "weight_decay": peer["weight_decay"]}],
                            lr=peer["lr"], betas=tuple(peer["betas"]), eps=peer["eps"],
                            **({"fused": True} if a.fused_adamw else {}))
    make_sched = cosine_lr if peer["schedule"] == "cosine" else const_lr
    scheduler = make_sched(opt, peer["lr"], peer["warmup_steps"], steps)
    loss = ClipLoss(local_loss=False, gather_with_grad=False, cache_labels=True, rank=0, world_size=1)
    args = SimpleNamespace(device="cpu", precision="fp32", distill=False, accum_freq=1, skip_scheduler=False,
                           grad_clip_norm=peer["grad_clip"] or None, horovod=False,
                           log_every_n_steps=peer["log_every"], batch_size=B, world_size=1, rank=0, local_rank=0,
                           wandb=False)

    class Pairs(torch.utils.data.Dataset):
        """Item s * B + j: slot j of step s in the replayed schedule, as (pixels (3, H, W), token ids (L,))."""

        def __len__(self):
            return arr["schedule_images"].size

        def __getitem__(self, k):
            s, j = divmod(int(k), B)
            img = Image.fromarray(arr["train_images"][arr["schedule_images"][s, j]])
            ids = arr["train_caption_tokens"][arr["schedule_captions"][s, j]]
            return preprocess_train(img), torch.from_numpy(ids.astype(np.int64))

    class Labelled(torch.utils.data.Dataset):
        def __len__(self):
            return len(arr["val_labels"])

        def __getitem__(self, k):
            return preprocess_val(Image.fromarray(arr["val_images"][k])), int(arr["val_labels"][k])

    pairs = Pairs()
    val_loader = torch.utils.data.DataLoader(Labelled(), batch_size=256, shuffle=False, num_workers=peer["workers"])
    classnames = peer["classnames"]
    n_t = len(peer["templates"])
    token_of = {p: torch.from_numpy(arr["prompt_tokens"][c, t].astype(np.int64))
                for c, row in enumerate(peer["prompts"]) for t, p in enumerate(row)}
    cls_index = {c: i for i, c in enumerate(classnames)}
    # the prompts as callables of the class name, and a "tokenizer" that looks their ids up
    templates = [(lambda c, t=t: peer["prompts"][cls_index[c]][t]) for t in range(n_t)]

    def evaluate():
        """open_clip_train.zero_shot.run's computation (100 * image features @ classifier, top-1 / top-5).
        Not called itself: its accuracy() does float() of a 1-element array, which numpy >= 2.4 refuses."""
        model.eval()
        classifier = build_zero_shot_classifier(model, lambda texts: torch.stack([token_of[x] for x in texts]),
                                                classnames, templates, num_classes_per_batch=10, device="cpu")
        top1 = top5 = n = 0
        with torch.inference_mode():
            for images, target in val_loader:
                logits = 100.0 * model(image=images)["image_features"] @ classifier
                pred = logits.topk(5, 1, True, True)[1]
                top1 += int((pred[:, 0] == target).sum())
                top5 += int((pred == target[:, None]).any(1).sum())
                n += len(target)
        return top1 / n, top5 / n

    curve, train_wall, train_cpu, eval_wall, eval_cpu, done = [], 0.0, 0.0, 0.0, 0.0, 0
    for end in peer["eval_steps"]:
        chunk = [[s * B + j for j in range(B)] for s in range(done, end)]
        dl = torch.utils.data.DataLoader(pairs, batch_sampler=chunk, num_workers=peer["workers"])
        dl.num_batches, dl.num_samples = len(chunk), len(chunk) * B
        data = {"train": SimpleNamespace(dataloader=dl, set_epoch=lambda epoch: None)}
        w0, c0 = time.perf_counter(), time.process_time()
        train_one_epoch(model, data, loss, 0, opt, None, lambda i, off=done: scheduler(off + i), None, args)
        train_wall += time.perf_counter() - w0
        train_cpu += time.process_time() - c0
        done = end
        w0, c0 = time.perf_counter(), time.process_time()
        top1, top5 = evaluate()
        eval_wall += time.perf_counter() - w0
        eval_cpu += time.process_time() - c0
        curve.append([end, round(top1, 4), round(train_wall, 1)])
        logging.info("step %d: zero-shot top-1 %.4f", end, top1)
    wall, cpu = time.perf_counter() - t_wall, time.process_time() - t_cpu
    variant = "+".join([x for x, on in (("fused-adamw", a.fused_adamw), ("channels-last", a.channels_last)) if on])
    print(json.dumps({
        "impl": "open_clip", "variant": variant or "stock", "open_clip": open_clip.__version__,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "steps": done,
        "train_time_s": round(train_wall, 2), "train_cpu_s": round(train_cpu, 1), "eval_time_s": round(eval_wall, 2),
        "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "cpu_excl_evals_s": round(cpu - eval_cpu, 1),
        "zeroshot_top1": curve[-1][1] if curve else None,
        "zeroshot_top5": round(top5, 4) if curve else None, "curve": curve,
        "logit_scale": round(float(model.logit_scale.detach().exp()), 2),
        "parameters": sum(p.numel() for p in model.parameters()), "load_before": round(load0, 2),
        "load_after": round(os.getloadavg()[0], 2)}))


if __name__ == "__main__":
    main()
