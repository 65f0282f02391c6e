"""Progress lines of the long preparation steps, as a log or a CI file shows them."""

import logging
import time

from workers import progress


def test_a_long_step_logs_its_progress_rate_and_eta_a_short_one_nothing(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="rightsweep.progress")
    with progress.progress_bar(5, "short", "row") as bar:
        bar.update(5)
    assert not caplog.records

    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.2)
    with progress.progress_bar(10, "tokenizing sft train", "row") as bar:
        for _ in range(10):
            time.sleep(0.06)
            bar.update()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) >= 2 and all("\r" not in line for line in lines)
    assert all(line.startswith("tokenizing sft train:") for line in lines)
    assert "<" in lines[0] and "row/s" in lines[0]  # elapsed<remaining (the ETA) and the rate
    assert "10/10" in lines[-1] and "100%" in lines[-1]


def test_a_bar_not_shown_logs_nothing(caplog):
    caplog.set_level(logging.INFO, logger="rightsweep.progress")
    with progress.progress_bar(3, "rank 1", "pair", show=False) as bar:
        bar.update(3)
    assert not caplog.records
