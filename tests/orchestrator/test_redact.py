from orchestrator.redact import MASK, redact, redact_text
from orchestrator.mirror import trial_params
from orchestrator.space import Point
from orchestrator.sweep import flatten


def test_uri_passwords_are_removed():
    assert redact_text("postgresql://alice:s3cr3t@db:5432/mlflow") == f"postgresql://alice:{MASK}@db:5432/mlflow"
    assert redact_text("https://user:tok@host/x and s3://bucket/key") == f"https://user:{MASK}@host/x and s3://bucket/key"
    assert redact_text("sqlite:////tmp/x/mlflow.db") == "sqlite:////tmp/x/mlflow.db"


def test_secret_looking_keys_are_masked_at_any_depth():
    raw = {"a": {"hf_token": "hf_abc", "api_key": "k", "password": "p", "name": "fine"},
           "uris": ["mysql://u:p@h/db"], "steps": 3, "aws_secret_access_key": "zzz", "empty_token": ""}
    out = redact(raw)
    assert out["a"] == {"hf_token": MASK, "api_key": MASK, "password": MASK, "name": "fine"}
    assert out["uris"] == [f"mysql://u:{MASK}@h/db"] and out["steps"] == 3
    assert out["aws_secret_access_key"] == MASK and out["empty_token"] == ""
    assert raw["a"]["hf_token"] == "hf_abc", "the input is not modified"
    assert redact(flatten({"x": {"db_password": "p"}})) == {"x.db_password": MASK}


def test_logged_trial_params_carry_no_uri_password():
    from orchestrator.config import load_config

    cfg = load_config("smoke", ["trial.data.sft.source=https://user:hunter2@example.org/data.jsonl"])
    params = trial_params(cfg, Point("main", "alright", 0.5, 0))
    assert "hunter2" not in str(params) and params["sft_data"] == f"https://user:{MASK}@example.org/data.jsonl"


def test_a_librarys_log_lines_lose_their_uri_passwords_children_included():
    import io
    import logging

    from orchestrator.redact import redact_logs

    stream = io.StringIO()
    library = logging.getLogger("rs-test-library")
    library.addHandler(logging.StreamHandler(stream))
    library.propagate = False
    redact_logs("rs-test-library")
    redact_logs("rs-test-library")  # once is enough; twice adds nothing
    logging.getLogger("rs-test-library.monitor").warning("API request to %s failed", "http://alice:s3cret@10.0.0.1:5000/api")
    library.warning("plain line")
    assert stream.getvalue().splitlines() == ["API request to http://alice:***@10.0.0.1:5000/api failed", "plain line"]
    assert len(library.filters) == 1 and len(library.handlers[0].filters) == 1
