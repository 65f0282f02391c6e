"""Trial configs the tests build."""

from orchestrator.config import load_config


def smoke_trial(cache_dir, out_dir, **train):
    """The smoke preset's trial, with ``train`` fields changed and its output in ``out_dir``."""
    cfg = load_config("smoke", [f"trial.cache_dir={cache_dir}"])
    t = cfg.trial.train.model_copy(update=train)
    return cfg.trial.model_copy(update={"train": t, "output_dir": str(out_dir)})
