"""The alternating SFT/DPO training loop: one function a Ray Train worker runs.

``train_loop_per_worker(config)`` rebuilds the typed config and calls ``fit``; ``fit``
sets up, optionally resumes, then runs ``total_steps`` optimizer steps where the schedule
decides which objective(s) get a gradient, evaluating both held-out losses as it goes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from workers.config import TrainSpec, TrialConfig
from workers.data import BatchStream, collate_pairs, collate_sft, eval_batches, load_tokenized
from workers.losses import dpo_loss, sequence_logps, sft_loss, shift_for_causal_lm
from workers.model import load_policy, load_tokenizer
from workers.reference import attach_reference, ensure_reference, policy_pair_logps
from workers.schedules import Plan, Schedule, make_schedule
from workers.session import RaySession, all_gather_int, all_reduce_, barrier, distributed, scratch_dir

log = logging.getLogger("rightsweep.loop")

OBJECTIVES = ("sft", "dpo")


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point: a plain dict in, the same typed config rebuilt here."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    fit(TrialConfig.model_validate(config), RaySession())


@dataclass
class Setup:
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    streams: dict[str, BatchStream]
    sft_eval: object
    pref_eval: object
    pad_id: int
    tokenizer: object


@dataclass
class Progress:
    """What a checkpoint must carry besides weights and optimizer to continue exactly."""

    step: int = 0
    decisions: str = ""  # one letter a step: S, D, or M (both)
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    setup_seconds: float = 0.0  # this process's: data, model, reference cache (not checkpointed)
    updates: dict = field(default_factory=lambda: {"sft": 0, "dpo": 0})
    tokens: dict = field(default_factory=lambda: {"sft": 0, "dpo": 0})
    trajectory: list = field(default_factory=list)
    rank_digests: list = field(default_factory=list)  # every rank's decisions digest at the last report


class Window:
    """Training losses since the last report, kept as tensors: a ``.item()`` per step
    would force a host sync every step, which costs real time at small model sizes."""

    def __init__(self):
        self.losses: list[tuple[int, str, torch.Tensor]] = []  # (step, objective, loss)

    def add(self, step: int, name: str, loss: torch.Tensor) -> None:
        self.losses.append((step, name, loss))  # stays on the loss's device: no sync

    def first_non_finite(self) -> tuple[int, str, float] | None:
        """The first NaN or infinite training loss of the window: one sync per report."""
        if not self.losses:
            return None
        finite = torch.isfinite(torch.stack([loss for _, _, loss in self.losses]))
        if bool(finite.all()):
            return None
        step, name, loss = self.losses[int((~finite).nonzero()[0])]
        return step, name, float(loss)

    def means(self) -> dict[str, float]:
        out = {}
        for k in OBJECTIVES:
            mine = [loss for _, name, loss in self.losses if name == k]
            if mine:
                out[f"train/{k}_loss"] = float(torch.stack(mine).mean())
        return out


def fit(cfg: TrialConfig, session) -> list[dict]:
    """Run one trial; returns the trajectory (one dict of metrics per evaluation)."""
    t = cfg.train
    started = time.perf_counter()
    # Float sums (matmuls, reductions) split work by thread: the same trial at another
    # thread count gives other bits, and by the end other losses.
    torch.set_num_threads(cfg.threads)
    reset_peak_memory(session.device)
    with session.latest_checkpoint() as ray_checkpoint:
        # Ray's checkpoint of this run first; else the one the driver found for a trial of an
        # earlier run of the sweep (``--resume`` starts a fresh Tune experiment).
        resume_dir = ray_checkpoint or cfg.resume_from
        if resume_dir and (problem := checkpoint_problem(resume_dir, session.rank)):
            raise RuntimeError(f"checkpoint {resume_dir} is damaged ({problem}); delete that folder to resume from the "
                               "checkpoint before it, or rerun the trial from the start")
        s = setup(cfg, session, resume_dir)
        progress = load_progress(resume_dir, s, session.rank, session.device) if resume_dir else Progress()
    progress.setup_seconds = time.perf_counter() - started
    if resume_dir:
        log.info("rank %d resumed at step %d", session.rank, progress.step)
    stop = min(t.total_steps, t.stop_after or t.total_steps)
    if progress.step == 0:
        report(session, s, cfg, progress, checkpoint=False)  # the initial point of the trajectory

    window = Window()
    while progress.step < stop:
        started = time.perf_counter()
        losses = train_step(s, cfg, progress.step, session.device)
        progress.train_seconds += time.perf_counter() - started
        record_step(progress, losses, window)

        step = progress.step
        checkpoint = step == stop or (t.checkpoint_every > 0 and step % t.checkpoint_every == 0)
        if checkpoint or step % t.eval_every == 0:
            report(session, s, cfg, progress, checkpoint=checkpoint, window=window)
            window = Window()

    if progress.step == t.total_steps and session.rank == 0 and cfg.output_dir:
        save_final(cfg.output_dir, s, progress)
    return progress.trajectory


_last_inputs: tuple[str, tuple] | None = None  # (key, inputs) of the last trial in this process


def load_inputs(cfg: TrialConfig, device):
    """Tokenizer and tokenized splits, the pairs carrying their reference log-probs.

    A Tune trial process runs trial after trial of one sweep (``reuse_actors``), all on
    the same inputs: the last ones are kept, so only the first trial pays for them.
    Nothing downstream mutates them (batches are collated copies)."""
    global _last_inputs
    key = json.dumps([cfg.model.model_dump(), cfg.data.model_dump(), cfg.cache_dir, str(device)], sort_keys=True)
    if _last_inputs is None or _last_inputs[0] != key:
        _last_inputs = (key, _read_inputs(cfg, device))
    return _last_inputs[1]


def _read_inputs(cfg: TrialConfig, device):
    tokenizer = load_tokenizer(cfg.model, cfg.cache_dir)
    sft_train, sft_eval, pref_train, pref_eval = load_tokenized(cfg.data, tokenizer, cfg.cache_dir)
    (ref_train, ref_eval), _ = ensure_reference(cfg, tokenizer, pref_train, pref_eval, device)
    return tokenizer, sft_train, sft_eval, attach_reference(pref_train, *ref_train), attach_reference(pref_eval, *ref_eval)


def rank_seed(seed: int, rank: int) -> int:
    """The torch seed of one rank after set-up: dropout masks differ between ranks (the
    same masks on every rank would waste the data parallelism), and stay reproducible."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def setup(cfg: TrialConfig, session, resume_dir: str | None) -> Setup:
    t = cfg.train
    torch.manual_seed(t.seed)  # the same on every rank while the model (and LoRA's init) is built
    # Rank 0 builds what ranks share (the embedded assets, the reference cache) while the
    # others wait; then they read it from the cache instead of all computing it at once.
    if session.rank == 0:
        inputs = load_inputs(cfg, session.device)
    barrier()
    if session.rank != 0:
        inputs = load_inputs(cfg, session.device)
    tokenizer, sft_train, sft_eval, pref_train, pref_eval = inputs
    pad_id = tokenizer.pad_token_id

    model = load_policy(cfg.model, cfg.cache_dir, session.device, resume_dir=resume_dir)
    model.train()
    if distributed():
        import ray.train.torch

        model = ray.train.torch.prepare_model(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, t, session.device)
    torch.manual_seed(rank_seed(t.seed, session.rank))
    # The schedule's own RNG (ALRIGHT's draws) is seeded by t.seed alone: the same on every rank.
    schedule = make_schedule(t.schedule, t.lam, t.total_steps, seed=t.seed, **t.schedule_options())
    rank, world = session.rank, session.world_size
    streams = {
        "sft": BatchStream(sft_train, t.batch_size, t.seed, lambda r: collate_sft(r, pad_id), rank, world),
        # A different seed stream for pairs so the two orders are not correlated.
        "dpo": BatchStream(pref_train, t.batch_size, t.seed + 1, lambda r: collate_pairs(r, pad_id), rank, world),
    }
    return Setup(model, optimizer, schedule, streams, sft_eval, pref_eval, pad_id, tokenizer)


