"""One evaluation path for every exit policy: rules, the Oracle and learned SB3 agents.

Why one path: a comparison is only fair if every policy sees the same requests, the same
resource fluctuations and the same metric code. ``evaluate`` runs the batched environment with a
fixed seed and a fixed number of episodes per sub-environment (never "the first episodes to
finish", which would favour policies that answer quickly), and pools all requests. Sub-envs
are many (256 by default) and few episodes each, so a learned policy gets a few large batches
instead of ~1000 tiny forward passes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, TypedDict

import numpy as np
from gymnasium.vector import AutoresetMode

from agents.rules import check_integer
from agents.splits import TEST_SEED_BASE, test_parts
from distree_env.config import EnvConfig, build_config
from distree_env.traces import resolve_trace
from distree_env.vector_env import DistrEEVecEnv

__all__ = [
    "METRICS",
    "MIN_STREAM_REQUESTS",
    "EvalResult",
    "evaluate",
    "make_eval_env",
    "observation_mismatch",
    "prepare_policy",
    "step_values",
]

#: Requests each sub-env's stream counts at least, so that its queue (which starts empty) has
#: time to build up; under bursty load that is not yet its steady state (``warmup`` skips the
#: start).
MIN_STREAM_REQUESTS = 128
#: Scalar metrics returned by :func:`evaluate` (plus ``exit_fractions``, a list over exits).
METRICS = (
    "mean_reward",
    "accuracy",
    "compute_saving",
    "latency_mean_ms",
    "latency_p95_ms",
    "qos_rate",
    "drop_rate",
)


class EvalResult(TypedDict):
    """What :func:`evaluate` returns, per request pooled over every sub-env."""

    mean_reward: float  # reward per request (answered or dropped)
    accuracy: float  # of the answered requests
    compute_saving: float  # 1 - FLOPs spent / FLOPs of the last exit, answered requests
    latency_mean_ms: float  # arrival to answer, answered requests
    latency_p95_ms: float
    qos_rate: float  # share of requests answered within the deadline (drops count as misses)
    drop_rate: float  # share of requests refused by a full queue
    exit_fractions: list[float]  # share of answered requests leaving at each exit
    n_requests: int  # answered + dropped
    mean_reward_se: float  # standard error of mean_reward between the sub-envs' streams


def make_eval_env(
    config: EnvConfig, num_envs: int, independent_streams: bool = True
) -> DistrEEVecEnv:
    """The batched environment every evaluation and calibration rollout runs on (SAME_STEP
    autoreset: every step is a decision, the observation after an episode end is the first of
    the next episode, which continues the same request stream; no episode metrics: the
    figures are computed from the requests; independent streams: what one seed gives does not
    depend on the policy)."""
    return DistrEEVecEnv(
        num_envs,
        config,
        autoreset_mode=AutoresetMode.SAME_STEP,
        episode_metrics=False,
        independent_streams=independent_streams,
    )


def observation_mismatch(policy: Any, shapes: Sequence[tuple[int, ...]]) -> str | None:
    """Why an agent cannot act in environments whose observations have ``shapes`` (its
    network's input has another size: trained for another scenario's cluster or network), or
    None when it can (a rule or baseline reads features by name and fits any layout)."""
    space = getattr(getattr(policy, "model", None), "observation_space", None)
    if space is None or all(space.shape == tuple(shape) for shape in shapes):
        return None
    return (
        f"expects observations of shape {space.shape}, the environment gives "
        f"{' or '.join(str(tuple(shape)) for shape in shapes)}: it was trained for another "
        "version, cluster or network (e.g. the pipeline topology's 4 devices)"
    )


def prepare_policy(policy: Any, venv: DistrEEVecEnv, seed: int) -> Any:
    """Wrap a bare SB3 model, bind rules to the env layout and seed stochastic rules."""
    from agents.policy import as_policy  # noqa: PLC0415 (keeps torch out of rule-only use)

    policy = as_policy(policy)
    problem = observation_mismatch(policy, [venv.single_observation_space.shape])
    if problem is not None:
        raise ValueError(f"the agent {problem} ({', '.join(venv.observation_names)})")
    if hasattr(policy, "bind"):
        policy.bind(venv)
    if hasattr(policy, "seed"):
        policy.seed(seed)
    return policy


def step_values(infos: dict[str, Any], key: str) -> np.ndarray:
    """Return this step's ``infos[key]`` per sub-env; where a sub-env's episode just ended
    (SAME_STEP autoreset), the value of its last step, from ``final_info``."""
    values = np.array(infos[key])
    final = infos.get("final_info")
    if final is not None and key in final:
        ended = np.asarray(infos["_final_info"], dtype=bool)
        values[ended] = np.asarray(final[key])[ended]
    return values


def evaluate(
    policy: Any,
    config: EnvConfig | dict[str, Any] | None = None,
    n_requests: int = 2048,
    seed: int = 0,
    num_envs: int = 256,
    warmup: int = 0,
    independent_streams: bool = True,
) -> EvalResult:
    """Run ``policy`` until at least ``n_requests`` requests are answered; pooled metrics.

    Every sub-env counts its first ``ceil(n_requests / num_envs)`` answered requests after its
    ``warmup`` (at least one episode's and, for request streams, ``MIN_STREAM_REQUESTS``' worth,
    so a queue has time to build up) and the arrivals dropped before each of them (the info's
    ``request_drops_before``: those refused since the request admitted before it), so the drops
    counted are those among the counted requests' arrivals, in whatever order a pipeline
    answers them: a policy that answers quickly gets no more requests counted. The reward is
    each request's own (correctness, latency from arrival, deadline; a drop costs
    ``wrong_penalty + deadline_penalty``), whatever ``reward.timing`` says about when the
    learner is paid it.

    :param policy: anything with SB3's ``predict`` (a rule, a baseline, ``Oracle``, an SB3
        model or ``agents.load_agent``'s result).
    :param config: the environment (an ``EnvConfig``, a dict of fields or None).
    :param n_requests: requests to count (>= 1).
    :param seed: environment seed (and a stochastic policy's); the same seed gives the same
        numbers in any process.
    :param num_envs: largest number of sub-environments stepped together.
    :param warmup: requests each sub-env's stream answers first without counting them (nor
        the drops before them): its queue starts empty, and under bursty load it takes a few
        hundred requests to reach its steady state. 0 counts from the idle start. The counted
        requests are a window of arrivals: where a long backlog builds (``overflow="admit"`` up
        to ``QUEUE_HARD_CAP``, a pipelined backlog), the drops among later arrivals belong to
        requests answered a backlog later, so a window that ends before them counts none.
    :param independent_streams: True (the default) draws every sub-env's resource offset,
        arrivals and images from a generator of its own, so that policies evaluated with one
        seed meet the same streams (a paired comparison; see ``DistrEEVecEnv``); False draws
        them from one generator, in an order that depends on the policy, so two policies share
        the resource paths (under ``episode_end="terminate"`` only until a stream restarts)
        and each stream's first arrivals, not the rest (faster under bursts: the arrival
        generator then runs once for all sub-envs).
    :returns: :class:`EvalResult`. ``mean_reward`` is the reward per request (answered or
        dropped), ``qos_rate`` the share of them answered within the deadline.
        ``mean_reward_se`` is its standard error estimated between the sub-envs, whose streams
        are independent (NaN with one sub-env): the requests of one stream share its queue and
        its bursts, so their own spread would understate it. Compare policies on the same
        seeds (as the benchmark does: then they meet the same streams), not one policy's
        figure with another's of another seed.
    """
    for name, value, low in (
        ("n_requests", n_requests, 1),
        ("num_envs", num_envs, 1),
        ("warmup", warmup, 0),
        ("seed", seed, 0),
    ):
        check_integer(f"evaluate: {name}", value, low)
    config = build_config(config)
    if config.episode_end == "terminate" and config.arrivals.kind != "isolated":
        warnings.warn(
            "evaluate: episode_end='terminate' starts a fresh stream at every episode end, "
            "discarding the requests still waiting or in service (neither answered nor "
            "dropped) and the drops before them; only the answered requests are counted "
            "('terminate-continue' or 'truncate' keep the stream going)",
            stacklevel=2,
        )
    if seed < TEST_SEED_BASE and test_parts(config):
        warnings.warn(
            f"evaluate: seed={seed} on the test split draws the resource paths and arrivals of "
            f"tuning and training (seeds below TEST_SEED_BASE={TEST_SEED_BASE}); measure with "
            "held-out seeds (agents.splits.held_out_seeds)",
            stacklevel=2,
        )
    stream = config.requests_per_episode
    if config.arrivals.kind != "isolated":
        stream = max(stream, MIN_STREAM_REQUESTS)
    num_envs = max(1, min(int(num_envs), n_requests // stream))
    per_env = math.ceil(n_requests / num_envs)
    venv = make_eval_env(config, num_envs, bool(independent_streams))
    policy = prepare_policy(policy, venv, int(seed))
    masked = bool(getattr(policy, "uses_action_masks", False))

    obs, _ = venv.reset(seed=int(seed))
    answered = np.zeros(num_envs, dtype=np.int64)
    dropped = np.zeros(num_envs, dtype=np.int64)
    served = np.zeros(num_envs, dtype=np.int64)  # answered, the warm-up included
    exits: list[np.ndarray] = []
    streams: list[np.ndarray] = []
    latency: list[np.ndarray] = []
    correct: list[np.ndarray] = []
    episode_start = np.ones(num_envs, dtype=bool)
    state: Any = None  # a recurrent policy's memory, handed back at every step
    while (answered < per_env).any():
        kwargs = {"action_masks": venv.action_masks()} if masked else {}
        actions, state = policy.predict(
            obs, state=state, episode_start=episode_start, deterministic=True, **kwargs
        )
        actions = np.asarray(actions, dtype=np.int64).reshape(num_envs)
        active = (answered < per_env) & (served >= warmup)
        obs, _, terminated, truncated, infos = venv.step(actions)
        answered_now = step_values(infos, "request_done").astype(bool)
        served += answered_now
        done = active & answered_now
        if done.any():
            exits.append(step_values(infos, "request_exit")[done])
            streams.append(np.flatnonzero(done))
            latency.append(step_values(infos, "request_latency_ms")[done])
            correct.append(step_values(infos, "request_correct")[done])
            dropped += np.where(done, step_values(infos, "request_drops_before"), 0)
            answered += done
        episode_start = terminated | truncated
    exits_a = np.concatenate(exits).astype(np.int64)
    lat_a = np.concatenate(latency).astype(np.float64)
    correct_a = np.concatenate(correct).astype(bool)
    n, n_drop = len(exits_a), int(dropped.sum())
    cum = _cumulative_flops(config)
    late = lat_a > config.deadline_ms
    request_rewards = config.reward.request_reward(correct_a, lat_a, config.deadline_ms)
    total_reward = request_rewards.sum() - config.reward.drop_cost * n_drop
    per_stream = (
        np.bincount(np.concatenate(streams), request_rewards, minlength=num_envs)
        - config.reward.drop_cost * dropped
    ) / (answered + dropped)
    return {
        "mean_reward": float(total_reward) / (n + n_drop),
        "accuracy": float(correct_a.mean()),
        "compute_saving": float(1.0 - cum[exits_a].mean() / cum[-1]),
        "latency_mean_ms": float(lat_a.mean()),
        "latency_p95_ms": float(np.percentile(lat_a, 95)),
        "qos_rate": float((~late).sum() / (n + n_drop)),
        "drop_rate": n_drop / (n + n_drop),
        "exit_fractions": (np.bincount(exits_a, minlength=len(cum)) / n).tolist(),
        "n_requests": n + n_drop,
        "mean_reward_se": _standard_error(per_stream),
    }


def _standard_error(values: np.ndarray) -> float:
    """Standard error of the mean of independent replicates (NaN for fewer than two)."""
    if values.size < 2:
        return float("nan")
    return float(values.std(ddof=1) / math.sqrt(values.size))


def _cumulative_flops(config: EnvConfig) -> np.ndarray:
    """``[K]`` FLOPs a request spends if it exits at each exit (every device, heads included)."""
    trace = resolve_trace(config.trace)
    per_stage = trace.stage_flops.sum(axis=1) + trace.exit_flops
    return np.cumsum(per_stage.astype(np.float64))
