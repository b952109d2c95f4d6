"""Is bfloat16 accurate enough for the implicit PRM? Rewards and their AUROC in float32 and bfloat16.

    .venv/bin/python experiments/prm_precision.py --samples RUN/iter_002/verified.parquet \
        --prm RUN/iter_001/model [--reference smollm2-135m-instruct] [--prompts 40] [--beta 0.05]

The implicit PRM's reward is a difference of two nearly identical models' log-probabilities, summed over
a step: the kind of quantity that low precision can swamp. This scores the same samples (every sample of
``--prompts`` prompts drawn at random, so both outcome classes are present) with rest-em's own scorer
(``rest.prm.score.score_frame``, transformers backend) at ``prm.dtype`` float32 and bfloat16, and reports
how far the bfloat16 rewards are from the float32 ones (sum and min over steps: max absolute difference,
Pearson and Spearman correlation, sign agreement of the step rewards) and the AUROC of each against
correctness. Any fine-tuned model of the reference serves as ``--prm`` (it has the PRM's structure: the
reference plus a small update). Timings are printed as bfloat16 / float32 ratios measured in the same
run; the last line is one JSON object with every figure.
"""
from __future__ import annotations

import argparse
import json
import platform

import numpy as np
import pandas as pd


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            name = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "")
    except OSError:
        name = ""
    from rest.engines.hardware import native_bf16

    return f"{name or platform.processor() or 'unknown CPU'}, {'native bf16' if native_bf16() else 'no native bf16'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", required=True, help="a verified.parquet (samples with 'correct')")
    parser.add_argument("--prm", required=True, help="the model whose log-ratio to the reference is the reward")
    parser.add_argument("--reference", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--beta", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from scipy.stats import pearsonr, spearmanr

    from rest.prm.quality import auroc
    from rest.prm.score import score_frame
    from rest.recipe.schema import PrmConfig

    samples = pd.read_parquet(args.samples)
    samples = samples[samples["correct"].notna()]
    prompts = samples["prompt_id"].drop_duplicates().sample(frac=1.0, random_state=args.seed)[: args.prompts]
    chosen = samples[samples["prompt_id"].isin(set(prompts))].reset_index(drop=True)
    labels = chosen["correct"].astype(bool).tolist()
    scored, timing = {}, {}
    for dtype in ("float32", "bfloat16"):
        cfg = PrmConfig(beta=args.beta, dtype=dtype, reuse_sampler_logprobs=False)
        frame, stats = score_frame(chosen, args.prm, args.reference, cfg, f"PRM {dtype}")
        scored[dtype], timing[dtype] = frame, stats["scoring_s"]
    full, low = scored["float32"], scored["bfloat16"]
    result = {"cpu": cpu_name(), "samples": len(chosen), "prompts": int(chosen["prompt_id"].nunique()),
              "correct": int(sum(labels)), "beta": args.beta,
              "bf16_over_fp32_scoring_time": timing["bfloat16"] / timing["float32"]}
    for column in ("prm__sum", "prm__min"):
        a, b = full[column].to_numpy(float), low[column].to_numpy(float)
        ok = np.isfinite(a) & np.isfinite(b)
        name = column.removeprefix("prm__")
        result[name] = {
            "max_abs_diff": float(np.max(np.abs(a[ok] - b[ok]))), "fp32_spread": float(np.std(a[ok])),
            "pearson": float(pearsonr(a[ok], b[ok])[0]), "spearman": float(spearmanr(a[ok], b[ok])[0]),
            "auroc_fp32": auroc(a[ok].tolist(), [lab for lab, keep in zip(labels, ok) if keep]),
            "auroc_bf16": auroc(b[ok].tolist(), [lab for lab, keep in zip(labels, ok) if keep]),
        }
    steps = [(x, y) for xs, ys in zip(full["prm__step_rewards"], low["prm__step_rewards"]) for x, y in zip(xs, ys)]
    result["step_reward_sign_agreement"] = float(np.mean([np.sign(x) == np.sign(y) for x, y in steps]))
    for name in ("sum", "min"):
        r = result[name]
        print(f"{name:>4}: max |bf16 - fp32| {r['max_abs_diff']:.4f} (fp32 spread {r['fp32_spread']:.4f}), "
              f"Pearson {r['pearson']:.4f}, Spearman {r['spearman']:.4f}, "
              f"AUROC fp32 {r['auroc_fp32']:.3f} vs bf16 {r['auroc_bf16']:.3f}")
    print(f"step rewards with the same sign: {result['step_reward_sign_agreement']:.1%}; "
          f"scoring time bf16 / fp32: {result['bf16_over_fp32_scoring_time']:.2f} ({result['cpu']})")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