def fused_optimizer(device: torch.device) -> bool:
    return device.type in ("cpu", "cuda")


def make_optimizer(params, t: TrainSpec, device: torch.device) -> torch.optim.Optimizer:
    """AdamW with the fused kernel where torch has one: one kernel for every tensor instead
    of several per tensor, which at small model sizes was about 1 ms of a 15 ms step."""
    return torch.optim.AdamW(params, lr=t.lr, betas=t.betas, weight_decay=t.weight_decay, fused=fused_optimizer(device))


def numerics(cfg: TrialConfig, device: torch.device) -> dict[str, str]:
    """What a trial's numbers depend on besides its config: recorded with every sweep."""
    from workers.model import weights_identity

    return {"base_weights": weights_identity(cfg.model, cfg.cache_dir), "torch": torch.__version__,
            "threads": str(cfg.threads), "device": device.type, "dtype": cfg.model.dtype,
            "optimizer": f"torch.optim.AdamW(fused={fused_optimizer(device)})"}


def objective_loss(name: str, model, batch: dict, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, response tokens) of one objective on one batch."""
    if name == "sft":
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        shifted = shift_for_causal_lm(logits, batch["input_ids"], batch["loss_mask"])
        return sft_loss(*shifted), shifted[2].sum()
    chosen, rejected = policy_pair_logps(model, batch)
    losses, _, _ = dpo_loss(chosen, rejected, batch["ref_chosen"], batch["ref_rejected"], beta)
    return losses.mean(), batch["loss_mask"][:, 1:].sum()


def unwrap(model):
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def train_step(s: Setup, cfg: TrialConfig, step: int, device) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """One optimizer step as the schedule plans it; returns {objective: (loss, tokens)}."""
    beta = cfg.train.beta
    if s.schedule.wants_scores(step):
        refresh_scores(s, beta, device)
    plan: Plan = s.schedule.plan(step)
    weights = {"sft": plan.sft_weight, "dpo": plan.dpo_weight}
    active = [k for k in OBJECTIVES if weights[k] > 0]
    out = {}
    for i, name in enumerate(active):
        batch = to_device(s.streams[name].next(), device)
        # Mix: two backward passes, one graph alive at a time (half the peak activation
        # memory of one backward of the sum, same gradient). Under DDP only the last
        # backward may all-reduce, or the first objective's gradient is reduced twice.
        last = i == len(active) - 1
        sync = contextlib.nullcontext() if last or not distributed() else s.model.no_sync()
        with sync:
            loss, tokens = objective_loss(name, s.model, batch, beta)
            (weights[name] * loss).backward()
        out[name] = (loss.detach(), tokens)
    torch.nn.utils.clip_grad_norm_(s.model.parameters(), cfg.train.max_grad_norm)
    s.optimizer.step()
    s.optimizer.zero_grad(set_to_none=True)
    if s.schedule.observes:
        # The stepped objective's score comes from the loss just computed (mean over ranks,
        # so every rank's schedule sees the same number).
        s.schedule.observe(**{k: mean_over_ranks(v[0]) for k, v in out.items()})
    return out


@torch.no_grad()
def refresh_scores(s: Setup, beta: float, device) -> None:
    """MAXRIGHT's periodic re-evaluation: both losses on the batches each objective would
    use next (peeked, not consumed), averaged over ranks."""
    model = unwrap(s.model)
    scores = {k: mean_over_ranks(objective_loss(k, model, to_device(s.streams[k].peek(), device), beta)[0]) for k in OBJECTIVES}
    s.schedule.observe(**scores)


def mean_over_ranks(x: torch.Tensor) -> float:
    x = x.detach().float().clone()
    all_reduce_(x)
    return float(x) / (torch.distributed.get_world_size() if distributed() else 1)


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def record_step(progress: Progress, losses: dict, window: Window) -> None:
    progress.step += 1
    progress.decisions += "M" if len(losses) == 2 else ("S" if "sft" in losses else "D")
    for name, (loss, tokens) in losses.items():
        progress.updates[name] += 1
        progress.tokens[name] += tokens  # a tensor until the next report
        window.add(progress.step, name, loss)


@torch.no_grad()
def evaluate(s: Setup, beta: float, device, batch_size: int, rank: int, world: int) -> dict[str, float]:
    """Held-out losses and preference accuracy; each rank takes a share, sums are all-reduced."""
    model = unwrap(s.model)
    was_training = model.training
    model.eval()
    # nll sum, response tokens, dpo loss sum, pairs, correct pairs, reward margin sum
    sums = torch.zeros(6, dtype=torch.float64, device=device)
    for batch in eval_batches(s.sft_eval, batch_size, lambda r: collate_sft(r, s.pad_id), rank, world):
        batch = to_device(batch, device)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        shifted = shift_for_causal_lm(logits, batch["input_ids"], batch["loss_mask"])
        sums[0] -= sequence_logps(*shifted).sum().double()
        sums[1] += shifted[2].sum()
    for batch in eval_batches(s.pref_eval, batch_size, lambda r: collate_pairs(r, s.pad_id), rank, world):
        batch = to_device(batch, device)
        chosen, rejected = policy_pair_logps(model, batch)
        losses, cr, rr = dpo_loss(chosen, rejected, batch["ref_chosen"], batch["ref_rejected"], beta)
        sums[2] += losses.sum().double()
        sums[3] += len(losses)
        sums[4] += (cr > rr).sum()
        sums[5] += (cr - rr).sum().double()
    all_reduce_(sums)
    model.train(was_training)
    nll, tokens, dpo, pairs, correct, margin = sums.tolist()
    return {
        "eval/sft_loss": nll / tokens,
        "eval/dpo_loss": dpo / pairs,
        "eval/pref_accuracy": correct / pairs,
        "rewards/margin": margin / pairs,
    }


def decisions_digest(decisions: str) -> int:
    return int(hashlib.sha256(decisions.encode()).hexdigest()[:15], 16)


def report(session, s: Setup, cfg: TrialConfig, progress: Progress, checkpoint: bool, window: Window | None = None) -> None:
    """Evaluate, check that every rank took the same decisions, report (and checkpoint)."""
    diverged = window.first_non_finite() if window is not None else None
    if diverged is not None:
        step, name, value = diverged
        raise FloatingPointError(
            f"training diverged: the {name.upper()} loss was {value} at step {step} "
            f"(trial.train.lr={cfg.train.lr:g}); lower the learning rate"
        )
    started = time.perf_counter()
    metrics = {"step": progress.step}
    metrics.update(evaluate(s, cfg.train.beta, session.device, cfg.train.eval_batch_size, session.rank, session.world_size))
    digests = all_gather_int(decisions_digest(progress.decisions), session.device)
    if len(set(digests)) != 1:
        raise RuntimeError(f"ranks took different schedule decisions by step {progress.step}: digests {digests}")
    progress.rank_digests = digests
    if window is not None:
        metrics.update(window.means())
    for name in OBJECTIVES:
        progress.tokens[name] = int(progress.tokens[name])
        metrics[f"updates/{name}"] = progress.updates[name]
        metrics[f"tokens/{name}"] = progress.tokens[name]
    progress.eval_seconds += time.perf_counter() - started
    metrics["time/train_s"] = progress.train_seconds
    metrics["time/eval_s"] = progress.eval_seconds
    metrics["time/setup_s"] = progress.setup_seconds
    metrics["system/peak_mem_mb"] = peak_memory_mb(session.device)
    progress.trajectory.append(metrics)
    if session.rank == 0:
        log.info(
            "step %d/%d  eval sft %.4f  dpo %.4f  acc %.3f  (%d SFT / %d DPO updates, %.1fs training)",
            progress.step, cfg.train.total_steps, metrics["eval/sft_loss"], metrics["eval/dpo_loss"],
            metrics["eval/pref_accuracy"], progress.updates["sft"], progress.updates["dpo"], progress.train_seconds,
        )
    if not checkpoint:
        session.report(metrics)
        return
    with scratch_dir() as d:
        # One copy of the state from rank 0; each rank adds its own RNG state (Ray merges
        # the ranks' checkpoint folders into one).
        save_rng(d, session.rank, session.device)
        if session.rank == 0:
            save_checkpoint(d, s, progress)
        session.report(metrics, checkpoint_dir=d)


def reset_peak_memory(device) -> None:
    """Start this trial's peak afresh: a Tune actor runs trial after trial (reuse_actors),
    and a process's peak RSS would otherwise carry the largest of them."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := current RSS


