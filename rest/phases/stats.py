"""What each phase writes to ``iter_K/stats/<phase>.json``: one TypedDict per phase, the file's format.

A phase function returns its type; readers (the status table, MLflow, the phase's terminal line) use the
keys declared here. Keys are optional (``total=False``): a resumed phase, a skipped update or an empty job
writes fewer. The phase table names each phase's type; :func:`undeclared` lists the keys a stats file has
beyond it (the tests check every phase they run).
"""
from __future__ import annotations

from typing import Any, TypedDict

from rest.metrics import evaluated_metrics


class SampleStats(TypedDict, total=False):
    prompts: int
    shards: int
    shards_resumed: int
    engine_start_s: float
    generate_s: float
    generated_tokens_this_run: int  # tokens of the shards this run wrote (not those resumed)
    tokens_per_s: float  # of this run's tokens
    samples: int
    unique_samples: int
    prompts_sampled: int
    prompts_with_n_samples: int
    prompt_tokens: int
    generated_tokens: int
    truncation_rate: float
    engine_dtype: str  # engine.dtype as resolved on this machine
    replicas: int  # vLLM engines that sampled (engine.replicas)
    replicas_lost: int  # replicas that died during the phase (their prompts went to the others)
    grown_in: int  # ReST's Improve steps: the iteration whose samples this one reuses
    improve_step: int


class VerifyStats(TypedDict, total=False):
    samples: int
    correct: int
    unjudged: int  # gold answers that did not parse, or a verifier that could not judge
    accuracy: float
    prompts_with_correct: int
    reasons: dict[str, int]  # verifier reason -> samples
    data_errors: dict[str, str]  # prompt id -> why its gold answer did not parse
    original_rows: int  # loop.mix_original: the reference solutions verified with the samples
    original_correct: int
    workers: int
    wall_s: float


class RepairStats(TypedDict, total=False):
    method: str
    engine_dtype: str
    eligible_prompts: int
    generate_s: float
    data_errors: dict[str, str]
    attempts: int
    verified: int
    prompts_repaired: int
    rejected_copies: int  # verified, but quoting the hint or giving the answer without working
    generated_tokens: int


class PavStats(TypedDict, total=False):
    prover: str  # "policy" (the current one) or the recipe's pav.prover
    best_of: int
    samples: int  # labelled samples
    steps: int
    prefixes: int  # distinct step prefixes rolled out
    planned_rollouts: int
    max_new_tokens: int  # the plan's bound: rollouts x max tokens
    shards: int  # rollout shards of the plan (rest.pav.phase.PREFIXES_PER_SHARD prefixes each)
    shards_resumed: int  # finished by an earlier, interrupted run
    engine_dtype: str
    generate_s: float
    data_errors: dict[str, str]  # of the shards this run verified
    rollouts: int
    verified_rollouts: int
    generated_tokens: int
    mean_q0: float  # Q of the prompt alone, averaged over the labelled samples
    mean_min_advantage: float
    head_prefixes: int  # pav.head: the prefixes (p_0 .. p_T of every labelled sample) it was fitted to
    head_loss: float  # its final soft-target BCE (+ L2)
    head_s: float  # features and fit


class PRMUpdateStats(TypedDict, total=False):
    init: str
    reference: str
    loss_name: str  # the recipe's prm.loss
    seed: int
    rows: int
    unjudged: int
    empty_completion: int
    too_long: int
    usable: int
    usable_correct: int
    usable_incorrect: int
    samples_correct: int
    samples_incorrect: int
    prompts: int
    prompts_all_correct: int
    prompts_all_wrong: int
    prompts_mixed: int
    pairs: int  # loss dpo: (correct, incorrect) pairs of one prompt
    prompts_without_pairs: int
    # mean reward of the correct and the incorrect samples, and their difference, before and after the update
    reward_correct_before: float
    reward_incorrect_before: float
    margin_before: float
    reward_correct_after: float
    reward_incorrect_after: float
    margin_after: float
    steps: int
    history: list[dict[str, float]]
    first_loss: float
    last_loss: float
    learning_rate: float
    epochs: int
    batch_size: int
    beta: float
    train_wall_s: float
    trained_tokens: int
    tokens_per_s: float
    saved_to: str
    skipped: bool
    skip_reason: str | None  # why no update ran (the previous PRM stays in force)
    wall_s: float


