"""Saved views of the MLflow UI for a sweep's experiment: the trial runs (no parent to
expand), their final losses as a scatter in loss space, the behaviour beside it, and the
front alone. MLflow 3.17 keeps a saved view as the experiment tag
``mlflow.sharedViewState.<key>`` and opens it with ``?viewStateShareKey=<key>``; the format
is the UI's own (an envelope of name, times and a deflated JSON state), pinned here for the
versions a browser test has checked, and left out on others."""

from __future__ import annotations

import base64
import json
import time
import zlib

from workers import metrics as names

TAG_PREFIX = "mlflow.sharedViewState."
CHECKED = ("3.17.",)  # MLflow versions whose UI the chromium test opened these views in
TRIALS, FRONT = "rightsweep-trials", "rightsweep-front"
ROLE_FILTER = "tags.`rightsweep.role` = 'trial'"


def supported(mlflow_version: str) -> bool:
    return mlflow_version.startswith(CHECKED)


def _scatter(uid: str, title: str, x: str, y: str) -> dict:
    return {"uuid": uid, "type": "SCATTER", "runsCountToCompare": 1000, "metricSectionId": "rightsweep", "deleted": False,
            "isGenerated": False, "displayName": title, "xaxis": {"key": x, "type": "METRIC"}, "yaxis": {"key": y, "type": "METRIC"}}


def view_state(search_filter: str) -> dict:
    """The runs page's state: the runs that ``search_filter`` keeps, sorted by schedule, with
    their λ, seed, final losses and front tag as columns, and the charts first."""
    final_sft, final_dpo = names.final(names.SFT_LOSS), names.final(names.DPO_LOSS)
    return {
        "searchFilter": search_filter, "orderByKey": "params.`schedule`", "orderByAsc": True, "startTime": "ALL",
        "lifecycleFilter": "Active", "datasetsFilter": [], "modelVersionFilter": "All Runs",
        "selectedColumns": ["params.`schedule`", "params.`lam`", "params.`seed`", f"metrics.`{final_sft}`",
                            f"metrics.`{final_dpo}`", "tags.`on_front`"],
        "columnOrder": [], "columnWidths": {}, "runsHiddenMode": "SHOW_ALL", "viewMaximized": False, "runListHidden": False,
        "isAccordionReordered": True, "useGroupedValuesInCharts": False, "hideEmptyCharts": True, "groupBy": None,
        "groupsExpanded": {}, "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0, "selectedXAxisMetricKey": ""},
        "compareRunSections": [{"uuid": "rightsweep", "name": "Pareto", "display": True, "isReordered": False, "deleted": False,
                                "isGenerated": False}],
        "compareRunCharts": [
            _scatter("rightsweep-losses", "final f_SFT vs f_DPO (lower is better)", final_sft, final_dpo),
            _scatter("rightsweep-behaviour", "final sft_accuracy vs pref_win_rate (higher is better)",
                     names.final(names.GEN_SFT_ACCURACY), names.final(names.GEN_PREF_WIN_RATE)),
        ],
    }


def envelope(name: str, state: dict, now_ms: int | None = None) -> str:
    """The tag's value as the UI writes it: JSON of name, times and the state, deflated."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    packed = "deflate;" + base64.b64encode(zlib.compress(json.dumps(state).encode())).decode()
    return json.dumps({"name": name, "createdAt": now, "updatedAt": now, "state": packed})


def read_envelope(value: str) -> tuple[str, dict]:
    """(name, state) of a saved view's tag value: the inverse of ``envelope``."""
    outer = json.loads(value)
    return outer["name"], json.loads(zlib.decompress(base64.b64decode(outer["state"].removeprefix("deflate;"))))


def views() -> dict[str, str]:
    """Tag → value of the sweep's two views: every trial run, and the front's alone."""
    return {TAG_PREFIX + TRIALS: envelope("Trials (rightsweep)", view_state(ROLE_FILTER)),
            TAG_PREFIX + FRONT: envelope("Pareto front (rightsweep)", view_state(f"{ROLE_FILTER} and tags.`on_front` = 'true'"))}


def page(experiment_id: str, view: str | None) -> str:
    """The UI's address (after its host) of the experiment's runs: in MLflow 3.17 an experiment
    opens on the GenAI overview unless the URL (or the browser's last choice) says
    ``workflowType=machine_learning``; its ``mlflow.experimentKind`` tag is not consulted."""
    query = "workflowType=machine_learning" + (f"&viewStateShareKey={view}&compareRunsMode=CHART" if view else "")
    return f"#/experiments/{experiment_id}/runs?{query}"
