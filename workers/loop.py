"""The alternating SFT/DPO training loop: one function a Ray Train worker runs.

``train_loop_per_worker(config)`` rebuilds the typed config and calls ``fit``; ``fit``
sets up, optionally resumes, then runs ``total_steps`` optimizer steps where the schedule
decides which objective(s) get a gradient, evaluating both held-out losses as it goes.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from workers import metrics
from workers.checkpoint import Progress, checkpoint_problem, load_checkpoint, save_checkpoint, save_final, save_rng, unwrap
from workers.config import TrainSpec, TrialConfig
from workers.data import BatchStream, TokenTable, collate_pairs, collate_sft, eval_batches, micro_batches
from workers.forward import batch_logps, pair_logps
from workers import harness
from workers.generate import Prompts, embedded_wins, generate, held_out_prompts, samples, sft_accuracy
from workers.inputs import load_inputs
from workers.losses import dpo_loss
from workers.metrics import OBJECTIVES
from workers.model import enable_checkpointing, load_policy, make_lr_scheduler, make_optimizer
from workers.precision import autocast, grad_scaler, weights_dtype
from workers.reward import RewardJudge
from workers.schedules import Plan, Schedule, make_schedule
from workers.session import Session, all_gather_int, all_reduce_, distributed, scratch_dir

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger("rightsweep.loop")


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point: a plain dict in, the same typed config rebuilt here."""
    from workers.session import RaySession

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    fit(TrialConfig.model_validate(config), RaySession())


@dataclass
class Setup:
    model: torch.nn.Module  # DDP-wrapped across several workers
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler  # a no-op but under 16-mixed
    schedule: Schedule
    streams: dict[str, BatchStream]  # objective -> this rank's training batches
    sft_eval: TokenTable
    pref_eval: TokenTable  # with reference log-probs
    pad_id: int
    tokenizer: "PreTrainedTokenizerBase"
    prompts: dict[str, Prompts]  # "sft", "pref" -> this rank's share of the held-out prompts generated on
    reward: RewardJudge | None  # the preference judge, when it is a reward model

    @property
    def stateful(self) -> dict:
        """What a checkpoint saves besides weights, optimizer, schedule and streams."""
        return {"lr_scheduler": self.lr_scheduler, "scaler": self.scaler}


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
                out[metrics.train_loss(k)] = float(torch.stack(mine).mean())
        return out


def fit(cfg: TrialConfig, session: Session) -> list[dict]:
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
        progress = (load_checkpoint(resume_dir, s.optimizer, s.schedule, s.streams, session.rank, session.device,
                                    s.stateful) if resume_dir else Progress())
    progress.setup_seconds = time.perf_counter() - started
    if resume_dir:
        log.info("rank %d resumed at step %d", session.rank, progress.step)
    stop = min(t.total_steps, t.stop_after or t.total_steps)
    if progress.step == 0:
        report(session, s, cfg, progress, checkpoint=False)  # the initial point of the trajectory

    window = Window()
    while progress.step < stop and not stop_requested(cfg.stop_file, session):
        started = time.perf_counter()
        losses = train_step(s, cfg, progress.step, session.device)
        progress.train_seconds += time.perf_counter() - started
        record_step(progress, losses, window)

        step = progress.step
        checkpoint = step == stop or (t.checkpoint_every > 0 and step % t.checkpoint_every == 0)
        if checkpoint or step % t.eval_every == 0:
            report(session, s, cfg, progress, checkpoint=checkpoint, window=window)
            window = Window()

    if progress.step < stop:  # stopped by the driver: what it cost, beyond its last evaluation
        log.info("rank %d: stopped by the sweep's early stopping at step %d", session.rank, progress.step)
        session.report({metrics.STEP: progress.step, **counters(progress), **costs(progress, session.device)})
    if progress.step == t.total_steps and session.rank == 0 and cfg.output_dir:
        save_final(cfg.output_dir, s.model, s.tokenizer, progress)
    return progress.trajectory


def stop_requested(path: str | None, session: Session) -> bool:
    """Whether the driver's early stopping has ended this trial. Rank 0 looks and every rank
    learns its answer at the same step (one that went on alone would hang in the
    all-reduce); ending here, rather than being killed, frees the trial's workers."""
    if path is None:
        return False
    if session.world_size == 1:
        return Path(path).exists()
    flag = torch.tensor([float(session.rank == 0 and Path(path).exists())], device=session.device)
    return bool(all_reduce_(flag).item())  # a sync per step, only while early stopping is on


