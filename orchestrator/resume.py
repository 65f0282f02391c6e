"""What a sweep left on storage, read without unpickling anything.

Tune keeps its experiment state as cloudpickle (``tuner.pkl``, the trials' states): loading
it runs whatever code a writer of the storage planted, and storage is shared by design
(NFS, buckets). So the sweep never loads it: ``--resume`` starts a fresh Tune experiment
for the points that did not finish, and every point — named by its label — is found again
from plain files:

- ``trials/<label>/trajectory.json``: written when the trial finished (every evaluation);
- ``tune/<experiment>/<label>-<trial id>/result.json``: Tune's JSON lines of its reports;
- ``tune/<experiment>/<label>-<trial id>/checkpoint_*/``: a local-mode trial's checkpoints
  (safetensors, weights-only tensors, JSON), from which an unfinished trial continues;
- ``runs/<label>/``: a trial with workers, a Ray Train run that resumes by its name (its
  state there is JSON);
- ``sweep.json``: the sweep's own state (``SweepState``), which ``sync`` reads too.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from workers import metrics

log = logging.getLogger("rightsweep.resume")


@dataclass
class SweepState:
    """What a sweep keeps beside its trials: its MLflow run, the config and numerics it ran
    with (what ``rightsweep sync`` mirrors later), and how it ended."""

    parent_run_id: str | None = None
    tracking_uri: str = ""  # redacted: for the reader, never for connecting
    config: dict = field(default_factory=dict)  # redacted
    numerics: dict[str, str] = field(default_factory=dict)
    datasets: list[dict] = field(default_factory=list)  # workers.data.dataset_record of each
    finished: bool = False
    failed: list[str] = field(default_factory=list)
    f_star_sft: float | None = None
    f_star_dpo: float | None = None

    @staticmethod
    def path(sweep_dir: Path) -> Path:
        return sweep_dir / "sweep.json"

    @classmethod
    def load(cls, sweep_dir: Path) -> "SweepState | None":
        path = cls.path(sweep_dir)
        if not path.is_file():
            return None
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in json.loads(path.read_text()).items() if k in known})

    def save(self, sweep_dir: Path) -> None:
        self.path(sweep_dir).write_text(json.dumps(asdict(self), indent=1))


def finished_trajectory(sweep_dir: Path, label: str) -> list[dict] | None:
    """The evaluation points of a trial that finished, else None."""
    path = sweep_dir / "trials" / label / "trajectory.json"
    try:
        return json.loads(path.read_text())["points"]
    except (OSError, ValueError, KeyError):
        return None


def trial_dirs(sweep_dir: Path, label: str) -> list[Path]:
    """Every Tune trial folder this point had, in every experiment of the sweep."""
    return sorted(d for d in (sweep_dir / "tune").glob(f"*/{label}-*") if d.is_dir() and d.name.rsplit("-", 1)[0] == label)


def latest_checkpoint(sweep_dir: Path, label: str) -> str | None:
    """The local-mode checkpoint with the most steps that is whole; a damaged one is passed
    over with a warning (the trial continues from the one before it)."""
    from workers.checkpoint import checkpoint_problem, checkpoint_step

    found = []
    for d in trial_dirs(sweep_dir, label):
        for ckpt in d.glob("checkpoint_*"):
            problem = checkpoint_problem(ckpt)
            if problem:
                log.warning("%s: checkpoint %s is damaged (%s); it is not resumed from", label, ckpt, problem)
                continue
            found.append((checkpoint_step(ckpt), str(ckpt)))
    return max(found)[1] if found else None


def reported_points(sweep_dir: Path, label: str) -> list[dict]:
    """Every evaluation point the trial reported, from Tune's JSON lines and its
    trajectory; one per step, the last reported (a resumed trial reports its later steps again)."""
    by_step = {int(row[metrics.STEP]): row for row in _result_rows(sweep_dir, label) if metrics.SFT_LOSS in row}
    judged = read_json(judged_file(sweep_dir, label), None)  # a driver killed before Tune wrote it down
    if judged is not None:
        by_step.setdefault(int(judged[metrics.STEP]), judged)
    for p in finished_trajectory(sweep_dir, label) or []:
        by_step[int(p[metrics.STEP])] = p
    return [by_step[s] for s in sorted(by_step)]


def _result_rows(sweep_dir: Path, label: str):
    """Tune's JSON lines of every run of the point, evaluations and the last report of a
    stopped trial (its costs, no losses)."""
    for d in trial_dirs(sweep_dir, label):
        path = d / "result.json"
        for line in path.read_text().splitlines() if path.exists() else []:
            try:
                row = json.loads(line)
            except ValueError:  # a line cut short when the driver died
                continue
            if metrics.STEP in row:
                yield row


def failed(sweep_dir: Path, label: str) -> bool:
    """Whether the point's last Tune trial ended in an error (Tune writes error.txt)."""
    dirs = trial_dirs(sweep_dir, label)
    return bool(dirs) and finished_trajectory(sweep_dir, label) is None and (max(dirs, key=_mtime) / "error.txt").exists()


