"""Training configuration: typed sections loaded from YAML, `section.key=value` overrides, strict keys.

    model:    {name: tiny, overrides: {...}, tokenizer: train, tokenizer_vocab_size: 1024, lock_image: false, ...}
    data:     {train: "jsonl:path/train.jsonl", batch_size: 128, workers: 2, val: "imagefolder:path/val", ...}
              (reinforcement: DIR, a store from `clipforge data reinforce`, for clip+distill)
    optim:    {lr: 5e-4, weight_decay: 0.2, betas: [0.9, 0.98], eps: 1e-6, grad_clip: 1.0}
    schedule: {name: cosine, warmup_steps: 50, min_lr: 0.0}
    loss:     {name: clip, options: {chunk_size: null}}
    run:      {steps: 1000, seed: 0, precision: bf16, checkpoint_every: 200, keep_checkpoints: 3, ...}
    adapt:    {method: lora, rank: 8, alpha: 16, targets: [attn.qkv, attn.out], towers: [image, text], ...}

Unknown keys raise a `UsageError` naming the section and listing the valid keys; values of the wrong type
or out of range (a negative learning rate, betas outside [0, 1), zero steps, negative workers, warm-up or
weight decay; every count also has an upper bound: run.steps 10^100 or data.workers 100,000 are refused, see
MAX_STEPS and max_workers) raise a `UsageError` naming the key, before anything is built. A config is a YAML file or the
name of one shipped inside the package (`load_config("demo-digits")`; `packaged_configs()` lists them).

YAML from a file or an override value is parsed with `parse_yaml`: safe types only, and refused (one line, before
anything copies it) when its aliases expand to more than `MAX_CONFIG_VALUES` values (a "billion laughs" file
would otherwise hang while memory grows), when an alias refers to the node that holds it, or when it nests
deeper than `MAX_CONFIG_DEPTH`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import yaml

from clipforge.data.fs import FileRefused, read_regular
from clipforge.data.sources.trust import StoredSpec, accept_stored, stored_spec
from clipforge.errors import UsageError
from clipforge.models.token_merge import token_merge_setting
from clipforge.models.lora import LoRAConfig
from clipforge.train.step import check_loss_inputs

MAX_CONFIG_VALUES = 100_000  # scalars, lists and mappings in one YAML document, aliases expanded
MAX_CONFIG_DEPTH = 64  # nesting of lists and mappings
MAX_CONFIG_BYTES = 1 << 20  # a config file larger than this is refused before it is parsed
# Upper bounds on every count (a count past them is a typo or an attack, never a setting: run.steps 10^100
# never ends, data.workers 100,000 forks a process per worker, run.threads 100,000 asks torch for that many).
MAX_STEPS = 10**9  # steps, warm-up and every interval: a billion steps is years on any hardware
MAX_EPOCHS = 10**6
MAX_BATCH = 1 << 20  # global batch, gradient-cache sub-batch (the largest CLIP batches are 32-64 k)
MAX_KEEP_CHECKPOINTS = 10_000
MAX_TOKENIZER_VOCAB = 1 << 20
MAX_UNLOCKED_GROUPS = 1 << 16


def cpu_count() -> int:
    return os.cpu_count() or 1


def max_workers() -> int:
    """data.workers at most: a loader process per core and then some, never thousands."""
    return max(64, 4 * cpu_count())


def max_threads() -> int:
    """run.threads at most: four intra-op threads per core (more only contend)."""
    return 4 * cpu_count()


class _StrictLoader(yaml.SafeLoader):
    """The safe loader, refusing a key given twice in one mapping (YAML would keep the last silently, so a
    second `optim:` section would replace the first whole). Keys merged in with `<<` may be overridden."""

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value if isinstance(node, yaml.MappingNode) else ():
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                dup = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base loader reports it
                continue
            if dup:
                raise yaml.constructor.ConstructorError("while constructing a mapping", node.start_mark,
                                                        f"found duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep)


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
    precision: str = "fp32"  # fp32 | bf16 (autocast) | fp16 (autocast + grad scaler, CUDA)
    device: Optional[str] = None  # default: cuda when available (per local rank), else cpu
    gradcache_sub_batch: Optional[int] = None  # gradient caching: exact big-batch gradient, sub-batch memory
    # (not exact where BatchNorm trains: each sub-batch is normalised by its own statistics, and a warning says so)
    # DDP: BatchNorm layers in train mode normalise by the whole global batch's statistics (train/sync_batchnorm.py)
    # null: whenever a tower has BatchNorm in train mode; false: by each process's own share
    sync_batchnorm: Optional[bool] = None
    threads: Optional[int] = None  # torch intra-op threads on CPU
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
        if not self.data.train:
            raise UsageError("data.train is required (a source spec such as jsonl:path/train.jsonl)")
        if (self.run.steps is None) == (self.run.epochs is None):
            raise UsageError("give exactly one of run.steps and run.epochs")
        self._check_ranges()
        if self.run.precision not in ("fp32", "bf16", "fp16"):
            raise UsageError(f"run.precision must be fp32, bf16 or fp16, got {self.run.precision!r}")
        if self.schedule.name not in ("cosine", "constant"):
            raise UsageError(f"schedule.name must be cosine or constant, got {self.schedule.name!r}")
        # lock_image + lock_text together: pretrained towers still train their projection heads (projector
        # alignment, from a feature cache); for clipforge's own towers the optimizer finds nothing to train.
        check_loss_inputs(self)  # a loss whose inputs the pipeline cannot supply is refused here
        try:
            token_merge_setting(self.model.token_merge, self.model.merge_method)
        except UsageError as e:
            raise UsageError(f"model.token_merge / model.merge_method: {e}") from None
        if self.adapt.method is not None:
            self.adapt.lora_config()
            if self.model.lock_image or self.model.lock_text:
                raise UsageError("adapt.method trains an adapter on a frozen model: model.lock_image / "
                                 "model.lock_text do not apply (choose the adapted towers with adapt.towers)")
        return self

    def _check_ranges(self) -> None:
        """Every numeric value in its range, named by its key (types were checked when the config was read)."""
        def need(key: str, ok: bool, want: str) -> None:
            if not ok:
                sec, name = key.split(".")
                got = repr(getattr(getattr(self, sec), name))
                got = got if len(got) <= 40 else f"{got[:20]}... ({len(got)} characters)"
                raise UsageError(f"{key} must be {want}, got {got}")

        o, s, r, d, m = self.optim, self.schedule, self.run, self.data, self.model
        finite = lambda x: x is not None and math.isfinite(x)  # noqa: E731
        need("optim.lr", finite(o.lr) and o.lr > 0, "a number > 0")
        need("optim.weight_decay", finite(o.weight_decay) and o.weight_decay >= 0, "a number >= 0")
        need("optim.eps", finite(o.eps) and o.eps > 0, "a number > 0")
        need("optim.betas", len(o.betas) == 2 and all(finite(b) and 0 <= b < 1 for b in o.betas),
             "two numbers in [0, 1), e.g. [0.9, 0.98]")
        need("optim.grad_clip", o.grad_clip is None or (finite(o.grad_clip) and o.grad_clip > 0),
             "a number > 0, or null to disable clipping")
        need("schedule.warmup_steps", 0 <= s.warmup_steps <= MAX_STEPS, f"an integer in [0, {MAX_STEPS:,}]")
        need("schedule.min_lr", finite(s.min_lr) and 0 <= s.min_lr <= o.lr, f"a number in [0, optim.lr = {o.lr}]")
        need("data.batch_size", 1 <= d.batch_size <= MAX_BATCH, f"an integer in [1, {MAX_BATCH:,}]")
        need("data.workers", 0 <= d.workers <= max_workers(),
             f"an integer in [0, {max_workers()}] (0: load in the training process; at most max(64, 4 x the "
             f"{cpu_count()} CPUs))")
        need("data.feature_cache_views", 1 <= d.feature_cache_views <= 64, "an integer in [1, 64]")
        need("run.steps", r.steps is None or 1 <= r.steps <= MAX_STEPS, f"an integer in [1, {MAX_STEPS:,}]")
        need("run.epochs", r.epochs is None or (finite(r.epochs) and 0 < r.epochs <= MAX_EPOCHS),
             f"a number in (0, {MAX_EPOCHS:,}]")
        need("run.seed", 0 <= r.seed < 2**63, "an integer >= 0")
        for key in ("log_every", "checkpoint_every"):
            need(f"run.{key}", 1 <= getattr(r, key) <= MAX_STEPS, f"an integer in [1, {MAX_STEPS:,}]")
        need("run.keep_checkpoints", 1 <= r.keep_checkpoints <= MAX_KEEP_CHECKPOINTS,
             f"an integer in [1, {MAX_KEEP_CHECKPOINTS:,}]")
        need("run.eval_every", 0 <= r.eval_every <= MAX_STEPS,
             f"an integer in [0, {MAX_STEPS:,}] (0: only at the end)")
        need("run.threads", r.threads is None or 1 <= r.threads <= max_threads(),
             f"an integer in [1, {max_threads()}] (4 x the {cpu_count()} CPUs), or null")
        need("run.gradcache_sub_batch", r.gradcache_sub_batch is None or 1 <= r.gradcache_sub_batch <= MAX_BATCH,
             f"an integer in [1, {MAX_BATCH:,}], or null")
        need("model.tokenizer_vocab_size", 514 <= m.tokenizer_vocab_size <= MAX_TOKENIZER_VOCAB,
             f"an integer in [514, {MAX_TOKENIZER_VOCAB:,}]")
        for key in ("lock_image_unlocked_groups", "lock_text_unlocked_groups"):
            need(f"model.{key}", 0 <= getattr(m, key) <= MAX_UNLOCKED_GROUPS,
                 f"an integer in [0, {MAX_UNLOCKED_GROUPS:,}]")

_SECTIONS = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
_SECTION_CLASSES = {"model": ModelSection, "data": DataSection, "optim": OptimSection,
                    "schedule": ScheduleSection, "loss": LossSection, "run": RunSection, "adapt": AdaptSection}


def _valid(cls) -> List[str]:
    return [f.name for f in dataclasses.fields(cls)]


def config_from_dict(d: Dict[str, Any]) -> TrainConfig:
    d = d or {}
    unknown = sorted(set(d) - set(_SECTION_CLASSES))
    if unknown:
        raise UsageError(f"unknown config section(s) {unknown}; valid sections: {', '.join(_SECTION_CLASSES)}")
    kwargs = {}
    for name, cls in _SECTION_CLASSES.items():
        sec = d.get(name) or {}
        if not isinstance(sec, dict):
            raise UsageError(f"config section {name!r} must be a mapping, got {type(sec).__name__}")
        bad = sorted(set(sec) - set(_valid(cls)))
        if bad:
            raise UsageError(f"unknown key(s) {bad} in section {name!r}; valid keys: {', '.join(_valid(cls))}")
        kwargs[name] = cls(**{k: _coerce(cls, name, k, v) for k, v in sec.items()})
    return TrainConfig(**kwargs)


def _coerce(cls, section: str, key: str, value):
    """Convert a value to the field's declared type (YAML reads `1e-3` as a string); reject what cannot be."""
    hint = typing.get_type_hints(cls)[key]
    args = typing.get_args(hint)
    optional = type(None) in args
    if value is None:
        if optional:
            return None
        raise UsageError(f"{section}.{key} cannot be null")
    base = next((a for a in args if a is not type(None)), hint) if optional else hint
    if typing.get_origin(base) is list and typing.get_args(base) == (float,):  # optim.betas
        if not isinstance(value, (list, tuple)):
            raise UsageError(f"{section}.{key}: expected a list of numbers, got {value!r}")
        return [_coerce_number(section, key, v) for v in value]
    if typing.get_origin(base) is dict and not isinstance(value, dict):
        raise UsageError(f"{section}.{key}: expected a mapping, got {value!r}")
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            raise ValueError
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if base is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        raise UsageError(f"{section}.{key}: expected {getattr(base, '__name__', base)}, got {value!r}")
    return value


