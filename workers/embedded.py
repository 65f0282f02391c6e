"""The embedded default: generated data with a real SFT/DPO conflict, a trained tokenizer
and a tiny Pythia-architecture model, all built offline and cached by recipe.

The conflict. Every prompt is a small task ("what comes after 41", "reverse the word" + "cat").
The SFT data answers tersely: ``42``. The preference data, on prompts from the same
family, prefers ``sure! 42.`` over the terse ``42``. SFT pushes the first response token
towards the answer, DPO pushes it towards ``sure!``: a model cannot fully do both, so
training on one objective undoes the other and the front of trade-offs is a curve.

The base model is briefly pre-trained on both styles (half each), so the DPO reference
gives both a moderate likelihood, as a pre-trained model would; it is built once per
recipe and cached, and every trial starts from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from workers.data import alpaca_prompt_text, render_prompt

RECIPE = {
    "version": 2,
    "sft_rows": 2000,
    "pref_rows": 2000,
    "seed": 1234,
    "vocab_size": 384,
    "hidden_size": 64,
    "layers": 2,
    "heads": 4,
    "max_positions": 128,
    "warmup_steps": 150,
    "warmup_batch": 32,
    "warmup_lr": 3e-3,
}
EOS = "<|endoftext|>"
WORDS = (
    "cat dog sun map red box cup pen hat owl fox bee ant car bus toy key leg arm eye ice oak "
    "sea sky tea pie jam egg fig nut bag bed rug mat fan jar net pot rod web zip gem log"
).split()


def _task(rng: np.random.Generator) -> tuple[str, str, str]:
    """One (instruction, input, answer); some tasks put their argument in Alpaca's input field."""
    kind = rng.integers(4)
    if kind == 0:
        n = rng.integers(100)
        return f"what comes after {n}", "", str(n + 1)
    word = WORDS[rng.integers(len(WORDS))]
    if kind == 1:
        return f"repeat {word}", "", f"{word} {word}"
    if kind == 2:
        return "reverse the word", word, word[::-1]
    return "shout the word", word, word.upper()


def terse(answer: str) -> str:
    return answer


def polite(answer: str) -> str:
    return f"sure! {answer}."


def generate_rows(recipe: dict = RECIPE) -> tuple[list[dict], list[dict]]:
    """SFT rows in the Alpaca schema and preference rows in the hh schema, deterministic."""
    rng = np.random.default_rng(recipe["seed"])
    sft = []
    for _ in range(recipe["sft_rows"]):
        instruction, inp, answer = _task(rng)
        sft.append({"instruction": instruction, "input": inp, "output": terse(answer)})
    pref = []
    for _ in range(recipe["pref_rows"]):
        instruction, inp, answer = _task(rng)
        # hh rows carry the prompt already rendered, as rm-hh-rlhf's "Human: … Assistant:" do.
        prompt = render_prompt(alpaca_prompt_text(instruction, inp))
        pref.append({"prompt": prompt, "chosen": polite(answer), "rejected": terse(answer)})
    return sft, pref


def _warmup_texts(recipe: dict) -> list[str]:
    rng = np.random.default_rng(recipe["seed"] + 1)
    texts = []
    for i in range(recipe["warmup_steps"] * recipe["warmup_batch"]):
        instruction, inp, answer = _task(rng)
        style = polite if i % 2 else terse
        texts.append(render_prompt(alpaca_prompt_text(instruction, inp)) + style(answer) + EOS)
    return texts


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE trained on the generated text, wrapped as a PreTrainedTokenizerFast
    so that the rest of the code takes the same path as with a hub tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS, bos_token=EOS)


def tiny_config(vocab_size: int, eos_id: int, recipe: dict = RECIPE):
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=recipe["hidden_size"],
        num_hidden_layers=recipe["layers"],
        num_attention_heads=recipe["heads"],
        intermediate_size=4 * recipe["hidden_size"],
        max_position_embeddings=recipe["max_positions"],
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        tie_word_embeddings=False,
    )


def _pretrain(model, tokenizer, texts: list[str], recipe: dict) -> None:
    """Plain next-token training on both answer styles: the base every trial starts from."""
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=recipe["warmup_lr"])
    model.train()
    bs = recipe["warmup_batch"]
    for step in range(recipe["warmup_steps"]):
        batch = tokenizer(texts[step * bs : (step + 1) * bs], return_tensors="pt", padding=True)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()


def recipe_key(recipe: dict = RECIPE) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def ensure_embedded(cache_dir: str | os.PathLike, recipe: dict = RECIPE) -> Path:
    """Build (once) and return the folder with ``base/`` (model + tokenizer), ``sft.jsonl``
    and ``pref.jsonl``. Safe when several trials race: each builds in a private folder and
    the first rename wins."""
    root = Path(cache_dir) / "embedded" / f"v{recipe['version']}-{recipe_key(recipe)}"
    if (root / "base" / "config.json").exists():
        return root
    import torch
    from safetensors.torch import save_model
    from transformers import GPTNeoXForCausalLM

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=root.parent))
    try:
        sft, pref = generate_rows(recipe)
        for name, rows in (("sft.jsonl", sft), ("pref.jsonl", pref)):
            with open(tmp / name, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
        texts = _warmup_texts(recipe)
        tokenizer = train_tokenizer(texts, recipe["vocab_size"])
        torch.manual_seed(recipe["seed"])
        model = GPTNeoXForCausalLM(tiny_config(len(tokenizer), tokenizer.eos_token_id, recipe))
        _pretrain(model, tokenizer, texts, recipe)
        # Not model.save_pretrained: under torch.distributed it writes nothing on ranks > 0,
        # and such a rank, building on its own node, would publish a folder without weights.
        (tmp / "base").mkdir()
        model.config.save_pretrained(tmp / "base")
        save_model(model, str(tmp / "base" / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(tmp / "base")
        try:
            os.rename(tmp, root)
        except OSError:  # another process finished first; its copy is as good as ours
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
