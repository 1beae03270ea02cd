"""clipforge.evaluate: benchmark tasks by name (`tasks.TASKS`), the runner behind `clipforge eval`, evaluation
datasets, JSONL results and reports. Importing the package registers the built-in tasks (one module each)."""
from clipforge.evaluate import fewshot_task, linear_probe_task, ranked_retrieval  # noqa: F401  (register their tasks)
from clipforge.evaluate import zeroshot_classification, zeroshot_retrieval  # noqa: F401
from clipforge.evaluate import image_caption_selection  # noqa: F401
from clipforge.evaluate import clustering  # noqa: F401
from clipforge.evaluate import robustness  # noqa: F401
from clipforge.evaluate import zeroshot_multilabel  # noqa: F401
from clipforge.evaluate import captioning  # noqa: F401
from clipforge.evaluate.runner import run_eval
from clipforge.evaluate.tasks import TASKS, EvalTask, list_tasks

__all__ = ["run_eval", "TASKS", "EvalTask", "list_tasks"]
