"""M-step: supervised fine-tuning with TRL on the kept samples, loss on completion tokens only."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pandas as pd

from rest.data.prompts import with_training_prompts
from rest.engines.launch import TrainingError, check_config_files, inside_launch, launch_ranks, rank_and_world
from rest.engines.models import resolve_model
from rest.phases.stats import TrainStats
from rest.recipe.schema import Recipe
from rest.recipe.seeds import seed_for
from rest.run.modes import learning_rate
from rest.run.rundir import RunDir, atomic_directory, atomic_write_json


class NoKeptSamplesError(TrainingError):
    """The iteration kept no sample (or none fits ``train.max_length``), so there is nothing to train on."""


def init_model(recipe: Recipe, run: RunDir, iteration: int) -> str:
    """Where the M-step starts: the base model (ReST-EM) or the previous iteration's policy (ReST)."""
    if recipe.train.init == "base" or iteration == 1:
        return resolve_model(recipe.model)
    from rest.phases.sample import policy_after

    return policy_after(recipe, run, iteration - 1)


def training_examples(kept: pd.DataFrame, eos_token_id: int | None, max_length: int,
                      overlong: str = "drop") -> tuple[list[dict], dict[str, int]]:
    """Token ids exactly as sampled (prompt + completion) with a completion mask and the sample's reward.

    A completion that ended naturally gets the EOS token appended when the engine did not return it, so
    the model also learns to stop. Samples longer than ``max_length`` are dropped, or with
    ``overlong="truncate"`` cut to fit (dropped anyway when not one completion token would remain).
    """
    examples, counts = [], {"overlong": 0, "dropped_overlong": 0, "truncated_overlong": 0}
    rewards = kept["reward"] if "reward" in kept.columns else pd.Series(1.0, index=kept.index)
    for position, (row, reward) in enumerate(zip(kept.itertuples(index=False), rewards)):
        prompt, completion = list(row.prompt_token_ids), list(row.completion_token_ids)
        ends_naturally = row.finish_reason == "stop" and not row.truncated
        if ends_naturally and eos_token_id is not None and (not completion or completion[-1] != eos_token_id):
            completion.append(eos_token_id)
        if len(prompt) + len(completion) > max_length:
            counts["overlong"] += 1
            if overlong == "drop" or len(prompt) >= max_length:
                counts["dropped_overlong"] += 1
                continue
            counts["truncated_overlong"] += 1
            completion = completion[: max_length - len(prompt)]
        examples.append({
            "input_ids": prompt + completion,
            "completion_mask": [0] * len(prompt) + [1] * len(completion),
            "reward": None if pd.isna(reward) else float(reward),
            "kept_row": position,
        })
    return examples, counts


