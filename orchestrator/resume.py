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
  state there is JSON).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger("rightsweep.resume")


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
    from workers.loop import checkpoint_problem

    found = []
    for d in trial_dirs(sweep_dir, label):
        for ckpt in d.glob("checkpoint_*"):
            problem = checkpoint_problem(ckpt)
            if problem:
                log.warning("%s: checkpoint %s is damaged (%s); it is not resumed from", label, ckpt, problem)
                continue
            found.append((json.loads((ckpt / "state.json").read_text())["step"], str(ckpt)))
    return max(found)[1] if found else None


def reported_points(sweep_dir: Path, label: str) -> list[dict]:
    """Every evaluation point the trial reported, from Tune's JSON lines and its
    trajectory; one per step, the last reported (a resumed trial reports its later steps again)."""
    by_step: dict[int, dict] = {}
    for d in trial_dirs(sweep_dir, label):
        path = d / "result.json"
        lines = path.read_text().splitlines() if path.exists() else []
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:  # a line cut short when the driver died
                continue
            if "eval/sft_loss" in row:
                by_step[int(row["step"])] = row
    for p in finished_trajectory(sweep_dir, label) or []:
        by_step[int(p["step"])] = p
    return [by_step[s] for s in sorted(by_step)]


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
