"""How a row's prompt becomes the text the model sees: shared by the data loaders and the
embedded generator, which must render prompts exactly as training will."""

from __future__ import annotations

from workers.config import DEFAULT_TEMPLATE


def alpaca_prompt_text(instruction: str, input_text: str | None) -> str:
    """Alpaca's ``input`` is part of the prompt: instruction, blank line, input."""
    if input_text and input_text.strip():
        return f"{instruction}\n\n{input_text}"
    return instruction


def render_prompt(text: str, template: str = DEFAULT_TEMPLATE) -> str:
    # replace, not str.format: user text may hold braces.
    return template.replace("{prompt}", text)
