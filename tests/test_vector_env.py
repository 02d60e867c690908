"""DistrEEVecEnv: a complete Gymnasium VectorEnv, equal to the single env, one meaning per key."""

from __future__ import annotations

import pickle

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

from distree_env import DistrEEEnv, DistrEEVecEnv, EnvConfig

from .conftest import ENV_IDS

FAST = {"trace": "synthetic:n=200"}


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_make_vec_entry_point(env_id):
    venv = gym.make_vec(env_id, num_envs=3, vectorization_mode="vector_entry_point")
    assert venv.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    obs, info = venv.reset(seed=0)
    assert obs.shape == (3, len(venv.unwrapped.observation_names))
    obs, reward, term, trunc, info = venv.step(np.ones(3, dtype=np.int64))
    assert venv.observation_space.contains(obs) and reward.shape == (3,)


def test_make_vec_accepts_the_sync_keywords():
    venv = gym.make_vec(
        "DistrEE-v1",  # 128-request episodes: the 5-step limit ends them
        num_envs=2,
        vectorization_mode="vector_entry_point",
        max_episode_steps=5,
        render_mode="rgb_array",
        **FAST,
    )
    venv.reset(seed=0)
    zeros = np.zeros(2, dtype=np.int64)
    for _ in range(4):
        assert not venv.step(zeros)[3].any()
    _, _, term, trunc, _ = venv.step(zeros)
    assert trunc.all() and not term.any()
    frames = venv.render()
    assert len(frames) == 2 and frames[0].dtype == np.uint8
    with pytest.raises(TypeError, match="unexpected keyword argument 'frameskip'"):
        DistrEEVecEnv(2, frameskip=4)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_single_and_vector_one_identical(env_id):
    """vector(1) replays the single env exactly, NEXT_STEP autoreset included."""
    _assert_vector_one_replays_single(env_id)


@pytest.mark.parametrize("env_id", ["DistrEE-v2", "DistrEE-Bursty-v2", "DistrEE-Cellular-v2"])
def test_single_and_vector_one_identical_with_cold_starts(env_id):
    """The cold-start time (fixed at each request's start, added to every stage) takes the same
    floating-point path in both."""
    cluster = {"cold_start_ms": [3.0, 1.0, 0.5, 0.25], "cold_start_tau_ms": 20.0}
    _assert_vector_one_replays_single(env_id, cluster=cluster)


def _assert_vector_one_replays_single(env_id: str, **kwargs) -> None:
    env = gym.make(env_id, **kwargs).unwrapped
    venv = gym.make_vec(env_id, num_envs=1, vectorization_mode="vector_entry_point", **kwargs)
    assert np.array_equal(env.reset(seed=11)[0], venv.reset(seed=11)[0][0])
    ended, ends = False, 0
    for a in np.random.default_rng(3).integers(0, 2, 300):
        if ended:  # NEXT_STEP: this vector step resets; the single env calls reset()
            s_obs, s_info = env.reset()
            s_rew, s_term, s_trunc = 0.0, False, False
        else:
            s_obs, s_rew, s_term, s_trunc, s_info = env.step(int(a))
        obs, reward, term, trunc, info = venv.step(np.array([a]))
        assert np.array_equal(obs[0], s_obs)
        assert reward[0] == s_rew and term[0] == s_term and trunc[0] == s_trunc
        for key, value in s_info.items():
            assert np.array_equal(info[key][0], value), key
        ended = s_term or s_trunc
        ends += ended
    assert ends >= 1


def test_info_keys_equal_across_single_sync_async_entry_point():
    keys = None
    for mode in ("sync", "async", "vector_entry_point"):
        venv = gym.make_vec("DistrEE-v2", num_envs=2, vectorization_mode=mode, **FAST)
        _, info_reset = venv.reset(seed=0)
        _, _, _, _, info = venv.step(np.array([1, 0]))
        public = {k for k in info if not k.startswith("_")}
        assert public == {k for k in info_reset if not k.startswith("_")}
        keys = keys or public
        assert public == keys, mode
        assert info["reward_correct"].dtype == np.float64 and info["request_exit"].dtype == np.int64
        venv.close()
    single = DistrEEEnv(**FAST)
    assert set(single.reset(seed=0)[1]) == keys


