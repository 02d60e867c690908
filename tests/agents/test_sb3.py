"""SB3 glue: the batched VecEnv adapter, TensorBoard metrics, saving and (safe) loading agents."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

torch = pytest.importorskip("torch")

from stable_baselines3 import DQN, PPO  # noqa: E402
from stable_baselines3.common.logger import configure  # noqa: E402
from stable_baselines3.common.vec_env import VecNormalize  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)

from agents import (  # noqa: E402
    evaluate,
    load_agent,
    training,
)
from agents.loading import restore_model  # noqa: E402
from agents.policy import (  # noqa: E402
    MismatchedStatistics,
    SB3Policy,
    as_policy,
    save_vecnormalize,
    sidecar,
)
from agents.sb3 import (  # noqa: E402
    REQUEST_LATENCY,
    DistrEEMetricsCallback,
    SB3VecEnv,
    make_sb3_env,
)
from agents.training import (  # noqa: E402
    AtomicCheckpointCallback,
    ValEvalCallback,
    latest_checkpoint,
    load_replay_buffer,
    save_model,
)
from distree_env.manifest import record  # noqa: E402
from distree_env.vector_env import DistrEEVecEnv  # noqa: E402
from tests.agents import SYNTH  # noqa: E402

DISTREE_TAGS = {
    "distree_train/per_request/accuracy",
    "distree_train/per_request/compute_saving",
    "distree_train/per_request/latency_mean_ms",
    "distree_train/per_request/latency_p95_ms",
    "distree_train/per_request/qos_rate",
    "distree_train/per_request/reward_per_request",
    "distree_train/per_request/exit_0_share",
    "distree_train/per_episode/return",
    "distree_train/per_episode/reward_correct",
    "distree_train/per_episode/reward_latency",
    "distree_train/per_episode/reward_deadline",
}
#: Short episodes, so tiny trainings see several end.
SHORT = {**SYNTH, "requests_per_episode": 8}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def test_adapter_autoresets_and_reports_episode_metrics():
    env = SB3VecEnv(DistrEEVecEnv(4, SHORT, autoreset_mode=AutoresetMode.SAME_STEP))
    env.seed(0)
    obs = env.reset()
    assert obs.shape == (4, env.observation_space.shape[0])
    returns, seen = np.zeros(4), 0
    for _ in range(300):
        obs, rewards, dones, infos = env.step(np.ones(4, dtype=np.int64))
        returns += rewards
        for i in np.flatnonzero(dones):
            info = infos[i]
            assert env.observation_space.contains(info["terminal_observation"])
            parts = sum(
                info["distree"][f"episode_reward_{c}"]
                for c in ("correct", "latency", "deadline", "drop")
            )
            assert np.isclose(parts, returns[i], atol=1e-4)
            returns[i], seen = 0.0, seen + 1
    assert seen >= 4
    masks = np.stack(env.env_method("action_masks"))
    assert masks.shape == (4, 2) and masks[:, 1].all()
    assert env.get_attr("num_exits") == [4] * 4


def test_the_adapter_reports_each_answered_request_latency():
    """Per sub-env info: the latency of the request it answered this step (also when the
    episode ended on it), as the env's own info says."""
    env = SB3VecEnv(DistrEEVecEnv(4, SHORT, autoreset_mode=AutoresetMode.SAME_STEP))
    env.seed(0)
    env.reset()
    seen = 0
    for _ in range(100):
        _, _, dones, infos = env.step(np.ones(4, dtype=np.int64))  # exit: every step answers
        for i, info in enumerate(infos):
            assert REQUEST_LATENCY in info
            if dones[i]:
                assert info["distree"]["request_latency_ms"] == info[REQUEST_LATENCY]
                seen += 1
    assert seen > 0