def rank_seed(seed: int, rank: int) -> int:
    """The torch seed of one rank after set-up: dropout masks differ between ranks (the
    same masks on every rank would waste the data parallelism), and stay reproducible."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def setup(cfg: TrialConfig, session: Session, resume_dir: str | None) -> Setup:
    t = cfg.train
    torch.manual_seed(t.seed)  # the same on every rank while the model (and LoRA's init) is built
    # Rank 0 builds what ranks share (the embedded assets, the reference cache) while the
    # others wait; then they read it from the cache instead of all computing it at once.
    with session.rank_zero_first():
        inputs = load_inputs(cfg, session.device)
    pad_id = inputs.tokenizer.pad_token_id

    model = load_policy(cfg.model, cfg.cache_dir, session.device, resume_dir=resume_dir, dtype=weights_dtype(t.precision))
    if t.gradient_checkpointing:
        enable_checkpointing(model)
    model.train()
    model = session.prepare_model(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, t, session.device)
    lr_scheduler = make_lr_scheduler(optimizer, t)
    torch.manual_seed(rank_seed(t.seed, session.rank))
    # The schedule's own RNG (ALRIGHT's draws) is seeded by t.seed alone: the same on every rank.
    schedule = make_schedule(t.schedule, t.lam, t.total_steps, seed=t.seed, **t.schedule_options())
    rank, world = session.rank, session.world_size
    streams = {
        "sft": BatchStream(inputs.sft_train, t.batch_size, t.seed, lambda r: collate_sft(r, pad_id), rank, world),
        # A different seed stream for pairs so the two orders are not correlated.
        "dpo": BatchStream(inputs.pref_train, t.batch_size, t.seed + 1, lambda r: collate_pairs(r, pad_id), rank, world),
    }
    b = cfg.behaviour
    judge = b.pref_judge_for(cfg.data)
    judged = b.prompts if judge != "none" else 0  # no preference prompts without a judge
    prompts = {"sft": held_out_prompts(inputs.sft_eval, "input_ids", "loss_mask", inputs.tokenizer, b.prompts, rank, world),
               "pref": held_out_prompts(inputs.pref_eval, "chosen_ids", "chosen_mask", inputs.tokenizer, judged, rank, world)}
    reward = RewardJudge(b.reward_model, session.device, b.batch_size) if judged and judge == "reward_model" else None
    if b.harness_tasks:
        harness.check_installed()
    return Setup(model, optimizer, lr_scheduler, grad_scaler(t.precision, session.device), schedule, streams,
                 inputs.sft_eval, inputs.pref_eval, pad_id, inputs.tokenizer, prompts, reward)


def objective_loss(name: str, model, batch: dict, beta: float) -> torch.Tensor:
    """The objective summed over one (micro-)batch: NLL of its response tokens (SFT) or
    DPO loss of its pairs; the caller divides by the whole step's tokens or pairs."""
    if name == "sft":
        return -batch_logps(model, batch)[0].sum()
    chosen, rejected = pair_logps(model, batch)
    return dpo_loss(chosen, rejected, batch["ref_chosen"], batch["ref_rejected"], beta)[0].sum()


def objective_pass(name: str, model, batch: dict, t: TrainSpec, device, backward=None) -> tuple[torch.Tensor, int]:
    """(the objective's mean loss on one step's batch, its response tokens), a micro-batch
    at a time. With ``backward``, each micro-batch's share of the mean is handed to it as
    soon as it is computed, so one micro-batch's graph is alive at a time and the
    accumulated gradient is that of the whole batch's mean."""
    # The step's loss is a mean over the whole batch's response tokens (SFT: micro-batches
    # weigh by their tokens, not their count) or pairs; counted on the host batch, no sync.
    tokens = int(batch["loss_mask"][:, 1:].sum())
    size = tokens if name == "sft" else len(batch["ref_chosen"])
    pieces = micro_batches(batch, t.micro_batch, pairs=name == "dpo")
    total = torch.zeros((), device=device)
    for i, piece in enumerate(pieces):
        with autocast(t.precision, device):
            share = objective_loss(name, model, to_device(piece, device), t.beta) / size
        if backward is not None:
            backward(share, last=i == len(pieces) - 1)
        total += share.detach()
    return total, tokens