def test_sync_and_entry_point_give_the_same_numbers():
    actions = np.random.default_rng(0).integers(0, 2, (120, 1))
    outs = []
    for mode in ("sync", "vector_entry_point"):
        venv = gym.make_vec("DistrEE-v2", num_envs=1, vectorization_mode=mode, **FAST,
                            requests_per_episode=8)  # fmt: skip
        venv.reset(seed=4)
        rows = []
        for a in actions:
            obs, r, te, tr, info = venv.step(a)
            rows.append((obs.copy(), r.copy(), te.copy(), tr.copy(), info["episode_return"].copy()))
        outs.append(rows)
    for x, y in zip(*outs, strict=True):
        for u, v in zip(x, y, strict=True):
            assert np.array_equal(u, v)


def test_same_step_autoreset_final_obs_and_info():
    venv = DistrEEVecEnv(3, **FAST, requests_per_episode=2, autoreset_mode="SameStep")
    assert venv.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    venv.reset(seed=0)
    seen = False
    for _ in range(20):
        obs, _, term, trunc, info = venv.step(np.ones(3, dtype=np.int64))
        if "final_obs" in info:
            seen = True
            done = info["_final_obs"]
            assert (done == (term | trunc)).all()
            assert info["final_info"]["episode_done"][done].all()
            assert not info["episode_done"][done].any()  # the reset info took its place
            assert venv.single_observation_space.contains(info["final_obs"][done][0])
    assert seen


@pytest.mark.parametrize("episode_end", ["terminate", "truncate", "terminate-continue"])
def test_same_step_observation_after_an_episode_end_is_the_single_envs_reset(episode_end):
    """SAME_STEP returns, where an episode ended, what the single env's ``reset()`` returns:
    a fresh stream's first observation (``terminate``) or, where the stream goes on, the
    observation of the next decision (the step's own)."""
    kwargs = {**FAST, "scenario": "steady-stream", "requests_per_episode": 2,
              "episode_end": episode_end}  # fmt: skip
    env = DistrEEEnv(**kwargs)
    venv = DistrEEVecEnv(1, **kwargs, autoreset_mode="SameStep")
    env.reset(seed=3)
    venv.reset(seed=3)
    ends = 0
    for a in np.random.default_rng(1).integers(0, 2, 200).tolist():
        obs, _, term, trunc, _ = env.step(a)
        if term or trunc:
            obs, _ = env.reset()
            ends += 1
        v_obs, *_ = venv.step(np.array([a]))
        assert np.array_equal(obs, v_obs[0])
    assert ends > 20


def test_vector_wrappers_work_with_next_step():
    venv = gym.make_vec("DistrEE-v2", num_envs=4, vectorization_mode="vector_entry_point", **FAST)
    for wrapper in (
        gym.wrappers.vector.NormalizeObservation,
        gym.wrappers.vector.FlattenObservation,
        gym.wrappers.vector.RecordEpisodeStatistics,
    ):
        venv = wrapper(venv)
    venv.reset(seed=0)
    for _ in range(30):
        venv.step(np.random.default_rng(0).integers(0, 2, 4))


def test_call_get_attr_set_attr():
    venv = DistrEEVecEnv(3, **FAST)
    venv.reset(seed=0)
    assert venv.get_attr("num_exits") == (venv.num_exits,) * 3
    masks = venv.call("action_masks")
    assert len(masks) == 3 and masks[0].tolist() == [True, True]
    assert venv.call("render_mode") == (None, None, None)
    venv.set_attr("render_mode", "ansi")
    assert len(venv.render()) == 3
    with pytest.raises(ValueError, match="share one configuration"):
        venv.set_attr("render_mode", ["ansi", None, None])


@pytest.mark.parametrize(
    "bad",
    [
        np.array([0, 2, 1]),
        np.array([0, 1]),
        np.array([0.0, 1.0, 1.0]),
        [0, -1, 0],
        "x",
    ],
)
def test_bad_actions_raise(bad):
    venv = DistrEEVecEnv(3, **FAST)
    venv.reset(seed=0)
    with pytest.raises(ValueError, match="MultiDiscrete"):
        venv.step(bad)


