"""The report: behaviour columns, the behaviour front, the front points' answers, and the
two-panel plot, from a hand-made summary."""

import json
import math

from orchestrator.pareto import TrialResult, summarize
from orchestrator.report import format_table, front_samples, samples_markdown, write_artifacts


def sample(kind, prompt, generation, passed):
    return {"kind": kind, "prompt": prompt, "reference": "42", "generation": generation, "passed": passed}


def trajectories():
    def traj(acc, win, answer):
        return [{"step": 0, "eval/sft_loss": 2.0, "eval/dpo_loss": math.log(2), "gen/sft_accuracy": 0.0, "gen/pref_win_rate": 1.0},
                {"step": 10, "eval/sft_loss": 1.0, "eval/dpo_loss": 0.5, "gen/sft_accuracy": acc, "gen/pref_win_rate": win,
                 "samples": [sample("sft", "User: what comes after 41\nAssistant:", answer, answer == "42")]}]

    return {"mix-lam0.5-seed0": traj(0.8, 0.2, "42"), "mix-lam0.5-seed1": traj(0.6, 0.4, "43"),
            "alright-lam0.5-seed0": traj(0.1, 0.1, "a|b"), "sequential-lam0.5-seed0": traj(0.3, 0.9, "")}


def summary():
    losses = {"mix": (1.0, 0.5), "alright": (0.9, 0.4), "sequential": (2.0, 3.0)}
    results = []
    for label, traj in trajectories().items():
        schedule, _, seed = label.split("-")
        last = traj[-1]
        results.append(TrialResult(label, schedule, 0.5, int(seed[-1]), *losses[schedule],
                                   sft_accuracy=last["gen/sft_accuracy"], pref_win_rate=last["gen/pref_win_rate"],
                                   runtime_s=10.0, gen_s=2.0 if schedule == "mix" else 0.5))
    return summarize(results, None, initial_point=(2.0, math.log(2)), initial_behaviour=(0.0, 1.0),
                     anchor_behaviour={"sft": (0.9, 0.0), "dpo": (0.0, 0.8)})


def test_the_table_has_behaviour_columns_and_names_both_fronts():
    text = format_table(summary())
    assert "sft_acc" in text and "win" in text and "b_front" in text
    assert "front (*): alright@λ=0.5" in text
    assert "behaviour front (b_front *): sequential@λ=0.5, mix@λ=0.5" in text
    assert "initial model sft_acc=0.000 win=1.000; SFT anchors sft_acc=0.900 win=0.000; DPO anchors sft_acc=0.000 win=0.800" in text
    # (0.3, 0.9) and (0.7, 0.3): 0.3·0.9 + 0.4·0.3 = 0.39
    assert "behaviour hypervolume, share of [0, 1]² (sft_acc × win, reference (0, 0)): all=0.3900" in text
    # (20 + 20 + 5 + 5) / 4 %
    assert "generation and judging: 12.5 % of a trial's loop time (steps + evaluation) on average, 20.0 % at most" in text


def test_each_front_point_shows_its_lowest_seeds_answers():
    records = front_samples(summary(), trajectories())
    assert [(r["cell"], r["fronts"], r["trial"]) for r in records] == [
        ("alright@0.5", ["loss"], "alright-lam0.5-seed0"),
        ("sequential@0.5", ["behaviour"], "sequential-lam0.5-seed0"),
        ("mix@0.5", ["behaviour"], "mix-lam0.5-seed0")]
    md = samples_markdown(records)
    assert "## sft prompt `User: what comes after 41 Assistant:`" in md
    assert "| alright@0.5 | loss | `a\\|b` | fail |" in md, "a pipe in an answer does not break the table"
    assert "| mix@0.5 | behaviour | `42` | pass |" in md
    assert "| sequential@0.5 | behaviour | (empty) | fail |" in md


def test_the_artifacts_carry_the_behaviour_front_and_a_second_panel(tmp_path):
    import matplotlib.image

    paths = write_artifacts(summary(), trajectories(), tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["behaviour_front"] == ["sequential@0.5", "mix@0.5"]
    assert abs(data["behaviour_hypervolume"]["all"] - 0.39) < 1e-12
    assert data["anchor_behaviour"] == {"sft": [0.9, 0.0], "dpo": [0.0, 0.8]}
    assert [r["cell"] for r in data["front_samples"]] == ["alright@0.5", "sequential@0.5", "mix@0.5"]
    cells = paths["cells"].read_text().splitlines()
    assert "sft_accuracy_mean" in cells[0] and "on_behaviour_front" in cells[0]
    assert paths["samples"].read_text().startswith("# Answers of the front points")
    height, width = matplotlib.image.imread(paths["png"]).shape[:2]
    assert width > 1.8 * height, "loss and behaviour panels side by side"
