"""MLflow writes are idempotent and fill gaps, on a real SQLite store."""

import json
import os
import shutil
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from orchestrator.tracking import ROLE_TAG, TRIAL_TAG, Tracker


def test_a_trial_run_left_without_params_gets_them_and_no_twin(tmp_path):
    """MLflow went away between creating a trial's run and logging its params: the next
    mirror (live or ``sync``) finds the run by its tag and logs what it lacks."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri, "exp", str(tmp_path))
    parent = tracker.start_parent("exp", {"name": "exp"})
    client = MlflowClient(uri)
    orphan = client.create_run(tracker.experiment_id, run_name="alright-lam0.5-seed0",
                               tags={"mlflow.parentRunId": parent, TRIAL_TAG: "t1", ROLE_TAG: "trial"})
    params = {"schedule": "alright", "lam": 0.5, "seed": 0}
    assert tracker.trial_run(parent, "t1", "alright-lam0.5-seed0", params, "main") == orphan.info.run_id
    assert client.get_run(orphan.info.run_id).data.params == {"schedule": "alright", "lam": "0.5", "seed": "0"}
    assert tracker.trial_run(parent, "t1", "alright-lam0.5-seed0", params, "main") == orphan.info.run_id  # again: nothing to add
    runs = client.search_runs([tracker.experiment_id], filter_string=f"tags.`{TRIAL_TAG}` = 't1'")
    assert len(runs) == 1


def test_an_interrupted_sweep_kills_every_trial_run_still_running(tmp_path):
    """Whoever created them (the live mirror, or nobody the driver knows of): after Tune
    returned, this parent's RUNNING trial runs end KILLED; finished ones and another
    sweep's stay as they were."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri, "exp", str(tmp_path))
    parent, other = tracker.start_parent("exp", {"name": "exp"}), tracker.start_parent("exp2", {"name": "exp"})
    ids = {label: tracker.trial_run(parent, label, label, {}, "main", running=True) for label in ("done", "cut", "starting")}
    elsewhere = tracker.trial_run(other, "x", "x", {}, "main", running=True)
    tracker.finish(ids["done"])
    assert tracker.kill_running(parent) == 2
    client = MlflowClient(uri)
    assert {label: client.get_run(i).info.status for label, i in ids.items()} == {
        "done": "FINISHED", "cut": "KILLED", "starting": "KILLED"}
    assert client.get_run(elsewhere).info.status == "RUNNING"


def test_the_front_marks_each_trial_run_with_its_final_point_and_front_membership(tmp_path):
    """mix λ 0.5 dominates alright λ 0.5: only mix's run is tagged on_front; both get their
    final losses as final/… metrics, a trial on no row (a stopped one) gets nothing."""
    import math

    from orchestrator.pareto import TrialResult, summarize

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri, "exp", str(tmp_path))
    parent = tracker.start_parent("exp", {"name": "exp"})
    labels = ["mix-lam0.5-seed0", "alright-lam0.5-seed0", "sequential-lam0.5-seed0"]
    ids = {label: tracker.trial_run(parent, label, label, {"schedule": label.split("-")[0]}, "main") for label in labels}
    summary = summarize([TrialResult(labels[0], "mix", 0.5, 0, 0.4, 0.5), TrialResult(labels[1], "alright", 0.5, 0, 0.6, 0.7)],
                        None, initial_point=(2.0, math.log(2)))
    (report := tmp_path / "report").mkdir()
    (report / "pareto.csv").write_text("trial_id\n")
    tracker.publish_front(parent, summary, report)
    client = MlflowClient(uri)
    mix, alright, stopped = (client.get_run(ids[label]).data for label in labels)
    assert mix.tags["on_front"] == "true" and alright.tags["on_front"] == "false"
    assert (mix.metrics["final/eval/sft_loss"], mix.metrics["final/eval/dpo_loss"]) == (0.4, 0.5)
    assert alright.metrics["final/eval/sft_loss"] == 0.6 and "final/gen/sft_accuracy" not in alright.metrics  # NaN: not logged
    assert "on_front" not in stopped.tags and not [k for k in stopped.metrics if k.startswith("final/")]


def test_the_front_is_registered_once_a_version_per_front_trial(tmp_path):
    """Mix λ 0.5 (two seeds) is the front: two versions, tagged, their files copied into the
    runs' artifacts. Published again, nothing is added; once ALRIGHT λ 0.5 dominates, Mix's
    versions go and ALRIGHT's comes; a front trial without a model folder is skipped."""
    import math

    from orchestrator.pareto import TrialResult, summarize
    from orchestrator.resume import model_dir
    from orchestrator.tracking import registered_model

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri, "exp", str(tmp_path))
    parent = tracker.start_parent("exp", {"name": "exp"})
    labels = ["mix-lam0.5-seed0", "mix-lam0.5-seed1", "alright-lam0.5-seed0"]
    for label in labels:
        tracker.trial_run(parent, label, label, {}, "main")
        (folder := model_dir(tmp_path / "exp", label)).mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"trial": label}))
    mix = [TrialResult(labels[0], "mix", 0.5, 0, 0.4, 0.5), TrialResult(labels[1], "mix", 0.5, 1, 0.42, 0.52)]
    alright = TrialResult(labels[2], "alright", 0.5, 0, 0.6, 0.7)
    client, name = MlflowClient(uri), registered_model("exp", parent)

    def versions():
        return {v.tags[TRIAL_TAG]: v for v in client.search_model_versions(f"name = '{name}'")}

    summary = summarize([*mix, alright], None, initial_point=(2.0, math.log(2)))
    assert tracker.register_front(parent, summary) == (name, 2)
    assert tracker.register_front(parent, summary) == (name, 2)
    got = versions()
    assert set(got) == set(labels[:2]) and (got[labels[1]].tags["schedule"], got[labels[1]].tags["seed"]) == ("mix", "1")
    source = client.get_model_version_download_uri(name, got[labels[1]].version)
    local = mlflow.artifacts.download_artifacts(source, dst_path=str(tmp_path / "dl"), tracking_uri=uri)
    assert json.loads((Path(local) / "config.json").read_text()) == {"trial": labels[1]}
    better = TrialResult(labels[2], "alright", 0.5, 0, 0.3, 0.4)
    assert tracker.register_front(parent, summarize([*mix, better], None, initial_point=(2.0, math.log(2)))) == (name, 1)
    assert set(versions()) == {labels[2]}
    shutil.rmtree(model_dir(tmp_path / "exp", labels[0]))
    assert tracker.register_front(parent, summary) == (name, 1), "a front trial with no model folder is skipped"
    assert set(versions()) == {labels[1]}


