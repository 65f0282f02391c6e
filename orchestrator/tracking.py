"""MLflow: one experiment per sweep, a parent run per sweep, a child run per trial.

Everything goes through an explicit ``MlflowClient`` (no global active run), and every
write is idempotent — a child run is found by its trial-id tag before one is created, and
metric points already logged are skipped — so a resumed sweep or a later ``sync`` adds
what is missing and never duplicates.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
import urllib.parse
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from orchestrator import mlflow_view
from orchestrator.redact import redact_logs, redact_text
from orchestrator.resume import model_dir
from workers import metrics as names

if TYPE_CHECKING:
    from orchestrator.pareto import Summary

log = logging.getLogger("rightsweep.tracking")
TRIAL_TAG = "rightsweep.trial_id"
ROLE_TAG = "rightsweep.role"
STAGE_TAG = "rightsweep.stage"
BATCH = 900  # MLflow's log_batch takes at most 1000 metrics a call
SAMPLES_DIR = "samples"
MODEL_DIR = "model"  # a front trial's weights and tokenizer in its run's artifacts (save_pretrained's folder)
# The final point of a trial, as ``final/<metric>`` on its run: (metric, field of a pareto Row).
FINAL = ((names.SFT_LOSS, "sft_loss"), (names.DPO_LOSS, "dpo_loss"), (names.PREF_ACCURACY, "pref_accuracy"),
         (names.GEN_SFT_ACCURACY, "sft_accuracy"), (names.GEN_PREF_WIN_RATE, "pref_win_rate"))


def samples_file(step: int) -> str:
    """The table artifact of one evaluation's sample generations."""
    return f"{SAMPLES_DIR}/step_{int(step):07d}.json"


def tracking_uri(configured: str | None, storage: str) -> str:
    """Config first, then ``MLFLOW_TRACKING_URI``, else an SQLite store under storage
    (MLflow 3 refuses a plain file store unless forced)."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(storage) / 'mlflow.db'}"


def registered_model(experiment: str, parent_id: str) -> str:
    """The registry name of one sweep's front models (a sweep is one parent run)."""
    return f"{experiment}-front-{parent_id[:8]}"


def dataset_inputs(records: list[dict]) -> list[DatasetInput]:
    """The sweep's datasets as a run's inputs (the UI's Datasets column and panel): where
    each is read from, a digest of its contents, the columns read (as MLflow's column
    schema) and the rows its training and held-out splits kept."""
    def source(r: dict) -> str:
        return json.dumps({"path": r["source"], "split": r["split"]} if r["source_type"] == "hugging_face" else {"uri": r["source"]})

    return [DatasetInput(Dataset(name=r["name"], digest=r["digest"], source_type=r["source_type"], source=source(r),
                                 schema=json.dumps({"mlflow_colspec": [{"type": "string", "name": c} for c in r["columns"].values()]}),
                                 profile=json.dumps({"train_rows": r["train_rows"], "eval_rows": r["eval_rows"]})),
                         tags=[InputTag(MLFLOW_DATASET_CONTEXT, "training")]) for r in records]


def trajectory_metrics(points: list[dict]) -> list[Metric]:
    now = int(time.time() * 1000)
    return [
        Metric(key, float(value), now, int(p[names.STEP]))
        for p in points
        for key, value in p.items()
        if key.startswith(names.TRAJECTORY_PREFIXES) and isinstance(value, (int, float)) and math.isfinite(value)
    ]


def runs_page(uri: str, experiment: str) -> str | None:
    """The UI's page of a sweep's trial runs, on its saved view where this MLflow has it
    (None when the store has no such experiment)."""
    try:
        found = MlflowClient(uri).get_experiment_by_name(experiment)
    except MlflowException:
        return None
    if found is None:
        return None
    return mlflow_view.page(found.experiment_id, mlflow_view.TRIALS if mlflow_view.TAG_PREFIX + mlflow_view.TRIALS in found.tags
                            and mlflow_view.supported(mlflow.__version__) else None)


