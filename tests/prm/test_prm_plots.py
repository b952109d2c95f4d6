"""Selection with a PRM writes the implicit_prm filter's score histograms into the iteration's plots folder."""
from __future__ import annotations

import pandas as pd

from rest.phases.select import select_iteration
from rest.recipe.schema import validate_recipe
from rest.run.rundir import RunDir

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_selection_writes_one_histogram_per_prm_filter(tmp_path):
    run = RunDir(tmp_path / "run")
    recipe = validate_recipe({
        "name": "plots", "data": {"train_size": 4}, "prm": {},
        "filters": [{"name": "keep_correct"}, {"name": "implicit_prm", "options": {"threshold": 0.0}},
                    {"name": "implicit_prm", "id": "prm_top", "options": {"mode": "top_k", "top_k": 1}}],
    })
    scored = pd.DataFrame({
        "prompt_id": ["a", "a", "a", "b", "b"], "sample_index": [0, 1, 2, 0, 1],
        "correct": [True, True, False, True, False], "reward": [1.0, 1.0, 0.0, 1.0, 0.0],
        "prm__min": [0.3, -0.2, -0.9, 0.1, 0.4],
    })
    run.scored(1).parent.mkdir(parents=True)
    scored.to_parquet(run.scored(1))
    stats = select_iteration(recipe, run, 1)
    assert stats["plots"] == ["implicit_prm_scores.png", "prm_top_scores.png"]
    for name in stats["plots"]:
        assert (run.iteration(1) / "plots" / name).read_bytes()[:8] == PNG_MAGIC
    assert stats["kept"] == 2  # a: 0.3 (top of a, above 0); b: 0.1
    assert stats["filters"]["implicit_prm"]["dropped"] == {"below_threshold": 1}
