"""Every phase of an iteration, declared once; the run directory, loop, CLI, worker, summary and tracking read it.

A phase is a function ``(recipe, run, iteration) -> stats`` that writes its outputs under ``iter_K/`` and
its numbers to ``iter_K/stats/<name>.json``. Adding one: write its module, add one :class:`Phase` below in
iteration order (the phase before it must finish first), and, where it has files worth showing in MLflow,
a ``Tracker`` method named by ``logs``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rest.phases.stats import (
    EvalStats,
    PavStats,
    PRMScoreStats,
    PRMUpdateStats,
    RepairStats,
    SampleStats,
    SelectStats,
    TrainStats,
    VerifyStats,
)


@dataclass(frozen=True)
class Phase:
    name: str  # manifest key, stats file and log file name
    function: str  # "module:function" that runs it
    command: str  # the CLI command that runs it alone: `rest COMMAND RECIPE --iteration K`
    help: str  # that command's help line
    isolated: bool  # runs in its own process (it holds an engine or a model: its memory goes when it ends)
    stats: type  # the TypedDict of what it writes to iter_K/stats/<name>.json (rest/phases/stats.py)
    section: str | None = None  # the recipe section that switches it on (None: always on)
    column: str | None = None  # its column in the wall-time table (None: its name)
    logs: str | None = None  # the Tracker method that logs its files besides its numbers (None: numbers only)
    # Its one line on the terminal when it ends: (stats key, format) pairs, shown where the key has a value.
    summary: tuple[tuple[str, str], ...] = ()

    def enabled(self, recipe: Any) -> bool:
        """Whether an iteration of ``recipe`` runs this phase."""
        return self.section is None or getattr(recipe, self.section) is not None

    @property
    def time_column(self) -> str:
        return self.column or self.name

    def line(self, iteration: int, stats: dict[str, Any], wall_s: float) -> str:
        """``sample  iter 1  2,400 samples  47,742 tokens  108 tok/s  8.1 min``: the phase's key figures."""
        figures = [fmt.format(stats[key]) for key, fmt in self.summary if isinstance(stats.get(key), (int, float))]
        return "  ".join([f"{self.name:<10} iter {iteration}", *figures, f"{wall_s / 60:.1f} min"])


PHASE_TABLE = (
    Phase("sample", "rest.phases.sample:sample_iteration", "sample",
          "E-step: sample completions for one iteration with vLLM.", isolated=True, stats=SampleStats,
          summary=(("samples", "{:,} samples"), ("generated_tokens", "{:,} tokens"), ("tokens_per_s", "{:,.0f} tok/s"),
                   ("truncation_rate", "truncated {:.0%}"))),
    Phase("verify", "rest.phases.verify:verify_iteration", "verify",
          "Score one iteration's samples with the outcome verifier.", isolated=False, stats=VerifyStats,
          summary=(("correct", "{:,} correct"), ("accuracy", "({:.1%})"), ("prompts_with_correct", "on {:,} prompts"))),
    Phase("repair", "rest.phases.repair:repair_iteration", "repair",
          "Repair one iteration's failed prompts (rationalisation or reflection) with vLLM.", isolated=True,
          stats=RepairStats, section="repair",
          summary=(("verified", "{:,} verified"), ("attempts", "of {:,} repairs"),
                   ("eligible_prompts", "for {:,} prompts"))),
    Phase("pav", "rest.pav.phase:pav_iteration", "pav",
          "Monte Carlo step values (PAV): roll the prover out from every step prefix with vLLM.", isolated=True,
          stats=PavStats, section="pav",
          summary=(("samples", "{:,} samples"), ("prefixes", "{:,} prefixes"), ("rollouts", "{:,} rollouts"),
                   ("verified_rollouts", "{:,} verified"))),
    Phase("prm_update", "rest.prm.update:prm_update_iteration", "prm-train",
          "Update the implicit PRM on one iteration's outcome labels.", isolated=True, stats=PRMUpdateStats,
          section="prm", column="prm", summary=(("steps", "{:,} steps"), ("last_loss", "loss {:.3f}"))),
    Phase("prm_score", "rest.prm.score:prm_score_iteration", "prm-score",
          "Score one iteration's samples with its implicit PRM.", isolated=True, stats=PRMScoreStats,
          section="prm", column="prm", summary=(("samples", "{:,} scored"), ("too_long", "{:,} too long"))),
    Phase("select", "rest.phases.select:select_iteration", "filter",
          "Run the selection pipeline over one iteration's verified samples.", isolated=False, stats=SelectStats,
          logs="log_selection", summary=(("kept", "kept {:,}"), ("samples", "of {:,}"), ("kept_fraction", "({:.1%})"),
                                         ("prompts_with_kept", "on {:,} prompts"))),
    Phase("train", "rest.phases.train:train_iteration", "train",
          "M-step: fine-tune on one iteration's kept samples with TRL.", isolated=True, stats=TrainStats,
          logs="log_training", summary=(("examples", "{:,} examples"), ("steps", "{:,} steps"),
                                        ("train_loss", "loss {:.3f}"))),
    Phase("eval", "rest.phases.evaluate:evaluate_iteration", "eval",
          "Evaluate one iteration's policy on the held-out split (0 = base model).", isolated=True, stats=EvalStats,
          logs="log_evaluation", summary=(("pass@1", "pass@1 {:.3f}"), ("pass@1_stderr", "± {:.3f}"),
                                          ("pass@1_sampled", "sampled {:.3f}"),
                                          ("truncation_rate", "truncated {:.0%}"))),
)
PHASES = tuple(p.name for p in PHASE_TABLE)  # in iteration order
# A truncation rate above this is worth a warning: answers cut at the token limit rarely verify.
TRUNCATION_WARNING = 0.3
TIME_COLUMNS = tuple(dict.fromkeys(p.time_column for p in PHASE_TABLE))


def warnings(stats: dict[str, Any]) -> list[str]:
    """What in a finished phase's numbers a user should act on, in words (printed once, after its line)."""
    found = []
    rate = stats.get("truncation_rate")
    if isinstance(rate, (int, float)) and rate > TRUNCATION_WARNING:
        found.append(f"{rate:.0%} of the answers were cut at the token limit: raise sampling.max_tokens "
                     "(eval.max_tokens for evaluation) or ask for shorter answers")
    if stats.get("kept") == 0:
        found.append("no sample was kept: there is nothing to train on")
    errors = stats.get("data_errors")
    if isinstance(errors, dict) and errors:
        first = next(iter(errors.items()))
        found.append(f"{len(errors)} gold answers did not parse and count as unjudged (e.g. prompt {first[0]}: "
                     f"{first[1]}); all of them are listed under data_errors in its stats file")
    return found


def phase(name: str) -> Phase:
    """The declaration of phase ``name``."""
    for declared in PHASE_TABLE:
        if declared.name == name:
            return declared
    raise KeyError(f"unknown phase '{name}'; phases: {', '.join(PHASES)}")
