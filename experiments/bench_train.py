"""M-step throughput: rest-em's M-step with its best settings for this machine vs TRL SFTTrainer defaults.

Both sides train the same model on the same kept set (real E-step output) for the same number of steps,
one after the other, each in a fresh process (in one process the second side ran up to 1.3x faster on
kernels and memory the first had warmed up). Reported: real (non-pad) tokens per second of training, each
side's mean training loss, and each trained model's loss on the whole kept set (the "final loss"; the two
must agree within 0.05, so speed cannot come from training less). The last line is one JSON object.

    python experiments/bench_train.py [--kept runs/default/iter_001/kept.parquet ...] [--steps N] [--rest-first]
        [--mixed-precision auto|bf16|no]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from rest.engines.models import resolve_model
from rest.engines.trainer import DataShare, build_trainer
from rest.phases.train import trainer_rows, training_examples
from rest.recipe.schema import TrainConfig

DEFAULT_KEPT = ["runs/default/iter_001/kept.parquet", "runs/default/iter_002/kept.parquet"]
BATCH = 8
# Optimisation settings both sides share (TRL's defaults), so only the speed settings differ. rest-em's side
# otherwise runs its recipe defaults, which are its best measured settings for a CPU (see experiments/README.md).
SHARED = {"learning_rate": 2e-5, "lr_scheduler": "linear", "batch_size": BATCH, "max_length": 1024}
SPEED_FIELDS = ("dtype", "mixed_precision", "group_by_length", "gradient_checkpointing", "packing", "padding_free", "torch_compile")


def kept_examples(paths: list[str], tokenizer) -> list[dict]:
    """The kept samples as the M-step sees them (token ids as sampled, completion mask)."""
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        sys.exit(f"kept set not found: {', '.join(missing)} (run `rest run recipes/default.yaml` first)")
    kept = pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)
    examples, _ = training_examples(kept, tokenizer.eos_token_id, SHARED["max_length"])
    return examples


def loss_on(model, rows: list[dict]) -> float:
    """Token-mean completion loss of ``model`` on ``rows`` in float32 (the same measure for both sides).

    Casts ``model`` in place: it is called once training is over.
    """
    import torch

    model = model.float().eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(rows), BATCH):
            chunk = rows[start : start + BATCH]
            width = max(len(r["input_ids"]) for r in chunk)
            ids = torch.tensor([r["input_ids"] + [0] * (width - len(r["input_ids"])) for r in chunk])
            attention = torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in chunk])
            scored = torch.tensor([r["completion_mask"] + [0] * (width - len(r["input_ids"])) for r in chunk])
            logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1].float()
            mask = scored[:, 1:].bool()
            nll = torch.nn.functional.cross_entropy(logits[mask], ids[:, 1:][mask], reduction="sum")
            total, count = total + float(nll), count + int(mask.sum())
    return total / count


def timed_training(trainer, share: DataShare) -> dict:
    """Train, and report real tokens per second of the training loop alone."""
    started = time.perf_counter()
    result = trainer.train()
    wall = time.perf_counter() - started
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {"wall_s": round(wall, 2), "steps": trainer.state.global_step, "tokens": share.tokens,
            "tokens_per_s": round(share.tokens / wall, 2), "train_loss": round(float(result.training_loss), 4),
            "last_step_loss": round(losses[-1], 4)}


def trl_defaults(model: str, tokenizer, rows: list[dict], steps: int, out: Path) -> dict:
    """TRL SFTTrainer with its defaults; only what a CPU run and the same objective need is set."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    settings = dict(
        per_device_train_batch_size=BATCH, max_steps=steps, seed=0, report_to="none", save_strategy="no",
        logging_steps=1,
        use_cpu=True,  # TRL's default bf16=True refuses to start on a CPU-only machine otherwise
        bf16=False,  # the baseline: fp32 weights, no autocast
        completion_only_loss=True,  # our rows are pre-tokenized, so TRL cannot infer the completion-only objective
    )
    trainer = SFTTrainer(model=model, args=SFTConfig(output_dir=str(out), **settings),
                         train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    share = DataShare(trainer.data_collator, pad_free=False, weighted=False)
    trainer.data_collator = share  # counts real tokens only
    result = timed_training(trainer, share)
    result["final_loss"] = round(loss_on(trainer.model, rows), 4)
    result["settings"] = {k: v for k, v in settings.items() if k != "report_to"}
    result["gradient_checkpointing"] = trainer.args.gradient_checkpointing
    return result


def rest_em(model: str, tokenizer, rows: list[dict], steps: int, out: Path, speed: dict) -> dict:
    """rest-em's M-step trainer (rest.engines.trainer) with its recipe defaults plus ``speed`` overrides."""
    cfg = TrainConfig(**SHARED, **speed, max_steps=steps)
    trainer, share = build_trainer(cfg, model, tokenizer, rows, [], out, seed=0, save_strategy="no")
    result = timed_training(trainer, share)
    result["final_loss"] = round(loss_on(trainer.model, rows), 4)
    result["settings"] = {key: getattr(cfg, key) for key in SPEED_FIELDS}
    result["bf16_autocast"] = bool(trainer.args.bf16)
    return result


def run_side(side: str, args: argparse.Namespace) -> dict:
    """One side, trained in this process (``--side``): its figures."""
    from transformers import AutoTokenizer

    model = resolve_model("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(model)
    rows, _ = trainer_rows(kept_examples(args.kept, tokenizer), [], reward_weighting=False)
    steps = args.steps or math.ceil(len(rows) / BATCH)
    with tempfile.TemporaryDirectory() as tmp:
        if side == "trl":
            trl_rows = [{k: r[k] for k in ("input_ids", "completion_mask")} for r in rows]
            result = trl_defaults(model, tokenizer, trl_rows, steps, Path(tmp) / "trl")
        else:
            speed = {k: v for k, v in (("dtype", args.dtype), ("mixed_precision", args.mixed_precision)) if v}
            result = rest_em(model, tokenizer, rows, steps, Path(tmp) / "rest", speed)
    return {**result, "examples": len(rows)}


def in_fresh_process(side: str, args: argparse.Namespace) -> dict:
    """Run one side in a new Python process, so neither inherits the other's warmed-up kernels and memory."""
    cmd = [sys.executable, __file__, "--side", side, "--kept", *args.kept]
    for flag, value in (("--steps", args.steps), ("--dtype", args.dtype), ("--mixed-precision", args.mixed_precision)):
        if value:
            cmd += [flag, str(value)]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        sys.exit(f"the {side} side failed (exit {done.returncode}); its log is above")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kept", nargs="+", default=DEFAULT_KEPT, help="kept.parquet files of a real run")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps (default: one epoch)")
    parser.add_argument("--rest-first", action="store_true", help="run rest-em's side first (load drift check)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None, help="rest-em side weights dtype")
    parser.add_argument("--mixed-precision", choices=["auto", "bf16", "no"], default=None,
                        help="rest-em side train.mixed_precision (default: the recipe default)")
    parser.add_argument("--side", choices=["trl", "rest"], help=argparse.SUPPRESS)  # one side, in this process
    args = parser.parse_args()
    if args.side:
        print(json.dumps(run_side(args.side, args)), flush=True)
        return
    load_before = os.getloadavg()[0]
    order = ["rest", "trl"] if args.rest_first else ["trl", "rest"]
    results = {}
    for side in order:
        results[side] = in_fresh_process(side, args)
        print(f"{side}:", results[side], flush=True)
    baseline, ours = results["trl"], results["rest"]
    loss_gap = abs(ours["final_loss"] - baseline["final_loss"])
    print(json.dumps({
        "benchmark": "m_step_train_throughput", "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {cpu_name()}",
        "model": "smollm2-135m-instruct", "kept_files": args.kept, "examples": ours["examples"],
        "batch_size": BATCH, "steps": ours["steps"], "order": order, "trl_defaults": baseline, "rest_em": ours,
        # Other work on the machine slows both sides; the load average says how busy it was.
        "load_average_before": round(load_before, 2), "load_average_after": round(os.getloadavg()[0], 2),
        "final_loss_gap": round(loss_gap, 4), "losses_agree": loss_gap <= 0.05,
        "ratio_vs_trl_defaults": round(ours["tokens_per_s"] / baseline["tokens_per_s"], 3),
    }))


def cpu_name() -> str:
    """The CPU model, and whether it multiplies bf16 in hardware (AMX), which decides the best M-step settings."""
    from rest.engines.hardware import native_bf16

    name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return f"{name or 'unknown CPU'}, {'native bf16' if native_bf16() else 'no native bf16'}"


if __name__ == "__main__":
    main()
