"""A diverging trial fails fast, naming the step and the objective."""

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
