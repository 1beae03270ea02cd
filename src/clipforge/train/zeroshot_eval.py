"""The periodic zero-shot evaluation of a training run on its labelled validation source."""
from __future__ import annotations

import dataclasses
import logging
from typing import Optional

import torch

from clipforge.data.decode import SkipCounter
from clipforge.data.loader import make_labelled_loader
from clipforge.encode.encoder import SourceFeatures
from clipforge.evaluate.zeroshot_classification import evaluate_zeroshot_classification
from clipforge.models.projection import tower_features, tower_head
from clipforge.train.config_sections import TrainConfig
from clipforge.train.distributed import DistInfo, barrier
from clipforge.train.optim import tower_is_frozen

log = logging.getLogger("clipforge.train")


class ZeroShotCallback:
    """Periodic zero-shot evaluation on a labelled validation source (rank 0; others wait)."""

    def __init__(self, cfg: TrainConfig, model, source):
        self.cfg, self.model = cfg, model
        self.source = source  # cfg.data.val, opened
        self._frozen_val = None  # (SourceFeatures of the frozen image features) when the image tower is frozen

    def _val_features(self):
        """A frozen image tower's validation features are computed once; each evaluation runs only the head."""
        if not tower_is_frozen(self.model.visual):
            return None
        if self._frozen_val is None:
            feats, ids, labels = [], [], []
            skipped = SkipCounter()
            was = self.model.training
            self.model.eval()
            loader = make_labelled_loader(self.source, self.model.preprocess, 128, shuffle=False,
                                          drop_last=False, on_bad="drop")
            with torch.inference_mode():
                for b in loader:
                    if b["pixels"].shape[0]:
                        feats.append(tower_features(self.model.visual, b["pixels"].to(self.model.device)).float())
                        ids += list(b["ids"])
                        labels += [int(y) if int(y) >= 0 else None for y in b["labels"]]
            skipped.merge(loader.skipped)
            self.model.train(was)
            self._frozen_val = SourceFeatures(torch.cat(feats) if feats else torch.zeros(0, 1), ids,
                                              [[] for _ in ids], labels, skipped=skipped)
        with torch.no_grad():
            head = tower_head(self.model.visual)
            emb = torch.nn.functional.normalize(head(self._frozen_val.feats.to(self.model.dtype)).float(), dim=-1)
        return dataclasses.replace(self._frozen_val, feats=emb.cpu())

    def __call__(self, step: int, dist: DistInfo) -> Optional[dict]:
        row = None
        if dist.is_main:
            res = evaluate_zeroshot_classification(
                self.model, self.source, classnames=self.cfg.data.val_classnames,
                templates=self.cfg.data.val_templates, batch_size=256, progress=False,
                features=self._val_features())
            m = res["metrics"]
            row = {"step": step, "zeroshot_top1": m["top1"], "zeroshot_mean_per_class_recall": m["mean_per_class_recall"]}
            if "top5" in m:
                row["zeroshot_top5"] = m["top5"]
            log.info("step %d: zero-shot top-1 %.4f on %s", step, m["top1"], self.cfg.data.val)
        barrier(dist)
        return row
