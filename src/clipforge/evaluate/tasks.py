"""Evaluation tasks by name, each declaring its own options (what `clipforge eval` offers as flags).

    TASKS.names()       # ['linear-probe', 'ranked-retrieval', 'zeroshot-classification', 'zeroshot-retrieval']

A task is one class in one file, registered with `@TASKS.register("name")`:

    @TASKS.register("few-shot")
    class FewShot(EvalTask):
        options = (Option("k_shot", int, help="..."),)
        def run(self, encoder, dataset, ctx, **options) -> TaskResult: ...

`run_eval` checks the options against the task's declaration (a stray one is an error naming the tasks it
belongs to, never ignored), opens the dataset, builds the `Encoder`, and writes the result record.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

from clipforge.registry import Option, Registry

__all__ = ["TASKS", "EvalTask", "EvalContext", "TaskResult", "list_tasks", "CUTOFF"]

TASKS = Registry("eval task", param="task")


@dataclass
class EvalContext:
    """What every task may use besides its own options."""

    batch_size: int = 256
    workers: int = 0
    seed: int = 0
    progress: Optional[bool] = None
    image_root: Optional[str] = None  # for tasks that open more datasets (e.g. a probe's test set)


@dataclass
class TaskResult:
    metrics: dict
    config: dict = field(default_factory=dict)  # task-specific settings recorded in the result's config
    extra: dict = field(default_factory=dict)  # diagnostics recorded beside the metrics (num_classes, skipped)
    templates_hash: Optional[str] = None
    parts: list = field(default_factory=list)  # a task that yields several records (few-shot: one per method and k)


class EvalTask:
    """Base class. `run(encoder, dataset, ctx, **options)` scores an `EvalDataset` with an `Encoder`.

    A task that can score an index directory's stored embeddings (no model needed) sets `accepts_index` and
    implements `run_index(index_dir, ctx, **options)`, returning a TaskResult whose extra holds "model".
    A task that reads its own file format (a selection JSONL) sets `opens_dataset`: its `dataset` is then an
    `EvalDataset` with no source, named by the spec as given, and `ctx.image_root` is its image folder.
    """

    name: ClassVar[str]
    options: ClassVar = ()
    accepts_index: ClassVar[bool] = False
    opens_dataset: ClassVar[bool] = False

    def run(self, encoder, dataset, ctx: EvalContext, **options) -> TaskResult:
        raise NotImplementedError

    def run_index(self, index_dir, ctx: EvalContext, **options) -> TaskResult:
        raise NotImplementedError


def list_tasks() -> list[str]:
    return TASKS.names()


CUTOFF = Option("cutoff", int, help="k of the ranked-list metrics AP@k, nDCG@k and MRR (INQUIRE uses 50)")