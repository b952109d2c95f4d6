"""Turn a problem into the exact prompt text and token ids the engine sees and the trainer trains on."""
from __future__ import annotations

from typing import Any

from rest.recipe import PromptConfig


def render_prompt(tokenizer: Any, cfg: PromptConfig, question: str) -> str:
    """The prompt text for one problem (chat template applied when the recipe asks for it)."""
    user = cfg.template.replace("{question}", question)
    if not cfg.chat_template:
        return user
    messages = ([{"role": "system", "content": cfg.system}] if cfg.system else []) + [
        {"role": "user", "content": user}
    ]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a rendered prompt; the chat template already holds any special tokens it wants."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]