def _coerce_number(section: str, key: str, value) -> float:
    try:
        if isinstance(value, bool):
            raise ValueError
        return float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{section}.{key}: expected numbers, got {value!r}") from None


def apply_overrides(d: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """Apply `section.key=value` strings (values parsed as YAML: 1e-3, true, [1, 2], null)."""
    d = json.loads(json.dumps(d or {}))
    for item in overrides or ():
        if "=" not in item:
            raise UsageError(f"`overrides`: expected section.key=value, got {item!r}")
        path, raw = item.split("=", 1)
        keys = path.strip().split(".")
        if len(keys) < 2:
            raise UsageError(f"`overrides` {item!r}: the key must name a section, e.g. optim.lr=1e-3")
        value = parse_yaml(raw, f"`overrides` {item[:80]!r}: value")
        node = d
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise UsageError(f"`overrides` {item!r}: {k!r} is not a section")
        node[keys[-1]] = value
    return d


def parse_yaml(text: str, what: str) -> Any:
    """`yaml.safe_load(text)`, bounded: `UsageError` (naming `what`) for invalid YAML, for aliases that expand
    to more than MAX_CONFIG_VALUES values or refer to their own container, and for nesting deeper than
    MAX_CONFIG_DEPTH. Sizes are counted over the alias graph without expanding it."""
    try:
        value = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        problem = " ".join(str(getattr(e, "problem", None) or e).split())[:300]
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UsageError(f"{what} is not valid YAML ({problem}{where})") from None
    except ValueError as e:  # an integer of more digits than Python converts (sys.int_info.str_digits_check_threshold)
        if "digits" not in str(e):
            raise
        raise UsageError(f"{what}: a number with more than 4,300 digits (no setting needs one)") from None
    except RecursionError:
        raise UsageError(f"{what}: YAML nested too deeply (at most {MAX_CONFIG_DEPTH} levels)") from None
    _check_yaml_size(value, what)
    return value


def _check_yaml_size(root: Any, what: str) -> None:
    size: Dict[int, int] = {}  # id(container) -> values it holds once expanded (itself included)
    depth: Dict[int, int] = {}
    open_: set = set()  # containers whose children are still being counted: meeting one again is a cycle
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        if not isinstance(node, (dict, list)) or (id(node) in size and not done):
            continue
        children = [*node.keys(), *node.values()] if isinstance(node, dict) else node
        if done:
            open_.discard(id(node))
            size[id(node)] = 1 + sum(size.get(id(c), 1) for c in children)
            depth[id(node)] = 1 + max((depth.get(id(c), 0) for c in children), default=0)
            if size[id(node)] > MAX_CONFIG_VALUES:
                raise UsageError(f"{what}: YAML whose aliases expand to over {MAX_CONFIG_VALUES:,} values "
                                 "(refused before expanding it)")
            if depth[id(node)] > MAX_CONFIG_DEPTH:
                raise UsageError(f"{what}: YAML nested too deeply (at most {MAX_CONFIG_DEPTH} levels)")
            continue
        if id(node) in open_:
            raise UsageError(f"{what}: a YAML alias refers to the list or mapping that contains it")
        open_.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in children if isinstance(c, (dict, list)))


