"""Recipe schema (one YAML file per experiment), loading and strict validation (overrides, messages: recipe_errors)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rest.recipe.errors import RecipeError, apply_override, explain_validation_error


class Strict(BaseModel):
    """Base of every recipe section: unknown keys are errors, values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SyntheticConfig(Strict):
    """Built-in arithmetic word problems, generated deterministically from the recipe seed."""

    difficulty: Literal["easy", "medium", "hard"] = Field(
        "easy", description="easy: one operation on small numbers; medium: two steps; hard: three or more steps."
    )


class DataConfig(Strict):
    """Where prompts and gold answers come from and how they are split into train and held-out eval."""

    source: Literal["synthetic", "file", "hub"] = Field(
        "synthetic", description="synthetic: built-in generator; file: local JSONL/Parquet; hub: a datasets hub id."
    )
    path: str | None = Field(None, description="File path (source=file) or dataset id (source=hub).")
    hub_config: str | None = Field(None, description="Dataset configuration name for source=hub (e.g. 'main').")
    hub_split: str = Field("train", description="Split to read for source=hub.")
    question_field: str = Field("question", description="Field holding the problem text.")
    answer_field: str = Field("answer", description="Field holding the reference answer or worked solution.")
    id_field: str | None = Field(None, description="Field with a stable id; default: a hash of the question.")
    answer_format: Literal["gsm8k", "raw", "fields"] = Field(
        "gsm8k", description="gsm8k: the gold answer is the text after '####'; raw: the whole field is the answer; "
        "fields: a mapping of answer_fields (e.g. HumanEval's entry_point, test, prompt for the code verifier).",
    )
    answer_fields: list[str] = Field(
        default_factory=list, description="Fields that together make the gold answer when answer_format is fields."
    )
    reference_template: str | None = Field(
        None, description="A reference solution built from each record's fields, e.g. '{answer}' for GSM8K's worked "
        "solutions or '```python\\n{prompt}{canonical_solution}```' for HumanEval; loop.mix_original trains on it.",
    )
    reference_size: int | None = Field(
        None, ge=0, description="Only the first N training problems (in split order) keep their reference solution; "
        "the others have their final answer only, the setting where worked solutions are scarce and answers "
        "plentiful (RFT, STaR). The first N are the training split of train_size=N. None = all keep it.",
    )
    train_size: int | None = Field(None, ge=1, description="Training prompts to use (None = all that remain).")
    eval_size: int = Field(32, ge=1, description="Held-out prompts for evaluation; never trained on.")
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig, description="Generator settings.")

    @model_validator(mode="after")
    def _path_when_needed(self) -> "DataConfig":
        if self.source in ("file", "hub") and not self.path:
            raise ValueError(f"data.path is required when data.source is '{self.source}'")
        if self.answer_format == "fields" and not self.answer_fields:
            raise ValueError("data.answer_fields must list the gold answer's fields when data.answer_format is 'fields'")
        if self.source == "synthetic" and self.train_size is None:
            raise ValueError("data.train_size is required when data.source is 'synthetic'")
        return self


class PromptConfig(Strict):
    """How a problem becomes the text sent to the engine (and, unless ``train_template`` says otherwise, the
    text the M-step trains on)."""

    system: str | None = Field(None, description="System message (chat template only); None = none.")
    template: str = Field(
        "{question}", description="User message; '{question}' is replaced by the problem text."
    )
    chat_template: bool = Field(True, description="Apply the tokenizer's chat template with a generation prompt.")
    train_template: str | None = Field(
        None, description="The user message the M-step trains on, when it differs from `template` (e.g. sample "
        "with worked examples in the prompt, train without them); None = `template`. System message and chat "
        "template apply as to `template`.",
    )

    @model_validator(mode="after")
    def _templates_hold_the_question(self) -> "PromptConfig":
        if self.train_template is not None and "{question}" not in self.train_template:
            raise ValueError("prompt.train_template must contain {question}")
        return self


