"""The `robustness` task: zero-shot accuracy under adversarial perturbation and common corruptions.

The classifier is the zero-shot head of the "mean" method (class vector = normalised mean of the class's
template prompts; `templates`, `classnames` as for zeroshot-classification), scoring the images the model sees
after its resize and crop, as [0, 1] pixels mapped through its normalisation inside the graph
(`attacks.PixelSpace`). Per batch of labelled images:

- adversarial (`attack` pgd | fgsm | none; `epsilons`, `attack_steps`, `step_size`): each ε's perturbed images,
  untargeted (ascending the cross-entropy of the true class), scored: `robust_top1@<ε>` (ε written k/255 where
  it is one); `clean_top1` (ε = 0) is always scored. The attack needs gradients, so it runs on the torch engine only.
- corruptions (`corruptions`: names or "all", `severities`, `data.corruptions`): `corruption_top1/<name>@<s>`,
  the mean over severities per corruption, `mean_corruption_top1` (mean over all of them: ImageNet-C's mean
  corruption accuracy) and `relative_drop` = (clean - mean corruption) / clean.
- targeted retrieval attack (`target_text`): PGD ascending each image's cosine similarity to that text;
  `target_match@<ε>` = share of images whose most similar text, among the class prompts' vectors and the
  target, is the target (ε = 0 gives the clean rate), and `target_similarity@<ε>` the mean cosine.

`attack_limit` attacks the first N labelled images only (PGD costs `attack_steps` forward and backward passes
per ε); `seed` fixes PGD's random start and the corruption noise.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from clipforge.data.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from clipforge.data.decode import SkipCounter
from clipforge.encode import as_encoder
from clipforge.encode.batches import iter_image_batches
from clipforge.errors import UsageError
from clipforge.evaluate.attacks import ATTACKS, PixelSpace, fgsm, pgd
from clipforge.evaluate.tasks import TASKS, EvalTask, TaskResult
from clipforge.registry import Option
from clipforge.zeroshot.classnames import resolve_classnames
from clipforge.zeroshot.zeroshot_head import build_classifier, model_text_encoder

__all__ = ["evaluate_robustness", "Robustness", "parse_epsilons", "eps_name"]

DEFAULT_EPSILONS = "0,1/255,2/255,4/255"


def parse_epsilons(value) -> list[float]:
    """"0,1/255,0.01" (or a list of numbers) -> sorted distinct floats >= 0."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out = []
    for v in items:
        try:
            if isinstance(v, str) and "/" in v:
                a, b = v.split("/", 1)
                out.append(float(a) / float(b))
            else:
                out.append(float(v))
        except (ValueError, ZeroDivisionError):
            raise UsageError(f"`epsilons` must be numbers or fractions such as 4/255, got {v!r}") from None
    if not out or min(out) < 0 or not all(np.isfinite(out)):
        raise UsageError(f"`epsilons` must be finite and >= 0, got {value!r}")
    return sorted(set(out))


def eps_name(eps: float) -> str:
    k = eps * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 else f"{eps:g}"


def _names(value, allowed: Sequence[str], param: str) -> list[str]:
    if value is None or value == "" or value == "none":
        return []
    if value == "all":
        return list(allowed)
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
    for v in items:
        if v not in allowed:
            raise UsageError(f"`{param}`: {v!r} is not one of {', '.join(allowed)} (or all)")
    return list(dict.fromkeys(items))


def _severities(value) -> list[int]:
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        out = sorted({int(v) for v in items})
    except ValueError:
        raise UsageError(f"`severities` must be integers 1..5, got {value!r}") from None
    if not out or any(s not in SEVERITIES for s in out):
        raise UsageError(f"`severities` must be integers 1..5, got {value!r}")
    return out


class _Head:
    """Differentiable zero-shot scoring of [0, 1] pixels."""

    def __init__(self, model, space: PixelSpace, weights: torch.Tensor, scale: float):
        self.model, self.space, self.scale = model, space, float(scale)
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.weights = weights.to(self.device, torch.float32)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.space.normalise(pixels).to(self.dtype)
        return F.normalize(self.model.encode_image(x, normalize=False).float(), dim=-1)

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.scale * self.features(pixels) @ self.weights.T