def test_masks_oracle_and_outlook_shapes():
    venv = DistrEEVecEnv(4, **FAST)
    venv.reset(seed=0)
    assert venv.action_masks().shape == (4, 2)
    assert venv.oracle_actions().shape == (4,)
    lat = venv.request_latencies_ms
    assert lat.shape == (4, venv.num_exits) and np.all(np.diff(lat, axis=1) > 0)
    assert venv.request_correct.dtype == bool


def test_the_oracle_exits_at_the_first_of_equally_good_exits():
    """Without a latency or deadline cost every correct exit earns the same: the Oracle takes
    the first correct one, and exits at once where none is correct (ties go to the earlier
    exit)."""
    free = {**FAST, "reward": {"latency_weight": 0.0, "deadline_penalty": 0.0}}
    venv = DistrEEVecEnv(64, **free)
    venv.reset(seed=0)
    correct = venv.request_correct  # [B, K]: at the first decision every request is at exit 0
    first = correct.argmax(axis=1)  # 0 also where no exit is correct: all tie
    assert (first > 0).any() and (first == 0).any() and (~correct.any(axis=1)).any()
    np.testing.assert_array_equal(venv.oracle_actions(), (first == 0).astype(int))


def test_vector_pickle_round_trip_and_memory():
    venv = DistrEEVecEnv(8, **FAST)
    venv.reset(seed=1)
    blob = pickle.dumps(venv)
    assert len(blob) < 1_000_000
    clone = pickle.loads(blob)
    a = np.random.default_rng(0).integers(0, 2, (50, 8))
    for row in a:
        x, y = venv.step(row), clone.step(row)
        assert np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1])


def test_num_envs_and_keywords_validated():
    for bad in (0, -1, True, 2.0, "3"):
        with pytest.raises(ValueError, match="num_envs"):
            DistrEEVecEnv(bad)
    with pytest.raises(ValueError, match="autoreset_mode"):
        DistrEEVecEnv(2, autoreset_mode="Never")
    with pytest.raises(ValueError, match="max_episode_steps"):
        DistrEEVecEnv(2, max_episode_steps=0)
    with pytest.raises(ValueError, match="seed="):
        DistrEEVecEnv(2, **FAST).reset(seed=True)


def test_partial_resets_keep_other_streams_going():
    venv = DistrEEVecEnv(5, scenario="bursty-stream", **FAST, requests_per_episode=3)
    venv.reset(seed=2)
    rng = np.random.default_rng(1)
    ends = 0
    for _ in range(300):
        obs, reward, term, trunc, info = venv.step(rng.integers(0, 2, 5))
        assert venv.observation_space.contains(obs) and np.isfinite(reward).all()
        assert not trunc.any()  # v2 episodes terminate; the stream goes on
        ends += int(term.sum())
        assert (info["episode_done"] == term).all()
    assert ends > 10


def test_reset_mask_with_one_sub_env_equals_a_plain_reset():
    venv = DistrEEVecEnv(1, scenario="steady-stream", **FAST)
    venv.reset(seed=4)
    for _ in range(7):
        venv.step(np.ones(1, dtype=np.int64))
    clone = pickle.loads(pickle.dumps(venv))
    a, info_a = venv.reset()
    b, info_b = clone.reset(options={"reset_mask": np.array([True])})
    np.testing.assert_array_equal(a, b)
    assert info_a.keys() == info_b.keys()
    rng = np.random.default_rng(0)
    for _ in range(40):
        actions = rng.integers(0, 2, 1)
        for x, y in zip(venv.step(actions), clone.step(actions), strict=True):
            if not isinstance(x, dict):
                np.testing.assert_array_equal(x, y)


