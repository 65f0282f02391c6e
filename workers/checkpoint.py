"""A trial's checkpoint and final output: what is saved, how it is checked, how it is read.

Weights are safetensors (``save_pretrained``: the adapter alone with LoRA), the optimizer
and RNG states tensors for ``torch.load(weights_only=True)``, everything else JSON: a
checkpoint on shared storage can be read without running anything a writer planted.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from workers.schedules import Schedule


@dataclass
class Progress:
    """What a checkpoint must carry besides weights and optimizer to continue exactly."""

    step: int = 0
    decisions: str = ""  # one letter a step: S, D, or M (both)
    train_seconds: float = 0.0
    eval_seconds: float = 0.0  # held-out losses and generation
    gen_seconds: float = 0.0  # of it, generating and judging
    setup_seconds: float = 0.0  # this process's: data, model, reference cache (set again on resume)
    updates: dict = field(default_factory=lambda: {"sft": 0, "dpo": 0})
    tokens: dict = field(default_factory=lambda: {"sft": 0, "dpo": 0})
    trajectory: list = field(default_factory=list)
    rank_digests: list = field(default_factory=list)  # every rank's decisions digest at the last report

    @classmethod
    def from_state(cls, state: dict) -> "Progress":
        return cls(**{f.name: state[f.name] for f in fields(cls) if f.name in state})


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def save_checkpoint(d: str | Path, model, optimizer: torch.optim.Optimizer, schedule: Schedule, streams: dict,
                    progress: Progress, stateful: dict | None = None) -> None:
    """Rank 0's share of a checkpoint: weights, optimizer, and progress with the schedule's
    and the data streams' positions (``state.json``). ``stateful``: more objects with a
    JSON-able ``state_dict`` (the LR scheduler, the gradient scaler), saved by name."""
    d = Path(d)
    unwrap(model).save_pretrained(d / "model", safe_serialization=True)
    torch.save(optimizer.state_dict(), d / "optimizer.pt")
    state = {**asdict(progress), "schedule": schedule.state_dict(), "streams": {k: v.state_dict() for k, v in streams.items()},
             **{k: v.state_dict() for k, v in (stateful or {}).items()}}
    (d / "state.json").write_text(json.dumps(state))


def load_checkpoint(d: str | Path, optimizer: torch.optim.Optimizer, schedule: Schedule, streams: dict, rank: int = 0,
                    device: torch.device = torch.device("cpu"), stateful: dict | None = None) -> Progress:
    """Restore optimizer, this rank's RNG, schedule, data positions and ``stateful`` (the
    weights were loaded with the model); returns the progress saved with them."""
    d = Path(d)
    optimizer.load_state_dict(torch.load(d / "optimizer.pt", weights_only=True))
    load_rng(d, rank, device)
    state = json.loads((d / "state.json").read_text())
    schedule.load_state_dict(state["schedule"])
    for k, stream in streams.items():
        stream.load_state_dict(state["streams"][k])
    for k, obj in (stateful or {}).items():
        obj.load_state_dict(state[k])
    return Progress.from_state(state)


def checkpoint_step(d: str | Path) -> int:
    return int(json.loads((Path(d) / "state.json").read_text())["step"])


def checkpoint_problem(d: str | Path, rank: int = 0) -> str | None:
    """What is wrong with a checkpoint folder, or None if it is whole enough to resume from:
    a damaged file found here is one clear line, not a traceback from deep in a loader."""
    d = Path(d)
    try:
        state = json.loads((d / "state.json").read_text())
        int(state["step"]), state["schedule"], state["streams"], state["lr_scheduler"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"state.json: {type(e).__name__}: {e}"[:300]
    model = d / "model"
    if not any(model.glob("*.safetensors")):
        return "model/: no safetensors weights"
    for name in ("optimizer.pt", f"rng/rank{rank}.pt"):
        try:
            with open(d / name, "rb") as f:
                if not f.read(4).startswith(b"PK"):  # torch.save writes a zip archive
                    return f"{name}: not a torch archive"
        except OSError as e:
            return f"{name}: {e.strerror or e}"
    return None


def rng_file(d: str | Path, rank: int) -> Path:
    return Path(d) / "rng" / f"rank{rank}.pt"


def save_rng(d: str | Path, rank: int, device: torch.device) -> None:
    """This rank's torch RNG states: the CPU's and, on a GPU, its device's (dropout on a
    GPU draws from the device's generator)."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    rng_file(d, rank).parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, rng_file(d, rank))


def load_rng(d: str | Path, rank: int, device: torch.device) -> None:
    state = torch.load(rng_file(d, rank), weights_only=True)
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def save_final(output_dir: str | Path, model, tokenizer, progress: Progress) -> None:
    """The trained model in Hugging Face format, its tokenizer, and the trajectory."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    unwrap(model).save_pretrained(out / "model", safe_serialization=True)
    tokenizer.save_pretrained(out / "model")
    summary = {"decisions": progress.decisions, "rank_digests": progress.rank_digests, "points": progress.trajectory}
    (out / "trajectory.json").write_text(json.dumps(summary, indent=1))
