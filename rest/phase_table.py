"""Every phase of an iteration, declared once; the run directory, loop, CLI, worker, summary and tracking read it.

A phase is a function ``(recipe, run, iteration) -> stats`` that writes its outputs under ``iter_K/`` and
its numbers to ``iter_K/stats/<name>.json``. Adding one: write its module, add one :class:`Phase` below in
iteration order (the phase before it must finish first), and, where it has files worth showing in MLflow,
a ``Tracker`` method named by ``logs``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Phase:
    name: str  # manifest key, stats file and log file name
    function: str  # "module:function" that runs it
    command: str  # the CLI command that runs it alone: `rest COMMAND RECIPE --iteration K`
    help: str  # that command's help line
    isolated: bool  # runs in its own process (it holds an engine or a model: its memory goes when it ends)
    section: str | None = None  # the recipe section that switches it on (None: always on)
    column: str | None = None  # its column in the wall-time table (None: its name)
    logs: str | None = None  # the Tracker method that logs its files besides its numbers (None: numbers only)

    def enabled(self, recipe: Any) -> bool:
        """Whether an iteration of ``recipe`` runs this phase."""
        return self.section is None or getattr(recipe, self.section) is not None

    @property
    def time_column(self) -> str:
        return self.column or self.name


PHASE_TABLE = (
    Phase("sample", "rest.sampling:sample_iteration", "sample",
          "E-step: sample completions for one iteration with vLLM.", isolated=True),
    Phase("verify", "rest.verify:verify_iteration", "verify",
          "Score one iteration's samples with the outcome verifier.", isolated=False),
    Phase("repair", "rest.repair:repair_iteration", "repair",
          "Repair one iteration's failed prompts (rationalisation or reflection) with vLLM.", isolated=True,
          section="repair"),
    Phase("prm_update", "rest.prm.training:prm_update_iteration", "prm-train",
          "Update the implicit PRM on one iteration's outcome labels.", isolated=True, section="prm", column="prm"),
    Phase("prm_score", "rest.prm.scoring:prm_score_iteration", "prm-score",
          "Score one iteration's samples with its implicit PRM.", isolated=True, section="prm", column="prm"),
    Phase("select", "rest.filtering:select_iteration", "filter",
          "Run the selection pipeline over one iteration's verified samples.", isolated=False, logs="log_selection"),
    Phase("train", "rest.training:train_iteration", "train",
          "M-step: fine-tune on one iteration's kept samples with TRL.", isolated=True, logs="log_training"),
    Phase("eval", "rest.evaluation:evaluate_iteration", "eval",
          "Evaluate one iteration's policy on the held-out split (0 = base model).", isolated=True,
          logs="log_evaluation"),
)
PHASES = tuple(p.name for p in PHASE_TABLE)  # in iteration order
TIME_COLUMNS = tuple(dict.fromkeys(p.time_column for p in PHASE_TABLE))


def phase(name: str) -> Phase:
    """The declaration of phase ``name``."""
    for declared in PHASE_TABLE:
        if declared.name == name:
            return declared
    raise KeyError(f"unknown phase '{name}'; phases: {', '.join(PHASES)}")