def split_eval(examples: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out ``fraction`` of the examples (seeded, at least one, never all) for the eval loss."""
    if fraction <= 0 or len(examples) < 2:
        return examples, []
    import random

    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = min(max(1, round(len(examples) * fraction)), len(examples) - 1)
    held = set(order[:n_eval])
    return ([e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held])


def trainer_rows(train: list[dict], evaluation: list[dict], reward_weighting: bool) -> tuple[list[dict], list[dict]]:
    """Rows the trainer's datasets hold: ids of the samples (so each rank can say what it saw) and weights."""
    rows = []
    for i, e in enumerate(train):
        row = {"input_ids": e["input_ids"], "completion_mask": e["completion_mask"], "example_index": i}
        if reward_weighting:
            if e["reward"] is None:
                raise TrainingError(
                    f"train.reward_weighting: kept sample {i} has no reward (the verifier could not judge it)"
                )
            row["loss_weight"] = e["reward"]
        rows.append(row)
    held = [{"input_ids": e["input_ids"], "completion_mask": e["completion_mask"], "eval_index": i}
            for i, e in enumerate(evaluation)]
    return rows, held


def last_checkpoint(output_dir: Path) -> str | None:
    """The newest complete trainer checkpoint in ``output_dir`` (to resume a cut-off M-step), if any."""
    checkpoints = sorted(output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    complete = [c for c in checkpoints if (c / "trainer_state.json").is_file()]
    return str(complete[-1]) if complete else None


def train_iteration(recipe: Recipe, run: RunDir, iteration: int) -> TrainStats:
    """Fine-tune on iteration ``iteration``'s kept set and save the policy to ``iter_K/model``.

    With ``train.launcher`` set, this starts the ranks, each of which comes back here and trains.
    """
    kept = pd.read_parquet(run.kept(iteration))
    if kept.empty:
        raise NoKeptSamplesError(f"iteration {iteration} kept 0 samples: nothing to train on")
    if recipe.train.launcher != "none" and not inside_launch():
        launch_ranks(recipe.train, run, iteration)
        return run.read_stats(iteration, "train")
    check_config_files(recipe.train)
    return train_on(recipe, run, iteration, kept)


def train_on(recipe: Recipe, run: RunDir, iteration: int, kept: pd.DataFrame) -> dict:
    """Train in this process (one rank of many under a launcher); rank 0 saves the policy and the stats."""
    import torch
    from transformers import AutoTokenizer

    from rest.engines.trainer import build_trainer

    # ReST's Improve steps continue the policy at a decaying learning rate (rest.run.modes); ReST-EM's is constant.
    cfg = recipe.train.model_copy(update={"learning_rate": learning_rate(recipe, iteration)})
    seed = seed_for(recipe, iteration, "train")
    start_from = init_model(recipe, run, iteration)
    tokenizer = AutoTokenizer.from_pretrained(start_from)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    kept = with_training_prompts(tokenizer, recipe.prompt, kept)
    examples, counts = training_examples(kept, tokenizer.eos_token_id, cfg.max_length, cfg.overlong)
    if not examples:
        raise NoKeptSamplesError(f"all {len(kept)} kept samples exceed train.max_length={cfg.max_length}")
    train, evaluation = split_eval(examples, cfg.eval_fraction, seed)
    train_rows, eval_rows = trainer_rows(train, evaluation, cfg.reward_weighting)
    work_dir = run.iteration(iteration) / "train"
    trainer, share = build_trainer(cfg, start_from, tokenizer, train_rows, eval_rows, work_dir, seed,
                                   peft_config=peft_config(cfg.lora))
    # What the trainer really feeds the model for the first kept sample, kept for audits and tests.
    first = trainer.train_dataset[0]
    audit = {"input_ids": list(first["input_ids"]), "labels": list(first.get("labels", []))}
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    resume = last_checkpoint(work_dir)
    resumed_step = json.loads((Path(resume) / "trainer_state.json").read_text())["global_step"] if resume else 0
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    wall = time.perf_counter() - started
    eval_loss = trainer.evaluate()["eval_loss"] if eval_rows else None
    rank, world = rank_and_world()
    tokens = int(trainer.accelerator.gather(torch.tensor([share.tokens])).sum())
    atomic_write_json(work_dir / f"data_rank{rank}.json", {
        "rank": rank, "world_size": world, "batches": share.batches, "tokens": share.tokens,
        "example_indices": share.example_indices,
        "samples": [_sample_id(kept, train, i) for i in share.example_indices],
    })
    state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped) if cfg.deepspeed or cfg.fsdp else None
    if not trainer.is_world_process_zero():
        return {}
    save_policy(trainer.model, tokenizer, run, iteration, state_dict)
    for checkpoint in work_dir.glob("checkpoint-*"):  # only needed to resume; the model is now saved
        shutil.rmtree(checkpoint, ignore_errors=True)
    log = trainer.state.log_history
    atomic_write_json(work_dir / "log_history.json", log)
    losses = [entry["loss"] for entry in log if "loss" in entry]
    stats = {
        "init": start_from,
        "examples": len(train),
        "eval_examples": len(evaluation),
        "dropped_too_long": counts["dropped_overlong"],
        **counts,
        "num_processes": world,
        "steps": trainer.state.global_step,
        "resumed_from_step": resumed_step,
        "resumed_from": str(Path(resume).relative_to(run.root)) if resume else None,
        # Mean over every logged step, those before a resume included (the trainer's own figure omits them).
        "train_loss": sum(losses) / len(losses) if losses else float(result.training_loss),
        "final_loss": float(losses[-1]) if losses else None,
        "eval_loss": eval_loss,
        "loss_curve": losses,
        "history": loss_history(log, share.log_times, resumed_step),
        "train_wall_s": wall,
        "tokens": tokens,
        "tokens_per_s": tokens / max(wall, 1e-9),
        "trainable_params": trainable,
        "bf16_autocast": bool(trainer.args.bf16),
        "checkpoint_dir": str(work_dir.relative_to(run.root)),
        "model_path": str(run.model(iteration).relative_to(run.root)),
        "log_model": cfg.log_model,
        "trainer_example_0": audit,
    }
    run.write_stats(iteration, "train", stats)
    return stats


def _sample_id(kept: pd.DataFrame, train: list[dict], index: int) -> str:
    """``prompt_id/sample_index`` of a training example, for the per-rank data records."""
    row = kept.iloc[train[index]["kept_row"]]
    return f"{row.get('prompt_id')}/{row.get('sample_index')}"


def loss_history(log_history: list[dict], log_times: dict[int, float], start_step: int) -> list[dict]:
    """One row per logged step: loss, learning rate, grad norm, eval loss and real tokens/s (this process)."""
    rows: dict[int, dict] = {}
    last_time, last_tokens = log_times.get(start_step, 0.0), 0
    for entry in log_history:
        row = rows.setdefault(entry["step"], {"step": entry["step"]})
        # Named apart from the summary stats (tokens_per_s, eval_loss) so MLflow keeps the two series apart.
        for key, name in (("loss", "loss"), ("learning_rate", "learning_rate"), ("grad_norm", "grad_norm"),
                          ("mean_token_accuracy", "mean_token_accuracy"), ("eval_loss", "eval_loss_at_step")):
            if isinstance(entry.get(key), (int, float)):
                row[name] = float(entry[key])
        step, tokens = entry["step"], entry.get("num_tokens")
        if "loss" in entry and step > start_step and step in log_times and tokens is not None:
            elapsed = log_times[step] - last_time
            if elapsed > 0:
                row["interval_tokens_per_s"] = (tokens - last_tokens) / elapsed
            last_time, last_tokens = log_times[step], tokens
    return [rows[step] for step in sorted(rows)]


def peft_config(lora):
    """A PEFT LoraConfig for the recipe's ``train.lora`` (None = full fine-tuning)."""
    if lora is None:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )


def save_policy(model, tokenizer, run: RunDir, iteration: int, state_dict: dict | None = None) -> None:
    """Write ``iter_K/model`` as a standalone merged model; a LoRA adapter is also kept in ``iter_K/adapter``.

    ``state_dict`` is the full state gathered from sharded ranks (FSDP, DeepSpeed); None = the model's own.
    """
    from peft import PeftModel

    if isinstance(model, PeftModel):
        with atomic_directory(run.adapter(iteration)) as staging:
            model.save_pretrained(str(staging))
        model = model.merge_and_unload()
    with atomic_directory(run.model(iteration)) as staging:
        model.save_pretrained(str(staging), state_dict=state_dict)
        tokenizer.save_pretrained(str(staging))

