"""M-step pieces that need no trainer: where training starts, and the examples it sees."""
from __future__ import annotations

import pandas as pd
import pytest

from rest.engines.launch import TrainingError, check_config_files, launch_command
from rest.engines.trainer import DataShare, weight_losses_by_reward
from rest.phases.sample import SamplingError
from rest.phases.train import (
    NoKeptSamplesError,
    init_model,
    loss_history,
    split_eval,
    train_iteration,
    trainer_rows,
    training_examples,
)
from rest.recipe.schema import RecipeError, validate_recipe
from rest.run.rundir import RunDir, atomic_write_parquet


def recipe(init: str):
    return validate_recipe({"name": "x", "model": "base-model-id", "data": {"train_size": 4},
                            "train": {"init": init}})


def test_rest_em_starts_from_base_and_rest_continues_the_previous_policy(tmp_path):
    run = RunDir(tmp_path)
    assert init_model(recipe("base"), run, 3) == "base-model-id"
    assert init_model(recipe("previous"), run, 1) == "base-model-id"
    with pytest.raises(SamplingError, match="iteration 2 has no trained model"):
        init_model(recipe("previous"), run, 3)
    (run.model(2)).mkdir(parents=True)
    (run.model(2) / "config.json").write_text("{}")
    assert init_model(recipe("previous"), run, 3) == str(run.model(2))


KEPT = pd.DataFrame([
    {"prompt_token_ids": [1, 2, 3], "completion_token_ids": [7, 8, 0], "finish_reason": "stop", "truncated": False,
     "reward": 1.0},
    {"prompt_token_ids": [1, 2], "completion_token_ids": [9, 9], "finish_reason": "stop", "truncated": False,
     "reward": 0.5},
    {"prompt_token_ids": [1], "completion_token_ids": [5, 5, 5], "finish_reason": "length", "truncated": True,
     "reward": None},
    {"prompt_token_ids": [1] * 6, "completion_token_ids": [4, 4, 4, 4], "finish_reason": "stop", "truncated": False,
     "reward": 1.0},
    {"prompt_token_ids": [1] * 9, "completion_token_ids": [4], "finish_reason": "stop", "truncated": False,
     "reward": 1.0},
])


def strip(example: dict) -> dict:
    return {k: example[k] for k in ("input_ids", "completion_mask")}


def test_examples_are_the_sampled_token_ids_with_a_completion_mask():
    examples, counts = training_examples(KEPT, eos_token_id=0, max_length=8)
    assert counts == {"overlong": 2, "dropped_overlong": 2, "truncated_overlong": 0}
    assert strip(examples[0]) == {"input_ids": [1, 2, 3, 7, 8, 0], "completion_mask": [0, 0, 0, 1, 1, 1]}
    assert strip(examples[1]) == {"input_ids": [1, 2, 9, 9, 0], "completion_mask": [0, 0, 1, 1, 1]}, "EOS appended"
    assert strip(examples[2]) == {"input_ids": [1, 5, 5, 5], "completion_mask": [0, 1, 1, 1]}, "no EOS after truncation"
    assert [e["reward"] for e in examples] == [1.0, 0.5, None]
    assert [e["kept_row"] for e in examples] == [0, 1, 2]


def test_overlong_samples_are_truncated_when_asked_and_counted():
    examples, counts = training_examples(KEPT, eos_token_id=0, max_length=8, overlong="truncate")
    assert counts == {"overlong": 2, "dropped_overlong": 1, "truncated_overlong": 1}, "a too-long prompt goes"
    assert strip(examples[3]) == {"input_ids": [1] * 6 + [4, 4], "completion_mask": [0] * 6 + [1, 1]}
    assert examples[3]["kept_row"] == 3


def test_eval_slice_is_seeded_disjoint_and_never_everything():
    examples = [{"input_ids": [i], "completion_mask": [1]} for i in range(10)]
    train, held = split_eval(examples, 0.2, seed=3)
    assert len(held) == 2 and len(train) == 8
    assert sorted(e["input_ids"][0] for e in train + held) == list(range(10))
    assert split_eval(examples, 0.2, seed=3) == (train, held)
    assert split_eval(examples, 0.2, seed=4) != (train, held)
    assert len(split_eval(examples[:2], 0.9, seed=0)[0]) == 1, "at least one sample is trained on"
    assert split_eval(examples[:1], 0.5, seed=0) == (examples[:1], [])
    assert split_eval(examples, 0.0, seed=0) == (examples, [])


