"""Turn a problem into the exact prompt text and token ids the engine sees and the trainer trains on."""
from __future__ import annotations

from typing import Any

import pandas as pd

from rest.recipe.schema import PromptConfig


def render_prompt(tokenizer: Any, cfg: PromptConfig, question: str, template: str | None = None) -> str:
    """The prompt text for one problem (chat template applied when the recipe asks for it); ``template``
    replaces ``cfg.template`` (the M-step's ``train_template``)."""
    user = (template or cfg.template).replace("{question}", question)
    if not cfg.chat_template:
        return user
    messages = ([{"role": "system", "content": cfg.system}] if cfg.system else []) + [
        {"role": "user", "content": user}
    ]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def with_training_prompts(tokenizer: Any, cfg: PromptConfig, rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with ``prompt_token_ids`` (and ``prompt_text``) of the prompt the M-step trains on: the
    sampled prompt, or ``prompt.train_template`` filled with each row's question."""
    if cfg.train_template is None:
        return rows
    texts = [render_prompt(tokenizer, cfg, str(q), cfg.train_template) for q in rows["question"]]
    return rows.assign(prompt_text=texts, prompt_token_ids=[encode_prompt(tokenizer, t) for t in texts])


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a rendered prompt; the chat template already holds any special tokens it wants."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]
