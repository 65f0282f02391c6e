"""The embedded default: generated data with a real SFT/DPO conflict, a trained tokenizer
and a tiny Pythia-architecture model, all built offline and cached by recipe.

The conflict. Every prompt is a small task ("what comes after 41", "reverse the word" + "bak").
The SFT data answers tersely: ``42``. The preference data, on prompts from the same
family, prefers ``sure! 42.`` over the terse ``42``. SFT pushes the first response token
towards the answer, DPO pushes it towards ``sure!``: a model cannot fully do both, so
training on one objective undoes the other and the front of trade-offs is a curve.

Held-out data must be unseen. The tasks run over 980 made-up words and 200 numbers:
3,140 distinct prompts, each used at most once per dataset. A share of them is kept for
pre-training the base and never appears in the SFT or preference data, so a prompt held
out of those (``workers.data`` splits by prompt) is one the model has never seen.

The base model is briefly pre-trained on both styles (half each), so the DPO reference
gives both a moderate likelihood, as a pre-trained model would; it is built once per
recipe, at a fixed thread count, and cached under a key of everything that changes its
bytes. Every trial starts from it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from workers.precision import kernels
from workers.progress import progress_bar
from workers.prompts import alpaca_prompt_text, render_prompt

log = logging.getLogger("rightsweep.embedded")

RECIPE = {
    "version": 3,
    "sft_rows": 2000,
    "pref_rows": 2000,
    "pretrain_prompts": 640,  # prompts only the base's pre-training sees
    "seed": 1234,
    "vocab_size": 384,
    "hidden_size": 64,
    "layers": 2,
    "heads": 4,
    "max_positions": 128,
    "warmup_steps": 150,
    "warmup_batch": 32,
    "warmup_lr": 3e-3,
    "build_threads": 1,  # float sums depend on torch's thread count: the build's is fixed
}
EOS = "<|endoftext|>"
CONSONANTS, VOWELS = "bdfgklmnprstvz", "aeiou"
NUMBERS = 200


def prompt_pool() -> list[tuple[str, str, str]]:
    """Every task as (instruction, input, answer); some put their argument in Alpaca's input field."""
    words = [a + v + b for a in CONSONANTS for v in VOWELS for b in CONSONANTS]
    pool = [(f"what comes after {n}", "", str(n + 1)) for n in range(NUMBERS)]
    for w in words:
        pool += [(f"repeat {w}", "", f"{w} {w}"), ("reverse the word", w, w[::-1]), ("shout the word", w, w.upper())]
    return pool


def _pools(recipe: dict) -> tuple[list, list]:
    """(pre-training prompts, task prompts): a seeded partition of the pool."""
    pool = prompt_pool()
    order = np.random.default_rng(recipe["seed"]).permutation(len(pool))
    shuffled = [pool[i] for i in order]
    return shuffled[: recipe["pretrain_prompts"]], shuffled[recipe["pretrain_prompts"] :]


def terse(answer: str) -> str:
    return answer


def polite(answer: str) -> str:
    return f"sure! {answer}."


def generate_rows(recipe: dict = RECIPE) -> tuple[list[dict], list[dict]]:
    """SFT rows in the Alpaca schema and preference rows in the hh schema, deterministic;
    each dataset uses a task prompt at most once, and the two overlap."""
    _, tasks = _pools(recipe)
    rng = np.random.default_rng(recipe["seed"] + 2)
    sft = [{"instruction": ins, "input": inp, "output": terse(ans)}
           for ins, inp, ans in (tasks[i] for i in rng.choice(len(tasks), recipe["sft_rows"], replace=False))]
    # hh rows carry the prompt already rendered, as rm-hh-rlhf's "Human: … Assistant:" do.
    pref = [{"prompt": render_prompt(alpaca_prompt_text(ins, inp)), "chosen": polite(ans), "rejected": terse(ans)}
            for ins, inp, ans in (tasks[i] for i in rng.choice(len(tasks), recipe["pref_rows"], replace=False))]
    return sft, pref


def _warmup_texts(recipe: dict) -> list[str]:
    pretrain, _ = _pools(recipe)
    rng = np.random.default_rng(recipe["seed"] + 1)
    texts = []
    for i in range(recipe["warmup_steps"] * recipe["warmup_batch"]):
        instruction, inp, answer = pretrain[rng.integers(len(pretrain))]
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
    with progress_bar(recipe["warmup_steps"], "building the embedded base model", "step") as bar:
        for step in range(recipe["warmup_steps"]):
            batch = tokenizer(texts[step * bs : (step + 1) * bs], return_tensors="pt", padding=True)
            labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
            loss = model(**batch, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            bar.update()
    model.eval()


def build_key(recipe: dict = RECIPE) -> str:
    """What the built bytes depend on: the recipe, the libraries that turn it into weights
    (torch, transformers' initialisation, the BPE trainer) and the CPU kernels torch runs
    (an AVX2 machine and an AVX-512 one build different bases)."""
    import tokenizers
    import torch
    import transformers

    versions = {"torch": torch.__version__, "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                "kernels": kernels("cpu")}
    return hashlib.sha256(json.dumps([recipe, versions], sort_keys=True).encode()).hexdigest()[:12]


@contextmanager
def torch_threads(n: int):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def ensure_embedded(cache_dir: str | os.PathLike, recipe: dict = RECIPE) -> Path:
    """Build (once) and return the folder with ``base/`` (model + tokenizer), ``sft.jsonl``
    and ``pref.jsonl``. Safe when several trials race: each builds in a private folder and
    the first rename wins."""
    root = Path(cache_dir) / "embedded" / f"v{recipe['version']}-{build_key(recipe)}"
    if (root / "base" / "config.json").exists():
        return root
    import torch
    from safetensors.torch import save_model
    from transformers import GPTNeoXForCausalLM

    root.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=root.parent))
    try:
        sft, pref = generate_rows(recipe)
        for name, rows in (("sft.jsonl", sft), ("pref.jsonl", pref)):
            with open(tmp / name, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
        texts = _warmup_texts(recipe)
        tokenizer = train_tokenizer(texts, recipe["vocab_size"])
        with torch_threads(recipe["build_threads"]):
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
            log.info("embedded model and data built in %.1fs into %s (once per cache)", time.perf_counter() - started, root)
        except OSError:  # another process finished first; its copy is as good as ours
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
