"""evaluate(): one metrics dict for every policy, reproducible within and across processes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from agents import METRICS, ConfidenceThreshold, FixedExit, LastExit, RandomExit, evaluate
from distree_env.config import REWARD_TIMINGS, EnvConfig
from tests.agents import SYNTH

CODE = (
    "import json; from agents import evaluate, RandomExit; "
    "print(json.dumps(evaluate(RandomExit(0.4), {'trace': 'synthetic'}, n_requests=1000, seed=7, "
    "num_envs=8)))"
)


def test_metrics_shape_and_ranges():
    m = evaluate(ConfidenceThreshold(0.8), SYNTH, n_requests=1000, seed=0, num_envs=8)
    assert set(METRICS) | {"exit_fractions", "n_requests", "mean_reward_se"} == set(m)
    assert m["n_requests"] >= 1000
    assert 0 <= m["accuracy"] <= 1 and 0 <= m["compute_saving"] <= 1 and 0 <= m["qos_rate"] <= 1
    assert 0 < m["latency_mean_ms"] <= m["latency_p95_ms"] * 1.5
    assert np.isclose(sum(m["exit_fractions"]), 1.0)


def test_same_seed_same_numbers_other_seed_differs():
    a = evaluate(RandomExit(0.4), SYNTH, n_requests=1000, seed=7, num_envs=8)
    b = evaluate(RandomExit(0.4), SYNTH, n_requests=1000, seed=7, num_envs=8)
    c = evaluate(RandomExit(0.4), SYNTH, n_requests=1000, seed=8, num_envs=8)
    assert a == b
    assert a != c


def test_same_numbers_across_processes():
    here = evaluate(RandomExit(0.4), SYNTH, n_requests=1000, seed=7, num_envs=8)
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == json.loads(json.dumps(here))


@pytest.mark.parametrize(
    "kwargs", [{"n_requests": 0}, {"seed": -1}, {"num_envs": 0}, {"n_requests": 1.5}]
)
def test_bad_arguments_raise(kwargs):
    (name,) = kwargs
    with pytest.raises(ValueError, match=f"evaluate: {name}="):
        evaluate(ConfidenceThreshold(0.5), SYNTH, **kwargs)


def test_not_a_policy_raises():
    with pytest.raises(ValueError, match="predict"):
        evaluate(object(), SYNTH, n_requests=10)


class _Counting:
    """A policy with memory: exits once it has seen three steps since the episode started."""

    def __init__(self) -> None:
        self.states: list[np.ndarray] = []
        self.starts: list[np.ndarray] = []

    def predict(self, observation, state=None, episode_start=None, deterministic=True):
        n = len(observation)
        state = np.zeros(n, int) if state is None else np.where(episode_start, 0, state + 1)
        self.states.append(state)
        self.starts.append(np.array(episode_start, dtype=bool))
        return (state % 3 == 2).astype(np.int64), state


def test_recurrent_state_is_handed_back_every_step():
    policy = _Counting()
    long_episodes = {**SYNTH, "requests_per_episode": 32, "episode_end": "truncate"}
    m = evaluate(policy, long_episodes, n_requests=256, seed=0, num_envs=2)
    assert max(int(s.max()) for s in policy.states) > 3  # the memory grew across steps
    assert m["n_requests"] >= 256
    # a truncated episode ends the memory too: the next step starts an episode
    restarts = [start for start in policy.starts[1:] if start.any()]
    assert len(restarts) >= 3  # 128 requests per stream in episodes of 32


def test_latency_figures_are_those_of_the_requests_answered():
    """``latency_mean_ms`` and ``latency_p95_ms`` are the mean and 95th percentile of the
    latencies of the requests the evaluation counted (one stream, rolled out here by hand)."""
    from agents.evaluation import make_eval_env, step_values

    policy, n = ConfidenceThreshold(0.7), 600
    m = evaluate(policy, SYNTH, n_requests=n, seed=5, num_envs=1)
    env = make_eval_env(EnvConfig.from_dict(SYNTH), 1)
    policy.bind(env)
    obs, _ = env.reset(seed=5)
    latencies: list[float] = []
    while len(latencies) < n:
        obs, _, _, _, info = env.step(policy.predict(obs)[0])
        if step_values(info, "request_done")[0]:  # an answer ending an episode: in final_info
            latencies.append(float(step_values(info, "request_latency_ms")[0]))
    assert m["latency_mean_ms"] == pytest.approx(np.mean(latencies))
    assert m["latency_p95_ms"] == pytest.approx(np.percentile(latencies, 95))
    assert m["latency_p95_ms"] != pytest.approx(np.percentile(latencies, 90))


def test_every_request_counts_once_and_drops_count_as_misses():
    bursty = EnvConfig.scenario("bursty-stream", trace="synthetic")
    m = evaluate(ConfidenceThreshold(0.5), bursty, n_requests=1024, seed=0)
    assert m["n_requests"] >= 1024
    assert m["qos_rate"] <= 1.0 - m["drop_rate"] + 1e-12


def test_the_score_is_each_requests_own_reward_whatever_the_timing():
    """The reward timing decides when a learner is paid, not what a policy scores: the same
    stream scores the same under every timing, and equals the per-request reward computed from
    the outcomes by hand."""
    stream = EnvConfig.scenario("bursty-stream", trace="synthetic")
    scores = {
        timing: evaluate(
            ConfidenceThreshold(0.7),
            stream.replace({"reward.timing": timing}),
            n_requests=512,
            seed=3,
        )  # fmt: skip
        for timing in REWARD_TIMINGS
    }
    assert len({s["mean_reward"] for s in scores.values()}) == 1
    m, rw = scores["system"], stream.reward
    answered = 1 - m["drop_rate"]
    # correct_bonus 1, wrong_penalty 0: reward = accuracy share - latency cost - late - drops
    late_share = answered - m["qos_rate"]
    by_hand = (
        answered * m["accuracy"] * rw.correct_bonus
        - answered * rw.latency_weight * m["latency_mean_ms"] / stream.deadline_ms
        - rw.deadline_penalty * late_share
        - (rw.wrong_penalty + rw.deadline_penalty) * m["drop_rate"]
    )
    assert rw.wrong_penalty == 0.0 and np.isclose(m["mean_reward"], by_hand)


def test_an_agent_of_another_observation_layout_is_named_not_crashed():
    """An agent trained on another cluster (here: 7 features) fails with the shapes named."""
    from types import SimpleNamespace

    from gymnasium import spaces

    class Wide:
        model = SimpleNamespace(observation_space=spaces.Box(0, 1, (7,)))

        def predict(self, obs, state=None, episode_start=None, deterministic=True):
            raise AssertionError("never asked: the shapes are checked first")

    with pytest.raises(ValueError, match=r"expects observations of shape \(7,\)"):
        evaluate(Wide(), SYNTH, n_requests=16, seed=0, num_envs=2)


def test_standard_error_matches_the_spread_between_seeds():
    """``mean_reward_se`` is estimated within one evaluation (between its independent streams);
    it must agree with the spread of ``mean_reward`` over evaluations of other seeds, also on a
    request stream, where the requests of one stream are correlated through the queue."""
    config = EnvConfig.scenario("steady-stream")
    runs = [evaluate(ConfidenceThreshold(0.8), config, n_requests=1024, seed=s) for s in range(32)]
    spread = np.std([r["mean_reward"] for r in runs], ddof=1)
    estimated = np.sqrt(np.mean([r["mean_reward_se"] ** 2 for r in runs]))
    assert 0.7 < estimated / spread < 1.4, (estimated, spread)


def test_standard_error_needs_two_streams_and_is_zero_without_spread():
    config = EnvConfig.scenario("steady-stream")
    assert np.isnan(evaluate(ConfidenceThreshold(0.8), config, n_requests=128)["mean_reward_se"])
    nothing_counts = {**SYNTH, "reward": {"correct_bonus": 0.0, "latency_weight": 0.0,
                                          "deadline_penalty": 0.0}}  # fmt: skip
    m = evaluate(ConfidenceThreshold(0.8), nothing_counts, n_requests=1000, seed=0, num_envs=8)
    assert m["mean_reward_se"] == 0.0
    m = evaluate(ConfidenceThreshold(0.8), SYNTH, n_requests=1000, seed=0, num_envs=8)
    assert m["mean_reward_se"] > 0


def test_a_stream_counts_the_drops_before_its_counted_requests_only():
    """Under overload the streams reach their share at different steps; a stream that is done
    keeps stepping (the batch moves together) but the drops before its later requests are not
    counted: each counted request brings the arrivals refused since the one admitted before it
    (``request_drops_before``)."""
    from agents.evaluation import make_eval_env, step_values

    config = EnvConfig.scenario("bursty-stream").replace(
        {"arrivals.utilisation": 1.6, "queue.capacity": 4}
    )
    m = evaluate(ConfidenceThreshold(0.8), config, n_requests=256, seed=3, num_envs=2)
    venv = make_eval_env(config, 2)  # the same run, counted by hand
    obs, _ = venv.reset(seed=3)
    answered, dropped, extra = np.zeros(2, int), np.zeros(2, int), 0
    while (answered < 192).any():  # on past the share of 128
        actions, _ = ConfidenceThreshold(0.8).predict(obs, deterministic=True)
        before = answered < 128
        obs, _, _, _, info = venv.step(actions)
        done = step_values(info, "request_done").astype(bool)  # ended episodes: final_info
        drops = np.where(done, step_values(info, "request_drops_before"), 0)
        dropped += np.where(before, drops, 0)
        extra += int(np.where(before, 0, drops).sum())
        answered += done
    assert dropped.sum() > 0
    assert m["n_requests"] == 256 + dropped.sum()
    assert np.isclose(m["drop_rate"], dropped.sum() / (256 + dropped.sum()))
    assert extra > 0  # the finished stream did drop more, uncounted


def test_a_pipeline_saturated_at_device_0_drops_alike_whatever_the_exits():
    """With pipelining device 0 serves the arrivals in order whatever the decisions of the
    requests ahead, so where it is the bottleneck the share of arrivals refused does not depend
    on the policy (up to the arrival draws the sub-envs share; streams of 512 requests stay
    below ``QUEUE_HARD_CAP``). Counting the drops up to the latest time any request reached (as
    evaluate did) gave LastExit five times FixedExit(0)'s rate here (0.321 against 0.064)."""
    config = EnvConfig.scenario("pipelined-stream").replace({"arrivals.utilisation": 3.5})
    rates = [
        evaluate(policy, config, n_requests=4096, seed=0, num_envs=8, warmup=128)["drop_rate"]
        for policy in (FixedExit(0), LastExit())
    ]
    assert rates[0] > 0.03
    assert max(rates) < 1.3 * min(rates), rates