class SamplingConfig(Strict):
    """E-step sampling settings (vLLM SamplingParams)."""

    n: int = Field(4, ge=1, description="Samples per training prompt.")
    temperature: float = Field(0.7, ge=0.0, description="Sampling temperature (ReST-EM used 0.7).")
    top_k: int = Field(40, description="Top-k (ReST-EM used 40); -1 or 0 disables it.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling probability mass.")
    max_tokens: int = Field(256, ge=1, description="Maximum new tokens per sample.")
    stop: list[str] = Field(default_factory=list, description="Extra stop strings.")
    seed: int | None = Field(
        None, description="Engine seed; None = recipe seed + iteration, so each iteration differs reproducibly."
    )
    logprobs: bool = Field(False, description="Store each sampled token's logprob under the sampling policy.")
    prompts_per_shard: int = Field(
        256, ge=1, description="Prompts per output shard; a killed E-step resumes from the last finished shard."
    )


class EngineConfig(Strict):
    """vLLM engine settings shared by sampling and evaluation."""

    dtype: str = Field(
        "auto", description="Weights/activation dtype in vLLM: auto = bfloat16 where the hardware multiplies it "
        "natively (CUDA GPUs with bf16, CPUs with AMX), float16 on other CUDA GPUs, float32 on other CPUs "
        "(rest/engines/hardware.py); or bfloat16, float16, float32 as given."
    )
    max_model_len: int = Field(1024, ge=16, description="Context length the engine reserves per sequence.")
    enforce_eager: bool = Field(False, description="Skip torch.compile/graph capture: faster start, slower run.")
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0, description="GPU memory share for vLLM (GPU only).")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per model replica (tensor parallelism).")
    data_parallel_size: int = Field(
        1, ge=1, description="vLLM's own data parallelism (needs an external launcher); for replicas use engine.replicas."
    )
    max_num_seqs: int | None = Field(None, ge=1, description="Maximum sequences scheduled at once; None = vLLM default.")
    cpu_kvcache_gib: float = Field(4.0, gt=0, description="KV-cache size in GiB on CPU (VLLM_CPU_KVCACHE_SPACE).")
    cpu_reserved_cores: int = Field(
        0, ge=0, description="CPU only: cores vLLM keeps free of compute threads (VLLM_CPU_NUM_OF_RESERVED_CPU); "
        "vLLM reserves 1 by default, which halves throughput on a 2-core machine.",
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Further vllm.LLM / EngineArgs options, checked against EngineArgs."
    )
    replicas: int = Field(
        1, ge=1, description="vLLM engines sampling at once, each a Ray actor with its own GPUs "
        "(tensor_parallel_size each) or CPU cores, each given disjoint prompts; more than 1 needs the `ray` extra.",
    )
    ray_address: str | None = Field(
        None, description="Ray cluster for the replicas (e.g. ray://head:10001 or head:6379); default: $RAY_ADDRESS, "
        "else a local cluster that rest-em starts and stops.",
    )
    cpu_cores_per_replica: int | None = Field(
        None, ge=1, description="CPU replicas: cores each engine gets (Ray num_cpus; pinned on a local cluster); "
        "default: the cluster's cores divided by replicas.",
    )


class VerifierConfig(Strict):
    """The outcome verifier that sets each sample's canonical `correct` and `reward`."""

    name: str = Field("gsm8k", description="Built-in verifier name or a dotted import path.")
    options: dict[str, Any] = Field(default_factory=dict, description="Keyword options for the verifier.")


class FilterConfig(Strict):
    """One step of the selection pipeline."""

    name: str = Field(description="Built-in filter name or a dotted import path.")
    id: str | None = Field(None, description="Column prefix for this filter's verdicts; default: its name.")
    options: dict[str, Any] = Field(default_factory=dict, description="Keyword options for the filter.")

    @property
    def column(self) -> str:
        """The prefix of this filter's verdict columns."""
        return self.id or self.name.rsplit(".", 1)[-1]


