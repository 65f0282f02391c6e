"""The trial config: one typed model, validated on the driver and rebuilt in each worker.

Every section forbids unknown keys, so a typo fails at once with the field's name
instead of being silently ignored. Plain dicts of scalars cross the Ray boundary
(``TrialConfig.model_dump()``) and come back through ``TrialConfig.model_validate``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from workers.precision import BF16_TRUE, FP16_MIXED, PRECISIONS, TRUE_32
from workers.schedules import ALRIGHT, MAXRIGHT, SCHEDULES, SEQUENTIAL

EMBEDDED = "embedded"
LOCAL_SUFFIXES = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}

# Which of our roles each preset reads from which dataset column.
SFT_PRESETS = {"alpaca": {"prompt": "instruction", "input": "input", "response": "output"}}
PREF_PRESETS = {"hh": {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}}
DEFAULT_TEMPLATE = "User: {prompt}\nAssistant: "
LR_SCHEDULES = ("constant", "linear", "cosine")
# What the old trial.model.dtype becomes: float16 weights trained without a scaler lose
# small gradients, so its nearest safe equivalent is 16-mixed.
_DTYPE_TO_PRECISION = {"float32": TRUE_32, "bfloat16": BF16_TRUE, "float16": FP16_MIXED}


class ConfigError(ValueError):
    """A config problem, worded for the user: names the field and what is allowed.

    Raised on the driver when the config alone shows it, and by the workers' loaders when
    only reading the inputs does (every row dropped by max_len, LoRA targets that match
    nothing, a model that cannot be loaded); the driver reports both as bad input (exit 2)."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraSpec(Section):
    r: int = Field(16, gt=0, description="LoRA rank")
    alpha: int = Field(32, gt=0, description="LoRA scaling numerator (scale = alpha / r)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    targets: list[str] = Field(
        default_factory=lambda: ["query_key_value"],
        min_length=1,
        description="module names to adapt, e.g. query_key_value (GPT-NeoX) or q_proj, v_proj (Llama)",
    )


class ModelSpec(Section):
    name: str = Field(EMBEDDED, description="'embedded' (the tiny offline model), a hub name, or a local path")
    revision: str | None = Field(None, description="hub revision (branch, tag or commit)")
    trust_remote_code: bool = Field(False, description="run model code shipped with a hub repo; off by default")
    lora: LoraSpec | None = Field(None, description="train LoRA adapters instead of all weights")

    @model_validator(mode="before")
    @classmethod
    def _dtype_moved(cls, data):
        if isinstance(data, dict) and "dtype" in data:
            raise ValueError(f"dtype is gone: the weights' dtype follows trial.train.precision "
                             f"({', '.join(PRECISIONS)}); for dtype {data['dtype']!r} use "
                             f"{_DTYPE_TO_PRECISION.get(str(data['dtype']), TRUE_32)!r}")
        return data


EVAL_SIZE = 64  # held-out rows of a dataset with at least 5 × as many distinct prompts


