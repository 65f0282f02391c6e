"""The experiment config: presets in YAML, ``--set key=value`` overrides, one validation.

Loading is cheap on purpose (pydantic and yaml only): ``--help`` and config errors must
answer in well under a second, before Ray or torch are imported.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from workers.config import ConfigError, Section, TrainSpec, TrialConfig  # noqa: F401 (ConfigError: re-exported)
from workers.schedules import ALRIGHT, MAXRIGHT, SCHEDULES, SEQUENTIAL

PRESETS = Path(__file__).parent / "configs"


class Resources(Section):
    num_workers: int = Field(0, ge=0, description="Ray Train workers per trial; 0 runs the loop in the trial's own process")
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    max_failures: int = Field(0, ge=0, description="worker restarts per trial (resume from the last checkpoint)")
    gpu_memory_gb: float | None = Field(
        None, gt=0, description="memory of one GPU of the worker type, in GB (A10G: 24); a sweep whose trial's memory "
        "estimate does not fit is refused before it starts"
    )
    custom: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources each training process needs, e.g. {trainer_node: 1}"
    )

    def per_process(self) -> dict[str, float]:
        """What one training process (a worker, or the trial itself in local mode) asks of Ray."""
        need = {"CPU": self.cpus_per_worker, **self.custom}
        if self.use_gpu:
            need["GPU"] = self.gpus_per_worker or 1.0
        return need

    def per_trial(self) -> dict[str, float]:
        """Everything one trial occupies while it runs."""
        n = max(self.num_workers, 1)
        return {k: v * n for k, v in self.per_process().items()}


Schedule = Literal[SCHEDULES]
Lam = Annotated[float, Field(ge=0.0, le=1.0)]


class EarlyStop(Section):
    grace: int | None = Field(None, ge=0, description="optimizer steps before any stop; default a quarter of "
                              "trial.train.total_steps")
    epsilon: float = Field(0.02, ge=0, description="a trial is beaten when another has both losses lower by 1+epsilon")
    patience: int = Field(2, ge=1, description="evaluations beaten in a row before the trial (and its cell) stops")
    protect: list[Schedule] = Field([SEQUENTIAL], description="schedules never stopped (Sequential: its trajectory "
                                    "is phase-shaped); anchors never are")


class SweepSpec(Section):
    search: Literal["grid", "adaptive"] = Field(
        "grid", description="grid: every schedule × lams cell; adaptive: lams is the coarse start, then each next "
        "(schedule, λ) goes where the front has its largest gap, up to budget cells")
    budget: int | None = Field(None, gt=0, description="adaptive: (schedule, λ) cells in all, the coarse grid's "
                               "included, each run with every seed; default twice the coarse grid")
    min_width: float = Field(0.1, gt=0, lt=0.5, description="adaptive: no new λ closer than this to one already run "
                             "(below ~0.1 the seeds' spread is as large as the step between neighbours)")
    early_stop: EarlyStop | None = Field(None, description="stop trials another trial beats in both losses at the same "
                                         "step (e.g. {} for the defaults); off by default")
    schedules: list[Schedule] = Field(list(SCHEDULES), min_length=1)
    lams: list[Lam] = Field([0.25, 0.5, 0.75], min_length=1, description="λ grid, each in [0, 1]")
    seeds: list[int] = Field([0, 1, 2], min_length=1, description="every cell runs each seed; fronts are over seed means")
    anchors: bool = Field(
        True, description="run SFT-only and DPO-only trials first to estimate f* (skipped when trial.train gives f*)"
    )
    max_concurrent_trials: int | None = Field(None, gt=0, description="default: as many as the cluster's "
                                             "resources fit; on an autoscaling cluster, every trial (queued ones ask for nodes)")
    hypervolume_reference: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] | None = Field(
        None, description="(f_SFT, f_DPO) bounding the hypervolume; default 1.1 x the nadir of the trials and the "
        "initial model. Set it to compare hypervolumes of sweeps exactly"
    )
    per_schedule: dict[Schedule, dict[str, Any]] = Field(
        default_factory=dict, description="trial.train fields that differ by schedule, e.g. {mix: {lr: 1.0e-5}}"
    )


class TrackingSpec(Section):
    tracking_uri: str | None = Field(
        None, description="MLflow server or store URI; default $MLFLOW_TRACKING_URI, else SQLite under storage"
    )
    register_models: bool = Field(True, description="copy the front trials' models into MLflow and register them (one "
                                  "registered model per sweep, a version per front trial); off for models too large to copy")
    system_metrics_every_s: float | None = Field(
        10.0, gt=0, description="sample the CPU, memory, disk, network and GPUs of the machine the driver runs on onto the "
        "sweep's run every this many seconds (MLflow's system metrics); null: off")


class ExperimentConfig(Section):
    name: str = Field("default", description="sweep name: MLflow experiment and storage folder (letters, digits, _ . -; "
                      "not starting with a dot)")
    storage: str = Field("results", description="folder (on a cluster, a shared file system every node mounts at the "
                         "same path) for checkpoints, results, caches")
    trial: TrialConfig = Field(default_factory=TrialConfig)
    resources: Resources = Field(default_factory=Resources)
    sweep: SweepSpec = Field(default_factory=SweepSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)

    @field_validator("name")
    @classmethod
    def _name_stays_in_storage(cls, v: str) -> str:
        # '.' resolved to storage itself (a second sweep would have moved the whole storage
        # aside) and '..' to its parent: a name must be one plain folder below storage.
        if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*", v):
            raise ValueError(f"{v!r} is not a sweep name: letters, digits, '_', '.', '-', not starting with a dot "
                             "(it names a folder below storage)")
        return v

    @field_validator("storage")
    @classmethod
    def _storage_is_a_folder(cls, v: str) -> str:
        # The token and reference caches, the sweep state and the SQLite store are files read
        # with plain paths on every node: an object store would need all of them rewritten.
        if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", v):
            raise ValueError(f"{v!r} is a URI; storage is a folder path: on a cluster, a shared file system every node "
                             "mounts at the same path (cluster.yaml mounts EFS at /mnt/shared)")
        return v

    @model_validator(mode="after")
    def _maxright_has_f_star(self) -> "ExperimentConfig":
        t = self.trial.train
        given = t.f_star_sft is not None and t.f_star_dpo is not None
        if MAXRIGHT in self.sweep.schedules and not given and not self.sweep.anchors:
            raise ValueError(
                f"sweep.schedules has {MAXRIGHT}, which needs f*: set trial.train.f_star_sft and f_star_dpo, "
                "or sweep.anchors: true"
            )
        return self

    @model_validator(mode="after")
    def _per_schedule_is_valid_train(self) -> "ExperimentConfig":
        for schedule, override in self.sweep.per_schedule.items():
            where = f"sweep.per_schedule.{schedule}"
            if axes := sorted({"schedule", "lam", "seed"} & override.keys()):
                raise ValueError(f"{where}: {axes} are set by the grid (sweep.schedules, lams, seeds), not per schedule")
            try:
                TrainSpec.model_validate({**self.trial.train.model_dump(), **override, "schedule": ALRIGHT})
            except ValidationError as e:
                raise ValueError("\n".join(f"{where}.{line}" for line in format_validation_error(e).splitlines())) from None
        return self

    @model_validator(mode="after")
    def _budget_holds_the_coarse_grid(self) -> "ExperimentConfig":
        s = self.sweep
        coarse = len(s.schedules) * len(s.lams)
        if s.budget is not None and s.search == "grid":
            raise ValueError("sweep.budget: only the adaptive search has a budget (sweep.search: adaptive); a grid runs "
                             "every cell")
        if s.budget is not None and s.budget < coarse:
            raise ValueError(f"sweep.budget: {s.budget} cells cannot hold the coarse grid of {coarse} "
                             f"({len(s.schedules)} schedules × {len(s.lams)} lams)")
        return self

    @property
    def cell_budget(self) -> int:
        """Main cells the sweep may run: the grid's, or the adaptive search's budget."""
        coarse = len(self.sweep.schedules) * len(self.sweep.lams)
        if self.sweep.search == "grid":
            return coarse
        return self.sweep.budget or 2 * coarse

    @property
    def grace(self) -> int:
        stop = self.sweep.early_stop
        return stop.grace if stop is not None and stop.grace is not None else self.trial.train.total_steps // 4

    @property
    def anchors_given(self) -> bool:
        return self.trial.train.f_star_sft is not None and self.trial.train.f_star_dpo is not None


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice in one mapping is an error: YAML's
    last-wins would silently drop the first value."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r} (each key once)", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def parse_yaml(text: str, where: str):
    """YAML with unique keys; a problem is one line naming where (file, line, column)."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML{at}: {problem}") from None