def _default_filters() -> list[FilterConfig]:
    return [FilterConfig(name="keep_correct"), FilterConfig(name="per_prompt_cap", options={"max_per_prompt": 10})]


class LoraConfig(Strict):
    """LoRA adapters (PEFT) instead of full fine-tuning; the saved policy is still a merged model."""

    r: int = Field(16, ge=1, description="Adapter rank.")
    alpha: int = Field(32, ge=1, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: list[str] | str = Field(
        "all-linear", description="Module names to adapt, or 'all-linear' for every linear layer but the head."
    )


class TrainConfig(Strict):
    """M-step: supervised fine-tuning (TRL SFTTrainer) on the kept samples, loss on completions only."""

    init: Literal["base", "previous"] = Field(
        "base", description="base: every M-step starts from the base model (ReST-EM); previous: continue (ReST)."
    )
    epochs: float = Field(1.0, gt=0, description="Passes over the kept set.")
    max_steps: int = Field(-1, description="Stop after this many optimiser steps (-1 = use epochs).")
    learning_rate: float = Field(1e-5, gt=0, description="Peak learning rate.")
    lr_scheduler: Literal[
        "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
        "inverse_sqrt", "cosine_with_min_lr", "warmup_stable_decay",
    ] = Field("cosine", description="transformers learning-rate schedule after warm-up.")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Share of steps spent warming up.")
    batch_size: int = Field(8, ge=1, description="Per-device batch size.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Batches per optimiser step.")
    max_length: int = Field(1024, ge=16, description="Longest prompt + completion in tokens (see `overlong`).")
    overlong: Literal["drop", "truncate"] = Field(
        "drop", description="Samples longer than max_length: drop them, or cut the completion to fit (both counted)."
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="Dtype the weights are loaded in for training.")
    mixed_precision: Literal["auto", "bf16", "no"] = Field(
        "auto", description="bf16 autocast over float32 weights. auto: on where the hardware multiplies bf16 natively "
        "(CUDA GPUs with bf16, CPUs with AMX), off elsewhere; bf16: always; no: never. dtype bfloat16 always "
        "autocasts. Measurements: experiments/README.md (bench_train.py)."
    )
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory.")
    group_by_length: bool = Field(
        True, description="Batch samples of similar length together: less padding computed (experiments/README.md, "
        "bench_train.py)."
    )
    packing: bool = Field(False, description="Pack samples into rows of max_length (BFD); for GPUs, slower on CPU.")
    padding_free: bool = Field(False, description="Concatenate each batch into one unpadded row (GPUs, flash attention).")
    torch_compile: bool = Field(False, description="Compile the model with torch.compile before training.")
    reward_weighting: bool = Field(
        False, description="Weight each sample's loss by its `reward` (ReST-EM's objective when scores are not binary)."
    )
    eval_fraction: float = Field(
        0.0, ge=0, lt=1, description="Share of kept samples held out (never trained on) to report an eval loss."
    )
    eval_steps: int | None = Field(None, ge=1, description="Also evaluate every this many steps; None = at the end only.")
    logging_steps: int = Field(1, ge=1, description="Log loss every this many steps.")
    save_steps: int | None = Field(
        None, ge=1, description="Save a resumable checkpoint in iter_K/train every this many steps; None = every epoch."
    )
    seed: int | None = Field(None, description="Trainer seed; None = recipe seed + iteration.")
    lora: LoraConfig | None = Field(None, description="Train LoRA adapters (PEFT) instead of all weights.")
    launcher: Literal["none", "torchrun", "accelerate"] = Field(
        "none", description="none: one process; torchrun or accelerate: `num_processes` ranks (DDP unless configured)."
    )
    num_processes: int = Field(1, ge=1, description="Training processes (ranks) on this machine.")
    launcher_args: list[str] = Field(default_factory=list, description="Extra arguments for the launcher command.")
    accelerate_config: str | None = Field(None, description="`accelerate launch --config_file` (DDP/FSDP/DeepSpeed).")
    deepspeed: str | None = Field(None, description="DeepSpeed JSON config file handed to the trainer.")
    fsdp: str | None = Field(None, description="FSDP options for the trainer, e.g. 'full_shard auto_wrap'.")
    fsdp_config: str | None = Field(None, description="FSDP config file (JSON) handed to the trainer.")
    ddp_backend: Literal["gloo", "nccl", "mpi", "ccl", "hccl", "xccl"] | None = Field(
        None, description="torch.distributed backend; None = the trainer's choice (gloo on CPU, nccl on GPU)."
    )
    log_model: bool = Field(False, description="Also log the trained model directory to MLflow as an artifact.")

    @model_validator(mode="after")
    def _consistent(self) -> "TrainConfig":
        problems = []
        if self.warmup_ratio > 0 and self.lr_scheduler == "constant":
            problems.append("train.warmup_ratio needs a schedule with warm-up; use 'constant_with_warmup'")
        if self.reward_weighting and self.packing:
            problems.append("train.reward_weighting cannot be combined with train.packing (packed rows mix samples)")
        if self.launcher == "none" and self.num_processes > 1:
            problems.append("train.num_processes > 1 needs train.launcher: torchrun or accelerate")
        if self.accelerate_config and self.launcher != "accelerate":
            problems.append("train.accelerate_config needs train.launcher: accelerate")
        if self.deepspeed and self.fsdp:
            problems.append("train.deepspeed and train.fsdp are exclusive")
        if self.fsdp_config and not self.fsdp:
            problems.append("train.fsdp_config needs train.fsdp")
        if self.lora is not None and (self.deepspeed or self.fsdp):
            problems.append("train.lora with deepspeed/fsdp is not supported (the merged model/ cannot be saved)")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class StepsConfig(Strict):
    """How a completion is cut into reasoning steps (rest/prm/steps.py); the implicit PRM and PAV share it."""

    step_delimiter: str = Field("\n\n", description="Text that ends a reasoning step (a regex if step_regex).")
    step_regex: bool = Field(False, description="Treat step_delimiter as a regular expression (e.g. 'Step \\d+:').")

    @model_validator(mode="after")
    def _step_delimiter_compiles(self) -> "StepsConfig":
        from rest.prm.steps import StepSplitter

        StepSplitter(self.step_delimiter, self.step_regex)  # raises ValueError naming the problem
        return self


class PrmConfig(StepsConfig):
    """Implicit process reward model (Yuan et al. 2024): token reward beta * (log pi_prm - log pi_ref).

    Trained from the outcome labels of each iteration (PRIME's online update), then used to score every
    sample; the ``implicit_prm`` filter selects with the scores.
    """

    init: str | None = Field(None, description="Model the PRM starts from at iteration 1; None = the base model.")
    reference: str | None = Field(None, description="Frozen reference model; None = the base model.")
    beta: float = Field(0.05, gt=0, description="Scale of the log-ratio (the paper's 0.05).")
    update: bool = Field(
        True, description="Train the PRM on each iteration's labelled samples, continuing from the last one's."
    )
    loss: Literal["ce", "dpo"] = Field(
        "ce", description="ce: BCE(sigmoid(beta * sum log-ratio), correct); dpo: correct vs incorrect pairs of a prompt."
    )
    learning_rate: float = Field(
        1e-4, gt=0, description="PRM learning rate (constant, AdamW). The default suits a few hundred samples per update "
        "(experiments/prm_defaults.py); the paper's 5e-7 was for ~260k samples.",
    )
    epochs: float = Field(1.0, gt=0, description="Passes over the PRM's training samples.")
    batch_size: int = Field(8, ge=1, description="Samples (ce) or pairs (dpo) per optimiser step.")
    max_samples: int | None = Field(
        256, ge=2, description="Class-balanced cap on training samples per update (None = all usable samples)."
    )
    max_length: int = Field(
        1024, ge=16, description="Longest prompt + completion the PRM sees, in tokens: longer samples are neither "
        "trained on nor scored (NaN scores; implicit_prm drops them as unscored; counted as too_long).",
    )
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="Dtype of the PRM and reference weights (log-softmax in float32 either way). bfloat16 "
        "ranks samples as float32 does but moves single rewards (experiments/README.md, prm_precision.py).",
    )
    seed: int | None = Field(None, description="Seed of the PRM update; None = recipe seed + iteration.")
    backend: Literal["transformers", "vllm"] = Field(
        "transformers", description="Scoring engine: transformers forward passes, or vLLM prompt_logprobs."
    )
    batch_tokens: int = Field(
        4096, ge=16, description="Most padded tokens in one forward pass: completion tokens when scoring "
        "(transformers), whole samples in a PRM update step (a larger step runs in chunks, gradients accumulated)."
    )
    reuse_sampler_logprobs: bool = Field(
        True, description="Scoring: take the reference's logprobs from the E-step's `logprobs` column when the "
        "sampling policy is the reference and the sampler ran in float32 (saves one model's pass).",
    )
    eval_aggregate: Literal["min", "mean", "sum", "last_q"] = Field(
        "min", description="Held-out evaluation: the PRM score (prm__<aggregate>) for prm_auroc and best_of_n_prm."
    )


