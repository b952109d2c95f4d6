"""Step-level beam search guided by process values (Setlur et al. 2024), and best-of-N at the same budget.

A search keeps ``width`` partial answers per problem. Each round, every open beam is continued
``expansions`` times up to the end of its next step; each candidate is scored by its predicted Q plus
``alpha`` times its advantage over the beam it extends (Q + alpha * A, the paper's search score); the best
``width`` candidates of the problem stay. A candidate is finished when the verifier reads a final answer in
it, or when it stopped for any reason but the step delimiter (the end of text, the token limit). After
``max_steps`` rounds the open beams count as finished. The answer: the finished candidate with the highest
predicted Q. Every sampled token counts against the budget, so best-of-N can be given the same one.

The generator and the value function are parameters: vLLM and a PAV head in experiments, fakes in tests.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

# (prompt ids + completion ids so far) per request, continuations each -> per request: (text, ids, stopped_at_step)
Expand = Callable[[list[list[int]], int], list[list[tuple[str, list[int], bool]]]]
# (prompt ids, completion ids) per candidate -> predicted Q of each
Value = Callable[[list[tuple[list[int], list[int]]]], list[float]]
# a completion's text -> whether it holds a final answer
Finished = Callable[[str], bool]


@dataclass
class Candidate:
    text: str
    ids: list[int]
    q: float
    score: float = 0.0
    finished: bool = False


@dataclass
class SearchResult:
    """One problem's search: its answer (highest-Q finished candidate), every finished one, tokens spent."""

    answer: Candidate | None
    finished: list[Candidate] = field(default_factory=list)
    sampled_tokens: int = 0


def beam_search(prompts: Sequence[list[int]], expand: Expand, value: Value, finished: Finished, width: int = 4,
                expansions: int = 4, max_steps: int = 8, alpha: float = 0.5) -> list[SearchResult]:
    """Beam search for every prompt at once (one generation call per round for all open beams)."""
    if width < 1 or expansions < 1 or max_steps < 1:
        raise ValueError("beam search needs width, expansions and max_steps >= 1")
    roots = value([(list(p), []) for p in prompts])
    beams = [[Candidate("", [], q)] for q in roots]
    results = [SearchResult(None) for _ in prompts]
    for _ in range(max_steps):
        open_ = [(i, beam) for i, problem in enumerate(beams) for beam in problem]
        if not open_:
            break
        outputs = expand([list(prompts[i]) + beam.ids for i, beam in open_], expansions)
        candidates: list[tuple[int, Candidate, Candidate]] = []
        for (i, beam), continuations in zip(open_, outputs):
            for text, ids, at_step in continuations:
                results[i].sampled_tokens += len(ids)
                full = beam.text + text
                done = finished(full) or not at_step or not ids
                candidates.append((i, beam, Candidate(full, beam.ids + list(ids), 0.0, finished=done)))
        qs = value([(list(prompts[i]), c.ids) for i, _, c in candidates])
        for (i, parent, candidate), q in zip(candidates, qs):
            candidate.q, candidate.score = q, q + alpha * (q - parent.q)
        beams = [[] for _ in prompts]
        for i in range(len(prompts)):
            mine = sorted((c for j, _, c in candidates if j == i), key=lambda c: c.score, reverse=True)[:width]
            results[i].finished.extend(c for c in mine if c.finished)
            beams[i] = [c for c in mine if not c.finished]
    for i, problem in enumerate(beams):  # out of rounds: open beams are answers as they stand
        results[i].finished.extend(problem)
    for result in results:
        result.answer = max(result.finished, key=lambda c: c.q, default=None)
    return results


def within_budget(candidates: Sequence[Candidate], budget: int) -> list[Candidate]:
    """The first candidates whose tokens together fit ``budget`` (the first one always)."""
    used, pool = 0, []
    for candidate in candidates:
        if pool and used + len(candidate.ids) > budget:
            break
        pool.append(candidate)
        used += len(candidate.ids)
    return pool


def best_of_n(samples: Sequence[Sequence[Candidate]], budgets: Sequence[int]) -> list[tuple[Candidate | None, int]]:
    """Per problem: the highest-Q candidate among :func:`within_budget` of ``budgets[i]``, and their tokens."""
    picks = []
    for candidates, budget in zip(samples, budgets):
        pool = within_budget(candidates, budget)
        picks.append((max(pool, key=lambda c: c.q, default=None), sum(len(c.ids) for c in pool)))
    return picks
