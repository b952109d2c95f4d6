"""The M-step's TRL trainer built from the recipe: arguments, per-rank data records, reward weights, callbacks."""
from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

from rest.engines.hardware import native_bf16
from rest.recipe.schema import TrainConfig
from rest.run.faults import kill_point

# Kill point reached right after the trainer saved a checkpoint (tests of resume use `train_checkpoint_saved#n`).
CHECKPOINT_KILL_POINT = "train_checkpoint_saved"


def use_bf16_autocast(mode: str) -> bool:
    """``train.mixed_precision`` resolved on this machine."""
    return mode == "bf16" or (mode == "auto" and native_bf16())


def sft_config(cfg: TrainConfig, output_dir: Path, seed: int, has_eval: bool, **overrides: Any):
    """TRL ``SFTConfig`` for the recipe's ``train`` section; ``overrides`` replace single fields (benchmarks)."""
    import torch
    from trl import SFTConfig

    on_gpu = torch.cuda.is_available()
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        # A float below 1 is a share of the steps in transformers 5.
        warmup_steps=cfg.warmup_ratio,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        weight_decay=cfg.weight_decay,
        gradient_checkpointing=cfg.gradient_checkpointing,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        packing=cfg.packing,
        padding_free=cfg.padding_free,
        # The eval slice keeps its sample ids (never packed), so its batches can be told from training batches.
        eval_packing=False,
        torch_compile=cfg.torch_compile,
        logging_steps=cfg.logging_steps,
        save_strategy="steps" if cfg.save_steps else "epoch",
        save_steps=cfg.save_steps or 500,
        # Rotation happens after the new checkpoint is complete, so one complete checkpoint always exists.
        save_total_limit=1,
        eval_strategy="steps" if has_eval and cfg.eval_steps else "no",
        eval_steps=cfg.eval_steps,
        seed=seed,
        data_seed=seed,
        report_to="none",
        completion_only_loss=True,
        # Samples are cut or dropped to max_length beforehand (train.overlong); padding-free needs None here.
        max_length=cfg.max_length if cfg.packing else None,
        model_init_kwargs={"dtype": getattr(torch, cfg.dtype)},
        bf16=cfg.dtype == "bfloat16" or use_bf16_autocast(cfg.mixed_precision),
        use_cpu=not on_gpu,
        # Sample ids and reward weights must reach the collator (see DataShare).
        remove_unused_columns=False,
        deepspeed=cfg.deepspeed,
        fsdp=cfg.fsdp or "",
        fsdp_config=cfg.fsdp_config,
        ddp_backend=cfg.ddp_backend,
        # Every trainable parameter takes part in each step; looking for unused ones costs a graph traversal.
        ddp_find_unused_parameters=False,
        disable_tqdm=False,
    )
    kwargs.update(overrides)
    return SFTConfig(**kwargs)


class DataShare:
    """Wraps the trainer's collator: records which samples and how many real tokens this rank trained on,
    and adds per-token reward weights when the recipe asks for them."""

    def __init__(self, collator: Any, pad_free: bool, weighted: bool):
        self.collator, self.pad_free, self.weighted = collator, pad_free, weighted
        self.example_indices: list[int] = []
        self.batches = 0
        self.tokens = 0
        self.log_times: dict[int, float] = {}  # logged step -> seconds since training started here

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        evaluating = "eval_index" in examples[0]
        extra = ("example_index", "eval_index", "loss_weight")
        batch = self.collator([{k: v for k, v in e.items() if k not in extra} for e in examples])
        if not evaluating:
            self.batches += 1
            self.tokens += sum(len(e["input_ids"]) for e in examples)
            self.example_indices.extend(int(e["example_index"]) for e in examples if "example_index" in e)
        if self.weighted and not evaluating:
            rows = [torch.full((len(e["input_ids"]),), float(e["loss_weight"])) for e in examples]
            if self.pad_free:
                rows = [torch.cat(rows)]
            width = batch["input_ids"].shape[1]
            weights = torch.zeros(len(rows), width)
            for i, row in enumerate(rows):
                weights[i, : len(row)] = row
            batch["loss_weights"] = weights
        return batch


def weight_losses_by_reward(model: Any) -> None:
    """Scale each token's log-probability by its sample's weight in the trainer's fused loss forward.

    TRL's loss is ``-sum(log_probs) / tokens``; weighting ``log_probs`` gives ReST-EM's ``sum r log p``.
    """
    fused = model.forward

    @functools.wraps(fused)
    def forward(*args, loss_weights=None, **kwargs):
        out = fused(*args, **kwargs)
        if loss_weights is not None and kwargs.get("fused_lm_head"):
            # log_probs score the next token: position t holds the label at t + 1.
            out.log_probs = out.log_probs * loss_weights[:, 1:].to(out.log_probs)
        return out

    model.forward = forward


def make_callbacks(log_times: dict[int, float]) -> list:
    """Callbacks: the kill point after each checkpoint, and the wall-clock time of each log entry (for tokens/s)."""
    from transformers import TrainerCallback

    class Checkpoints(TrainerCallback):
        """No checkpoint after the last step (the policy is saved instead); the kill point after each save."""

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= state.max_steps:
                control.should_save = False

        on_epoch_end = on_step_end

        def on_save(self, args, state, control, **kwargs):
            kill_point(CHECKPOINT_KILL_POINT)

    class LogClock(TrainerCallback):
        """Records, per logged step, the seconds since training started in this process."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()
            log_times[state.global_step] = 0.0

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                log_times[state.global_step] = time.perf_counter() - self.start

    return [Checkpoints(), LogClock()]


def build_trainer(cfg: TrainConfig, model: str, tokenizer: Any, train_examples: list[dict],
                  eval_examples: list[dict], output_dir: Path, seed: int, peft_config: Any = None,
                  **overrides: Any) -> tuple[Any, DataShare]:
    """The SFTTrainer for these examples, with its DataShare collator wrapper."""
    from datasets import Dataset
    from trl import SFTTrainer

    args = sft_config(cfg, output_dir, seed, has_eval=bool(eval_examples), **overrides)
    trainer = SFTTrainer(
        model=model, args=args, processing_class=tokenizer, peft_config=peft_config,
        train_dataset=Dataset.from_list(train_examples),
        eval_dataset=Dataset.from_list(eval_examples) if eval_examples else None,
        callbacks=make_callbacks(log_times := {}),
    )
    share = DataShare(trainer.data_collator, pad_free=trainer.padding_free, weighted=cfg.reward_weighting)
    share.log_times = log_times
    # Set after construction: TRL refuses a custom collator with padding-free batches, but this one only wraps it.
    trainer.data_collator = share
    if cfg.reward_weighting:
        inner = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
        weight_losses_by_reward(inner)
    return trainer, share