class PavSearchConfig(Strict):
    """PAV-guided step-level beam search on the held-out split at evaluation, against best-of-N reranked by the
    same head at each problem's sampled-token budget (rest/pav/search.py)."""

    width: int = Field(4, ge=1, description="Beams kept per problem.")
    expansions: int = Field(4, ge=1, description="Continuations of each beam per step.")
    max_steps: int = Field(4, ge=1, description="Rounds of expansion; open beams then count as answers.")
    alpha: float = Field(0.5, ge=0, description="Search score Q + alpha * A (the paper's ranking).")
    samples: int = Field(
        16, ge=1, description="Whole answers drawn per problem for best-of-N; it takes the first ones that fit the "
        "tokens the search spent on that problem.")
    problems: int | None = Field(None, ge=1, description="Held-out problems searched (the first N); None = all.")


class PavConfig(StepsConfig):
    """Monte Carlo step values under a prover policy (PAV; Setlur et al. 2024, arXiv 2410.08146).

    From every step prefix of the chosen samples the prover writes ``rollouts`` continuations; Q of the
    prefix is the share that verifies (under a best-of-K prover: the chance that one of K does), and a
    step's advantage is Q after it minus Q before it. The ``process_advantage`` filter selects with them.
    """

    prover: str | None = Field(None, description="The prover model; None = the current policy.")
    best_of: int = Field(
        1, ge=1, description="Prover = best-of-K of that model: Q = unbiased pass@K of the rollouts (K <= rollouts).")
    rollouts: int = Field(4, ge=1, description="Continuations sampled from each step prefix.")
    samples: Literal["correct", "all"] = Field(
        "correct", description="Which judged samples get step values: the correct ones (all a filter needs), or all.")
    max_per_prompt: int | None = Field(None, ge=1, description="At most this many samples per prompt (seeded pick).")
    max_rollouts: int | None = Field(
        None, ge=1, description="Refuse to start when the plan needs more rollouts than this (None: no limit).")
    max_tokens: int | None = Field(
        None, ge=1, description="Maximum new tokens per rollout; None = sampling.max_tokens.")
    temperature: float | None = Field(None, ge=0, description="Rollout temperature; None = sampling.temperature.")
    head: bool = Field(
        False, description="Also train a PAV each iteration (pav/head/): a logistic value head on the base model's "
        "last hidden state, fitted to every labelled prefix's Q; it predicts step values without rollouts.")
    head_l2: float = Field(1e-2, ge=0, description="L2 penalty on the head's weights (features are standardised).")
    search: PavSearchConfig | None = Field(
        None, description="At evaluation, beam search guided by the head against best-of-N at equal tokens "
        "(needs head: true and a literal step_delimiter, which ends each expansion).")

    @model_validator(mode="after")
    def _best_of_within_rollouts(self) -> "PavConfig":
        if self.best_of > self.rollouts:
            raise ValueError(f"pav.best_of ({self.best_of}) cannot exceed pav.rollouts ({self.rollouts})")
        if self.search is not None and not self.head:
            raise ValueError("pav.search ranks with the trained head: set pav.head: true")
        if self.search is not None and self.step_regex:
            raise ValueError("pav.search stops each expansion at the step delimiter: it needs step_regex: false")
        return self


