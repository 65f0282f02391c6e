"""A diverging trial fails fast, naming the step and the objective; in a sweep the other
trials go on."""

import csv
import math
import os
import re
import subprocess
import sys

import pytest

from orchestrator.config import load_config
from workers.loop import fit
from workers.session import LocalSession


@pytest.mark.parametrize("schedule", ["alright", "mix"])
def test_a_huge_learning_rate_fails_at_the_next_report_naming_step_and_objective(cache_dir, schedule):
    cfg = load_config("smoke", [f"trial.cache_dir={cache_dir}"]).trial
    train = cfg.train.model_copy(update={"schedule": schedule, "lr": 1e30, "total_steps": 200, "eval_every": 10})
    session = LocalSession()
    with pytest.raises(FloatingPointError, match=r"training diverged: the (SFT|DPO) loss was (nan|inf|-inf) at step ([1-9]|10) "
                                                 r"\(trial.train.lr=1e\+30\)"):
        fit(cfg.model_copy(update={"train": train}), session)
    assert [r["step"] for r in session.reports] == [0], "no report after the divergence"


def test_in_a_sweep_the_diverging_trials_fail_and_the_others_make_the_front(cache_dir, tmp_path):
    """Mix trials with a huge learning rate diverge; the ALRIGHT trials finish and the
    front is built from them alone."""
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", "sweep", "--config", "smoke", "--set", f"storage={tmp_path}",
         "--set", f"trial.cache_dir={cache_dir}", "--set", "sweep.schedules=[alright, mix]", "--set", "sweep.lams=[0.25, 0.75]",
         "--set", "trial.train.f_star_sft=1.0", "--set", "trial.train.f_star_dpo=0.5",
         "--set", "sweep.per_schedule={mix: {lr: 1.0e+30}}"],
        capture_output=True, text=True, timeout=600, env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    diverged = re.findall(r"training diverged: the (SFT|DPO) loss was (?:nan|inf|-inf) at step (\d+) \(trial.train.lr=1e\+30\)",
                          proc.stderr)
    assert len({line for line in proc.stderr.splitlines() if "rightsweep.sweep: trial mix-lam" in line and "failed" in line}) == 2
    assert diverged and all(int(step) <= 20 for _, step in diverged), "fails at the first report after the NaN"
    assert "2 trial(s) failed" in proc.stdout
    with open(tmp_path / "smoke" / "report" / "pareto.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["schedule"], float(r["lam"])) for r in rows) == [("alright", 0.25), ("alright", 0.75)]
    assert all(math.isfinite(float(r["sft_loss"])) and math.isfinite(float(r["dpo_loss"])) for r in rows)
