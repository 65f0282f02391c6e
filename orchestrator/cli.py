"""``rightsweep`` / ``python -m orchestrator``: the command line.

Exit codes: 0 done, 1 the run failed, 2 bad input (config, arguments) found before any
training started, 130 and 143 stopped by SIGINT (Ctrl-C) and SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from orchestrator.config import ConfigError, load_config
from orchestrator.preflight import preflight
from workers import metrics
from workers.schedules import SCHEDULES

log = logging.getLogger("rightsweep")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="default", help="preset name (default, smoke, pythia-1b, llama3-8b-lora) or a .yaml path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set trial.train.lr=1e-3 (repeatable)")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="rightsweep", description="Sweep the SFT/DPO trade-off with ALRIGHT and MAXRIGHT on Ray.")
    sub = ap.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="run one trial through a TorchTrainer on Ray")
    _common(t)
    t.add_argument("--schedule", choices=SCHEDULES)
    t.add_argument("--lam", type=float, help="weight on DPO in [0, 1]")
    t.add_argument("--seed", type=int)
    t.add_argument("--num-workers", type=int, help="Ray Train workers (0: in the trial's own process)")
    t.add_argument("--name", help="run name (default: from schedule, lam and seed); reuse it to resume")

    sw = sub.add_parser("sweep", help="run a Pareto sweep: anchors, then schedule x lambda grid, then the front")
    _common(sw)
    sw.add_argument("--resume", action="store_true", help="continue an interrupted sweep of the same name")

    pa = sub.add_parser("pareto", help="rebuild the front of a sweep from the MLflow store")
    _common(pa)
    pa.add_argument("--experiment", help="sweep name (default: the config's name)")
    pa.add_argument("--out", help="folder for pareto.png/csv/json (default: <storage>/<name>/report)")

    sy = sub.add_parser("sync", help="copy a sweep's trials from its results on storage into MLflow (after an outage)")
    _common(sy)
    sy.add_argument("--experiment", help="sweep name (default: the config's name)")

    es = sub.add_parser("estimate", help="peak memory of a training process, from the config alone (offline, no Ray)")
    _common(es)
    es.add_argument("--gpu-memory-gb", type=float, help="one GPU's memory in GB (default: resources.gpu_memory_gb)")

    ins = sub.add_parser("inspect", help="what the model's tokenizer makes of the data: rows, splits, token lengths, "
                         "what fits max_len (seconds, no Ray)")
    _common(ins)

    ui = sub.add_parser("ui", help="serve the MLflow UI on the sweep store (127.0.0.1)")
    _common(ui)
    ui.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    ui.add_argument("--port", type=int, default=5000)
    return ap


def cmd_train(args) -> int:
    overrides = list(args.overrides)
    for flag, key in (("schedule", "trial.train.schedule"), ("lam", "trial.train.lam"), ("seed", "trial.train.seed"),
                      ("num_workers", "resources.num_workers")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    cfg = load_config(args.config, overrides)
    cfg = preflight(cfg)
    t = cfg.trial.train
    name = args.name or f"train-{t.schedule}-lam{t.lam:g}-seed{t.seed}"
    out_dir = Path(cfg.storage) / name
    trial = cfg.trial.model_copy(update={"output_dir": str(out_dir)})

    from orchestrator.trial import build_trainer, connect_and_prepare

    connect_and_prepare(trial, cfg.resources)
    try:
        result = build_trainer(trial, cfg.resources, name, cfg.storage).fit()
        error = result.error
    except Exception as e:  # Ray Train raises what its workers raised
        error = e
    if error:
        log.error("trial failed: %s", (str(error).strip().splitlines() or ["?"])[-1][:1000])
        return 1
    trajectory = out_dir / "trajectory.json"
    final = json.loads(trajectory.read_text())["points"][-1]
    print(f"final {metrics.SFT_LOSS}={final[metrics.SFT_LOSS]:.4f} {metrics.DPO_LOSS}={final[metrics.DPO_LOSS]:.4f} "
          f"pref_accuracy={final[metrics.PREF_ACCURACY]:.3f} after {final[metrics.STEP]} steps")
    behaviour = [f"{k}={final[k]:.3f}" for k in (metrics.GEN_SFT_ACCURACY, metrics.GEN_PREF_WIN_RATE) if k in final]
    if behaviour:
        print("final behaviour (greedy generations on held-out prompts): " + " ".join(behaviour))
    print(f"trajectory: {trajectory}")
    print(f"model (Hugging Face format): {out_dir / 'model'}")
    return 0


def cmd_sweep(args) -> int:
    cfg = load_config(args.config, args.overrides)
    cfg = preflight(cfg)
    import signal

    from orchestrator.sweep import Interrupted, run_sweep

    try:
        run_sweep(cfg, resume=args.resume)
    except Interrupted as e:
        import shlex

        again = " ".join(["rightsweep", "sweep", *map(shlex.quote, sys.argv[2:])] + ([] if args.resume else ["--resume"]))
        print(f"rightsweep: interrupted by {signal.Signals(e.signum).name}: {e}. To continue: {again}  "
              f"(a front of the finished trials now: rightsweep pareto --experiment {cfg.name})", file=sys.stderr)
        return 128 + e.signum
    return 0


def cmd_pareto(args) -> int:
    cfg = load_config(args.config, args.overrides)
    name = args.experiment or cfg.name
    from orchestrator.report import format_table
    from orchestrator.store import rebuild
    from orchestrator.tracking import Tracker, tracking_uri

    uri = tracking_uri(cfg.tracking.tracking_uri, cfg.storage)
    out = Path(args.out) if args.out else Path(cfg.storage) / name / "report"
    try:
        summary = rebuild(Tracker(uri, name, cfg.storage), out)
    except LookupError as e:
        print(f"rightsweep: {name}: {e}", file=sys.stderr)
        return 1
    print(format_table(summary))
    print(f"Pareto plot: {out / 'pareto.png'}\ntable: {out / 'pareto.csv'}\nthe front points' answers: {out / 'samples.md'}")
    return 0


def cmd_sync(args) -> int:
    cli = load_config(args.config, args.overrides)
    name = args.experiment or cli.name
    from orchestrator.resume import SweepState

    state = SweepState.load(Path(cli.storage) / name)
    if state is None:
        print(f"rightsweep: no sweep {name!r} under {cli.storage} (set storage=... to the sweep's)", file=sys.stderr)
        return 1
    from orchestrator.config import ExperimentConfig
    from orchestrator.mirror import backfill
    from orchestrator.report import format_table
    from orchestrator.store import rebuild
    from orchestrator.tracking import Tracker, tracking_uri

    # The sweep's own config (its trials' params), with this command's storage and MLflow.
    cfg = ExperimentConfig.model_validate({**state.config, "storage": cli.storage, "tracking": cli.tracking.model_dump()})
    tracker = Tracker(tracking_uri(cfg.tracking.tracking_uri, cfg.storage), name, cfg.storage)
    tracker.datasets = state.datasets
    runs, points = backfill(cfg, tracker, state.parent_run_id)
    print(f"MLflow has the {runs} trial run(s) of sweep {name!r}; {points} missing point(s) copied from storage")
    if state.finished:
        summary = rebuild(tracker, Path(cfg.storage) / name / "report", finished=not state.failed)
        print(format_table(summary))
    return 0


def cmd_estimate(args) -> int:
    """The estimate, what it assumed, and whether it fits: exit 1 only when it does not."""
    cfg = load_config(args.config, args.overrides)
    from workers.estimate import GB, describe, estimate, largest_micro_batch

    r = cfg.resources
    # A GPU's memory on the command line asks about a GPU process, whatever resources.use_gpu says.
    workers, device = max(r.num_workers, 1), "cuda" if r.use_gpu or args.gpu_memory_gb else "cpu"
    e = estimate(cfg.trial, workers, device=device)
    print("\n".join(describe(e)))
    memory = args.gpu_memory_gb or (r.gpu_memory_gb if r.use_gpu else None)
    if memory is None:
        print("fits: unknown (no GPU memory given: set resources.gpu_memory_gb or pass --gpu-memory-gb)")
        return 0
    where = "--gpu-memory-gb" if args.gpu_memory_gb else "resources.gpu_memory_gb"
    largest = largest_micro_batch(cfg.trial, memory * GB, workers, device=device)
    fits = e.total <= memory * GB
    print(f"fits in {memory:g} GB ({where}): {'yes' if fits else 'NO'}; largest micro_batch_size that fits: "
          + (f"{largest} (batch_size {cfg.trial.train.batch_size})" if largest else "none (see gradient_checkpointing, "
             "precision bf16-true, LoRA or a shorter max_len)"))
    return 0 if fits else 1


def cmd_inspect(args) -> int:
    from orchestrator.inspection import inspect

    return inspect(load_config(args.config, args.overrides))


def cmd_ui(args) -> int:
    import subprocess

    cfg = load_config(args.config, args.overrides)
    from orchestrator.redact import redact_text
    from orchestrator.tracking import runs_page, tracking_uri

    uri = tracking_uri(cfg.tracking.tracking_uri, cfg.storage)
    base, page = f"http://{args.host}:{args.port}", runs_page(uri, cfg.name)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host, "--port", str(args.port),
           "--workers", "1"]  # one user's browser: MLflow's default 4 worker processes only slow the start
    print(f"MLflow UI on {base} for {redact_text(uri)}" + (f"; sweep {cfg.name!r}: {base}/{page}" if page else ""), flush=True)
    return subprocess.call(cmd)


def main(argv: list[str] | None = None) -> int:
    # Ray folds log lines that differ only in numbers into one "[repeated Nx]" line, printed
    # seconds later: two seeds' evaluations are such lines. Read when ray is first imported.
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    args = parser().parse_args(argv)
    try:
        return {"train": cmd_train, "sweep": cmd_sweep, "pareto": cmd_pareto, "sync": cmd_sync, "estimate": cmd_estimate,
                "inspect": cmd_inspect, "ui": cmd_ui}[args.command](args)
    except ConfigError as e:
        for line in str(e).splitlines():
            print(f"rightsweep: config error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rightsweep: {args.command} interrupted", file=sys.stderr)
        return 130