class RepairConfig(Strict):
    """Repair of failed samples after verification (off without this section): STaR's rationalisation (the
    gold answer as a hint; Zelikman et al. 2022) or Re-ReST's reflection (a failed attempt and the verifier's
    feedback; Dou et al. 2024). Repaired samples are verified like samples and trained on the plain
    training prompt: the M-step never sees the hint or the failed attempt."""

    method: Literal["rationalize", "reflect"] = Field(
        "rationalize", description="rationalize: ask again with the gold answer as a hint; reflect: show a failed "
        "attempt and the verifier's feedback and ask for a corrected solution."
    )
    max_correct: int = Field(
        0, ge=0, description="A prompt is eligible when it has at most this many correct samples (0: none correct)."
    )
    samples: int = Field(4, ge=1, description="Repairs sampled per eligible prompt (rationalize) or per attempt (reflect).")
    attempts: int = Field(1, ge=1, description="reflect: failed attempts per eligible prompt that get a reflection.")
    hint_template: str = Field(
        "{question} (Hint: the answer is {answer}.)",
        description="rationalize: the question the repairer sees ({question}, {answer}: the gold), put through "
        "prompt.template and the chat template like any question.",
    )
    reflect_template: str = Field(
        "{question}\n\nA wrong solution:\n{attempt}\n{feedback}\nWrite a correct solution.",
        description="reflect: the question the repairer sees ({question}, {attempt}: the failed completion, "
        "{feedback}: the verifier's verdict in words).",
    )
    model: str | None = Field(None, description="The repairer (reflector) model; None = the current policy.")
    max_tokens: int | None = Field(None, ge=1, description="Maximum new tokens; None = sampling.max_tokens.")
    temperature: float | None = Field(None, ge=0, description="Sampling temperature; None = sampling.temperature.")

    @model_validator(mode="after")
    def _templates_name_their_fields(self) -> "RepairConfig":
        needed = {"hint_template": ("{question}", "{answer}"), "reflect_template": ("{question}", "{attempt}")}
        for name, fields in needed.items():
            missing = [f for f in fields if f not in getattr(self, name)]
            if missing:
                raise ValueError(f"repair.{name} must contain {' and '.join(missing)}")
        return self


