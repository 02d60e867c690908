"""EnvConfig: defaults, conversion, scenarios, and a ValueError naming field and value for every
bad input."""

from __future__ import annotations

import json
import math

import pytest

from distree_env import DistrEEEnv, DistrEEVecEnv
from distree_env.config import SCENARIOS, EnvConfig, ProcessConfig, build_config


def test_defaults_round_trip():
    cfg = EnvConfig()
    d = cfg.to_dict()
    json.dumps(d)  # JSON-friendly
    assert EnvConfig.from_dict(d) == cfg
    assert EnvConfig.from_dict(json.loads(json.dumps(d))) == cfg
    assert hash(cfg) == hash(EnvConfig.from_dict(d))


def test_partial_dict_and_overrides():
    cfg = EnvConfig.from_dict({"deadline_ms": 30, "reward": {"latency_weight": 0.1}})
    assert cfg.deadline_ms == 30 and cfg.reward.latency_weight == 0.1
    assert cfg.reward.correct_bonus == EnvConfig().reward.correct_bonus
    dotted = EnvConfig().replace({"reward.latency_weight": 0.1, "deadline_ms": 30})
    assert dotted == cfg
    nested = EnvConfig().replace(reward={"latency_weight": 0.1}, deadline_ms=30)
    assert nested == cfg


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenarios(name):
    cfg = EnvConfig.scenario(name)
    assert cfg.cluster.compute.kind == ("constant" if name == "stable" else "markov")
    assert build_config(None, name, None) == cfg


def test_congested_is_slower():
    def mean_latency(cfg):
        env = DistrEEEnv(cfg)
        env.reset(seed=0)
        total = 0.0
        for _ in range(64):
            total += env.request_latencies_ms[-1]
            env.step(1)
            if env._i < 0:
                env.reset()
        return total

    assert mean_latency(EnvConfig.scenario("congested")) > mean_latency(
        EnvConfig.scenario("stable")
    )


NAN, INF = math.nan, math.inf
BAD = [
    ({"trace": ""}, "trace"),
    ({"trace": 3}, "trace"),
    ({"requests_per_episode": 0}, "requests_per_episode"),
    ({"requests_per_episode": -3}, "requests_per_episode"),
    ({"requests_per_episode": 2.5}, "requests_per_episode"),
    ({"requests_per_episode": True}, "requests_per_episode"),
    ({"deadline_ms": 0}, "deadline_ms"),
    ({"deadline_ms": -1.0}, "deadline_ms"),
    ({"deadline_ms": NAN}, "deadline_ms"),
    ({"deadline_ms": INF}, "deadline_ms"),
    ({"deadline_ms": "40"}, "deadline_ms"),
    ({"max_latency_ratio": 0.5}, "max_latency_ratio"),
    ({"reward": {"latency_weight": -0.1}}, "reward.latency_weight"),
    ({"reward": {"correct_bonus": NAN}}, "reward.correct_bonus"),
    ({"reward": {"deadline_penalty": INF}}, "reward.deadline_penalty"),
    ({"reward": {"wrong_penalty": -1}}, "reward.wrong_penalty"),
    ({"reward": {"bonus": 1}}, "reward.bonus"),
    ({"reward": 3}, "reward"),
    ({"colour": "red"}, "colour"),
    ({"cluster": {"device_profile": "cray-1"}}, "cluster.device_profile"),
    ({"cluster": {"link_profile": "carrier-pigeon"}}, "cluster.link_profile"),
    ({"cluster": {"devices": ["raspberry-pi-4", "abacus"]}}, r"cluster.devices\[1\]"),
    ({"cluster": {"devices": [1e9, -5.0]}}, r"cluster.devices\[1\]"),
    ({"cluster": {"devices": [1e9, NAN]}}, r"cluster.devices\[1\]"),
    ({"cluster": {"devices": []}}, "cluster.devices"),
    ({"cluster": {"links": [0.0]}}, r"cluster.links\[0\]"),
    ({"cluster": {"link_latency_ms": -1}}, "cluster.link_latency_ms"),
    ({"cluster": {"compute": {"kind": "brownian"}}}, "cluster.compute.kind"),
    ({"cluster": {"bandwidth": {"kind": "gaussian"}}}, "cluster.bandwidth.kind"),
    ({"cluster": {"compute": {"kind": "constant", "value": 0.0}}}, "cluster.compute.value"),
    ({"cluster": {"compute": {"kind": "constant", "value": 1.5}}}, "cluster.compute.value"),
    ({"cluster": {"compute": {"kind": "iid", "low": 0.9, "high": 0.5}}}, "cluster.compute.low"),
    ({"cluster": {"compute": {"levels": [1.0, 0.0, 0.2]}}}, r"cluster.compute.levels\[1\]"),
    ({"cluster": {"compute": {"levels": [1.0]}}}, "cluster.compute.levels"),
    (
        {"cluster": {"compute": {"transition": [[0.5, 0.4, 0.0], [0.2, 0.7, 0.1], [0, 0, 1]]}}},
        r"cluster.compute.transition\[0\].*sum",
    ),
    (
        {"cluster": {"compute": {"transition": [[1.2, -0.2, 0.0], [0.2, 0.7, 0.1], [0, 0, 1]]}}},
        r"cluster.compute.transition\[0\]\[0\]",
    ),
    ({"cluster": {"compute": {"transition": [[1.0, 0.0], [0.0, 1.0]]}}}, "3x3"),
    ({"cluster": {"compute": {"kind": "trace"}}}, "cluster.compute.csv"),
    ({"cluster": {"compute": {"csv": "x.csv"}}}, "cluster.compute.csv"),
    ({"cluster": {"gpu": 1}}, "cluster.gpu"),
]


@pytest.mark.parametrize(("data", "match"), BAD, ids=[str(b[0])[:60] for b in BAD])
def test_bad_values_raise(data, match):
    with pytest.raises(ValueError, match=match) as info:
        EnvConfig.from_dict(data)
    assert "allowed" in str(info.value) or "allowed" in str(info.value).lower()


def test_bad_config_types_and_scenario():
    with pytest.raises(ValueError, match="config"):
        build_config(42)
    with pytest.raises(ValueError, match="scenario"):
        EnvConfig.scenario("apocalyptic")
    with pytest.raises(ValueError, match="not a known field"):
        EnvConfig().replace({"reward.bogus.deep": 1})


@pytest.mark.parametrize("cls", [DistrEEEnv, lambda **kw: DistrEEVecEnv(2, **kw)])
def test_device_count_must_match_trace(cls):
    with pytest.raises(ValueError, match=r"cluster.devices has 3 entries.*4 devices"):
        cls(trace="synthetic", cluster={"devices": ["jetson-nano"] * 3})
    with pytest.raises(ValueError, match=r"cluster.links has 2 entries"):
        cls(trace="synthetic", cluster={"links": ["wifi-4", "wifi-5"]})


def test_explicit_numbers_and_mixed_profiles():
    env = DistrEEEnv(
        trace="synthetic",
        cluster={
            "devices": ["jetson-nano", 5e9, "raspberry-pi-4", 1e10],
            "links": ["ethernet-1g", 2e6, "wifi-4", "wifi-5"],
        },
    )
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)


def test_process_config_direct():
    assert ProcessConfig(kind="iid", low=0.2, high=0.3).low == 0.2
    with pytest.raises(ValueError, match="kind"):
        ProcessConfig(kind="nope")
