"""Config -> the points of a sweep, and a point -> its trial config."""

import json

import pytest

from orchestrator.config import load_config
from orchestrator.pareto import Anchors
from orchestrator.space import Point, apply_point, sweep_points


def test_sweep_points_start_with_the_anchors_and_end_with_maxright_each_seed_after_the_one_before():
    points = sweep_points(["maxright", "mix"], [0.25, 0.75], [3, 4], with_anchors=True)
    # Anchors for every seed: f* from one seed carried that seed's luck into every gap.
    assert [(p.stage, p.objective, p.seed) for p in points[:4]] == [
        ("anchor", "sft", 3), ("anchor", "dpo", 3), ("anchor", "sft", 4), ("anchor", "dpo", 4)]
    assert [(p.schedule, p.lam, p.seed) for p in points[4:]] == [
        ("mix", 0.25, 3), ("mix", 0.75, 3), ("mix", 0.25, 4), ("mix", 0.75, 4),  # every cell's first seed first
        ("maxright", 0.25, 3), ("maxright", 0.75, 3), ("maxright", 0.25, 4), ("maxright", 0.75, 4),
    ]
    assert sweep_points(["mix"], [0.5], [0], with_anchors=False) == [Point("main", "mix", 0.5, 0)]


def test_anchors_are_sequential_at_the_ends_of_lambda():
    sft, dpo = sweep_points(["mix"], [0.5], [7], with_anchors=True)[:2]
    assert (sft.schedule, sft.lam, sft.objective, sft.is_anchor) == ("sequential", 0.0, "sft", True)
    assert (dpo.schedule, dpo.lam, dpo.objective, dpo.is_anchor) == ("sequential", 1.0, "dpo", True)
    assert not sft.waits_for_anchors and Point("main", "maxright", 0.5, 0).waits_for_anchors


def test_labels_name_each_point_once():
    points = sweep_points(["sequential", "mix", "alright", "maxright"], [0.25, 0.5, 0.75], [0, 1, 2], with_anchors=True)
    labels = [p.label for p in points]
    assert len(set(labels)) == len(points) == 42
    assert labels[:2] == ["anchor-sft-seed0", "anchor-dpo-seed0"]
    assert Point("main", "alright", 0.25, 1).label == "alright-lam0.25-seed1"


def test_a_point_crosses_tune_as_plain_json_and_comes_back_equal():
    for p in sweep_points(["maxright"], [0.5], [0], with_anchors=True):
        assert Point.from_dict(json.loads(json.dumps(p.as_dict()))) == p
    with pytest.raises(TypeError):
        Point.from_dict({"stage": "main", "schedule": "mix", "lam": 0.5, "seed": 0, "extra": 1})


def test_apply_point_sets_the_trial_and_f_star():
    cfg = load_config("smoke")
    t = apply_point(cfg.trial, Point("main", "maxright", 0.75, 3), Anchors(0.1, 0.2))
    assert (t.train.schedule, t.train.lam, t.train.seed, t.train.f_star_sft, t.train.f_star_dpo) == ("maxright", 0.75, 3, 0.1, 0.2)
    assert t.train.total_steps == cfg.trial.train.total_steps


def test_apply_point_takes_the_fields_of_its_schedule_only():
    cfg = load_config("smoke")
    per_schedule = {"mix": {"lr": 1e-5}}
    assert apply_point(cfg.trial, Point("main", "mix", 0.5, 0), None, per_schedule).train.lr == 1e-5
    assert apply_point(cfg.trial, Point("main", "alright", 0.5, 0), None, per_schedule).train.lr == cfg.trial.train.lr