def test_the_experiment_carries_the_uis_saved_views_once(tmp_path):
    """Two views (every trial run; the front's) as MLflow 3.17's UI stores them: an envelope
    whose state deflates to the runs page's JSON. A second Tracker writes nothing new."""
    from orchestrator import mlflow_view
    from orchestrator.tracking import runs_page

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri, "exp", str(tmp_path))
    tags = MlflowClient(uri).get_experiment(tracker.experiment_id).tags
    name, state = mlflow_view.read_envelope(tags["mlflow.sharedViewState.rightsweep-trials"])
    assert name == "Trials (rightsweep)" and state["searchFilter"] == "tags.`rightsweep.role` = 'trial'"
    assert state["runsHiddenMode"] == "SHOW_ALL"
    losses = state["compareRunCharts"][0]
    assert (losses["type"], losses["xaxis"]["key"], losses["yaxis"]["key"]) == ("SCATTER", "final/eval/sft_loss", "final/eval/dpo_loss")
    _, front = mlflow_view.read_envelope(tags["mlflow.sharedViewState.rightsweep-front"])
    assert front["searchFilter"].endswith("and tags.`on_front` = 'true'")
    Tracker(uri, "exp", str(tmp_path))
    assert MlflowClient(uri).get_experiment(tracker.experiment_id).tags == tags, "the same views are not written again"
    assert runs_page(uri, "exp") == (f"#/experiments/{tracker.experiment_id}/runs?workflowType=machine_learning"
                                     "&viewStateShareKey=rightsweep-trials&compareRunsMode=CHART")
    assert runs_page(uri, "no-such-sweep") is None


def test_the_sweeps_datasets_are_the_inputs_of_its_run_and_of_each_trial_run(tmp_path, shared_fixture):
    """Records as ``prepare`` makes them from the real Alpaca fixture: the source, a digest
    of its bytes, the columns read and the rows kept, on the sweep run and on each trial run
    it creates (a found run is left as it is)."""
    from workers.config import DatasetSpec
    from workers.data import dataset_record

    alpaca = shared_fixture("alpaca_tiny.json")
    record = dataset_record(DatasetSpec(source=str(alpaca)), "sft", str(tmp_path / "cache"), 40, 8)
    hub = {**record, "name": "pref", "source": "org/pairs", "source_type": "hugging_face", "digest": "0123456789ab",
           "columns": {"prompt": "question", "chosen": "a", "rejected": "b"}}
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri, "exp", str(tmp_path))
    tracker.datasets = [record, hub]
    parent = tracker.start_parent("exp", {"name": "exp"})
    child = tracker.trial_run(parent, "t1", "mix-lam0.5-seed0", {}, "main")
    tracker.trial_run(parent, "t1", "mix-lam0.5-seed0", {}, "main")  # found again: no second set of inputs
    client = MlflowClient(uri)
    for run_id in (parent, child):
        inputs = {d.dataset.name: d for d in client.get_run(run_id).inputs.dataset_inputs}
        assert sorted(inputs) == ["pref", "sft"]
        sft = inputs["sft"].dataset
        assert json.loads(sft.source) == {"uri": str(alpaca.resolve())} and sft.source_type == "local"
        assert len(sft.digest) == 12 and json.loads(sft.profile) == {"train_rows": 40, "eval_rows": 8}
        assert [c["name"] for c in json.loads(sft.schema)["mlflow_colspec"]] == ["instruction", "input", "output"]
        assert json.loads(inputs["pref"].dataset.source) == {"path": "org/pairs", "split": "train"}
        assert {t.key: t.value for t in inputs["sft"].tags} == {"mlflow.data.context": "training"}
    # The digest is of the file's bytes: another file, another digest.
    other = tmp_path / "other.json"
    other.write_text(json.dumps(json.loads(alpaca.read_text())[:1]))
    assert dataset_record(DatasetSpec(source=str(other)), "sft", str(tmp_path / "cache"), 1, 0)["digest"] != record["digest"]


def test_system_metrics_are_sampled_onto_the_sweep_run_while_it_runs(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri, "exp", str(tmp_path))
    parent = tracker.start_parent("exp", {"name": "exp"})
    import time

    with tracker.system_metrics(parent, 0.2):
        time.sleep(1.5)
    metrics = MlflowClient(uri).get_run(parent).data.metrics
    assert 0 <= metrics["system/cpu_utilization_percentage"] <= 100 * (os.cpu_count() or 1)
    assert metrics["system/system_memory_usage_megabytes"] > 0
    steps = MlflowClient(uri).get_metric_history(parent, "system/cpu_utilization_percentage")
    assert len(steps) >= 2
    with tracker.system_metrics(parent, None):  # off
        pass
