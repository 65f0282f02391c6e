"""The lm-evaluation-harness hook: named tasks (MMLU, as in the paper, or a folder of your
own task YAMLs) run in the trial's process on the final model, its scores logged as
``harness/<task>/<metric>``. Optional: needs the ``harness`` extra."""

from __future__ import annotations

import re

from workers.config import BehaviourSpec, ConfigError
from workers.metrics import HARNESS

INSTALL = "pip install 'rightsweep[harness]'"


def check_installed() -> None:
    """Before any training: a missing harness is a config problem, not a crash at the end."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise ConfigError(f"trial.behaviour.harness_tasks needs lm-evaluation-harness, which is not installed: {INSTALL}") from None


def metric_name(task: str, metric: str) -> str:
    """``harness/<task>/<metric>``: the harness's ``acc,none`` is ``acc``, another filter is kept
    after an underscore; characters MLflow refuses become underscores."""
    name, _, filt = metric.partition(",")
    key = name if filt in ("", "none") else f"{name}_{filt}"
    return HARNESS + re.sub(r"[^\w\-. /]", "_", f"{task}/{key}")


def run(model, tokenizer, spec: BehaviourSpec, device) -> dict[str, float]:
    """The harness's scores of the model (already loaded, in eval mode) on ``spec.harness_tasks``."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=spec.batch_size, device=str(device))
    manager = TaskManager(include_path=spec.harness_include)
    try:
        results = lm_eval.simple_evaluate(model=lm, tasks=list(spec.harness_tasks), task_manager=manager,
                                          limit=spec.harness_limit, log_samples=False)
    except KeyError as e:  # the harness's error for a task name it does not know
        raise ConfigError(f"trial.behaviour.harness_tasks: unknown task {e}; see `lm_eval --tasks list`") from None
    return {metric_name(task, metric): float(value) for task, values in results["results"].items()
            for metric, value in values.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and "_stderr" not in metric}