def _mtime(d: Path) -> float:
    return d.stat().st_mtime


def next_experiment(sweep_dir: Path) -> str:
    """A fresh Tune experiment name for this run of the sweep: grid, grid-2, grid-3, …"""
    n = len([d for d in (sweep_dir / "tune").glob("grid*") if d.is_dir()])
    return "grid" if n == 0 else f"grid-{n + 1}"


def read_json(path: Path, default):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def write_json(path: Path, content) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(content, indent=1))
    tmp.replace(path)  # atomic: a reader gets all of it or the previous version


def proposals(sweep_dir: Path) -> list[dict]:
    """The cells the adaptive search added, in order: {schedule, lam, reason, known}
    (``search.json``, written before their trials are queued)."""
    return read_json(sweep_dir / "search.json", {"proposals": []})["proposals"]


def save_proposals(sweep_dir: Path, found: list[dict]) -> None:
    write_json(sweep_dir / "search.json", {"proposals": found})


def model_dir(sweep_dir: Path, label: str) -> Path:
    """Where a finished trial's model is, in Hugging Face format (``save_pretrained``)."""
    return sweep_dir / "trials" / label / "model"


def stop_file(sweep_dir: Path, label: str) -> Path:
    """Where the early stopping tells a trial to end: its loop ends at the first step it
    finds this file (every rank at the same step), so its Train workers end with it."""
    return sweep_dir / "trials" / label / "stopped.json"


def stopped(sweep_dir: Path) -> dict[str, dict]:
    """Trials the early stopping ended, by label: {step, by}."""
    return {f.parent.name: content for f in sorted((sweep_dir / "trials").glob("*/stopped.json"))
            if (content := read_json(f, None)) is not None}


def judged_file(sweep_dir: Path, label: str) -> Path:
    """The evaluation a stopped trial was judged on, written with its stop: the driver can
    die before Tune's own record of it reaches storage, and the trial is never rerun."""
    return sweep_dir / "trials" / label / "judged.json"


def record_stop(sweep_dir: Path, label: str, step: int, by: str, judged: dict) -> None:
    path = stop_file(sweep_dir, label)
    if not path.exists():  # the first stop stands: a report already on its way is judged again
        write_json(judged_file(sweep_dir, label), judged)
        write_json(path, {"step": step, "by": by})


def sweep_points_on_storage(cfg, sweep_dir: Path) -> list:
    """Every point of the sweep: the config's grid (the adaptive search's coarse start) and
    the cells the search added, each with every seed."""
    from orchestrator.space import main_points, sweep_points

    s = cfg.sweep
    added = [p for c in proposals(sweep_dir) for p in main_points([c["schedule"]], [c["lam"]], s.seeds)]
    return sweep_points(s.schedules, s.lams, s.seeds, s.anchors and not cfg.anchors_given) + added


def compute_spent(cfg, sweep_dir: Path) -> dict:
    """What the sweep's trials cost, stopped ones included: optimizer steps (the last step
    each reported) and seconds of training loop (steps and evaluation, the trial's own
    clock), summed; and how many trials that is."""
    steps = seconds = trials = 0
    for p in sweep_points_on_storage(cfg, sweep_dir):
        reported = list(_result_rows(sweep_dir, p.label)) + (finished_trajectory(sweep_dir, p.label) or [])
        if reported:
            last = max(reported, key=lambda row: (int(row[metrics.STEP]), float(row.get(metrics.TRAIN_S, 0.0))))
            steps += int(last[metrics.STEP])
            seconds += float(last.get(metrics.TRAIN_S, 0.0)) + float(last.get(metrics.EVAL_S, 0.0))
            trials += 1
    return {"trials": trials, "optimizer_steps": steps, "loop_s": round(seconds, 3)}