def test_a_test_split_with_a_tuning_seed_is_warned_about(recwarn):
    """The test split measured with seed 0 replays the resource paths and arrivals tuning saw:
    said, not silently accepted; with held-out seeds, or on val, nothing is said."""
    from agents.splits import TEST_SEED_BASE, on_split

    test = on_split(EnvConfig.scenario("steady-stream").replace(SYNTH), "test")
    with pytest.warns(UserWarning, match="seed=0 on the test split"):
        evaluate(RandomExit(0.4), test, n_requests=256, seed=0)
    recwarn.clear()
    evaluate(RandomExit(0.4), test, n_requests=256, seed=TEST_SEED_BASE)
    evaluate(RandomExit(0.4), on_split(test, "val", "synthetic"), n_requests=256, seed=0)
    assert not [w for w in recwarn if "test split" in str(w.message)]


def test_a_warmup_leaves_out_each_streams_first_requests():
    """With ``warmup=W`` each stream's counted requests are its requests W+1 to W+M, as a plain
    rollout of the same seed gives them (and ``warmup=0`` is the default)."""
    from agents.evaluation import make_eval_env, step_values

    config = EnvConfig.scenario("bursty-stream").replace(SYNTH)
    policy, envs, warm, count = ConfidenceThreshold(0.8), 2, 40, 128
    plain = evaluate(policy, config, n_requests=envs * count, seed=3)
    assert plain == evaluate(policy, config, n_requests=envs * count, seed=3, warmup=0)
    warmed = evaluate(policy, config, n_requests=envs * count, seed=3, warmup=warm)
    venv = make_eval_env(config, envs)
    policy.bind(venv)
    obs, _ = venv.reset(seed=3)
    latency: list[list[float]] = [[] for _ in range(envs)]
    while min(len(x) for x in latency) < warm + count:
        actions, _ = policy.predict(obs)
        obs, _, _, _, infos = venv.step(actions)
        done = step_values(infos, "request_done").astype(bool)
        for i in np.flatnonzero(done):
            latency[i].append(float(step_values(infos, "request_latency_ms")[i]))
    counted = np.concatenate([x[warm : warm + count] for x in latency])
    assert warmed["latency_mean_ms"] == pytest.approx(counted.mean(), rel=1e-9)
    assert warmed["latency_mean_ms"] != pytest.approx(plain["latency_mean_ms"], rel=1e-3)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [({"n_requests": 0}, "n_requests=0"), ({"num_envs": 0}, "num_envs=0"),
     ({"warmup": -1}, "warmup=-1"), ({"warmup": 1.5}, "warmup=1.5"), ({"seed": -1}, "seed=-1")],
)  # fmt: skip
def test_bad_arguments_are_named(kwargs, named):
    with pytest.raises(ValueError, match=named):
        evaluate(RandomExit(0.4), SYNTH, **{"n_requests": 64, **kwargs})