def test_p95_latency_is_a_percentile_over_requests_not_a_mean_of_episodes():
    """One request per episode (v2, v3): each episode's own p95 is its latency, so their mean
    is the mean latency; the callback logs the percentile over the requests instead."""
    recorded: dict[str, float] = {}
    callback = DistrEEMetricsCallback()
    callback.model = SimpleNamespace(
        logger=SimpleNamespace(record=recorded.__setitem__), num_timesteps=0
    )
    for latency in range(1, 101):
        episode = {"episode_latency_p95_ms": latency, "episode_latency_mean_ms": latency}
        callback.locals = {"infos": [{REQUEST_LATENCY: float(latency), "distree": episode}]}
        callback.on_step()
    assert recorded["distree_train/per_request/latency_mean_ms"] == pytest.approx(50.5)
    assert recorded["distree_train/per_request/latency_p95_ms"] == pytest.approx(95.05)


def _scalar_tags(folder) -> set[str]:
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return set(acc.Tags()["scalars"])


@pytest.mark.parametrize("algo", ["ppo", "dqn"])
def test_learn_writes_distree_scalars(tmp_path, algo):
    env = make_sb3_env(SHORT, 4, seed=0)
    if algo == "ppo":
        model = PPO("MlpPolicy", env, n_steps=64, batch_size=64, n_epochs=1, seed=0, device="cpu")
    else:
        model = DQN("MlpPolicy", env, learning_starts=64, buffer_size=2000, seed=0, device="cpu")
    model.set_logger(configure(str(tmp_path), ["tensorboard"]))
    model.learn(1024, callback=DistrEEMetricsCallback(), log_interval=1)
    assert DISTREE_TAGS <= _scalar_tags(tmp_path)


def test_saved_agent_loads_and_predicts_the_same(tmp_path, checkpoints):
    env = VecNormalize(make_sb3_env(SYNTH, 4, seed=0), norm_reward=False)
    model = PPO("MlpPolicy", env, n_steps=64, batch_size=64, n_epochs=1, seed=0, device="cpu")
    model.learn(512)
    path = checkpoints / "agents" / "tiny.zip"
    save_model(model, path)
    assert sidecar(path).is_file()
    obs = np.random.default_rng(0).random((50, env.observation_space.shape[0])).astype(np.float32)
    expected, _ = model.predict(env.normalize_obs(obs), deterministic=True)

    with pytest.raises(ValueError, match="MANIFEST.json' is missing"):
        load_agent("tiny", trust=True)  # in the checkpoints folder: only listed files load
    record(path, "test", {}, sidecars=[sidecar(path)])
    policy = load_agent("tiny")
    assert isinstance(policy, SB3Policy) and policy.normalizer is not None
    assert np.array_equal(policy.predict(obs)[0], expected)
    first = evaluate(policy, SYNTH, n_requests=256, seed=1)
    assert first == evaluate(load_agent("tiny"), SYNTH, n_requests=256, seed=1)


def test_untrusted_or_damaged_agents_are_refused(tmp_path, checkpoints):
    model = PPO(
        "MlpPolicy", make_sb3_env(SYNTH, 2, seed=0), n_steps=32, batch_size=32, device="cpu"
    )
    path = tmp_path / "elsewhere.zip"
    save_model(model, path)
    with pytest.raises(ValueError, match="not listed"):
        load_agent(str(path))
    obs = np.zeros((1, model.observation_space.shape[0]), np.float32)
    assert load_agent(str(path), trust=True).predict(obs)[0].shape == (1,)
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ValueError, match="truncated, corrupt"):
        load_agent(str(truncated), trust=True)
    listed = checkpoints / "agents" / "swapped.zip"
    save_model(model, listed)
    record(listed, "test", {})
    listed.write_bytes(path.read_bytes() + b"x")  # another size: refused before hashing
    with pytest.raises(ValueError, match="truncated or was replaced"):
        load_agent("swapped")
    damaged = bytearray(listed.read_bytes()[:-1])
    damaged[-1] ^= 0xFF  # same size, other bytes: refused by sha256
    listed.write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match="sha256"):
        load_agent("swapped")
    with pytest.raises(ValueError, match="not found"):
        load_agent("missing")


