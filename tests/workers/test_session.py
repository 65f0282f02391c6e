"""The in-process session: what the loop sees of Ray when there is none (RaySession runs
in tests/e2e/test_ray_train.py)."""

import torch

from workers.session import LocalSession, Session, all_gather_int, all_reduce_, distributed, scratch_dir


def test_local_session_keeps_reports_and_copies_checkpoints(tmp_path):
    session = LocalSession(checkpoint_root=str(tmp_path / "ckpt"))
    assert isinstance(session, Session)
    assert (session.rank, session.world_size, session.device.type) == (0, 1, "cpu")
    metrics = {"step": 20, "eval/sft_loss": 1.0}
    with scratch_dir() as d:
        (tmp_path / "marker").write_text("x")
        (torch.save(torch.zeros(2), f"{d}/optimizer.pt"))
        session.report(metrics, checkpoint_dir=d)
    assert not (tmp_path / d).exists(), "the scratch folder is gone once the report has returned"
    metrics["step"] = 99  # the session kept a copy
    session.report({"step": 30})
    assert session.reports == [{"step": 20, "eval/sft_loss": 1.0}, {"step": 30}]
    assert session.checkpoints == [str(tmp_path / "ckpt" / "checkpoint_000020")]
    assert torch.equal(torch.load(f"{session.checkpoints[0]}/optimizer.pt", weights_only=True), torch.zeros(2))


def test_local_session_resumes_from_the_folder_it_was_given(tmp_path):
    with LocalSession().latest_checkpoint() as d:
        assert d is None
    with LocalSession(resume_from=str(tmp_path)).latest_checkpoint() as d:
        assert d == str(tmp_path)


def test_one_process_needs_no_collectives():
    session = LocalSession()
    model = torch.nn.Linear(2, 2)
    assert session.prepare_model(model) is model, "no DDP wrapper for one process"
    order = []
    with session.rank_zero_first():
        order.append("rank 0")
    assert order == ["rank 0"] and not distributed()
    t = torch.tensor([1.0, 2.0])
    assert all_reduce_(t) is t and t.tolist() == [1.0, 2.0]
    assert all_gather_int(7, torch.device("cpu")) == [7]
