"""MLflow writes are idempotent and fill gaps, on a real SQLite store."""

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