class DatasetSpec(Section):
    source: str = Field(EMBEDDED, description="'embedded', a hub dataset name, or a local .json/.jsonl/.parquet")
    preset: Literal["alpaca", "hh", "custom"] | None = Field(
        None, description="column preset; default alpaca for SFT, hh for preference data"
    )
    columns: dict[str, str] | None = Field(
        None,
        description="role -> column: SFT roles prompt, input (optional), response; "
        "preference roles prompt, chosen, rejected. Overrides the preset.",
    )
    split: str = "train"
    eval_split: str | None = Field(None, description="named held-out split; else eval_size rows are held out")
    eval_size: int | None = Field(
        None, gt=0, description="held-out rows (taken from the training split unless eval_split); default: 64, or a "
        "fifth of the distinct prompts of a smaller dataset"
    )
    max_rows: int | None = Field(None, gt=0, description="use at most this many training rows")
    template: str | None = Field(
        None, description="prompt template with {prompt}; default 'User: {prompt}\\nAssistant: ' ('{prompt}' for hh)"
    )

    @field_validator("template")
    @classmethod
    def _has_placeholder(cls, v: str | None) -> str | None:
        if v is not None and "{prompt}" not in v:
            raise ValueError("template must contain '{prompt}'")
        return v

    def held_out(self, prompts: int) -> int:
        """``eval_size``, or its default for a dataset of ``prompts`` distinct prompts: 64, or a
        fifth of a smaller dataset's prompts (at least 1), so a small file keeps most rows to train on."""
        return self.eval_size if self.eval_size is not None else min(EVAL_SIZE, max(1, prompts // 5))

    @property
    def is_local(self) -> bool:
        return "://" not in self.source and Path(self.source).suffix in LOCAL_SUFFIXES

    def resolved(self, kind: Literal["sft", "pref"]) -> "DatasetSpec":
        """Fill the preset's columns and template; make a local path absolute (workers run elsewhere).
        Errors name the field (``trial.data.sft`` or ``trial.data.pref``)."""
        field = f"trial.data.{kind}"
        presets = SFT_PRESETS if kind == "sft" else PREF_PRESETS
        preset = self.preset or ("alpaca" if kind == "sft" else "hh")
        if preset != "custom" and preset not in presets:
            allowed = ", ".join([*presets, "custom"])
            raise ValueError(f"{field}.preset: {preset!r} is not for {kind} data; allowed: {allowed}")
        columns = dict(presets.get(preset, {}))
        columns.update(self.columns or {})
        needed = {"prompt", "response"} if kind == "sft" else {"prompt", "chosen", "rejected"}
        allowed_roles = needed | ({"input"} if kind == "sft" else set())
        if missing := needed - columns.keys():
            raise ValueError(f"{field}.columns: must map {sorted(missing)} for {kind} data (preset {preset!r})")
        if extra := columns.keys() - allowed_roles:
            raise ValueError(f"{field}.columns: unknown roles {sorted(extra)}; allowed: {sorted(allowed_roles)}")
        if self.is_local and self.eval_split is not None:
            raise ValueError(f"{field}.eval_split: {self.source} is one file with no named splits, so {self.eval_split!r} "
                             "would silently hold out nothing; leave eval_split unset (eval_size rows of whole prompts are "
                             "held out)")
        template = self.template or ("{prompt}" if preset == "hh" else DEFAULT_TEMPLATE)
        source = str(Path(self.source).expanduser().resolve()) if self.is_local else self.source
        return self.model_copy(update={"preset": preset, "columns": columns, "template": template, "source": source})


class DataSpec(Section):
    sft: DatasetSpec = Field(default_factory=DatasetSpec)
    pref: DatasetSpec = Field(default_factory=DatasetSpec)
    max_len: int = Field(128, gt=1, description="tokens per sequence; responses are truncated, long prompts dropped")
    seed: int = Field(0, description="seed of the held-out split")


class TrainSpec(Section):
    schedule: Literal[SCHEDULES] = ALRIGHT
    lam: float = Field(0.5, ge=0.0, le=1.0, description="weight on DPO: target is lam*f_DPO + (1-lam)*f_SFT")
    total_steps: int = Field(600, gt=0, description="optimizer steps")
    seed: int = 0
    batch_size: int = Field(16, gt=0, description="rows per objective per step per worker")
    micro_batch_size: int | None = Field(
        None, gt=0, description="rows per forward/backward; a step's batch is split into micro-batches whose "
        "gradients accumulate into one update (default: batch_size)"
    )
    gradient_checkpointing: bool = Field(False, description="recompute the blocks' activations in backward (less memory)")
    precision: Literal[PRECISIONS] = Field(
        TRUE_32, description="32-true (float32; the CPU default), bf16-mixed (autocast, float32 weights and optimizer), "
        "bf16-true (bfloat16 weights; LoRA adapters float32), 16-mixed (autocast float16 with a gradient scaler)"
    )
    lr_schedule: Literal[LR_SCHEDULES] = Field("constant", description="constant, or linear/cosine decay to 0 at total_steps")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up from 0 to lr over the first steps")
    eval_batch_size: int = Field(64, gt=0)
    lr: float = Field(5e-5, gt=0.0)
    betas: tuple[Annotated[float, Field(ge=0.0, lt=1.0)], Annotated[float, Field(ge=0.0, lt=1.0)]] = Field(
        (0.9, 0.95), description="AdamW's betas, each in [0, 1)"
    )
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float = Field(1.0, gt=0.0)
    beta: float = Field(0.1, gt=0.0, description="DPO inverse temperature")
    maxright_eval_every: int = Field(10, gt=0, description="MAXRIGHT k: recompute both scores every k steps")
    f_star_sft: float | None = Field(None, description="best reachable SFT loss (MAXRIGHT); from the anchors if unset")
    f_star_dpo: float | None = Field(None, description="best reachable DPO loss (MAXRIGHT); from the anchors if unset")
    sequential_order: Literal["dpo_first", "sft_first"] = "dpo_first"
    sequential_switch_step: int | None = Field(None, ge=0, description="explicit switch step; default round(lam*T)")
    eval_every: int = Field(50, gt=0)
    checkpoint_every: int = Field(0, ge=0, description="steps between resumable checkpoints; 0: only at the end")
    stop_after: int | None = Field(
        None, gt=0, description="end this run after this many steps with a checkpoint; a rerun of the same run resumes"
    )

    @model_validator(mode="after")
    def _maxright_needs_anchors(self) -> "TrainSpec":
        if self.schedule == MAXRIGHT and (self.f_star_sft is None or self.f_star_dpo is None):
            raise ValueError(f"schedule '{MAXRIGHT}' needs f_star_sft and f_star_dpo (or the sweep's anchor stage)")
        if self.micro_batch_size is not None and self.micro_batch_size > self.batch_size:
            raise ValueError(f"micro_batch_size {self.micro_batch_size} is larger than batch_size {self.batch_size} "
                             f"(allowed: 1 to {self.batch_size})")
        if self.warmup_steps > self.total_steps:
            raise ValueError(f"warmup_steps {self.warmup_steps} is past total_steps {self.total_steps} "
                             "(allowed: 0 to total_steps)")
        if self.sequential_switch_step is not None and self.sequential_switch_step > self.total_steps:
            raise ValueError(f"sequential_switch_step {self.sequential_switch_step} is past total_steps {self.total_steps} "
                             "(allowed: 0 to total_steps)")
        return self

    @property
    def micro_batch(self) -> int:
        return self.micro_batch_size or self.batch_size

    def schedule_options(self) -> dict:
        if self.schedule == SEQUENTIAL:
            return {"order": self.sequential_order, "switch_step": self.sequential_switch_step}
        if self.schedule == MAXRIGHT:
            return {"f_star_sft": self.f_star_sft, "f_star_dpo": self.f_star_dpo, "eval_every": self.maxright_eval_every}
        return {}


class BehaviourSpec(Section):
    prompts: int = Field(64, ge=0, description="held-out prompts of each dataset generated on (greedy) at an "
                         "evaluation; 0: no generation")
    every: int = Field(1, gt=0, description="generate at every N-th evaluation (and at the last)")
    max_new_tokens: int = Field(16, gt=0, le=1024)
    batch_size: int = Field(64, gt=0, description="prompts per generate call")
    samples: int = Field(4, ge=0, description="prompts of each dataset whose generations are kept as text at every "
                         "generating evaluation (MLflow table artifacts, the report's answers of the front points)")
    sft_judge: Literal["exact_match", "contains"] = Field(
        "exact_match", description="SFT accuracy: the generation is the reference answer, or contains it (normalised)")
    pref_judge: Literal["embedded", "reward_model", "none"] | None = Field(
        None, description="preference win rate: 'embedded' (the rule that wrote the embedded data), 'reward_model' "
        "(reward_model scores the generation above the chosen response), 'none'; default: embedded for the embedded "
        "preference data, else reward_model when one is set, else none")
    reward_model: str | None = Field(None, description="an AutoModelForSequenceClassification (local folder or hub "
                                     "name) with one output: the reward; its own tokenizer reads prompt + response")
    harness_tasks: list[str] = Field(default_factory=list, description="lm-evaluation-harness tasks (e.g. mmlu) run "
                                     "on the final model in the trial's process; needs the 'harness' extra")
    harness_include: str | None = Field(None, description="a folder of task YAMLs of your own for harness_tasks")
    harness_limit: int | None = Field(None, gt=0, description="at most this many documents per harness task")

    @model_validator(mode="after")
    def _judge_needs_model(self):
        if self.pref_judge == "reward_model" and not self.reward_model:
            raise ValueError("pref_judge 'reward_model' needs reward_model (a local folder or a hub name)")
        return self

    def pref_judge_for(self, data: DataSpec) -> str:
        if self.pref_judge:
            return self.pref_judge
        return EMBEDDED if data.pref.source == EMBEDDED else "reward_model" if self.reward_model else "none"


class TrialConfig(Section):
    model: ModelSpec = Field(default_factory=ModelSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    behaviour: BehaviourSpec = Field(default_factory=BehaviourSpec)
    threads: int | None = Field(
        None, gt=0, description="torch threads of a training process (float sums depend on it); "
        "default: resources.cpus_per_worker, at least 1"
    )
    cache_dir: str | None = Field(None, description="embedded model and data, reference log-probs; default <storage>/cache")
    output_dir: str | None = Field(None, description="where the final model and trajectory go (set by the driver)")
    resume_from: str | None = Field(
        None, description="a checkpoint folder to continue from when Ray has none (set by the driver on --resume)"
    )
    stop_file: str | None = Field(
        None, description="the loop ends at the first step this file exists (set by the driver under sweep.early_stop)"
    )

    def resolved(self) -> "TrialConfig":
        """Absolute paths and filled presets: what the driver hands to the workers."""
        data = self.data.model_copy(update={"sft": self.data.sft.resolved("sft"), "pref": self.data.pref.resolved("pref")})
        update = {"data": data, "cache_dir": str(Path(self.cache_dir or "~/.cache/rightsweep").expanduser().resolve()),
                  "threads": self.threads or 1}
        if Path(self.model.name).expanduser().exists():
            update["model"] = self.model.model_copy(update={"name": str(Path(self.model.name).expanduser().resolve())})
        if self.output_dir is not None:
            update["output_dir"] = str(Path(self.output_dir).expanduser().resolve())
        return self.model_copy(update=update)