def train_step(s: Setup, cfg: TrialConfig, step: int, device) -> dict[str, tuple[torch.Tensor, int]]:
    """One optimizer step as the schedule plans it; returns {objective: (loss, tokens)}."""
    t = cfg.train
    if s.schedule.wants_scores(step):
        refresh_scores(s, t, device)
    plan: Plan = s.schedule.plan(step)
    weights = {"sft": plan.sft_weight, "dpo": plan.dpo_weight}
    active = [k for k in OBJECTIVES if weights[k] > 0]
    out = {}
    for i, name in enumerate(active):
        # Mix: one backward pass per objective (and per micro-batch), one graph alive at a
        # time (half the peak activation memory of one backward of the sum, same
        # gradient). Under DDP only the very last backward of the step may all-reduce, or
        # the gradient accumulated before it is reduced twice.
        last_objective = i == len(active) - 1

        def backward(share: torch.Tensor, last: bool, weight=weights[name]) -> None:
            sync = contextlib.nullcontext() if (last and last_objective) or not distributed() else s.model.no_sync()
            with sync:
                s.scaler.scale(weight * share).backward()

        out[name] = objective_pass(name, s.model, s.streams[name].next(), t, device, backward)
    optimizer_step(s.model, s.optimizer, s.scaler, s.lr_scheduler, t.max_grad_norm)
    if s.schedule.observes:
        # The stepped objective's score comes from the loss just computed (mean over ranks,
        # so every rank's schedule sees the same number).
        s.schedule.observe(**{k: mean_over_ranks(v[0]) for k, v in out.items()})
    return out


def optimizer_step(model, optimizer, scaler: torch.amp.GradScaler, lr_scheduler, max_grad_norm: float) -> None:
    scaler.unscale_(optimizer)  # clip the true gradient, not the scaled one (16-mixed)
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    scaler.step(optimizer)  # skipped (16-mixed) when the scaled gradient overflowed
    scaler.update()
    lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)


@torch.no_grad()
def refresh_scores(s: Setup, t: TrainSpec, device) -> None:
    """MAXRIGHT's periodic re-evaluation: both losses on the batches each objective would
    use next (peeked, not consumed), averaged over ranks."""
    model = unwrap(s.model)
    scores = {k: mean_over_ranks(objective_pass(k, model, s.streams[k].peek(), t, device)[0]) for k in OBJECTIVES}
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
        progress.tokens[name] += tokens
        window.add(progress.step, name, loss)


@contextlib.contextmanager
def eval_mode(model):
    """The bare model (unwrapped from DDP: each rank evaluates its own share) in eval mode,
    then back in the mode it was in."""
    model = unwrap(model)
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate(s: Setup, t: TrainSpec, device, rank: int, world: int) -> dict[str, float]:
    """Held-out losses and preference accuracy; each rank takes a share, sums are all-reduced."""
    with eval_mode(s.model) as model:
        # nll sum, response tokens, dpo loss sum, pairs, correct pairs, reward margin sum
        sums = torch.zeros(6, dtype=torch.float64, device=device)
        for batch in eval_batches(s.sft_eval, t.eval_batch_size, lambda r: collate_sft(r, s.pad_id), rank, world):
            batch = to_device(batch, device)
            with autocast(t.precision, device):
                logps, tokens = batch_logps(model, batch)
            sums[0] -= logps.sum().double()
            sums[1] += tokens.sum()
        for batch in eval_batches(s.pref_eval, t.eval_batch_size, lambda r: collate_pairs(r, s.pad_id), rank, world):
            batch = to_device(batch, device)
            with autocast(t.precision, device):
                chosen, rejected = pair_logps(model, batch)
            losses, cr, rr = dpo_loss(chosen, rejected, batch["ref_chosen"], batch["ref_rejected"], t.beta)
            sums[2] += losses.sum().double()
            sums[3] += len(losses)
            sums[4] += (cr > rr).sum()
            sums[5] += (cr - rr).sum().double()
        all_reduce_(sums)
    nll, tokens, dpo, pairs, correct, margin = sums.tolist()
    return {metrics.SFT_LOSS: nll / tokens, metrics.DPO_LOSS: dpo / pairs, metrics.PREF_ACCURACY: correct / pairs,
            metrics.REWARD_MARGIN: margin / pairs}


@torch.no_grad()
def behave(s: Setup, cfg: TrialConfig, device, rank: int) -> dict:
    """Greedy generations on the held-out prompts, judged: each rank its share, the counts
    all-reduced; rank 0 keeps a few as text. No preference win rate where no judge is set
    for the data."""
    b, t = cfg.behaviour, cfg.train
    # SFT correct, SFT prompts, preference wins, preference prompts
    counts = torch.zeros(4, dtype=torch.float64, device=device)
    out, kept = {}, []
    with eval_mode(s.model) as model, autocast(t.precision, device):
        sft = generate(model, s.tokenizer, s.prompts["sft"].ids, b.batch_size, b.max_new_tokens, device)
        passed = sft_accuracy(sft, s.prompts["sft"].references, b.sft_judge)
        counts[0], counts[1] = sum(passed), len(sft)
        kept += samples("sft", s.prompts["sft"], sft, passed, b.samples)
        judge = b.pref_judge_for(cfg.data)
        if judge != "none":
            p = s.prompts["pref"]
            pref = generate(model, s.tokenizer, p.ids, b.batch_size, b.max_new_tokens, device)
            wins = embedded_wins(pref) if judge == "embedded" else s.reward.wins(p.texts, pref, p.references)
            counts[2], counts[3] = sum(wins), len(pref)
            kept += samples("pref", p, pref, wins, b.samples)
    all_reduce_(counts)
    correct, asked, wins, judged = counts.tolist()
    out[metrics.GEN_SFT_ACCURACY] = correct / asked
    if judged:
        out[metrics.GEN_PREF_WIN_RATE] = wins / judged
    if rank == 0 and kept:
        out[metrics.SAMPLES] = kept
    return out


