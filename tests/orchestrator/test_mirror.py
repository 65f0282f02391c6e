"""The live MLflow mirror's retry logic, on a fake clock and a fake tracker (the real
server's outage is tests/e2e/faults/test_mlflow_outage.py)."""

import logging
from types import SimpleNamespace

from orchestrator.mirror import RETRY_AFTER_S, MlflowSync, dedupe_steps
from orchestrator.space import Point


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FlakyTracker:
    """Records what the mirror writes; every call fails while ``down``."""

    def __init__(self, server):
        self.server = server

    def _up(self):
        if self.server.down:
            raise ConnectionError("MLflow is down")

    def trial_run(self, parent_id, trial_id, label, params, stage, running=False):
        self._up()
        self.server.calls.append(("trial_run", label, stage, running))
        return f"run-{label}"

    def log_points(self, run_id, points):
        self._up()
        self.server.calls.append(("log_points", run_id, [p["step"] for p in points]))
        return len(points)

    def set_tags(self, run_id, tags):
        self._up()
        self.server.calls.append(("set_tags", run_id, tags))

    def finish(self, run_id, ok=True, status=None):
        self._up()
        self.server.calls.append(("finish", run_id, status or ("FINISHED" if ok else "FAILED")))


class Server:
    def __init__(self):
        self.down = False
        self.calls = []
        self.connects = 0

    def connect(self):
        self.connects += 1
        if self.down:
            raise ConnectionError("MLflow is down")
        return FlakyTracker(self)


POINT = Point("main", "mix", 0.5, 0)


def trial(point=POINT):
    return SimpleNamespace(config={"point": point.as_dict()}, last_result={"time_total_s": 12.345})


def mirror(server, clock):
    return MlflowSync("sqlite:///unused", "exp", "/storage", "parent", lambda point: {"schedule": point.schedule},
                      clock=clock, connect=server.connect)


def test_a_trial_is_mirrored_start_points_end():
    server, clock = Server(), Clock()
    sync = mirror(server, clock)
    sync.start(trial())
    sync.result(trial(), {"step": 0, "eval/sft_loss": 3.0})
    sync.result(trial(), {"done": True})  # Tune's own last result: no step, nothing to log
    sync.complete(trial(), ok=True)
    assert server.calls == [
        ("trial_run", "mix-lam0.5-seed0", "main", True),
        ("log_points", "run-mix-lam0.5-seed0", [0]),
        ("set_tags", "run-mix-lam0.5-seed0", {"rightsweep.trial_wall_s": "12.35"}),
        ("finish", "run-mix-lam0.5-seed0", "FINISHED"),
    ]
    assert server.connects == 1, "one tracker for the whole sweep"


def test_an_outage_is_logged_once_and_mlflow_left_alone_until_the_retry(caplog):
    server, clock = Server(), Clock()
    sync = mirror(server, clock)
    sync.start(trial())
    server.down = True
    with caplog.at_level(logging.INFO, logger="rightsweep.mirror"):
        sync.result(trial(), {"step": 10})
        connects = server.connects
        clock.now += RETRY_AFTER_S - 1
        sync.result(trial(), {"step": 20})
        sync.result(trial(), {"step": 30})
        assert server.connects == connects, "within RETRY_AFTER_S nobody calls MLflow"
        clock.now += 2
        sync.result(trial(), {"step": 40})  # tried again: still down
        assert server.connects == connects + 1
        server.down = False
        clock.now += RETRY_AFTER_S
        sync.result(trial(), {"step": 50})
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "MLflow unavailable (ConnectionError)" in warnings[0].getMessage()
    assert "/storage/exp/tune" in warnings[0].getMessage(), "it says where the results wait"
    assert any("MLflow is back" in r.getMessage() for r in caplog.records)
    # Skipped points are not replayed here (backfill copies them from storage); the run is found again.
    assert [c for c in server.calls if c[0] == "log_points"] == [("log_points", "run-mix-lam0.5-seed0", [50])]


def test_the_pickled_mirror_holds_no_tracker_nor_run_ids():
    server, clock = Server(), Clock()
    sync = mirror(server, clock)
    sync.start(trial())
    state = sync.__getstate__()
    assert state["_tracker"] is None and state["_runs"] == {}
    assert "sqlite:///unused" not in str(state), "the URI (it may hold a password) stays out of Tune's pickles"


def test_dedupe_keeps_the_last_report_of_each_step():
    points = [{"step": 0, "x": 1}, {"step": 10, "x": 2}, {"step": 10, "x": 3}, {"step": 5, "x": 4}]
    assert dedupe_steps(points) == [{"step": 0, "x": 1}, {"step": 5, "x": 4}, {"step": 10, "x": 3}]