def test_dqn_checkpoint_restores_replay_buffer(tmp_path):
    env = make_sb3_env(SYNTH, 2, seed=0)
    model = DQN("MlpPolicy", env, learning_starts=10, buffer_size=500, seed=0, device="cpu")
    callback = AtomicCheckpointCallback(10_000, tmp_path)
    model.learn(300, callback=callback)
    callback.save_now()
    steps, path = latest_checkpoint(tmp_path)
    assert steps == model.num_timesteps
    fresh = restore_model(path, "dqn", env=env)  # the path --resume takes: nothing unpickled
    assert load_replay_buffer(fresh, path)
    assert fresh.replay_buffer.pos == model.replay_buffer.pos
    assert np.array_equal(fresh.replay_buffer.observations, model.replay_buffer.observations)
    assert not list(tmp_path.glob("*.tmp"))
    json.dumps(evaluate(SB3Policy(fresh), SYNTH, n_requests=64, seed=0))  # JSON-friendly
    replay = path.with_name(path.stem + ".replay.npz")
    with np.load(replay) as data:
        np.savez(replay, pos=data["pos"], full=data["full"])  # the arrays lost
    with pytest.raises(ValueError, match="no actions, dones, next_observations, observations"):
        load_replay_buffer(restore_model(path, "dqn", env=env), path)
    # a run killed while saving leaves a replay buffer without its checkpoint: pruned later
    orphan = tmp_path / "ckpt_999_steps.replay.npz"
    orphan.write_bytes(replay.read_bytes())
    mine = tmp_path / "ckpt_999_steps.replay.npz.keep"  # not a checkpoint's part: left alone
    mine.write_bytes(b"x")
    callback.save_now()
    assert not orphan.exists() and mine.exists()


def test_maskable_ppo_uses_masks():
    from sb3_contrib import MaskablePPO

    env = make_sb3_env(SYNTH, 4, seed=0)
    model = MaskablePPO("MlpPolicy", env, n_steps=64, batch_size=64, n_epochs=1, device="cpu")
    model.learn(256)
    m = evaluate(model, SYNTH, n_requests=128, seed=0)
    assert np.isclose(sum(m["exit_fractions"]), 1.0)


def test_request_episodes_end_at_every_request():
    venv = DistrEEVecEnv(4, SHORT, autoreset_mode=AutoresetMode.SAME_STEP)
    env = SB3VecEnv(venv, request_episodes=True)
    env.seed(0)
    env.reset()
    rng = np.random.default_rng(0)
    steps_in_request, returns, requests, episodes = np.zeros(4, int), np.zeros(4), 0, 0
    for _ in range(400):
        last = ~env.venv.action_masks()[:, 0]
        actions = rng.integers(0, 2, 4)
        _, rewards, dones, infos = env.step(actions)
        steps_in_request += 1
        returns += rewards
        assert np.array_equal(dones, (actions == 1) | last)
        assert (steps_in_request <= env.venv.num_exits).all()
        requests += int(dones.sum())
        episodes += sum("distree" in infos[i] for i in np.flatnonzero(dones))
        steps_in_request[dones], returns[dones] = 0, 0.0
    assert episodes >= 1 and requests >= 8 * episodes


@pytest.mark.parametrize("algo", ["ppo", "a2c", "dqn", "qrdqn", "maskable_ppo"])
def test_every_algorithm_has_hyperparams_and_a_class(algo):
    from agents.hyperparams import load_hyperparams
    from agents.training import algo_class

    hp = load_hyperparams(algo)
    assert hp.n_envs >= 1 and hp.algo_kwargs["gamma"] == 1.0
    assert algo_class(algo).__name__.lower().replace("maskableppo", "maskable_ppo") == algo