class EvalConfig(Strict):
    """Evaluation on the held-out split after every iteration (iteration 0 = the base model)."""

    max_tokens: int | None = Field(None, ge=1, description="Maximum new tokens; None = sampling.max_tokens.")
    samples: int = Field(
        0, ge=0, description="Sampled solutions per held-out prompt for pass@k and maj@k; 0 = greedy pass@1 only."
    )
    k: int = Field(4, ge=1, description="k of pass@k and maj@k (at most `samples`).")
    temperature: float | None = Field(None, ge=0, description="Temperature of those samples; None = sampling's.")

    @model_validator(mode="after")
    def _k_within_samples(self) -> "EvalConfig":
        if self.samples and self.k > self.samples:
            raise ValueError(f"eval.k ({self.k}) cannot exceed eval.samples ({self.samples})")
        return self


class LoopConfig(Strict):
    """How many EM iterations to run, when to stop early, and which algorithm (ReST-EM or ReST)."""

    iterations: int = Field(2, ge=0, description="Most EM iterations after the base evaluation (iteration 0).")
    metric: str = Field(
        "pass@1", description="Held-out metric (a key of eval results, e.g. pass@1, maj@4) that picks the best iteration."
    )
    patience: int | None = Field(
        None, ge=1, description="Stop when the metric has not improved for this many iterations; None = never early."
    )
    min_delta: float = Field(0.0, ge=0, description="An improvement must exceed this to count.")
    mode: Literal["rest_em", "rest"] = Field(
        "rest_em",
        description="rest_em: sample anew every iteration, train from the base model; rest: one Grow (E-step) "
        "followed by improve_steps Improve iterations that re-filter the grown samples and continue the policy.",
    )
    improve_steps: int = Field(
        3, ge=1, description="ReST only: Improve iterations per Grow; iteration K grows when (K - 1) % improve_steps == 0."
    )
    improve_lr_decay: float = Field(
        0.5, gt=0, le=1, description="ReST only: learning rate factor per Improve step after a Grow's first."
    )
    mix_original: bool = Field(
        False, description="Add each training prompt's reference solution (data.reference_template) to the grown "
        "set, as ReST does; it is verified and filtered like a sample (sample_index -1, policy 'original').",
    )