def test_trainer_rows_carry_ids_and_reward_weights():
    examples, _ = training_examples(KEPT.iloc[:2], eos_token_id=0, max_length=8)
    train, held = trainer_rows(examples[:1], examples[1:], reward_weighting=True)
    assert train == [{"input_ids": [1, 2, 3, 7, 8, 0], "completion_mask": [0, 0, 0, 1, 1, 1], "example_index": 0,
                      "loss_weight": 1.0}]
    assert held == [{"input_ids": [1, 2, 9, 9, 0], "completion_mask": [0, 0, 1, 1, 1], "eval_index": 0}]
    assert "loss_weight" not in trainer_rows(examples, [], reward_weighting=False)[0][0]
    no_reward, _ = training_examples(KEPT.iloc[2:3], eos_token_id=0, max_length=8)
    with pytest.raises(TrainingError, match="kept sample 0 has no reward"):
        trainer_rows(no_reward, [], reward_weighting=True)


class PadCollator:
    """Stands in for TRL's collator: right-pads input_ids with 0 (or concatenates them when padding-free)."""

    def __init__(self, pad_free: bool):
        self.pad_free = pad_free

    def __call__(self, examples):
        import torch

        assert all(set(e) == {"input_ids", "labels"} for e in examples), "extra columns never reach TRL's collator"
        if self.pad_free:
            return {"input_ids": torch.tensor([sum((e["input_ids"] for e in examples), [])])}
        width = max(len(e["input_ids"]) for e in examples)
        return {"input_ids": torch.tensor([e["input_ids"] + [0] * (width - len(e["input_ids"])) for e in examples])}


@pytest.mark.parametrize("pad_free", [False, True])
def test_data_share_records_this_ranks_samples_and_builds_reward_weights(pad_free):
    share = DataShare(PadCollator(pad_free), pad_free=pad_free, weighted=True)
    batch = share([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "example_index": 4, "loss_weight": 0.5},
                   {"input_ids": [8], "labels": [8], "example_index": 1, "loss_weight": 1.0}])
    expected = [[0.5, 0.5, 0.5, 1.0]] if pad_free else [[0.5, 0.5, 0.5], [1.0, 0.0, 0.0]]
    assert batch["loss_weights"].tolist() == expected
    share([{"input_ids": [9, 9], "labels": [9, 9], "eval_index": 0}])
    assert (share.example_indices, share.batches, share.tokens) == ([4, 1], 1, 4), "eval batches are not counted"


def test_reward_weights_scale_the_fused_log_probs():
    import torch

    class Out:
        log_probs = torch.tensor([[-1.0, -2.0, -4.0]])

    class Model:
        def forward(self, input_ids, fused_lm_head=False):
            out = Out()
            out.log_probs = Out.log_probs.clone()
            return out

    model = Model()
    weight_losses_by_reward(model)
    weights = torch.tensor([[9.0, 0.5, 0.5, 1.0]])  # position 0 has no label: its weight is never used
    assert model.forward(None, fused_lm_head=True, loss_weights=weights).log_probs.tolist() == [[-0.5, -1.0, -4.0]]
    assert model.forward(None, fused_lm_head=True).log_probs.tolist() == [[-1.0, -2.0, -4.0]]


def test_history_rows_merge_train_and_eval_logs_with_tokens_per_second():
    log = [
        {"step": 1, "loss": 2.0, "learning_rate": 1e-5, "grad_norm": 3.0, "num_tokens": 100},
        {"step": 2, "loss": 1.5, "learning_rate": 5e-6, "grad_norm": 2.0, "num_tokens": 300},
        {"step": 2, "eval_loss": 1.7},
        {"step": 2, "train_runtime": 9.0, "train_loss": 1.75},
    ]
    rows = loss_history(log, {0: 0.0, 1: 2.0, 2: 4.0}, start_step=0)
    assert rows == [
        {"step": 1, "loss": 2.0, "learning_rate": 1e-5, "grad_norm": 3.0, "interval_tokens_per_s": 50.0},
        {"step": 2, "loss": 1.5, "learning_rate": 5e-6, "grad_norm": 2.0, "interval_tokens_per_s": 100.0,
         "eval_loss_at_step": 1.7},
    ]
    resumed = loss_history(log[1:], {1: 0.0, 2: 3.0}, start_step=1)
    assert resumed[0]["interval_tokens_per_s"] == 100.0, "after a resume, tokens count from this process's start"


def train_recipe(**train):
    return validate_recipe({"name": "x", "data": {"train_size": 4}, "train": train})


@pytest.mark.parametrize("train, message", [
    ({"warmup_ratio": 0.1, "lr_scheduler": "constant"}, "constant_with_warmup"),
    ({"reward_weighting": True, "packing": True}, "cannot be combined with train.packing"),
    ({"num_processes": 2}, "needs train.launcher"),
    ({"accelerate_config": "a.yaml", "launcher": "torchrun"}, "needs train.launcher: accelerate"),
    ({"fsdp_config": "f.json"}, "needs train.fsdp"),
    ({"lr_scheduler": "cosine_typo"}, "train.lr_scheduler"),
    ({"overlong": "cut"}, "train.overlong"),
    ({"eval_fraction": 1.0}, "train.eval_fraction"),
])
def test_inconsistent_train_settings_are_rejected(train, message):
    with pytest.raises(RecipeError, match=message):
        train_recipe(**train)


