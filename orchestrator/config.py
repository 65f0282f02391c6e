"""The experiment config: presets in YAML, ``--set key=value`` overrides, one validation.

Loading is cheap on purpose (pydantic and yaml only): ``--help`` and config errors must
answer in well under a second, before Ray or torch are imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from workers.config import Section, TrialConfig

PRESETS = Path(__file__).parent / "configs"


class Resources(Section):
    num_workers: int = Field(0, ge=0, description="Ray Train workers per trial; 0 runs the loop in the trial's own process")
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    max_failures: int = Field(0, ge=0, description="worker restarts per trial (resume from the last checkpoint)")


class ExperimentConfig(Section):
    name: str = Field("default", min_length=1, description="experiment name: MLflow experiment and storage folder")
    storage: str = Field("results", description="folder (or shared filesystem URI) for checkpoints, results and caches")
    trial: TrialConfig = Field(default_factory=TrialConfig)
    resources: Resources = Field(default_factory=Resources)


class ConfigError(ValueError):
    """A config problem, worded for the user: names the field and what is allowed."""


def preset_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
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
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item!r}: value is not valid YAML ({e.problem})") from e
    return key.strip().split("."), value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for item in overrides:
        path, value = parse_override(item)
        node = raw
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return raw


def format_validation_error(e: ValidationError) -> str:
    """One line per problem: the dotted field, what was wrong, what is allowed."""
    lines = []
    for err in e.errors():
        where = ".".join(str(p) for p in err["loc"]) or "config"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see the preset YAML for the fields)"
        elif err["type"] == "literal_error":
            msg = f"got {err.get('input')!r}; {msg[0].lower()}{msg[1:]}"
        lines.append(f"{where}: {msg}")
    return "\n".join(lines)


def load_config(preset: str = "default", overrides: list[str] | None = None) -> ExperimentConfig:
    path = preset_path(preset)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    raw = apply_overrides(raw, overrides or [])
    try:
        cfg = ExperimentConfig.model_validate(raw)
        trial = cfg.trial.resolved()
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return cfg.model_copy(update={"trial": trial, "storage": str(Path(cfg.storage).expanduser().resolve())})
