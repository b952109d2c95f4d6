"""Prompt data: local JSONL/Parquet, a datasets-hub id, or the built-in generator, split into train and eval."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from rest.errors import RestError
from rest.recipe.schema import DataConfig, Recipe


class DataError(RestError, ValueError):
    """The prompt data cannot be used: missing file or field, too few problems."""


@dataclass(frozen=True)
class Splits:
    """Training prompts and the held-out evaluation prompts; columns prompt_id, question, gold."""

    train: pd.DataFrame
    eval: pd.DataFrame


def load_splits(recipe: Recipe) -> Splits:
    """The recipe's train and held-out splits, deterministic given the recipe seed."""
    cfg = recipe.data
    if cfg.source == "synthetic":
        from rest.data.synthetic import generate_problems

        records = generate_problems(cfg.train_size + cfg.eval_size, cfg.synthetic.difficulty, recipe.seed)
        frame = pd.DataFrame(records)
        cfg = cfg.model_copy(update={"id_field": "id", "question_field": "question", "answer_field": "answer"})
    else:
        frame = _read(cfg)
    problems = to_problems(frame, cfg)
    needed = cfg.eval_size + (cfg.train_size or 1)
    if len(problems) < needed:
        raise DataError(f"{cfg.path or 'synthetic data'}: {len(problems)} distinct problems, need at least {needed}")
    shuffled = problems.sample(frac=1.0, random_state=recipe.seed).reset_index(drop=True)
    evaluation = shuffled.iloc[: cfg.eval_size].reset_index(drop=True)
    rest_ = shuffled.iloc[cfg.eval_size:]
    train = (rest_ if cfg.train_size is None else rest_.iloc[: cfg.train_size]).reset_index(drop=True)
    if cfg.reference_size is not None and "reference" in train.columns:
        train["reference"] = train["reference"].where(train.index < cfg.reference_size, None)
    return Splits(train=train, eval=evaluation)


def to_problems(frame: pd.DataFrame, cfg: DataConfig) -> pd.DataFrame:
    """Normalise raw records to prompt_id, question, gold (deduplicated by prompt id)."""
    answer_fields = tuple(cfg.answer_fields) if cfg.answer_format == "fields" else (cfg.answer_field,)
    for field in (cfg.question_field, *answer_fields) + ((cfg.id_field,) if cfg.id_field else ()):
        if field not in frame.columns:
            raise DataError(
                f"{cfg.path or 'data'}: no field '{field}'; fields present: {', '.join(map(str, frame.columns))}"
            )
    questions = frame[cfg.question_field].astype(str)
    ids = frame[cfg.id_field].astype(str) if cfg.id_field else questions.map(question_id)
    if cfg.answer_format == "fields":
        gold = pd.Series([dict(zip(answer_fields, values)) for values in frame[list(answer_fields)].itertuples(
            index=False, name=None)], index=frame.index, dtype=object)
    elif cfg.answer_format == "gsm8k":
        gold = frame[cfg.answer_field].map(gsm8k_gold)
    else:
        gold = frame[cfg.answer_field]
    problems = pd.DataFrame({"prompt_id": ids, "question": questions, "gold": gold})
    if cfg.reference_template is not None:
        problems["reference"] = references(frame, cfg.reference_template, cfg.path)
    return problems.drop_duplicates("prompt_id").reset_index(drop=True)


def references(frame: pd.DataFrame, template: str, source: str | None) -> list[str]:
    """``data.reference_template`` filled from each record's fields (the reference solutions ReST mixes in)."""
    out = []
    for record in frame.to_dict("records"):
        try:
            out.append(template.format_map(record))
        except KeyError as missing:
            raise DataError(f"{source or 'data'}: data.reference_template names field {missing}; fields present: "
                            f"{', '.join(map(str, frame.columns))}") from None
        except (ValueError, IndexError) as bad:
            raise DataError(f"data.reference_template is not a valid format string ({bad}); "
                            "write literal braces as {{ and }}") from None
    return out


def question_id(question: str) -> str:
    """Stable id of a problem without an id field: a hash of its text."""
    return hashlib.sha1(question.strip().encode()).hexdigest()[:16]


def gsm8k_gold(answer: object) -> str:
    """The final answer of a GSM8K worked solution (text after the last '####'); unchanged if none."""
    text = str(answer)
    return text.rsplit("####", 1)[1].strip() if "####" in text else text.strip()


def _read(cfg: DataConfig) -> pd.DataFrame:
    if cfg.source == "hub":
        import datasets

        return datasets.load_dataset(cfg.path, cfg.hub_config, split=cfg.hub_split).to_pandas()
    path = Path(cfg.path)
    if not path.is_file():
        raise DataError(f"data file {path} not found")
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix in (".jsonl", ".json"):
        return pd.read_json(path, lines=path.suffix == ".jsonl", dtype=False)
    raise DataError(f"data file {path}: expected .jsonl, .json or .parquet")
