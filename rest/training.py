"""M-step: supervised fine-tuning with TRL on the kept samples, loss on completion tokens only."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pandas as pd

from rest.models import resolve_model
from rest.recipe import Recipe
from rest.rundir import RunDir, atomic_directory, atomic_write_json


class NoKeptSamplesError(RuntimeError):
    """The iteration kept no sample, so there is nothing to train on."""


def init_model(recipe: Recipe, run: RunDir, iteration: int) -> str:
    """Where the M-step starts: the base model (ReST-EM) or the previous iteration's policy (ReST)."""
    if recipe.train.init == "base" or iteration == 1:
        return resolve_model(recipe.model)
    from rest.sampling import policy_after

    return policy_after(recipe, run, iteration - 1)


def training_examples(kept: pd.DataFrame, eos_token_id: int | None, max_length: int) -> tuple[list[dict], int]:
    """Token ids exactly as sampled (prompt + completion) with a completion mask; drops over-long samples.

    A completion that ended naturally gets the EOS token appended when the engine did not return it,
    so the model also learns to stop.
    """
    examples, too_long = [], 0
    for row in kept.itertuples(index=False):
        prompt, completion = list(row.prompt_token_ids), list(row.completion_token_ids)
        ends_naturally = row.finish_reason == "stop" and not row.truncated
        if ends_naturally and eos_token_id is not None and (not completion or completion[-1] != eos_token_id):
            completion.append(eos_token_id)
        if len(prompt) + len(completion) > max_length:
            too_long += 1
            continue
        examples.append({
            "input_ids": prompt + completion,
            "completion_mask": [0] * len(prompt) + [1] * len(completion),
        })
    return examples, too_long


def last_checkpoint(output_dir: Path) -> str | None:
    """The newest trainer checkpoint in ``output_dir`` (to resume a cut-off M-step), if any."""
    checkpoints = sorted(output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    complete = [c for c in checkpoints if (c / "trainer_state.json").is_file()]
    return str(complete[-1]) if complete else None


def train_iteration(recipe: Recipe, run: RunDir, iteration: int) -> dict:
    """Fine-tune on iteration ``iteration``'s kept set and save the policy to ``iter_K/model``."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    kept = pd.read_parquet(run.kept(iteration))
    if kept.empty:
        raise NoKeptSamplesError(f"iteration {iteration} kept 0 samples: nothing to train on")
    cfg = recipe.train
    start_from = init_model(recipe, run, iteration)
    tokenizer = AutoTokenizer.from_pretrained(start_from)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    examples, too_long = training_examples(kept, tokenizer.eos_token_id, cfg.max_length)
    if not examples:
        raise NoKeptSamplesError(f"all {len(kept)} kept samples exceed train.max_length={cfg.max_length}")
    work_dir = run.iteration(iteration) / "train"
    args = SFTConfig(
        output_dir=str(work_dir),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        weight_decay=cfg.weight_decay,
        gradient_checkpointing=cfg.gradient_checkpointing,
        logging_steps=cfg.logging_steps,
        save_strategy="epoch",
        save_total_limit=1,
        seed=cfg.seed if cfg.seed is not None else recipe.seed + iteration,
        report_to="none",
        completion_only_loss=True,
        max_length=cfg.max_length,
        model_init_kwargs={"dtype": getattr(torch, cfg.dtype)},
        # TRL turns bf16 autocast on by default; on CPUs without AMX that made a step ~20x slower here.
        bf16=cfg.dtype == "bfloat16",
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=False,
    )
    trainer = SFTTrainer(
        model=start_from, args=args, train_dataset=Dataset.from_list(examples), processing_class=tokenizer,
        peft_config=peft_config(cfg.lora),
    )
    # What the trainer really feeds the model for the first kept sample, kept for audits and tests.
    first = trainer.train_dataset[0]
    audit = {"input_ids": list(first["input_ids"]), "labels": list(first.get("labels", []))}
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=last_checkpoint(work_dir))
    wall = time.perf_counter() - started
    save_policy(trainer.model, tokenizer, run, iteration)
    for checkpoint in work_dir.glob("checkpoint-*"):  # only needed to resume; the model is now saved
        shutil.rmtree(checkpoint, ignore_errors=True)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    atomic_write_json(work_dir / "log_history.json", trainer.state.log_history)
    train_tokens = sum(sum(e["completion_mask"]) for e in examples) * cfg.epochs
    stats = {
        "init": start_from,
        "examples": len(examples),
        "dropped_too_long": too_long,
        "steps": trainer.state.global_step,
        "train_loss": float(result.training_loss),
        "final_loss": float(losses[-1]) if losses else None,
        "loss_curve": losses,
        "train_wall_s": wall,
        "completion_tokens_per_s": train_tokens / max(wall, 1e-9),
        "trainable_params": trainable,
        "trainer_example_0": audit,
    }
    run.write_stats(iteration, "train", stats)
    return stats


def peft_config(lora):
    """A PEFT LoraConfig for the recipe's ``train.lora`` (None = full fine-tuning)."""
    if lora is None:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )


def save_policy(model, tokenizer, run: RunDir, iteration: int) -> None:
    """Write ``iter_K/model`` as a standalone merged model; a LoRA adapter is also kept in ``iter_K/adapter``."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        with atomic_directory(run.adapter(iteration)) as staging:
            model.save_pretrained(str(staging))
        model = model.merge_and_unload()
    with atomic_directory(run.model(iteration)) as staging:
        model.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))


def read_loss_history(run: RunDir, iteration: int) -> list[dict]:
    """The trainer's log history of an iteration (loss and learning rate per logged step)."""
    path = run.iteration(iteration) / "train" / "log_history.json"
    return json.loads(path.read_text()) if path.is_file() else []