class RunConfig(Strict):
    """Where the run directory lives."""

    dir: str | None = Field(None, description="Run directory; None = runs/<recipe name>.")


class TrackingConfig(Strict):
    """MLflow tracking."""

    enabled: bool = Field(True, description="Log to MLflow.")
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; None = MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here."
    )
    experiment: str | None = Field(None, description="MLflow experiment name; None = the recipe name.")
    registered_model: str | None = Field(
        None, description="Register the best iteration's model under this name in the MLflow model registry."
    )
    table_rows: int = Field(
        200, ge=0, description="Rows of the sample table logged per iteration (seeded pick, half kept); 0 = none."
    )
    system_metrics_interval_s: float = Field(
        10.0, ge=0, description="Seconds between system-metric samples (CPU, memory, GPU) per iteration run; 0 = off."
    )


class Recipe(Strict):
    """A complete rest-em experiment."""

    name: str = Field(description="Experiment name (run directory and MLflow experiment default to it).")
    seed: int = Field(0, description="Master seed: data split, engine seeds and trainer seeds derive from it.")
    model: str = Field(
        "smollm2-135m-instruct", description="Base model: a built-in name, a local model directory or a hub id."
    )
    data: DataConfig = Field(default_factory=DataConfig, description="Prompts and gold answers.")
    prompt: PromptConfig = Field(default_factory=PromptConfig, description="Prompt formatting.")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description="E-step sampling.")
    engine: EngineConfig = Field(default_factory=EngineConfig, description="vLLM engine.")
    verifier: VerifierConfig = Field(default_factory=VerifierConfig, description="Outcome verifier.")
    filters: list[FilterConfig] = Field(default_factory=_default_filters, description="Selection pipeline, in order.")
    prm: PrmConfig | None = Field(None, description="Implicit PRM; None = no PRM phases.")
    repair: RepairConfig | None = Field(None, description="Repair of failed samples; None = no repair phase.")
    pav: PavConfig | None = Field(None, description="Monte Carlo step values (PAV); None = no pav phase.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="M-step.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Held-out evaluation.")
    loop: LoopConfig = Field(default_factory=LoopConfig, description="Iterations.")
    run: RunConfig = Field(default_factory=RunConfig, description="Run directory.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="MLflow.")

    @model_validator(mode="after")
    def _metric_is_evaluated(self) -> "Recipe":
        from rest.metrics import evaluated_metrics

        known = set(evaluated_metrics(self.eval.samples, self.eval.k, self.prm is not None,
                                      self.pav is not None and self.pav.head,
                                      self.pav is not None and self.pav.search is not None))
        if self.loop.metric not in known:
            raise ValueError(f"loop.metric '{self.loop.metric}' is not evaluated by this recipe; "
                             f"choose one of: {', '.join(sorted(known))}")
        return self

    @model_validator(mode="after")
    def _rest_continues_the_policy(self) -> "Recipe":
        if self.loop.mode == "rest" and self.train.init != "previous":
            raise ValueError("loop.mode 'rest' continues the policy at every Improve step: set train.init: previous")
        return self

    @model_validator(mode="after")
    def _original_needs_a_reference(self) -> "Recipe":
        if self.data.reference_size is not None and self.data.reference_template is None:
            raise ValueError("data.reference_size needs data.reference_template (the references it keeps)")
        if self.loop.mix_original and self.data.reference_template is None:
            raise ValueError("loop.mix_original needs data.reference_template (e.g. '{answer}' for GSM8K)")
        return self

    @model_validator(mode="after")
    def _distinct_filter_columns(self) -> "Recipe":
        columns = [f.column for f in self.filters]
        repeated = sorted({c for c in columns if columns.count(c) > 1})
        if repeated:
            raise ValueError(f"filters used twice need distinct 'id's: {', '.join(repeated)}")
        return self

    @model_validator(mode="after")
    def _prm_filter_needs_prm(self) -> "Recipe":
        if self.prm is None and any(f.name == "implicit_prm" for f in self.filters):
            raise ValueError("the implicit_prm filter reads the PRM's scores: the recipe needs a prm section")
        return self

    @model_validator(mode="after")
    def _pav_filter_needs_pav(self) -> "Recipe":
        if self.pav is None and any(f.name == "process_advantage" for f in self.filters):
            raise ValueError("the process_advantage filter reads step values: the recipe needs a pav section")
        return self

    def run_dir(self) -> Path:
        """The run directory this recipe writes to."""
        return Path(self.run.dir or f"runs/{self.name}")

    def to_yaml(self) -> str:
        """The resolved recipe as YAML (what the run directory and MLflow record)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def hash(self) -> str:
        """A stable hash of the resolved recipe (independent of key order and formatting).

        Sections and fields added after run directories already existed count only when set (a field: to
        other than its default), so those directories (whose recipes never had them) still resume under the
        same hash.
        """
        exclude: dict[str, Any] = {name: True for name in _LATER_SECTIONS if getattr(self, name) is None}
        for section, fields in _LATER_FIELDS.items():
            values = getattr(self, section)
            exclude[section] = {f for f in fields if getattr(values, f) == type(values).model_fields[f].default}
        canonical = json.dumps(self.model_dump(mode="json", exclude=exclude), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# Optional sections, and fields of other sections, introduced after the first run directories were
# written (see Recipe.hash).
_LATER_SECTIONS = ("repair", "pav")
_LATER_FIELDS = {"engine": ("replicas", "ray_address", "cpu_cores_per_replica"), "data": ("reference_size",)}


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Read, override and validate a recipe file; raises RecipeError naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a YAML mapping, got {type(raw).__name__}")
    if not overrides:
        return validate_recipe(raw, source=str(path))
    # Overrides apply to the recipe with its defaults filled in, so `filters.1.options.x=...` works on
    # a default list too; the result is validated exactly like a file.
    full = validate_recipe(raw, source=str(path)).model_dump(mode="json")
    for override in overrides:
        apply_override(full, override, source=str(path))
    return validate_recipe(full, source=f"{path} with overrides {' '.join(overrides)}")


def validate_recipe(raw: dict[str, Any], source: str = "<recipe>") -> Recipe:
    """Validate a recipe mapping; raises RecipeError with readable messages."""
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as err:
        raise RecipeError(explain_validation_error(err, source, Recipe)) from None
    from rest.filters.registry import check_recipe_components

    try:
        check_recipe_components(recipe)
    except (ValueError, TypeError) as err:
        raise RecipeError(f"{source}: {err}") from None
    return recipe
