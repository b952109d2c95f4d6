"""The trained PAV head: which token positions are a prefix's, its features, the fit and the saved head."""
from __future__ import annotations

import numpy as np
import pytest

from rest.pav.head import ValueHead, fit_head, hidden_features, load_feature_model, predicted_values, prefix_positions
from tests.prm.conftest import make_tiny_lm


def test_each_prefix_is_read_at_its_last_token():
    # prompt of 5 tokens; steps end after completion tokens 3 and 7: p_0 ends at 4, p_1 at 7, p_2 at 11
    assert prefix_positions(5, [3, 7]) == [4, 7, 11]


def test_features_are_the_last_hidden_state_at_those_positions(tmp_path):
    import torch

    model = load_feature_model(str(make_tiny_lm(tmp_path / "lm")))
    ids = [0, 5, 9, 12, 7, 3, 30]
    (features,) = hidden_features(model, [ids], [[1, 4, 6]])
    with torch.inference_mode():
        direct = model(input_ids=torch.tensor([ids])).last_hidden_state[0]
    assert features.shape == (3, model.config.hidden_size)
    np.testing.assert_allclose(features, direct[[1, 4, 6]].numpy(), rtol=1e-5, atol=1e-6)


def test_a_shared_prompt_runs_once_and_gives_the_same_features(tmp_path):
    model = load_feature_model(str(make_tiny_lm(tmp_path / "lm")))
    prompt = [0, 5, 9, 12]
    sequences = [prompt + [7, 3, 30], prompt + [8], prompt, [0, 6] + [7, 3]]
    positions = [[3, 5, 6], [3, 4], [3], [1, 3]]
    plain = hidden_features(model, sequences, positions)
    shared = hidden_features(model, sequences, positions, prompt_lens=[4, 4, 4, 2])
    for a, b in zip(plain, shared):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_the_fitted_head_ranks_prefixes_as_their_values_do_and_survives_saving(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6)) * [1, 3, 1, 1, 1, 1] + [0, 10, 0, 0, 0, 0]
    targets = 1 / (1 + np.exp(-(2 * x[:, 0] - 0.5)))  # soft targets: Q depends on the first feature only
    head, loss = fit_head(x, targets, "base", l2=1e-4)
    predicted = head.predict(x)
    assert np.corrcoef(predicted, targets)[0, 1] > 0.99
    assert abs(head.weight[0]) > 10 * np.abs(head.weight[1:]).max()
    assert 0 < loss < 0.7
    head.save(tmp_path / "head")
    again = ValueHead.load(tmp_path / "head")
    np.testing.assert_allclose(again.predict(x), predicted)
    assert again.features_model == "base"


def test_predicted_advantages_are_differences_of_predicted_q():
    head = ValueHead(np.zeros(1), np.ones(1), np.array([1.0]), 0.0, "base")
    ((q, advantage),) = predicted_values(head, [np.array([[0.0], [2.0], [-1.0]])])
    assert q == pytest.approx([0.5, 1 / (1 + np.exp(-2)), 1 / (1 + np.exp(1))])
    assert advantage == pytest.approx([q[1] - q[0], q[2] - q[1]])