class Tracker:
    def __init__(self, uri: str, experiment: str, storage: str):
        # MLflow retries a failed request 7 times with exponential backoff (minutes per call):
        # a stopped server must cost a sweep seconds. The user's own settings win.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        if redact_text(uri) != uri:  # MLflow prints "View run … at: <tracking URI>/…" as runs end
            os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        self.uri, self.experiment, self.storage = uri, experiment, storage
        self.datasets: list[dict] = []  # the sweep's data (workers.data.dataset_record), logged as each new run's inputs
        self.client = MlflowClient(uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            # A local store keeps artifacts beside it, not in ./mlruns of whatever cwd.
            location = (Path(storage) / "mlartifacts" / experiment).as_uri() if uri.startswith("sqlite:") else None
            # The kind labels the experiment "Machine learning"; which page the UI opens on is
            # the URL's choice in MLflow 3.17 (mlflow_view.page).
            self.experiment_id = self.client.create_experiment(
                experiment, artifact_location=location, tags={"mlflow.experimentKind": "custom_model_development"}
            )
        else:
            self.experiment_id = found.experiment_id
        self._save_views()
        self._steps: dict[str, set[int]] = {}
        self._sample_files: dict[str, set[str]] = {}

    def _save_views(self) -> None:
        """The UI's saved views of the trial runs and the front (``orchestrator.mlflow_view``),
        on a version whose UI format is known; another version's UI opens on its own default.
        Written when missing or different (the times in a view's envelope are not compared)."""
        if not mlflow_view.supported(mlflow.__version__):
            return
        have = self.client.get_experiment(self.experiment_id).tags
        for key, value in mlflow_view.views().items():
            if key not in have or mlflow_view.read_envelope(have[key]) != mlflow_view.read_envelope(value):
                self.client.set_experiment_tag(self.experiment_id, key, value)

    def artifacts_elsewhere(self, run) -> Path | None:
        """Where a run of a local store keeps its artifacts, when that is outside this storage:
        the store was copied from another folder, and its runs' artifact URIs (absolute, as
        MLflow stores them) still name that folder's files."""
        location = urllib.parse.urlparse(run.info.artifact_uri)
        if not self.uri.startswith("sqlite:") or location.scheme != "file":
            return None
        folder = Path(urllib.parse.unquote(location.path))
        return None if folder.resolve().is_relative_to(Path(self.storage).resolve()) else folder

    def start_parent(self, name: str, params: dict, run_id: str | None = None) -> str:
        """A new parent run, or the given one (a resumed sweep), reopened."""
        if run_id is not None:
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags={ROLE_TAG: "sweep"})
        self.log_params(run.info.run_id, params)
        self.log_datasets(run.info.run_id)
        return run.info.run_id

    @contextlib.contextmanager
    def system_metrics(self, run_id: str, every_s: float | None):
        """MLflow's system metrics (``system/cpu_utilization_percentage``, memory, disk,
        network, GPUs) of this machine on ``run_id`` every ``every_s`` seconds (None: off),
        from a thread, while the block runs and the run is RUNNING; a resumed sweep's go on
        from its last step."""
        if every_s is None:
            yield
            return
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        redact_logs("mlflow")  # its thread's warnings name the tracking URI
        monitor = SystemMetricsMonitor(run_id, sampling_interval=every_s, resume_logging=True, tracking_uri=self.uri)
        monitor.start()
        try:
            yield
        finally:
            monitor.finish()

    def log_datasets(self, run_id: str) -> None:
        if self.datasets:
            self.client.log_inputs(run_id, datasets=dataset_inputs(self.datasets))

    def log_params(self, run_id: str, params: dict) -> None:
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    def trial_run(self, parent_id: str, trial_id: str, label: str, params: dict, stage: str, running: bool = False) -> str:
        """The child run of a trial: found by its tag, else created under the parent. A found
        run gets the params it lacks (MLflow may have gone away between creating it and
        logging them), and is set RUNNING again when ``running`` (a resumed trial starts)."""
        found = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{TRIAL_TAG}` = '{trial_id}'", max_results=1)
        if found:
            run = found[0]
            self.log_params(run.info.run_id, {k: v for k, v in params.items() if k not in run.data.params})
            if running and run.info.status != "RUNNING":
                self.client.update_run(run.info.run_id, status="RUNNING")
            return run.info.run_id
        tags = {"mlflow.parentRunId": parent_id, TRIAL_TAG: trial_id, ROLE_TAG: "trial", STAGE_TAG: stage,
                "schedule": str(params.get("schedule")), "stage": stage}
        run = self.client.create_run(self.experiment_id, run_name=label, tags=tags)
        self.log_params(run.info.run_id, params)
        self.log_datasets(run.info.run_id)
        return run.info.run_id

    def log_points(self, run_id: str, points: list[dict]) -> int:
        """Log the trajectory points whose step the run lacks (a gap left by an outage
        too, not only what is newer); returns how many."""
        if run_id not in self._steps:
            self._steps[run_id] = {m.step for m in self.client.get_metric_history(run_id, names.SFT_LOSS)}
        have = self._steps[run_id]
        new = [p for p in points if int(p[names.STEP]) not in have]
        for p in new:
            if p.get(names.SAMPLES):
                self.log_samples(run_id, int(p[names.STEP]), p[names.SAMPLES])
        metrics = trajectory_metrics(new)
        for i in range(0, len(metrics), BATCH):
            self.client.log_batch(run_id, metrics=metrics[i : i + BATCH])
        have.update(int(p[names.STEP]) for p in new)
        return len(new)

    def log_samples(self, run_id: str, step: int, samples: list[dict]) -> None:
        """One evaluation's sample generations as a table artifact (the run's Artifacts show
        it as a table), once: MLflow appends to a table logged again."""
        if run_id not in self._sample_files:
            self._sample_files[run_id] = {f.path for f in self.client.list_artifacts(run_id, SAMPLES_DIR)}
        path = samples_file(step)
        if path in self._sample_files[run_id]:
            return
        columns = {k: [s[k] for s in samples] for k in samples[0]}
        with warnings.catch_warnings():  # pandas 3 deprecates a dtype selection inside MLflow's log_table
            warnings.filterwarnings("ignore", message="For backward compatibility, 'str' dtypes")
            self.client.log_table(run_id, {"step": [step] * len(samples), **columns}, artifact_file=path)
        self._sample_files[run_id].add(path)

    def samples(self, run_id: str, step: int) -> list[dict] | None:
        """The sample generations logged at one step, as the trial reported them."""
        import tempfile

        try:
            with tempfile.TemporaryDirectory() as d:
                table = json.loads(Path(self.client.download_artifacts(run_id, samples_file(step), d)).read_text())
        except (OSError, MlflowException):  # none logged at that step (an older run, or samples off)
            return None
        keys = [c for c in table["columns"] if c != "step"]
        return [{k: row[table["columns"].index(k)] for k in keys} for row in table["data"]]

    def finish(self, run_id: str, ok: bool = True, status: str | None = None) -> None:
        """End a run FINISHED or FAILED (or as ``status`` says, e.g. KILLED), unless it already
        ended so (a trial that had finished completes again with nothing new: its end time stays)."""
        status = status or RunStatus.to_string(RunStatus.FINISHED if ok else RunStatus.FAILED)
        if self.client.get_run(run_id).info.status != status:
            self.client.set_terminated(run_id, status)

    def kill_running(self, parent_id: str) -> int:
        """An interrupted sweep's trial runs still RUNNING end KILLED; returns how many.
        Asked of MLflow, not of the live mirror's memory: after Tune returned, no trial runs,
        and a run the mirror created as the signal came in is one it may not have recorded."""
        running = [r for r in self.child_runs(parent_id) if r.info.status == "RUNNING"]
        for run in running:
            self.client.set_terminated(run.info.run_id, "KILLED")
        return len(running)

    def set_tags(self, run_id: str, tags: dict) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def child_runs(self, parent_id: str | None = None) -> list:
        """Trial runs of this experiment (of one parent, if given), all pages."""
        flt = f"tags.`{ROLE_TAG}` = 'trial'"
        if parent_id:
            flt += f" and tags.`mlflow.parentRunId` = '{parent_id}'"
        runs, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string=flt, max_results=1000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def latest_parent(self):
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{ROLE_TAG}` = 'sweep'", order_by=["attributes.start_time DESC"], max_results=1
        )
        return runs[0] if runs else None

    def trajectory(self, run_id: str, keys: tuple[str, ...]) -> list[dict]:
        """Points by step, rebuilt from the metric histories."""
        by_step: dict[int, dict] = {}
        for key in keys:
            for m in self.client.get_metric_history(run_id, key):
                by_step.setdefault(m.step, {names.STEP: m.step})[key] = m.value
        return [by_step[s] for s in sorted(by_step)]

    def mark_trials(self, parent_id: str, summary: "Summary") -> None:
        """On each main trial's run, its final point as ``final/…`` metrics (a chart of latest
        values then never shows a stopped trial's intermediate point: stopped trials get
        none) and the tags ``on_front`` and ``on_behaviour_front`` of its cell."""
        runs = {r.data.tags.get(TRIAL_TAG): r.info.run_id for r in self.child_runs(parent_id)}
        front = {(c.schedule, c.lam) for c in summary.cells if c.on_front}
        behaviour = {(c.schedule, c.lam) for c in summary.cells if c.on_behaviour_front}
        now = int(time.time() * 1000)
        for row in summary.rows:
            if (run_id := runs.get(row.trial_id)) is None:
                continue
            values = {names.final(key): getattr(row, field) for key, field in FINAL}
            self.client.log_batch(
                run_id, metrics=[Metric(k, float(v), now, 0) for k, v in values.items() if math.isfinite(v)],
                tags=[RunTag("on_front", str((row.schedule, row.lam) in front).lower()),
                      RunTag("on_behaviour_front", str((row.schedule, row.lam) in behaviour).lower())])

    def register_front(self, parent_id: str, summary: "Summary") -> tuple[str, int]:
        """The front's models in MLflow's registry: one registered model per sweep, a version
        per trial of a front cell (every seed), tagged with its schedule, λ, seed and trial.
        Each is copied once from storage into its run's artifacts (``model/``); a version whose
        trial is no longer on the front (the front rebuilt with more trials) is deleted.
        Returns (name, versions)."""
        name = registered_model(self.experiment, parent_id)
        runs = {r.data.tags.get(TRIAL_TAG): r for r in self.child_runs(parent_id)}
        front = {(c.schedule, c.lam) for c in summary.cells if c.on_front}
        wanted = {r.trial_id: r for r in summary.rows if (r.schedule, r.lam) in front and r.trial_id in runs}
        try:
            self.client.get_registered_model(name)
        except MlflowException:
            self.client.create_registered_model(name, tags={"experiment": self.experiment, "parent_run_id": parent_id},
                                                description=f"the Pareto front of sweep run {parent_id} ({self.experiment})")
        have = {v.tags.get(TRIAL_TAG): v for v in self.client.search_model_versions(f"name = '{name}'")}
        for trial_id, version in have.items():
            if trial_id not in wanted:
                self.client.delete_model_version(name, version.version)
        for trial_id, row in wanted.items():
            if trial_id in have:
                continue
            folder = model_dir(Path(self.storage) / self.experiment, trial_id)
            if not folder.is_dir():
                log.warning("front trial %s has no model at %s: not registered", trial_id, folder)
                continue
            run = runs[trial_id].info
            if not self.client.list_artifacts(run.run_id, MODEL_DIR):
                self.client.log_artifacts(run.run_id, str(folder), MODEL_DIR)
            self.client.create_model_version(
                name, source=f"{run.artifact_uri}/{MODEL_DIR}", run_id=run.run_id,
                tags={"schedule": row.schedule, "lam": str(row.lam), "seed": str(row.seed), TRIAL_TAG: trial_id},
                description=f"{row.schedule} λ {row.lam} seed {row.seed}: final f_SFT {row.sft_loss:.4f}, f_DPO {row.dpo_loss:.4f}")
        return name, len(self.client.search_model_versions(f"name = '{name}'"))

    def publish_front(self, parent_id: str, summary: "Summary", report_dir: Path, ok: bool = True,
                      register: bool = True) -> str:
        """A sweep's report files, f*, hypervolumes and their reference point on its run, the
        front's models registered (``register``), and its end. Returns where the models are."""
        for f in sorted(report_dir.iterdir()):
            self.client.log_artifact(parent_id, str(f))
        # Metrics and a tag, not params: a front rebuilt from part of a sweep has another f* and
        # reference point than the finished sweep, and MLflow refuses to change a param.
        values = {names.hypervolume(k): v for k, v in summary.hypervolume.items()}
        values.update({names.behaviour_hypervolume(k): v for k, v in summary.behaviour_hypervolume.items()})
        values.update({names.hypervolume_reference(k): v for k, v in zip(names.OBJECTIVES, summary.reference_point)})
        if summary.anchors is not None:
            values.update({names.f_star("sft"): summary.anchors.f_star_sft, names.f_star("dpo"): summary.anchors.f_star_dpo})
        now = int(time.time() * 1000)
        self.client.log_batch(parent_id, metrics=[Metric(k, v, now, 0) for k, v in values.items()])
        self.mark_trials(parent_id, summary)
        models = "front models: on storage only (tracking.register_models is off)"
        if register:
            name, versions = self.register_front(parent_id, summary)
            models = f"front models: registered model {name!r}, {versions} version(s), models:/{name}/<version>"
        self.set_tags(parent_id, {"hypervolume_reference": summary.reference_rule})
        self.finish(parent_id, ok)
        return models
