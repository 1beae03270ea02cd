"""The training config as data: one dataclass per section (model, data, optim, schedule, loss, run, adapt) and
`TrainConfig` holding them, with the defaults. Reading one from YAML is `clipforge.train.config`; its checks
are `clipforge.train.config_checks`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

from clipforge.errors import UsageError
from clipforge.models.lora import LoRAConfig
from clipforge.train.config_checks import check_config


@dataclass
class ModelSection:
    name: str = "tiny"  # registered name (from scratch) or any load_model reference (fine-tune from it)
    overrides: Dict[str, Any] = field(default_factory=dict)  # config overrides for a registered name
    tokenizer: Optional[str] = None  # None: the model's own; "train": learn BPE on the training captions; or a dir
    tokenizer_vocab_size: int = 1024
    grad_checkpointing: bool = False
    lock_image: bool = False  # LiT: freeze the image tower ...
    lock_image_unlocked_groups: int = 0  # ... except its last N blocks (+ final norm/projection when N > 0)
    lock_text: bool = False
    lock_text_unlocked_groups: int = 0
    weights: Optional[str] = None  # a weights file for a registered architecture
    # ViT image tower: tokens merged per block while training (ToMe trains with it; models/token_merge.py):
    # R, or "R1,R2,..." one count per block; null: none. Not stored in the checkpoint: evaluate with the same R.
    token_merge: Optional[str] = None
    merge_method: str = "tome"  # tome | pitome


@dataclass
class DataSection:
    train: str = ""  # a data-layer source spec (jsonl:..., csv:..., wds:..., folder path)
    train_options: Dict[str, Any] = field(default_factory=dict)  # passed to open_source
    reinforcement: Optional[str] = None  # a store from `clipforge data reinforce` (teacher embeddings, views)
    batch_size: int = 128  # global batch (split across ranks)
    workers: int = 0
    val: Optional[str] = None  # labelled source for the periodic zero-shot evaluation
    val_options: Dict[str, Any] = field(default_factory=dict)
    val_classnames: Optional[Union[List[str], str]] = None  # list or file; default: the source's class names
    val_templates: Optional[Union[List[str], str]] = None  # list, file or template-set name
    # Both towers frozen up to their heads: encode every image and caption once into RUN/feature_cache and
    # train the heads on it (train/feature_cache.py). null: whenever the run allows it; true: required (an
    # error says why not); false: never (pixels every step).
    feature_cache: Optional[bool] = None
    feature_cache_views: int = 1  # image views stored: 1 = the eval preprocessing; more add augmented views


@dataclass
class OptimSection:
    lr: float = 5e-4
    weight_decay: float = 0.2
    betas: List[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    grad_clip: Optional[float] = 1.0  # max global grad norm; null disables


@dataclass
class ScheduleSection:
    name: str = "cosine"  # cosine | constant
    warmup_steps: int = 50
    min_lr: float = 0.0


@dataclass
class LossSection:
    name: str = "clip"  # any registered loss (clipforge.losses.list_losses())
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class RunSection:
    steps: Optional[int] = None  # total optimizer steps (or give epochs)
    epochs: Optional[float] = None
    seed: int = 0
    precision: str = "fp32"  # fp32 | bf16 (autocast) | fp16 (autocast + grad scaler, CUDA) | auto (see update.py)
    device: Optional[str] = None  # default: cuda when available (per local rank), else cpu
    gradcache_sub_batch: Optional[int] = None  # gradient caching: exact big-batch gradient, sub-batch memory
    # (not exact where BatchNorm trains: each sub-batch is normalised by its own statistics, and a warning says so)
    # DDP: BatchNorm layers in train mode normalise by the whole global batch's statistics (train/sync_batchnorm.py)
    # null: whenever a tower has BatchNorm in train mode; false: by each process's own share
    sync_batchnorm: Optional[bool] = None
    threads: Optional[int] = None  # torch intra-op threads on CPU
    # torch.compile the closed-form feature-cache step (train/projector_step.py): fuses its ~30 small kernels;
    # compiling takes ~5 s (20 s cold), so it pays off on long runs only (docs/bench_feature_cache.md)
    compile_step: bool = False
    log_every: int = 10
    eval_every: int = 0  # zero-shot eval every N steps (0: only at the end, when data.val is set)
    checkpoint_every: int = 200
    keep_checkpoints: int = 3
    tensorboard: bool = False
    progress: Optional[bool] = None  # tqdm bar: None = only on a terminal


@dataclass
class AdaptSection:
    """Parameter-efficient fine-tuning: with a method, only adapter parameters train (clipforge.models.lora)."""

    method: Optional[str] = None  # null: train the model itself | lora | comp-lora
    rank: int = 8
    alpha: float = 16.0  # scaling = alpha / rank
    dropout: float = 0.0
    targets: List[str] = field(default_factory=lambda: ["attn.qkv", "attn.out"])  # Linear name patterns
    towers: List[str] = field(default_factory=lambda: ["image", "text"])
    layers: Optional[List[int]] = None  # block indices (negative from the end); null: every block
    comp_k: int = 16  # comp-lora: top singular directions of each weight kept free of the update
    comp_side: str = "left"  # comp-lora: left | right | both

    def lora_config(self):
        """The adapter config (`clipforge.models.LoRAConfig`); a bad value is a UsageError naming `adapt.<key>`."""
        d = dataclasses.asdict(self)
        try:
            return LoRAConfig(**d)
        except UsageError as e:
            raise UsageError(str(e).replace("`", "`adapt.", 1) if str(e).startswith("`") else f"adapt: {e}")


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    loss: LossSection = field(default_factory=LossSection)
    run: RunSection = field(default_factory=RunSection)
    adapt: AdaptSection = field(default_factory=AdaptSection)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]

    def validate(self) -> "TrainConfig":
        check_config(self)
        return self


SECTIONS = {"model": ModelSection, "data": DataSection, "optim": OptimSection,
            "schedule": ScheduleSection, "loss": LossSection, "run": RunSection, "adapt": AdaptSection}
