"""The reward-model judge of preference behaviour: any one-output
``AutoModelForSequenceClassification`` (local folder or hub name) scores prompt +
generation against prompt + the dataset's chosen response; the generation wins when it
scores higher, a tie counts half (a generation that is the chosen response is a tie)."""

from __future__ import annotations

import math

import torch

from workers.config import ConfigError


class RewardJudge:
    def __init__(self, name: str, device: torch.device, batch_size: int):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name)
            self.model = AutoModelForSequenceClassification.from_pretrained(name, use_safetensors=True).to(device).eval()
        except OSError as e:
            raise ConfigError(f"trial.behaviour.reward_model: could not load {name!r} ({e}); offline, give a local "
                              "folder saved with save_pretrained") from e
        if self.model.config.num_labels != 1:
            raise ConfigError(f"trial.behaviour.reward_model: {name!r} has {self.model.config.num_labels} outputs; "
                              "a reward model has one (num_labels=1)")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # Sequence classifiers read the score at the last non-pad token, found by this id.
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.tokenizer.padding_side = "right"
        self.device, self.batch_size = device, batch_size

    @torch.no_grad()
    def scores(self, texts: list[str]) -> list[float]:
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[start : start + self.batch_size], return_tensors="pt", padding=True, truncation=True)
            logits = self.model(**{k: v.to(self.device) for k, v in batch.items()}).logits
            out.extend(logits[:, 0].float().tolist())
        return out

    def wins(self, prompts: list[str], generations: list[str], references: list[str]) -> list[float]:
        """Per prompt: 1 if the generation outscores the reference, 0.5 on a tie, else 0."""
        n = len(prompts)
        s = self.scores([p + g for p, g in zip(prompts, generations)] + [p + r for p, r in zip(prompts, references)])
        # The same text in batches of other widths scores equal only to float noise.
        return [0.5 if math.isclose(s[i], s[n + i], rel_tol=1e-4, abs_tol=1e-5) else float(s[i] > s[n + i]) for i in range(n)]