def evaluate_robustness(model, source, *, classnames=None, templates=None, attack: str = "pgd",
                        epsilons=DEFAULT_EPSILONS, attack_steps: int = 10, step_size: Optional[float] = None,
                        corruptions=None, severities="1,2,3,4,5", target_text: Optional[str] = None,
                        attack_limit: Optional[int] = None, seed: int = 0, batch_size: int = 64, workers: int = 0,
                        progress: Optional[bool] = None) -> dict:
    """-> {"metrics": {clean_top1, robust_top1@ε..., corruption metrics, target metrics, n}, "num_classes",
    "skipped"} (module doc). `model`: a loaded model or an `Encoder` on the torch engine."""
    encoder = as_encoder(model)
    engine = getattr(encoder.engine, "name", type(encoder.engine).__name__)
    if attack not in (*ATTACKS, "none"):
        raise UsageError(f"`attack` must be one of {', '.join(ATTACKS)} or none, got {attack!r}")
    eps_list = [0.0] if attack == "none" else sorted({0.0, *parse_epsilons(epsilons)})  # clean is always scored
    names_c = _names(corruptions, list(CORRUPTIONS), "corruptions")
    sevs = _severities(severities)
    if attack_limit is not None and attack_limit < 1:
        raise UsageError(f"`attack_limit` must be >= 1, got {attack_limit}")
    if engine != "torch" and (attack != "none" or target_text):
        raise UsageError(f"the robustness task's attacks differentiate through the model: they run on the torch "
                         f"engine only (`engine` torch), not {engine}; corruptions alone (`attack` none) run on any")
    names = resolve_classnames(source, classnames)
    head_t = build_classifier(model_text_encoder(encoder, batch_size), names, templates)
    space = PixelSpace.of(encoder.preprocess)
    net = encoder.model
    was_training = net.training
    net.eval()
    head = _Head(net, space, head_t.weights, head_t.logit_scale)
    target = None
    if target_text:
        target = encoder.encode_texts([target_text]).to(head.device).float()  # (1, D), normalised
    gen = torch.Generator().manual_seed(int(seed))
    rng = np.random.default_rng(seed)
    correct = {e: 0 for e in eps_list}
    corr = {(c, s): 0 for c in names_c for s in sevs}
    match = {e: 0 for e in eps_list}
    sim = {e: 0.0 for e in eps_list}
    skipped, n = SkipCounter(), 0
    try:
        for batch in iter_image_batches(source, encoder.preprocess, batch_size, workers=workers, require="label",
                                        skipped=skipped, progress=progress, desc="robustness"):
            take = len(batch.labels) if attack_limit is None else min(len(batch.labels), attack_limit - n)
            if take <= 0:
                break
            px = space.to_pixels(batch.pixels[:take]).to(head.device)
            y = torch.tensor([int(v) for v in batch.labels[:take]], device=head.device)
            if int(y.max()) >= len(names):
                raise UsageError(f"labels go up to {int(y.max())} but only {len(names)} class names were given")
            n += take

            def ce(p):
                return F.cross_entropy(head.logits(p), y, reduction="none")

            for e in eps_list:
                adv = px if e == 0 else (fgsm(ce, px, e) if attack == "fgsm" else pgd(
                    ce, px, e, steps=attack_steps, step_size=step_size, generator=gen))
                with torch.no_grad():
                    correct[e] += int((head.logits(adv).argmax(1) == y).sum())
                if target is not None:
                    def toward(p):
                        return (head.features(p) @ target.T)[:, 0]

                    adv_t = px if e == 0 else (fgsm(toward, px, e) if attack == "fgsm" else pgd(
                        toward, px, e, steps=attack_steps, step_size=step_size, generator=gen))
                    with torch.no_grad():
                        f = head.features(adv_t)
                        cand = torch.cat([head.weights, target])  # the class vectors, then the target
                        match[e] += int(((f @ cand.T).argmax(1) == len(names)).sum())
                        sim[e] += float((f @ target.T).sum())
            for c in names_c:
                for s in sevs:
                    bad = torch.stack([torch.from_numpy(corrupt(p.permute(1, 2, 0).cpu().numpy(), c, s, rng))
                                       .permute(2, 0, 1) for p in px]).to(head.device)
                    with torch.no_grad():
                        corr[(c, s)] += int((head.logits(bad).argmax(1) == y).sum())
            if attack_limit is not None and n >= attack_limit:
                break
    finally:
        net.train(was_training)
    if n == 0:
        raise UsageError(f"{source.spec}: no readable labelled images")
    metrics: dict = {"clean_top1": correct[0.0] / n}
    for e in eps_list[1:]:
        metrics[f"robust_top1@{eps_name(e)}"] = correct[e] / n
    if names_c:
        per = {c: float(np.mean([corr[(c, s)] / n for s in sevs])) for c in names_c}
        for (c, s), v in corr.items():
            metrics[f"corruption_top1/{c}@{s}"] = v / n
        for c, v in per.items():
            metrics[f"corruption_top1/{c}"] = v
        metrics["mean_corruption_top1"] = float(np.mean(list(per.values())))
        clean = metrics["clean_top1"]
        metrics["relative_drop"] = (clean - metrics["mean_corruption_top1"]) / clean if clean else None
    if target is not None:
        for e in eps_list:
            metrics[f"target_match@{eps_name(e)}"] = match[e] / n
            metrics[f"target_similarity@{eps_name(e)}"] = sim[e] / n
    metrics["n"] = n
    return {"metrics": metrics, "num_classes": len(names), "skipped": skipped.as_dict(),
            "templates_hash": head_t.meta.get("templates_hash")}