def preset_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if p.is_dir():
            raise ConfigError(f"config file {p} is a folder, not a YAML file")
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        return p
    p = PRESETS / f"{name_or_path}.yaml"
    if not p.is_file():
        names = sorted(q.stem for q in PRESETS.glob("*.yaml"))
        raise ConfigError(f"unknown preset {name_or_path!r}; presets: {', '.join(names)} (or a path to a .yaml file)")
    return p


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], value parsed as YAML: numbers, booleans, lists)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise ConfigError(f"--set {item!r}: expected key.path=value, e.g. --set trial.train.lam=0.5")
    value = parse_yaml(raw, f"--set {item!r}: value") if raw.strip() else ""
    return key.strip().split("."), value


def merged(old: Any, new: Any) -> Any:
    """``new`` over ``old``, a section (dict) key by key: ``--set trial.data.pref={source: x.jsonl}``
    changes the source and keeps the preset's other fields of that dataset."""
    if isinstance(old, dict) and isinstance(new, dict):
        return {**old, **{k: merged(old.get(k), v) for k, v in new.items()}}
    return new


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for item in overrides:
        path, value = parse_override(item)
        node = raw
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = merged(node.get(path[-1]), value)
    return raw


def format_validation_error(e: ValidationError) -> str:
    """One line per problem: the dotted field, what was wrong, what is allowed."""
    lines = []
    for err in e.errors():
        where = ".".join(str(p) for p in err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see the preset YAML for the fields)"
        elif err["type"] == "literal_error":
            msg = f"got {err.get('input')!r}; {msg[0].lower()}{msg[1:]}"
        elif err["type"] == "value_error":  # our validators' own words; a whole-config one names its fields
            msg = msg.removeprefix("Value error, ")
        lines.append(f"{where}: {msg}" if where else msg)
    return "\n".join(lines)


def load_config(preset: str = "default", overrides: list[str] | None = None) -> ExperimentConfig:
    path = preset_path(preset)
    raw = parse_yaml(path.read_text(), str(path)) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    raw = apply_overrides(raw, overrides or [])
    try:
        cfg = ExperimentConfig.model_validate(raw)
        storage = Path(cfg.storage).expanduser().resolve()
        trial = cfg.trial
        if trial.cache_dir is None:  # shared by every trial and sweep on this storage
            trial = trial.model_copy(update={"cache_dir": str(storage / "cache")})
        if trial.threads is None:  # what Ray gives a training process: `train` and `sweep` compute alike
            trial = trial.model_copy(update={"threads": max(1, int(cfg.resources.cpus_per_worker))})
        trial = trial.resolved()
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return cfg.model_copy(update={"trial": trial, "storage": str(storage)})