def peak_memory_mb(device) -> float:
    """Peak since ``reset_peak_memory``: CUDA allocations on a GPU, resident set on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    with contextlib.suppress(OSError, StopIteration):
        status = Path("/proc/self/status").read_text().splitlines()
        return int(next(line.split()[1] for line in status if line.startswith("VmHWM:"))) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # no /proc: the process's peak, in KiB


def save_checkpoint(d: str, s: Setup, progress: Progress) -> None:
    """Weights (safetensors, via save_pretrained: the adapter alone with LoRA) and the
    optimizer as tensors for ``torch.load(weights_only=True)``, the rest as JSON."""
    d = Path(d)
    unwrap(s.model).save_pretrained(d / "model", safe_serialization=True)
    torch.save(s.optimizer.state_dict(), d / "optimizer.pt")
    state = {
        "step": progress.step,
        "decisions": progress.decisions,
        "train_seconds": progress.train_seconds,
        "eval_seconds": progress.eval_seconds,
        "updates": progress.updates,
        "tokens": progress.tokens,
        "trajectory": progress.trajectory,
        "schedule": s.schedule.state_dict(),
        "streams": {k: v.state_dict() for k, v in s.streams.items()},
    }
    (d / "state.json").write_text(json.dumps(state))


def checkpoint_problem(d: str | Path, rank: int = 0) -> str | None:
    """What is wrong with a checkpoint folder, or None if it is whole enough to resume from:
    a damaged file found here is one clear line, not a traceback from deep in a loader."""
    d = Path(d)
    try:
        state = json.loads((d / "state.json").read_text())
        int(state["step"]), state["schedule"], state["streams"]
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


def save_rng(d: str, rank: int, device: torch.device) -> None:
    """This rank's torch RNG states: the CPU's and, on a GPU, its device's (dropout on a
    GPU draws from the device's generator)."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    rng_file(d, rank).parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, rng_file(d, rank))