@TASKS.register("robustness")
class Robustness(EvalTask):
    """Zero-shot accuracy under PGD / FGSM pixel attacks per ε and common corruptions at 5 severities; optional
    targeted image-side attack toward a text."""

    options = (
        Option("templates", str, help="template set name or file (default: the dataset's, else OpenAI's 80)"),
        Option("classnames", str, help="class names file (default: the dataset's)"),
        Option("attack", str, "pgd", choices=(*ATTACKS, "none"), help="robustness: pgd (default), fgsm or none"),
        Option("epsilons", str, DEFAULT_EPSILONS, help="robustness: L-inf budgets in [0, 1] pixels, comma-separated, "
                                                       f"fractions allowed (default {DEFAULT_EPSILONS})"),
        Option("attack_steps", int, 10, help="robustness: PGD steps (default 10)"),
        Option("step_size", float, help="robustness: PGD step (default 2.5 * eps / steps)"),
        Option("corruptions", str, help="robustness: corruptions, comma-separated, or all (" + ", ".join(CORRUPTIONS)
                                        + "; default none)"),
        Option("severities", str, "1,2,3,4,5", help="robustness: corruption severities (default 1,2,3,4,5)"),
        Option("target_text", str, help="robustness: also attack each image toward this text (targeted "
                                        "retrieval attack)"),
        Option("attack_limit", int, help="robustness: use the first N labelled images only"),
    )

    def run(self, encoder, dataset, ctx, *, templates=None, classnames=None, **options) -> TaskResult:
        templates = templates if templates is not None else dataset.templates
        res = evaluate_robustness(encoder, dataset.source, classnames=classnames or dataset.classnames,
                                  templates=templates, seed=ctx.seed, batch_size=ctx.batch_size,
                                  workers=ctx.workers, progress=ctx.progress, **options)
        config = {**options, "epsilons": [eps_name(e) for e in parse_epsilons(options["epsilons"])],
                  "templates": templates if isinstance(templates, str) or templates is None
                  else f"{len(templates)} templates", "classnames": classnames if isinstance(classnames, str) else None}
        return TaskResult(res["metrics"], config, {"num_classes": res["num_classes"], "skipped": res["skipped"]},
                          res["templates_hash"])
