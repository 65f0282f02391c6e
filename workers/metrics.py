"""The names of what trials and sweeps report: spelled here once, read by the loop, the
driver, the MLflow mirror and the benchmarks. Pure strings; imports nothing."""

from __future__ import annotations

OBJECTIVES = ("sft", "dpo")

# One evaluation point of a trial's trajectory.
STEP = "step"
SFT_LOSS = "eval/sft_loss"  # mean NLL per held-out response token
DPO_LOSS = "eval/dpo_loss"  # mean DPO loss per held-out pair
PREF_ACCURACY = "eval/pref_accuracy"
REWARD_MARGIN = "rewards/margin"
TRAIN_S = "time/train_s"
EVAL_S = "time/eval_s"
SETUP_S = "time/setup_s"
PEAK_MEM_MB = "system/peak_mem_mb"
# Behaviour: greedy generations on held-out prompts, judged (in [0, 1], higher is better).
GEN_SFT_ACCURACY = "gen/sft_accuracy"
GEN_PREF_WIN_RATE = "gen/pref_win_rate"
GEN_S = "time/gen_s"
# A few of those generations, as text: [{kind, prompt, reference, generation, passed}].
SAMPLES = "samples"
# lm-evaluation-harness scores of the final model: harness/<task>/<metric>.
HARNESS = "harness/"


def eval_loss(objective: str) -> str:
    """The held-out loss of one objective."""
    return {"sft": SFT_LOSS, "dpo": DPO_LOSS}[objective]


def train_loss(objective: str) -> str:
    """Mean training loss of one objective since the previous point."""
    return f"train/{objective}_loss"


def updates(objective: str) -> str:
    return f"updates/{objective}"


def tokens(objective: str) -> str:
    return f"tokens/{objective}"


def _group(key: str) -> str:
    return key.split("/")[0] + "/"


# What the MLflow mirror logs of a point: every group of keys above (all but the step).
TRAJECTORY_PREFIXES = tuple(sorted({_group(k) for k in (SFT_LOSS, REWARD_MARGIN, TRAIN_S, PEAK_MEM_MB, GEN_SFT_ACCURACY,
                                                         train_loss("sft"), updates("sft"), tokens("sft"))} | {HARNESS}))


# A sweep's own run.
def hypervolume(schedule_or_all: str) -> str:
    return f"hypervolume/{schedule_or_all}"


def behaviour_hypervolume(schedule_or_all: str) -> str:
    return f"behaviour_hypervolume/{schedule_or_all}"


def hypervolume_reference(objective: str) -> str:
    return f"hypervolume_reference/{objective}"


def f_star(objective: str) -> str:
    return f"f_star/{objective}"


def final(metric: str) -> str:
    """A trial's final value of ``metric``, logged once the sweep's front is built."""
    return f"final/{metric}"