def load_rng(d: str, rank: int, device: torch.device) -> None:
    state = torch.load(rng_file(d, rank), weights_only=True)
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def load_progress(d: str, s: Setup, rank: int = 0, device: torch.device = torch.device("cpu")) -> Progress:
    """Restore optimizer, this rank's RNG, schedule and data positions (the weights were
    loaded by setup)."""
    d = Path(d)
    s.optimizer.load_state_dict(torch.load(d / "optimizer.pt", weights_only=True))
    load_rng(d, rank, device)
    state = json.loads((d / "state.json").read_text())
    s.schedule.load_state_dict(state["schedule"])
    for k, stream in s.streams.items():
        stream.load_state_dict(state["streams"][k])
    return Progress(
        step=state["step"],
        decisions=state["decisions"],
        train_seconds=state["train_seconds"],
        eval_seconds=state["eval_seconds"],
        updates=state["updates"],
        tokens=state["tokens"],
        trajectory=state["trajectory"],
    )


def save_final(output_dir: str, s: Setup, progress: Progress) -> None:
    """The trained model in Hugging Face format, its tokenizer, and the trajectory."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    unwrap(s.model).save_pretrained(out / "model", safe_serialization=True)
    s.tokenizer.save_pretrained(out / "model")
    summary = {"decisions": progress.decisions, "rank_digests": progress.rank_digests, "points": progress.trajectory}
    (out / "trajectory.json").write_text(json.dumps(summary, indent=1))
