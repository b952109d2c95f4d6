"""Built-in arithmetic word problems (GSM8K format), deterministic by seed, at three difficulty levels."""
from __future__ import annotations

import random

NAMES = ["Ava", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jon", "Kira", "Luis", "Mia", "Noor"]
ITEMS = ["apples", "marbles", "stickers", "books", "pencils", "cookies", "shells", "coins", "cards", "stamps"]


def generate_problems(count: int, difficulty: str, seed: int) -> list[dict]:
    """``count`` distinct problems as ``{"id", "question", "answer"}`` with answers ending in ``#### N``."""
    rng = random.Random(f"{seed}-{difficulty}")
    make = {"easy": _easy, "medium": _medium, "hard": _hard}[difficulty]
    problems: dict[str, dict] = {}
    attempts = 0
    while len(problems) < count:
        attempts += 1
        if attempts > count * 50:
            raise ValueError(f"cannot generate {count} distinct {difficulty} problems")
        question, steps, answer = make(rng)
        if question not in problems:
            solution = "\n".join(steps) + f"\n#### {answer}"
            problems[question] = {"question": question, "answer": solution}
    return [dict(id=f"synthetic-{difficulty}-{seed}-{i:05d}", **p) for i, p in enumerate(problems.values())]


def _who(rng: random.Random) -> tuple[str, str]:
    return rng.choice(NAMES), rng.choice(ITEMS)


def _easy(rng: random.Random) -> tuple[str, list[str], int]:
    name, item = _who(rng)
    a, b = rng.randint(2, 20), rng.randint(2, 20)
    if rng.random() < 0.5:
        q = f"{name} has {a} {item}. {name} gets {b} more {item}. How many {item} does {name} have now?"
        return q, [f"{a} + {b} = {a + b}"], a + b
    a, b = max(a, b) + 1, min(a, b)
    q = f"{name} has {a} {item} and gives away {b} of them. How many {item} does {name} have left?"
    return q, [f"{a} - {b} = {a - b}"], a - b


def _medium(rng: random.Random) -> tuple[str, list[str], int]:
    name, item = _who(rng)
    boxes, per_box, extra = rng.randint(2, 9), rng.randint(2, 12), rng.randint(1, 30)
    total = boxes * per_box
    q = (f"{name} buys {boxes} boxes of {item} with {per_box} {item} in each box, "
         f"and already had {extra} {item}. How many {item} does {name} have in total?")
    return q, [f"{boxes} * {per_box} = {total}", f"{total} + {extra} = {total + extra}"], total + extra


def _hard(rng: random.Random) -> tuple[str, list[str], int]:
    name, item = _who(rng)
    boxes, per_box, friends = rng.randint(2, 9), rng.randint(2, 12), rng.randint(2, 5)
    total = boxes * per_box
    keep = total % friends  # so the rest divides evenly
    if keep + friends < total and rng.random() < 0.5:
        keep += friends
    share = (total - keep) // friends
    q = (f"{name} has {boxes} bags with {per_box} {item} each. {name} keeps {keep} {item} and shares "
         f"the rest equally among {friends} friends. How many {item} does each friend get?")
    steps = [f"{boxes} * {per_box} = {total}", f"{total} - {keep} = {total - keep}",
             f"{total - keep} / {friends} = {share}"]
    return q, steps, share