def test_bare_model_with_vecnormalize_is_evaluated_with_its_statistics():
    env = VecNormalize(make_sb3_env(SYNTH, 4, seed=0), norm_reward=False)
    model = PPO("MlpPolicy", env, n_steps=64, batch_size=64, n_epochs=1, seed=0, device="cpu")
    model.learn(256)
    policy = as_policy(model)
    obs = np.random.default_rng(1).random((20, env.observation_space.shape[0]))
    expected, _ = model.predict(env.normalize_obs(obs.astype(np.float32)), deterministic=True)
    assert np.array_equal(policy.predict(obs)[0], expected)


def _normalised_ppo(seed: int) -> PPO:
    env = VecNormalize(make_sb3_env(SYNTH, 2, seed=seed), norm_reward=False)
    model = PPO("MlpPolicy", env, n_steps=32, batch_size=32, seed=seed, device="cpu")
    env.obs_rms.mean += seed  # statistics of their own, as after training
    return model


def test_a_save_stopped_between_statistics_and_model_leaves_a_pair_that_is_refused(
    tmp_path, monkeypatch
):
    """The statistics name their archive's sha256: an old archive beside new statistics (or, for
    a model without normalisation, a new archive beside old statistics) is refused, not used."""
    path = tmp_path / "best_model.zip"
    save_model(_normalised_ppo(0), path)
    assert load_agent(str(path), trust=True).normalizer is not None

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(training, "atomic_write", stopped)  # statistics written, archive not yet
        with pytest.raises(KeyboardInterrupt):
            save_model(_normalised_ppo(1), path)
    with pytest.raises(MismatchedStatistics, match="saved with another model than .*best_model"):
        load_agent(str(path), trust=True)
    with pytest.warns(UserWarning, match="has no record, and .* removed, and .* starts afresh"):
        assert ValEvalCallback(SYNTH, 1, best_path=path).best_reward == -np.inf
    assert not path.exists() and not sidecar(path).exists()  # a pair no one can use

    plain = PPO("MlpPolicy", make_sb3_env(SYNTH, 2, seed=0), n_steps=32, device="cpu")
    save_model(_normalised_ppo(0), path)  # a whole pair again
    assert load_agent(str(path), trust=True).normalizer is not None
    with monkeypatch.context() as m:
        m.setattr(Path, "unlink", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            save_model(plain, path)  # archive written, the earlier statistics not yet removed
    with pytest.raises(MismatchedStatistics):
        load_agent(str(path), trust=True)
    save_model(plain, path)
    assert not sidecar(path).exists() and load_agent(str(path), trust=True).normalizer is None
    # statistics written by hand name no archive and are taken as they are; a malformed name
    # is refused
    save_vecnormalize(sidecar(path), _normalised_ppo(2).get_env())
    assert load_agent(str(path), trust=True).normalizer is not None
    arrays = dict(np.load(sidecar(path)))
    np.savez(sidecar(path), **arrays, model_sha256=np.array("not a sha"))
    with pytest.raises(ValueError, match="model_sha256 must be one sha256"):
        load_agent(str(path), trust=True)


@pytest.mark.parametrize("layout", ["sb3", "rl-zoo3"])
def test_a_pickled_vecnormalize_beside_an_agent_is_named_not_ignored(tmp_path, layout):
    """SB3's docs save VecNormalize with pickle; loading without it would score raw
    observations, silently wrong: the loader names the file and the conversion instead."""
    env = VecNormalize(make_sb3_env(SYNTH, 2, seed=0), norm_reward=False)
    model = PPO("MlpPolicy", env, n_steps=32, batch_size=32, n_epochs=1, seed=0, device="cpu")
    path = tmp_path / ("agent.zip" if layout == "sb3" else "DistrEE-v3.zip")
    save_model(model, path)
    sidecar(path).unlink()  # save_model writes the project's own sidecar; SB3's save does not
    other = tmp_path / "other_run" / "vecnormalize.pkl"  # another run's: not this agent's
    other.parent.mkdir()
    other.write_bytes(b"never opened")
    assert load_agent(str(path), trust=True).normalizer is None
    pkl = tmp_path / ("vec_normalize.pkl" if layout == "sb3" else "DistrEE-v3/vecnormalize.pkl")
    pkl.parent.mkdir(exist_ok=True)
    pkl.write_bytes(b"never opened")  # a pickle the loader must not read
    with pytest.raises(ValueError, match="save_vecnormalize") as exc:
        load_agent(str(path), trust=True)
    assert pkl.name in str(exc.value)
    save_vecnormalize(sidecar(path), env)  # the conversion the message gives
    assert load_agent(str(path), trust=True).normalizer is not None


@pytest.mark.parametrize("algo", ["ppo", "a2c", "dqn", "qrdqn", "maskable_ppo"])
def test_load_agent_never_unpickles_and_infers_the_algorithm(tmp_path, algo, monkeypatch):
    import stable_baselines3.common.save_util as save_util

    from agents.loading import infer_algo
    from agents.training import algo_class

    model = algo_class(algo)("MlpPolicy", make_sb3_env(SYNTH, 2, seed=0), seed=0, device="cpu")
    path = tmp_path / f"{algo}.zip"
    save_model(model, path)
    assert infer_algo(path) == algo

    def refuse(*args, **kwargs):
        raise AssertionError("cloudpickle.loads called")

    monkeypatch.setattr(save_util.cloudpickle, "loads", refuse)
    policy = load_agent(str(path), trust=True)
    obs = np.random.default_rng(0).random((32, model.observation_space.shape[0]))
    obs = obs.astype(np.float32)
    masks = np.ones((32, 2), dtype=bool)
    kwargs = {"action_masks": masks} if algo == "maskable_ppo" else {}
    expected, _ = model.predict(obs, deterministic=True, **kwargs)
    assert np.array_equal(policy.predict(obs, **kwargs)[0], expected)


def test_recurrent_agent_loads_without_unpickling_and_keeps_its_memory(tmp_path, monkeypatch):
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common import save_util

    from agents.loading import infer_algo

    env = make_sb3_env(SHORT, 2, seed=0)
    kwargs = {"lstm_hidden_size": 8, "net_arch": [16]}
    model = RecurrentPPO(
        "MlpLstmPolicy", env, n_steps=16, batch_size=32, seed=0, device="cpu", policy_kwargs=kwargs
    )
    model.learn(64)
    path = tmp_path / "rppo.zip"
    save_model(model, path)
    assert infer_algo(path) == "recurrent_ppo"

    def refuse(*args, **kwargs):
        raise AssertionError("cloudpickle.loads called")

    monkeypatch.setattr(save_util.cloudpickle, "loads", refuse)
    policy = load_agent(str(path), trust=True)
    # evaluate hands the LSTM state back every step: the loaded agent acts as the trained one
    assert evaluate(policy, SYNTH, n_requests=256, seed=0) == evaluate(
        model, SYNTH, n_requests=256, seed=0
    )


def test_damaged_normalisation_statistics_are_one_line_naming_the_key(tmp_path):
    from agents.policy import _NORM_KEYS, _NORM_VECTORS, read_obs_normalizer

    good = {key: np.float64(1.0) for key in _NORM_KEYS if key not in _NORM_VECTORS}
    good |= {"obs_mean": np.zeros(3), "obs_var": np.ones(3)}
    path = tmp_path / "a.vecnormalize.npz"
    np.savez(path, **good)
    assert read_obs_normalizer(path) is not None
    for change, needle in [
        ({"norm_obs": np.ones(2)}, "norm_obs has shape (2,); it is a single number"),
        ({"clip_obs": np.ones((1, 1))}, "clip_obs has shape (1, 1)"),
        ({"obs_var": np.ones(4)}, "obs_mean (3,) and obs_var (4,) must be vectors of one length"),
        ({"gamma": np.float64(np.nan)}, "gamma must be finite floats"),
    ]:
        np.savez(path, **(good | change))
        with pytest.raises(ValueError, match="a.vecnormalize.npz") as exc:
            read_obs_normalizer(path)
        assert needle in str(exc.value)