class PRMScoreStats(TypedDict, total=False):
    samples: int
    too_long: int
    completion_tokens: int
    backend: str
    dtype: str
    beta: float
    identical_models: bool
    reference_from_sampler: bool  # the E-step's logprobs served as the reference's
    models_run: int
    startup_s: float
    scoring_s: float
    steps_s: float
    wall_s: float
    tokens_per_s: float | None
    mean_steps: float
    mean_min: float | None
    prm: str
    reference: str


class SelectStats(TypedDict, total=False):
    samples: int
    kept: int
    kept_fraction: float
    prompts_with_kept: int
    kept_by_origin: dict[str, int]  # sampled / rationalized / reflected / original -> kept rows
    filters: dict[str, Any]  # filter name -> its in / kept / dropped-by-reason counts
    filter_metrics: dict[str, float]  # the same, flattened for MLflow
    plots: list[str]


class TrainStats(TypedDict, total=False):
    init: str
    examples: int
    eval_examples: int
    dropped_too_long: int
    dropped_overlong: int
    truncated_overlong: int
    overlong: int
    num_processes: int
    steps: int
    resumed_from_step: int
    resumed_from: str | None
    train_loss: float
    final_loss: float | None
    eval_loss: float | None
    loss_curve: list[float]
    history: list[dict[str, float]]
    train_wall_s: float
    tokens: int
    tokens_per_s: float
    trainable_params: int
    bf16_autocast: bool
    checkpoint_dir: str
    model_path: str
    log_model: bool
    trainer_example_0: dict[str, Any]


class EvalStats(TypedDict, total=False):
    """Plus every metric of :func:`rest.metrics.evaluated_metrics` and its ``_stderr``."""
    policy: str
    prompts: int
    unjudged: int
    truncation_rate: float
    data_errors: dict[str, str]
    engine_start_s: float
    engine_dtype: str
    greedy_generate_s: float
    sampled_generate_s: float
    generated_tokens: int
    prm_auroc_by_aggregate: dict[str, float | None]  # the PRM's held-out numbers (a prm section with eval on)
    prm_model: str
    prm_aggregate: str
    prm_scoring_wall_s: float | None
    prm_scoring_tokens_per_s: float | None
    prm_eval_samples: int
    prm_eval_correct: int
    prm_eval_unscored: int
    prm_auroc_within_prompt_prompts: int  # held-out prompts with both correct and incorrect samples
    pav_head: str  # the PAV head that scored the held-out answers (pav.head with eval samples)
    pav_eval_samples: int
    pav_eval_correct: int
    pav_scoring_s: float
    pav_search_problems: int  # pav.search: held-out problems searched
    pav_search_tokens_per_problem: float  # tokens the search sampled, per problem
    pav_search_best_of_n_tokens_per_problem: float  # tokens of the answers best-of-N chose among (<= the search's)
    pav_search_best_of_n_samples_per_problem: float
    pav_search_s: float


def undeclared(declared: type, stats: dict[str, Any], eval_k: int = 1) -> set[str]:
    """Keys of ``stats`` that its phase's stats type ``declared`` lacks; for eval, ``eval_k``'s metrics count."""
    names = set(declared.__annotations__)
    if declared is EvalStats:
        metrics = evaluated_metrics(samples=1, k=eval_k, prm=True, pav=True, search=True)
        names |= {*metrics, *(f"{m}_stderr" for m in metrics)}
    return set(stats) - names
