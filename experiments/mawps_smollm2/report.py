"""The MAWPS/ASDiv-A experiment's results table and plot, from the arms' run directories or their saved results.

    .venv/bin/python experiments/mawps_smollm2/report.py RUNS/outcome RUNS/mixed RUNS/supervised [--save]
    .venv/bin/python experiments/mawps_smollm2/report.py experiments/mawps_smollm2/results/*.json

Prints a Markdown table (per arm and iteration: kept samples by origin and the prompts they cover,
train loss, validation metrics with their standard errors, wall time per phase, tokens generated; the
best iteration starred), the paired pass@1 differences (each iteration vs the base model; the pairs the
issue asks about: mixed vs supervised, mixed vs outcome, prm vs outcome, repair vs outcome; checked vs
repair and outcome; mixed4 and answers vs supervised and mixed; mixed4 vs
supervised5; prm_prompt vs outcome and prm) and writes ``pass_at_1.png``
beside this file. ``--save`` keeps each run directory's arm in ``results/`` (see experiments/arms.py).
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import arms  # noqa: E402  (experiments/arms.py, shared by the experiments' reports)

# The comparisons issue 25 asks for, printed when both arms are given (ARM minus OTHER).
COMPARE = ["mixed:supervised", "mixed:outcome", "outcome:supervised", "prm:outcome", "repair:outcome",
           "checked:repair", "checked:outcome", "mixed4:supervised", "mixed4:mixed", "answers:supervised",
           "answers:mixed", "mixed4:supervised5", "supervised5:supervised", "prm_prompt:outcome",
           "prm_prompt:prm", "answers190:supervised5", "answers190:answers", "answers190:mixed4"]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--compare" not in argv:
        argv += [arg for pair in COMPARE for arg in ("--compare", pair)]
    return arms.main(argv, HERE, "ReST-EM on MAWPS/ASDiv-A, SmolLM2-135M-Instruct", __doc__)


if __name__ == "__main__":
    sys.exit(main())