def test_reset_mask_resets_only_the_masked_sub_envs():
    """Episodes of 10 steps (``max_episode_steps``): the masked sub-envs start counting again,
    the other keeps its episode, and a pending NEXT_STEP autoreset of a masked one is dropped."""
    venv = DistrEEVecEnv(
        3, scenario="steady-stream", **FAST, requests_per_episode=50, max_episode_steps=10
    )
    venv.reset(seed=0)
    zeros = np.zeros(3, dtype=np.int64)
    for _ in range(4):
        before, *_ = venv.step(zeros)
    mask = np.array([True, False, True])
    obs, info = venv.reset(options={"reset_mask": mask})
    np.testing.assert_array_equal(obs[1], before[1])
    assert all((info[f"_{key}"] == mask).all() for key in info if not key.startswith("_"))
    for step in range(1, 11):
        _, _, term, trunc, _ = venv.step(zeros)
        assert not term.any()
        assert trunc.tolist() == [step == 10, step == 6, step == 10]
    venv.reset(options={"reset_mask": np.array([True, False, False])})  # its autoreset pending
    for step in range(1, 11):
        *_, trunc, _ = venv.step(zeros)
        assert trunc[0] == (step == 10)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"options": {"reset_mask": [True, False]}}, "numpy bool array of shape \\(2,\\)"),
        ({"options": {"reset_mask": np.array([1, 0])}}, "reset_mask"),
        ({"options": {"reset_mask": np.array([True])}}, "reset_mask"),
        ({"options": {"reset_mask": np.array([False, False])}}, "at least one True"),
        ({"options": {"reset_mask": np.array([True, True])}, "seed": 1}, "seed=None"),
        ({"options": {"reset_mask": np.array([True, True]), "x": 1}}, "only option is"),
        ({"options": "abc"}, "None or a dict"),
        ({"seed": [1, 2]}, "one generator drives every sub-env"),
    ],
)
def test_reset_arguments_validated(kwargs, match):
    venv = DistrEEVecEnv(2, **FAST)
    venv.reset(seed=0)
    with pytest.raises(ValueError, match=match):
        venv.reset(**kwargs)


def test_disabled_autoreset_waits_for_a_masked_reset():
    venv = DistrEEVecEnv(3, scenario="steady-stream", **FAST, autoreset_mode=AutoresetMode.DISABLED)
    venv.reset(seed=0)
    ones = np.ones(3, dtype=np.int64)
    _, _, term, trunc, _ = venv.step(ones)  # one request per episode: every sub-env ends
    assert (term | trunc).all()
    with pytest.raises(gym.error.ResetNeeded, match=r"sub-envs \[0, 1, 2\]"):
        venv.step(ones)
    venv.reset(options={"reset_mask": np.array([True, True, False])})
    with pytest.raises(gym.error.ResetNeeded, match=r"sub-envs \[2\]"):
        venv.step(ones)
    venv.reset(options={"reset_mask": np.array([False, False, True])})
    *_, term, trunc, _ = venv.step(ones)
    assert (term | trunc).all()


@pytest.mark.parametrize("limit", [1, 3, 5])
def test_max_episode_steps_ends_episodes_as_time_limit_does(limit):
    """Also on a terminating step, TimeLimit reports truncated (sync mode: the single env in
    gym.make's TimeLimit)."""
    # Gymnasium's own class: rl-zoo3, once imported (another test does), patches in one that
    # never truncates a terminating step, for every later gym.make
    time_limit = next(
        c for c in gym.wrappers.TimeLimit.__mro__ if c.__module__.startswith("gymnasium.")
    )
    ours = gym.make_vec(
        "DistrEE-v3", 1, "vector_entry_point", max_episode_steps=limit, trace="synthetic:n=200"
    )
    sync = gym.vector.SyncVectorEnv(
        [lambda: time_limit(gym.make("DistrEE-v3", trace="synthetic:n=200"), limit)]
    )
    ours.reset(seed=1), sync.reset(seed=1)
    rng = np.random.default_rng(0)
    for _ in range(60):
        actions = rng.integers(0, 2, 1)
        a, b = ours.step(actions), sync.step(actions)
        for x, y in zip(a[:4], b[:4], strict=True):
            np.testing.assert_array_equal(x, y)


def test_same_step_final_info_masks_mark_the_ended_sub_envs():
    venv = DistrEEVecEnv(
        4, scenario="steady-stream", **FAST, autoreset_mode=AutoresetMode.SAME_STEP
    )
    venv.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(30):
        *_, term, trunc, info = venv.step(rng.integers(0, 2, 4))
        if "final_info" in info:
            ended = term | trunc
            assert (info["final_info"]["_request_exit"] == ended).all()
            assert (info["_final_info"] == ended).all()


