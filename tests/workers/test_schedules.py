import json

import pytest

from workers.schedules import Alright, Maxright, Mix, Plan, Sequential, make_schedule


@pytest.mark.parametrize("lam", [0.1, 0.5, 0.9])
def test_alright_dpo_fraction_matches_lambda(lam):
    s = make_schedule("alright", lam, 10_000, seed=7)
    dpo = sum(s.plan(t).dpo_weight for t in range(10_000))
    assert abs(dpo / 10_000 - lam) < 0.02
    plans = {s.plan(t) for t in range(100)}
    assert plans <= {Plan(1.0, 0.0), Plan(0.0, 1.0)}


def test_alright_same_seed_same_decisions_on_every_rank():
    a, b = make_schedule("alright", 0.5, 500, seed=3), make_schedule("alright", 0.5, 500, seed=3)
    assert [a.plan(t) for t in range(500)] == [b.plan(t) for t in range(500)]
    c = make_schedule("alright", 0.5, 500, seed=4)
    assert [a.plan(t) for t in range(500)] != [c.plan(t) for t in range(500)]


def test_sequential_switches_at_round_lambda_t():
    s = make_schedule("sequential", 0.3, 10)
    assert [s.plan(t).dpo_weight for t in range(10)] == [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    s = make_schedule("sequential", 0.3, 10, order="sft_first")
    assert [s.plan(t).dpo_weight for t in range(10)] == [0] * 7 + [1] * 3
    s = make_schedule("sequential", 0.3, 10, switch_step=5)  # explicit (T_first, T_second)
    assert [s.plan(t).dpo_weight for t in range(10)] == [1] * 5 + [0] * 5
    assert make_schedule("sequential", 0.0, 10).switch_step == 0  # SFT only
    assert make_schedule("sequential", 1.0, 10).plan(9) == Plan(0.0, 1.0)  # DPO only


def test_mix_weights_are_one_minus_lambda_and_lambda():
    s = make_schedule("mix", 0.25, 100)
    assert isinstance(s, Mix)
    assert all(s.plan(t) == Plan(sft_weight=0.75, dpo_weight=0.25) for t in range(5))


def maxright(lam=0.5, k=10):
    return make_schedule("maxright", lam, 100, f_star_sft=1.0, f_star_dpo=0.5, eval_every=k)


def test_maxright_picks_larger_weighted_gap():
    s = maxright(lam=0.25)
    # gaps: λ(f_DPO − 0.5) = 0.25·2.0 = 0.5 vs (1−λ)(f_SFT − 1) = 0.75·0.5 = 0.375 -> DPO
    s.observe(sft=1.5, dpo=2.5)
    assert s.plan(0) == Plan(0.0, 1.0)
    # 0.25·(0.9 − 0.5) = 0.1 vs 0.75·(1.2 − 1) = 0.15 -> SFT
    s.observe(dpo=0.9, sft=1.2)
    assert s.plan(1) == Plan(1.0, 0.0)


def test_maxright_ties_go_to_sft():
    s = maxright(lam=0.5)
    s.observe(sft=2.0, dpo=1.5)  # 0.5·1.0 == 0.5·1.0
    assert s.plan(0) == Plan(1.0, 0.0)


def test_maxright_rescores_every_k_steps_and_no_more():
    s = maxright(k=10)
    assert [t for t in range(35) if s.wants_scores(t)] == [0, 10, 20, 30]
    s = maxright(k=1)
    assert all(s.wants_scores(t) for t in range(20))


def test_maxright_stale_score_updated_by_observe():
    s = maxright(lam=0.5)
    s.observe(sft=3.0, dpo=0.6)  # sft gap 1.0 > dpo gap 0.05 -> SFT
    assert s.plan(0).sft_weight == 1
    s.observe(sft=1.0)  # only the stepped objective's score moves
    assert s.dpo_score == 0.6 and s.plan(1).dpo_weight == 1


def test_maxright_needs_scores_before_planning():
    with pytest.raises(RuntimeError, match="before both scores"):
        maxright().plan(0)


def _drive(s, steps, start=0):
    out = []
    for t in range(start, start + steps):
        if s.wants_scores(t):
            s.observe(sft=1.0 + 0.01 * (t % 7), dpo=0.5 + 0.013 * (t % 5))
        p = s.plan(t)
        out.append(p)
        s.observe(**({"dpo": 0.7} if p.dpo_weight else {"sft": 1.3}))
    return out


@pytest.mark.parametrize(
    "factory",
    [
        lambda: make_schedule("alright", 0.4, 200, seed=11),
        lambda: make_schedule("maxright", 0.4, 200, f_star_sft=1.0, f_star_dpo=0.5, eval_every=7),
        lambda: make_schedule("sequential", 0.4, 200),
        lambda: make_schedule("mix", 0.4, 200),
    ],
)
def test_state_dict_round_trip_continues_same_sequence(factory):
    reference = factory()
    full = _drive(reference, 200)
    first = factory()
    _drive(first, 120)
    state = json.loads(json.dumps(first.state_dict()))  # checkpoints keep it as JSON
    resumed = factory()
    resumed.load_state_dict(state)
    assert _drive(resumed, 80, start=120) == full[120:]


def test_make_schedule_rejects_bad_arguments():
    with pytest.raises(ValueError, match="schedule must be one of sequential, mix, alright, maxright"):
        make_schedule("round_robin", 0.5, 10)
    with pytest.raises(ValueError, match=r"lam must be in \[0, 1\]"):
        make_schedule("alright", 1.5, 10)
    with pytest.raises(ValueError, match="total_steps"):
        make_schedule("mix", 0.5, 0)
    with pytest.raises(ValueError, match="eval_every"):
        make_schedule("maxright", 0.5, 10, f_star_sft=0, f_star_dpo=0, eval_every=0)
    assert isinstance(make_schedule("alright", 0.5, 10), Alright)
    assert isinstance(make_schedule("sequential", 0.5, 10), Sequential)
    assert isinstance(make_schedule("maxright", 0.5, 10, f_star_sft=0, f_star_dpo=0), Maxright)