def packaged_configs() -> list[str]:
    """Names of the configs shipped inside the package (usable wherever a config path is)."""
    return sorted(f.name[:-5] for f in resources.files("clipforge").joinpath("configs").iterdir()
                  if f.name.endswith(".yaml"))


def read_config_text(config: Union[str, Path]) -> str:
    """The YAML text of a config file, or of a packaged config named with or without `.yaml`."""
    p = Path(config)
    if p.is_file():
        try:
            data = read_regular(p, max_bytes=MAX_CONFIG_BYTES)
        except FileRefused as e:
            if e.reason == "too_large":
                raise UsageError(f"config file {p} is over {MAX_CONFIG_BYTES >> 20} MB: not a training config") from None
            raise UsageError(f"cannot read config file {e.detail}") from None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UsageError(f"config file {p} is not UTF-8 text (byte {e.start}): not a YAML config") from None
    name = p.name[:-5] if p.name.endswith(".yaml") else p.name
    if str(config) in (name, f"{name}.yaml") and name in packaged_configs():
        return resources.files("clipforge").joinpath("configs").joinpath(f"{name}.yaml").read_text()
    raise UsageError(f"config file not found: {p} (packaged configs: {', '.join(packaged_configs())})")


def load_config(path: Optional[Union[str, Path]] = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """A validated TrainConfig from a YAML file or packaged config name (or defaults) plus overrides.

    The data sources the file names (data.train, data.val) are marked as read from it (`StoredSpec`): a
    `pipe:` command in them runs only when `train` is told `allow_pipe`. One given in `overrides` is the
    caller's own, like a spec set in Python."""
    d: Dict[str, Any] = {}
    if path is not None:
        d = parse_yaml(read_config_text(path), str(path)) or {}
        if not isinstance(d, dict):
            raise UsageError(f"{path}: the config must be a mapping of sections")
    cfg = config_from_dict(apply_overrides(d, overrides))
    data = d.get("data") if isinstance(d.get("data"), dict) else {}
    overridden = {str(o).split("=", 1)[0].strip() for o in overrides or ()}
    for key in _SOURCE_KEYS:
        value = getattr(cfg.data, key)
        if f"data.{key}" not in overridden and isinstance(value, str) and value == data.get(key):
            setattr(cfg.data, key, stored_spec(value, path))
    return cfg.validate()


_SOURCE_KEYS = ("train", "val")  # the data-source specs of a config


class _Dumper(yaml.SafeDumper):
    """safe_dump, and a spec read from a file (a `str` marked `StoredSpec`) written as the string it is."""


_Dumper.add_representer(StoredSpec, lambda dumper, value: dumper.represent_str(accept_stored(value, True)))


def dump_config(cfg: TrainConfig) -> str:
    return yaml.dump(cfg.to_dict(), Dumper=_Dumper, sort_keys=False)
