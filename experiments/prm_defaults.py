"""Measurement behind the PRM update's default learning rate and epochs: held-out AUROC after training.

    .venv/bin/python experiments/prm_defaults.py sample RECIPE --out heldout.parquet [--n 4]
    .venv/bin/python experiments/prm_defaults.py sweep --train verified.parquet --heldout heldout.parquet \
        [--lr 1e-6 1e-5 1e-4] [--epochs 2] [--max-samples 64] [--loss ce]

``sample`` draws n solutions per held-out prompt of RECIPE from its base model with vLLM and judges them
(the same E-step settings, so the held-out samples look like training samples). ``sweep`` trains the PRM
from the base model on a run's ``verified.parquet`` (one iteration's labels, as the loop does) at each
learning rate and measures, after every epoch, the AUROC of the outcome reward (sum of the token log-ratios)
against correctness on the held-out samples, with its Hanley-McNeil stderr. The last line of output is one
JSON object with every figure measured.
"""
from __future__ import annotations

import argparse
import json
import time

import pandas as pd


def sample(recipe_path: str, out: str, n: int) -> None:
    """Held-out samples of the recipe's base model, judged by its verifier."""
    from rest.data.problems import load_splits
    from rest.engines.generation import generate, sampling_params, start_engine, stop_engine
    from rest.engines.models import resolve_model
    from rest.filters.registry import build_verifier
    from rest.phases.sample import build_prompts
    from rest.phases.verify import judge_frame
    from rest.recipe.schema import load_recipe

    recipe = load_recipe(recipe_path)
    base, cfg = resolve_model(recipe.model), recipe.sampling
    problems = build_prompts(recipe, load_splits(recipe).eval, base)
    llm = start_engine(recipe.engine, base, recipe.seed + 1000)
    try:
        outputs = generate(llm, list(problems["prompt_token_ids"]), sampling_params(cfg, n=n))
    finally:
        stop_engine(llm)
    rows = [{**p, "sample_index": o.sample_index, "completion": o.text, "completion_token_ids": o.token_ids,
             "finish_reason": o.finish_reason, "truncated": o.finish_reason == "length"}
            for p, outs in zip(problems.to_dict("records"), outputs) for o in outs]
    judged, _ = judge_frame(build_verifier(recipe.verifier.name, recipe.verifier.options), pd.DataFrame(rows))
    judged.to_parquet(out, index=False)
    print(json.dumps({"heldout_samples": len(judged), "correct": int(judged["correct"].eq(True).sum())}))


def sweep(args: argparse.Namespace) -> None:
    """Train at each learning rate; held-out AUROC after each epoch."""
    import torch

    from rest.engines.models import resolve_model
    from rest.prm.quality import auroc, hanley_mcneil_stderr
    from rest.prm.trainset import build_train_set, usable_rows
    from rest.prm.update import load_causal_lm, reward_margin, sequence_logprobs, train_prm
    from rest.recipe.schema import PrmConfig

    torch.set_num_threads(args.threads)  # on a shared 2-core machine, 2 threads stalled each other
    base = resolve_model(args.model)
    train = build_train_set(pd.read_parquet(args.train), args.loss, args.max_samples, 1024, seed=0)
    sets = {path: usable_rows(pd.read_parquet(path), 1024)[0] for path in args.heldout}
    model = load_causal_lm(base, "float32")
    started = time.perf_counter()
    ref_train = sequence_logprobs(model, train.frame)
    refs = {path: sequence_logprobs(model, frame) for path, frame in sets.items()}
    results = {"train_counts": train.counts, "reference_s": time.perf_counter() - started, "runs": [],
               "heldout": {path: {"samples": len(f), "correct": int(f["label"].sum())} for path, f in sets.items()}}
    print(json.dumps(results), flush=True)
    for lr in args.lr:
        model = load_causal_lm(base, "float32")
        cfg = PrmConfig(loss=args.loss, learning_rate=lr, epochs=1, batch_size=args.batch_size)
        for epoch in range(1, args.epochs + 1):
            started = time.perf_counter()
            history = train_prm(model, train, ref_train, cfg, seed=epoch)
            train_s = time.perf_counter() - started
            fit = reward_margin(0.05 * (sequence_logprobs(model, train.frame) - ref_train).numpy(), train.frame["label"])
            run = {"lr": lr, "epoch": epoch, "train_margin": fit["margin"], "first_loss": history[0]["loss"],
                   "last_loss": history[-1]["loss"], "mean_loss": sum(h["loss"] for h in history) / len(history),
                   "train_s": train_s}
            for path, frame in sets.items():
                rewards = (sequence_logprobs(model, frame) - refs[path]).numpy()
                labels = frame["label"].astype(bool)
                auc = auroc(rewards.tolist(), labels.tolist())
                run[path] = {"auroc": auc, "auroc_stderr": hanley_mcneil_stderr(auc, int(labels.sum()), int((~labels).sum())),
                             "margin": reward_margin(0.05 * rewards, frame["label"])["margin"]}
            results["runs"].append(run)
            print(json.dumps(run), flush=True)
    print(json.dumps(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sample")
    s.add_argument("recipe")
    s.add_argument("--out", required=True)
    s.add_argument("--n", type=int, default=4)
    w = sub.add_parser("sweep")
    w.add_argument("--train", required=True)
    w.add_argument("--heldout", required=True, nargs="+", help="judged samples to measure AUROC on")
    w.add_argument("--model", default="smollm2-135m-instruct")
    w.add_argument("--lr", type=float, nargs="+", default=[1e-6, 1e-5, 1e-4])
    w.add_argument("--epochs", type=int, default=2)
    w.add_argument("--batch-size", type=int, default=8)
    w.add_argument("--max-samples", type=int, default=64)
    w.add_argument("--loss", default="ce", choices=["ce", "dpo"])
    w.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.command == "sample":
        sample(args.recipe, args.out, args.n)
    else:
        sweep(args)


if __name__ == "__main__":
    main()