@torch.no_grad()
def run_harness(s: Setup, cfg: TrialConfig, device) -> dict[str, float]:
    """The harness tasks on the final model (rank 0's copy: every rank holds the same weights)."""
    with eval_mode(s.model) as model, autocast(cfg.train.precision, device):
        return harness.run(model, s.tokenizer, cfg.behaviour, device)


def decisions_digest(decisions: str) -> int:
    return int(hashlib.sha256(decisions.encode()).hexdigest()[:15], 16)


def report(session: Session, s: Setup, cfg: TrialConfig, progress: Progress, checkpoint: bool,
           window: Window | None = None) -> None:
    """One point of the trajectory: stop on a diverged loss, evaluate, check that every rank
    took the same decisions, then report it (with a checkpoint when asked)."""
    if window is not None:
        raise_if_diverged(window, cfg.train.lr)
    started = time.perf_counter()
    point = {metrics.STEP: progress.step}
    point.update(evaluate(s, cfg.train, session.device, session.rank, session.world_size))
    last = progress.step == min(cfg.train.total_steps, cfg.train.stop_after or cfg.train.total_steps)
    generating = time.perf_counter()
    if cfg.behaviour.prompts and (len(progress.trajectory) % cfg.behaviour.every == 0 or last):
        point.update(behave(s, cfg, session.device, session.rank))
    if last and cfg.behaviour.harness_tasks and session.rank == 0:
        point.update(run_harness(s, cfg, session.device))
    progress.gen_seconds += time.perf_counter() - generating
    check_same_decisions(progress, session)
    if window is not None:
        point.update(window.means())
    point.update(counters(progress))
    progress.eval_seconds += time.perf_counter() - started
    point.update(costs(progress, session.device))
    progress.trajectory.append(point)
    if session.rank == 0:
        log.info(
            "step %d/%d  eval sft %.4f  dpo %.4f  acc %.3f  (%d SFT / %d DPO updates, %.1fs training)",
            progress.step, cfg.train.total_steps, point[metrics.SFT_LOSS], point[metrics.DPO_LOSS],
            point[metrics.PREF_ACCURACY], progress.updates["sft"], progress.updates["dpo"], progress.train_seconds,
        )
    if checkpoint:
        report_with_checkpoint(session, s, progress, point)
    else:
        session.report(point)


def raise_if_diverged(window: Window, lr: float) -> None:
    diverged = window.first_non_finite()
    if diverged is not None:
        step, name, value = diverged
        raise FloatingPointError(
            f"training diverged: the {name.upper()} loss was {value} at step {step} "
            f"(trial.train.lr={lr:g}); lower the learning rate"
        )


def check_same_decisions(progress: Progress, session: Session) -> None:
    """Every rank must have stepped the same objectives: one that did not would have
    all-reduced gradients of another objective (or hung)."""
    digests = all_gather_int(decisions_digest(progress.decisions), session.device)
    if len(set(digests)) != 1:
        raise RuntimeError(f"ranks took different schedule decisions by step {progress.step}: digests {digests}")
    progress.rank_digests = digests


def counters(progress: Progress) -> dict[str, int]:
    out = {}
    for name in OBJECTIVES:
        out[metrics.updates(name)] = progress.updates[name]
        out[metrics.tokens(name)] = progress.tokens[name]
    return out


def costs(progress: Progress, device: torch.device) -> dict[str, float]:
    return {metrics.TRAIN_S: progress.train_seconds, metrics.EVAL_S: progress.eval_seconds,
            metrics.GEN_S: progress.gen_seconds, metrics.SETUP_S: progress.setup_seconds, metrics.PEAK_MEM_MB: peak_memory_mb(device)}


def report_with_checkpoint(session: Session, s: Setup, progress: Progress, point: dict) -> None:
    with scratch_dir() as d:
        # One copy of the state from rank 0; each rank adds its own RNG state (Ray merges
        # the ranks' checkpoint folders into one).
        save_rng(d, session.rank, session.device)
        if session.rank == 0:
            save_checkpoint(d, s.model, s.optimizer, s.schedule, s.streams, progress, s.stateful)
        session.report(point, checkpoint_dir=d)


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