def test_a_terminating_stream_is_warned_about(recwarn):
    """``episode_end="terminate"`` discards the requests waiting at each episode end: said, as
    evaluate counts only the answered ones; a stream that goes on is not warned about."""
    config = EnvConfig.scenario("bursty-stream").replace(SYNTH)
    with pytest.warns(UserWarning, match="episode_end='terminate'"):
        evaluate(RandomExit(0.4), config.replace({"episode_end": "terminate"}), n_requests=64)
    recwarn.clear()
    evaluate(RandomExit(0.4), config, n_requests=64)
    isolated = EnvConfig.scenario("isolated").replace(SYNTH).replace({"episode_end": "terminate"})
    evaluate(RandomExit(0.4), isolated, n_requests=64)  # the v0 ids: nothing waits
    assert not [w for w in recwarn if "terminate" in str(w.message)]


def test_evaluations_pair_policies_on_a_seed_unless_told_not_to(monkeypatch):
    """``evaluate`` runs on sub-envs with generators of their own by default (the pairing itself
    is tested on the vector env), deterministically, and on one shared generator when asked."""
    import agents.evaluation as evaluation

    made = []
    make = evaluation.make_eval_env
    monkeypatch.setattr(
        evaluation, "make_eval_env", lambda *args: made.append(make(*args)) or made[-1]
    )
    config = EnvConfig.scenario("bursty-stream").replace(SYNTH)
    runs = [evaluate(RandomExit(0.4), config, 256) for _ in range(2)]
    shared = evaluate(RandomExit(0.4), config, 256, independent_streams=False)
    assert runs[0] == runs[1] != shared
    assert [venv.independent_streams for venv in made] == [True, True, False]
    assert made[0]._dyn.stream_rngs is not None and made[2]._dyn.stream_rngs is None