def test_launch_commands_run_every_rank_through_the_worker(tmp_path):
    run = RunDir(tmp_path)
    torchrun = launch_command(train_recipe(launcher="torchrun", num_processes=2).train, run, 3)
    assert torchrun[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    assert torchrun[-5:] == ["-m", "rest.run.worker", "train", str(tmp_path), "3"]
    cfg = train_recipe(launcher="accelerate", num_processes=4, accelerate_config="fsdp.yaml",
                       launcher_args=["--main_process_port", "29511"]).train
    accelerate = launch_command(cfg, run, 1)
    assert accelerate[1:10] == ["-m", "accelerate.commands.launch", "--config_file", "fsdp.yaml", "--num_processes",
                                "4", "--main_process_port", "29511", "-m"]
    with pytest.raises(TrainingError, match="train.accelerate_config: file 'fsdp.yaml' not found"):
        check_config_files(cfg)


def test_zero_kept_samples_stop_with_a_clear_error_before_any_trainer_starts(tmp_path):
    run = RunDir(tmp_path)
    atomic_write_parquet(KEPT.iloc[:0], run.kept(1))
    with pytest.raises(NoKeptSamplesError, match="iteration 1 kept 0 samples"):
        train_iteration(train_recipe(), run, 1)


@pytest.mark.parametrize("mode, native, dtype, expected", [
    ("auto", True, "float32", True), ("auto", False, "float32", False), ("bf16", False, "float32", True),
    ("no", True, "float32", False), ("no", False, "bfloat16", True),
])
def test_bf16_autocast_follows_the_recipe_and_the_hardware(monkeypatch, tmp_path, mode, native, dtype, expected):
    from rest.engines import trainer as trainer_setup
    from rest.recipe.schema import TrainConfig

    monkeypatch.setattr(trainer_setup, "native_bf16", lambda: native)
    config = trainer_setup.sft_config(TrainConfig(mixed_precision=mode, dtype=dtype), tmp_path, seed=0, has_eval=False)
    assert config.bf16 is expected


def test_native_bf16_is_what_the_cpu_reports(monkeypatch):
    import torch

    from rest.engines.hardware import native_bf16

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": True})
    assert native_bf16() is True
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True})
    assert native_bf16() is False


class WordTokenizer:
    """Each whitespace-separated word is one token id (its length), enough to compare prompts."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [len(w) for w in text.split()]}


def test_the_m_step_trains_on_the_training_template_when_one_is_set():
    from rest.data.prompts import with_training_prompts
    from rest.recipe.schema import PromptConfig

    kept = pd.DataFrame({"question": ["two plus two"], "prompt_text": ["Q: 1+1\nA: 2\n\nQ: two plus two\nA:"],
                         "prompt_token_ids": [[2, 3, 1, 2, 3, 4, 4, 2]], "completion_token_ids": [[9]],
                         "finish_reason": ["stop"], "truncated": [False]})
    sampled = PromptConfig(chat_template=False, template="Q: 1+1\nA: 2\n\nQ: {question}\nA:")
    assert with_training_prompts(WordTokenizer(), sampled, kept) is kept
    plain = sampled.model_copy(update={"train_template": "Q: {question}\nA:"})
    trained = with_training_prompts(WordTokenizer(), plain, kept)
    assert trained["prompt_text"].tolist() == ["Q: two plus two\nA:"]
    assert trained["prompt_token_ids"].tolist() == [[2, 3, 4, 3, 2]]
    examples, _ = training_examples(trained, eos_token_id=0, max_length=64)
    assert examples[0]["input_ids"] == [2, 3, 4, 3, 2, 9, 0] and examples[0]["completion_mask"] == [0] * 5 + [1, 1]
    with pytest.raises(ValueError, match="prompt.train_template must contain {question}"):
        PromptConfig(train_template="Q: A:")


@pytest.mark.parametrize("cuda, bf16, amx, expected", [
    (False, False, True, "bfloat16"),  # a CPU with AMX
    (False, False, False, "float32"),  # other CPUs (AVX-512 bf16 alone is not enough)
    (True, True, False, "bfloat16"),  # a CUDA GPU with bf16
    (True, False, False, "float16"),  # an older CUDA GPU
])
def test_engine_dtype_auto_is_the_fastest_accurate_precision_here(monkeypatch, cuda, bf16, amx, expected):
    import torch

    from rest.engines.generation import engine_options
    from rest.engines.hardware import resolve_dtype
    from rest.recipe.schema import EngineConfig

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": amx, "avx512_bf16": True})
    assert resolve_dtype("auto") == expected and resolve_dtype("float32") == "float32"
    assert engine_options(EngineConfig(), "m", seed=0)["dtype"] == expected
