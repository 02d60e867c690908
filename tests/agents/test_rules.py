"""Rule policies: batched predict, features read by name, parameter validation."""

from __future__ import annotations

import numpy as np
import pytest

from agents import (
    ConfidenceThreshold,
    EntropyThreshold,
    FeatureDifference,
    FixedExit,
    LastExit,
    Oracle,
    RandomExit,
    evaluate,
)
from distree_env.config import EnvConfig
from distree_env.traces import resolve_trace
from distree_env.vector_env import DistrEEVecEnv
from tests.agents import SYNTH

RULES = [
    LastExit(),
    FixedExit(1),
    RandomExit(0.5),
    ConfidenceThreshold(0.8),
    EntropyThreshold(0.3),
    FeatureDifference(0.3),
    Oracle(),
]


@pytest.fixture(scope="module")
def venv():
    env = DistrEEVecEnv(32, SYNTH)
    env.reset(seed=0)
    return env


@pytest.mark.parametrize("rule", RULES, ids=repr)
def test_predict_on_a_batch(rule, venv):
    obs, _ = venv.reset(seed=1)
    rule.bind(venv)
    actions, state = rule.predict(obs, episode_start=np.ones(32, bool), deterministic=True)
    assert actions.shape == (32,) and actions.dtype == np.int64
    assert set(np.unique(actions)) <= {0, 1}
    assert state is None
    venv.step(actions)  # accepted by the env


def test_thresholds_read_their_feature_by_name(venv):
    names = venv.observation_names
    obs = np.zeros((3, len(names)), dtype=np.float32)
    col = {n: i for i, n in enumerate(names)}
    obs[:, col["max_prob"]] = [0.5, 0.8, 0.95]
    obs[:, col["entropy"]] = [0.9, 0.3, 0.1]
    obs[:, col["feature_diff"]] = [0.9, 0.6, 0.2]
    obs[:, col["progress"]] = 0.5
    assert ConfidenceThreshold(0.8).bind(venv).predict(obs)[0].tolist() == [0, 1, 1]
    assert EntropyThreshold(0.3).bind(venv).predict(obs)[0].tolist() == [0, 1, 1]
    assert FeatureDifference(0.3).bind(venv).predict(obs)[0].tolist() == [0, 0, 1]
    obs[:, col["progress"]] = 0.0  # exit 0: no earlier exit to agree with, never exits
    assert FeatureDifference(0.3).bind(venv).predict(obs)[0].tolist() == [0, 0, 0]
    # a permuted layout still works: the rule looks the column up by name
    perm = np.arange(len(names))[::-1]

    class Permuted:
        observation_names = tuple(names[i] for i in perm)
        num_exits = venv.num_exits

    rule = ConfidenceThreshold(0.8).bind(Permuted())
    assert rule.predict(obs[:, perm])[0].tolist() == [0, 1, 1]


def test_fixed_exit_uses_progress(venv):
    k_count = venv.num_exits
    col = venv.observation_names.index("progress")
    obs = np.zeros((k_count, len(venv.observation_names)), dtype=np.float32)
    obs[:, col] = np.arange(k_count) / (k_count - 1)
    for k in range(k_count):
        expected = (np.arange(k_count) >= k).astype(int).tolist()
        assert FixedExit(k).bind(venv).predict(obs)[0].tolist() == expected
    with pytest.raises(ValueError, match="FixedExit.k"):
        FixedExit(k_count).bind(venv)


def test_single_observation_gives_scalar(venv):
    obs, _ = venv.reset(seed=2)
    action, _ = ConfidenceThreshold(0.5).bind(venv).predict(obs[0])
    assert np.ndim(action) == 0


@pytest.mark.parametrize(
    "make",
    [
        lambda: ConfidenceThreshold(1.5),
        lambda: EntropyThreshold(-0.1),
        lambda: FeatureDifference(float("nan")),
        lambda: RandomExit(2),
        lambda: FixedExit(-1),
        lambda: ConfidenceThreshold("0.5"),
    ],
)
def test_bad_parameters_raise(make):
    with pytest.raises(ValueError):
        make()


def test_unbound_oracle_and_unknown_feature_raise():
    with pytest.raises(ValueError, match="bind"):
        Oracle().predict(np.zeros((2, 14), np.float32))

    class NoFeatureDifference:
        observation_names = ("max_prob",)
        num_exits = 2

    with pytest.raises(ValueError, match="feature_diff"):
        FeatureDifference(0.5).bind(NoFeatureDifference()).predict(np.zeros((2, 1), np.float32))


def test_random_exit_is_reproducible():
    obs = np.zeros((64, 14), np.float32)
    a, b = RandomExit(0.3, seed=5), RandomExit(0.3, seed=5)
    assert np.array_equal(a.predict(obs)[0], b.predict(obs)[0])
    assert 0 < a.predict(obs)[0].mean() < 1


def test_random_exit_does_not_replay_the_environments_draws():
    """``default_rng(seed)`` draws the resource pool (and is Gymnasium's ``np_random``): a
    RandomExit seeded with it exited exactly where the pool's uniform draws fell below ``p``."""
    rule = RandomExit(0.3, seed=5)
    env_draws = np.random.default_rng(5).random(64)
    assert not np.isin(rule.rng.random(64), env_draws).any()


def test_last_exit_saves_nothing_and_matches_final_exit_accuracy():
    m = evaluate(LastExit(), SYNTH, n_requests=8192, seed=0, num_envs=64)
    assert m["compute_saving"] == 0.0
    assert m["exit_fractions"][-1] == 1.0
    final_acc = resolve_trace("synthetic").exit_accuracy[-1]
    assert abs(m["accuracy"] - final_acc) < 0.02  # requests are random trace samples


def test_oracle_is_an_upper_bound_on_isolated_requests():
    # without a queue, requests are independent: the per-request hindsight choice is the bound
    isolated = EnvConfig.scenario("isolated", trace="synthetic")
    oracle = evaluate(Oracle(), isolated, n_requests=2048, seed=3)["mean_reward"]
    for rule in RULES[:-1]:
        assert evaluate(rule, isolated, n_requests=2048, seed=3)["mean_reward"] <= oracle + 1e-9