def test_reset_mask_needs_a_first_reset():
    with pytest.raises(gym.error.ResetNeeded, match="reset_mask"):
        DistrEEVecEnv(2, **FAST).reset(options={"reset_mask": np.array([True, True])})


def test_without_episode_metrics_only_their_values_change():
    """``episode_metrics=False`` (agents.evaluate's rollouts): the same steps, the same keys,
    ``episode_done`` where episodes end, every other episode value zero."""
    kwargs = dict(scenario="steady-stream", **FAST, autoreset_mode=AutoresetMode.SAME_STEP)
    full = DistrEEVecEnv(4, **kwargs)
    lean = DistrEEVecEnv(4, **kwargs, episode_metrics=False)
    a, _ = full.reset(seed=3)
    b, _ = lean.reset(seed=3)
    rng = np.random.default_rng(0)
    ended = 0
    for _ in range(200):
        actions = rng.integers(0, 2, 4)
        a, ra, ta, _, ia = full.step(actions)
        b, rb, tb, _, ib = lean.step(actions)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ra, rb)
        np.testing.assert_array_equal(ta, tb)
        assert ia.keys() == ib.keys()
        if ta.any():
            fa, fb = ia["final_info"], ib["final_info"]
            np.testing.assert_array_equal(fa["episode_done"], fb["episode_done"])
            assert fa["episode_return"][ta].any() and not fb["episode_return"].any()
            np.testing.assert_array_equal(fa["request_latency_ms"], fb["request_latency_ms"])
            ended += int(ta.sum())
    assert ended > 10


@pytest.mark.parametrize("episode_end", ["terminate-continue", "terminate"])
@pytest.mark.parametrize("independent", [False, True])
def test_independent_streams_meet_the_same_arrivals_whatever_the_policy(independent, episode_end):
    """With ``independent_streams`` every sub-env draws its arrivals, images and resource offset
    from a generator of its own (a fresh one at each fresh stream, ``terminate``), so two
    policies reset with one seed answer the same requests (arrival time, image, offset) in
    every stream; with one generator for all (the default) the blocks are drawn for whichever
    streams run low, so the streams part after the first blocks."""
    cfg = EnvConfig.scenario("bursty-stream").replace(
        {"queue.capacity": 1024, "queue.overflow": "admit",  # every arrival answered, in order
         "episode_end": episode_end, "requests_per_episode": 40}
    )  # fmt: skip

    def answered(action: int) -> list[list[tuple[float, int, int]]]:
        venv = DistrEEVecEnv(4, cfg, independent_streams=independent)
        venv.reset(seed=7)
        dyn, seen = venv._dyn, [[] for _ in range(4)]
        while min(map(len, seen)) < 300:
            arrival, sample, offset = dyn.arrival.copy(), dyn.sample.copy(), dyn.offset.copy()
            *_, info = venv.step(np.full(4, action))
            for env in np.flatnonzero(info["request_done"]):
                seen[env].append((float(arrival[env]), int(sample[env]), int(offset[env])))
        return [stream[:300] for stream in seen]

    same = [a == b for a, b in zip(answered(1), answered(0), strict=True)]
    assert same == [independent] * 4


@pytest.mark.parametrize("scenario", ["steady-stream", "pipelined-stream"])
def test_independent_streams_pair_the_stalls_too(scenario):
    """With ``independent_streams`` a sub-env's hand-over stalls come from a generator of its
    own: sub-env 0, deciding alike, answers its requests at the same latencies whatever the
    other sub-envs decide (with one stalls generator they depend on when the others hand
    over)."""
    cfg = EnvConfig.scenario(scenario).replace(
        {"cluster": {"stall_probability": 0.2, "stall_mean_ms": 50.0}}
    )

    def latencies(others: int) -> list[float]:
        venv = DistrEEVecEnv(4, cfg, independent_streams=True)
        venv.reset(seed=3)
        out: list[float] = []
        while len(out) < 200:
            *_, info = venv.step(np.array([0, others, others, others]))
            if info["request_done"][0]:
                out.append(float(info["request_latency_ms"][0]))
        return out

    assert latencies(0) == latencies(1)
