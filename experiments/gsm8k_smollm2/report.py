"""The GSM8K experiment's results table and plot, from the arms' run directories or their saved results.

    .venv/bin/python experiments/gsm8k_smollm2/report.py runs/gsm8k_smollm2/outcome runs/gsm8k_smollm2/prm [--save]
    .venv/bin/python experiments/gsm8k_smollm2/report.py results/outcome.json runs/gsm8k_smollm2/prm

Prints a Markdown table (per arm and iteration: kept samples, train loss, validation metrics with their
standard errors, wall time per phase, tokens generated), the paired pass@1 differences (each iteration
vs the base model; the PRM arm vs the outcome arm), the held-out PRM figures where a PRM ran (AUROC,
best-of-4 by PRM, PRM-weighted vote, majority, random pick) and writes ``pass_at_1.png`` beside this
file. ``--save`` keeps each run directory's arm in ``results/`` (see experiments/arms.py).
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import arms  # noqa: E402  (experiments/arms.py, shared by the experiments' reports)


def main(argv: list[str] | None = None) -> int:
    return arms.main(argv, HERE, "ReST-EM on GSM8K, SmolLM2-135M-Instruct", __doc__)


if __name__ == "__main__":
    sys.exit(main())
