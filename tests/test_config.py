"""EnvConfig: round trips, scenarios, physical bounds and caps, one clear error per bad value."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from distree_env import DistrEEEnv, DistrEEVecEnv
from distree_env.config import SCENARIO_SOURCES, SCENARIOS, EnvConfig, ProcessConfig, build_config
from distree_env.dynamics import describe

FAST = {"trace": "synthetic:n=200"}
FAST_PIPELINE = "synthetic:topology=pipeline,n=200"


def test_defaults_round_trip_and_hashable():
    cfg = EnvConfig()
    assert EnvConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert hash(cfg) == hash(EnvConfig.from_dict(cfg.to_dict()))
    assert cfg == EnvConfig.scenario("steady-stream")


def test_partial_dict_and_overrides():
    cfg = EnvConfig.from_dict({"reward": {"latency_weight": 0.1}})
    assert cfg.reward.latency_weight == 0.1 and cfg.reward.correct_bonus == 1.0
    again = cfg.replace({"cluster.compute.kind": "constant"}, deadline_ms=50)
    assert again.cluster.compute.kind == "constant" and again.deadline_ms == 50.0
    nested = cfg.replace({"arrivals": {"kind": "bursty"}})
    assert nested.arrivals.kind == "bursty" and nested.arrivals.utilisation == 0.7


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenarios_build_and_are_sourced(name):
    pipelined = EnvConfig.scenario(name).cluster.pipelining  # needs a pipeline trace
    cfg = EnvConfig.scenario(name, trace=FAST_PIPELINE if pipelined else FAST["trace"])
    assert SCENARIO_SOURCES[name]
    env = DistrEEEnv(cfg)
    env.reset(seed=0)
    env.step(0)


def test_isolated_is_the_first_version():
    cfg = EnvConfig.scenario("isolated")
    assert cfg.arrivals.kind == "isolated" and cfg.cluster.clock == "request"
    assert cfg.episode_end == "terminate" and cfg.reward.timing == "stage"
    assert cfg.requests_per_episode == 32 and cfg.deadline_ms == 40.0
    assert cfg.cluster.decision_bytes == 0.0


def test_congested_is_slower_and_wifi_is_link_bound():
    slow = describe(EnvConfig.scenario("congested"))["mean_service_ms"]
    assert slow > describe(EnvConfig.scenario("stable"))["mean_service_ms"]
    wifi = EnvConfig.scenario("wifi-contention")
    full = sum(describe(wifi)["full_speed_stage_ms"])
    # constant compute: everything above the full-speed latency comes from the links
    assert describe(wifi)["mean_service_ms"] > 1.2 * full


def test_utilisation_sets_the_rate_from_the_mean_service_time():
    cfg = EnvConfig(**FAST)
    d = describe(cfg)
    assert math.isclose(d["rate_per_s"], 0.7 / d["mean_service_ms"] * 1e3)
    fixed = describe(cfg.replace(arrivals={"rate_per_s": 5.0, "utilisation": None}))
    assert fixed["rate_per_s"] == 5.0


def test_numpy_values_are_accepted():
    cfg = EnvConfig(
        deadline_ms=np.float32(40.0),
        requests_per_episode=np.int64(16),
        cluster={"compute": {"levels": np.array([1.0, 0.5]), "transition": np.eye(2)}},
    )
    assert cfg.deadline_ms == 40.0 and type(cfg.requests_per_episode) is int
    assert cfg.cluster.compute.levels == (1.0, 0.5)
    json.dumps(cfg.to_dict())


NAN, INF = math.nan, math.inf
BAD = [
    ({"trace": ""}, "trace"),
    ({"trace": 3}, "trace"),
    ({"requests_per_episode": 0}, "requests_per_episode"),
    ({"requests_per_episode": 2.5}, "requests_per_episode"),
    ({"requests_per_episode": True}, "requests_per_episode"),
    ({"requests_per_episode": 10**6}, "MAX_REQUESTS_PER_EPISODE"),
    ({"deadline_ms": 0}, "deadline_ms"),
    ({"deadline_ms": 1e-300}, "1 microsecond"),
    ({"deadline_ms": 10**400}, "deadline_ms"),
    ({"deadline_ms": NAN}, "deadline_ms"),
    ({"deadline_ms": INF}, "deadline_ms"),
    ({"deadline_ms": "40"}, "deadline_ms"),
    ({"max_elapsed_ratio": 0.5}, "max_elapsed_ratio"),
    ({"episode_end": "never"}, "episode_end"),
    ({"reward": {"latency_weight": -0.1}}, "reward.latency_weight"),
    ({"reward": {"correct_bonus": 1e308}}, "capped"),
    ({"reward": {"deadline_penalty": INF}}, "reward.deadline_penalty"),
    ({"reward": {"timing": "later"}}, "reward.timing"),
    ({"reward": {"bonus": 1}}, "reward.bonus"),
    ({"reward": 3}, "reward"),
    ({"colour": "red"}, "colour"),
    ({"arrivals": {"kind": "avalanche"}}, "arrivals.kind"),
    ({"arrivals": {"rate_per_s": 5.0}}, "exactly one"),
    ({"arrivals": {"utilisation": None}}, "exactly one"),
    ({"arrivals": {"rate_per_s": 1e9, "utilisation": None}}, "arrivals.rate_per_s"),
    ({"arrivals": {"utilisation": 0.0}}, "arrivals.utilisation"),
    ({"arrivals": {"on_ms": 0}}, "arrivals.on_ms"),
    ({"arrivals": {"off_share": 1.5}}, "arrivals.off_share"),
    ({"arrivals": {"kind": "trace"}}, "arrivals.csv"),
    ({"arrivals": {"csv": "a.csv"}}, "arrivals.csv"),
    ({"queue": {"capacity": 0}}, "queue.capacity"),
    ({"queue": {"capacity": 10**5}}, "QUEUE_HARD_CAP"),
    ({"queue": {"overflow": "explode"}}, "queue.overflow"),
    ({"cluster": {"device_profile": "cray-1"}}, "cluster.device_profile"),
    ({"cluster": {"device_profile": ["x"]}}, "cluster.device_profile"),
    ({"cluster": {"link_profile": "carrier-pigeon"}}, "cluster.link_profile"),
    ({"cluster": {"devices": ["raspberry-pi-4", "abacus"]}}, r"cluster.devices\[1\]"),
    ({"cluster": {"devices": [1e9, 5e-324]}}, "1 kFLOP/s"),
    ({"cluster": {"devices": []}}, "cluster.devices"),
    ({"cluster": {"links": [0.0]}}, r"cluster.links\[0\]"),
    ({"cluster": {"link_latency_ms": -1}}, "cluster.link_latency_ms"),
    ({"cluster": {"stage_overhead_ms": -1}}, "cluster.stage_overhead_ms"),
    ({"cluster": {"exit_overhead_ms": -0.5}}, "cluster.exit_overhead_ms"),
    ({"cluster": {"decision_ms": float("nan")}}, "cluster.decision_ms"),
    ({"cluster": {"handover_ms": -0.1}}, "cluster.handover_ms"),
    ({"cluster": {"stall_probability": 1.5}}, "cluster.stall_probability"),
    ({"cluster": {"stall_mean_ms": 1e9}}, "cluster.stall_mean_ms"),
    ({"cluster": {"stall_seed": -1}}, "cluster.stall_seed"),
    ({"cluster": {"cold_start_ms": 0.5}}, "cluster.cold_start_ms"),
    ({"cluster": {"cold_start_ms": [0.5, -1.0]}}, r"cluster.cold_start_ms\[1\]"),
    ({"cluster": {"cold_start_tau_ms": 0.0}}, "cluster.cold_start_tau_ms"),
    ({"episode_end": "restart"}, "episode_end"),
    ({"reward": {"timing": "later"}}, "reward.timing"),
    ({"cluster": {"decision_bytes": 1e9}}, "cluster.decision_bytes"),
    ({"cluster": {"clock": "lunar"}}, "cluster.clock"),
    ({"cluster": {"tick_ms": 0}}, "cluster.tick_ms"),
    ({"cluster": {"measurement_period_ms": -5}}, "cluster.measurement_period_ms"),
    ({"cluster": {"compute": {"step_ms": 1.0}}}, r"cluster.compute.step_ms.*tick_ms"),
    ({"cluster": {"compute": {"kind": "brownian"}}}, "cluster.compute.kind"),
    ({"cluster": {"compute": {"kind": "constant", "value": 1e-300}}}, "MIN_SHARE"),
    ({"cluster": {"compute": {"kind": "constant", "value": 1.5}}}, "cluster.compute.value"),
    ({"cluster": {"compute": {"kind": "iid", "low": 0.9, "high": 0.5}}}, "cluster.compute.low"),
    ({"cluster": {"compute": {"levels": [1.0, 0.0, 0.2]}}}, r"cluster.compute.levels\[1\]"),
    ({"cluster": {"compute": {"levels": [1.0]}}}, "cluster.compute.levels"),
    ({"cluster": {"compute": {"levels": [0.5] * 3000}}}, "MAX_MARKOV_LEVELS"),
    (
        {"cluster": {"compute": {"transition": [[0.5, 0.4, 0.0], [0.2, 0.7, 0.1], [0, 0, 1]]}}},
        r"cluster.compute.transition\[0\].*sum",
    ),
    ({"cluster": {"compute": {"transition": [[1.0, 0.0], [0.0, 1.0]]}}}, "3x3"),
    ({"cluster": {"compute": {"kind": "trace"}}}, "cluster.compute.csv"),
    ({"cluster": {"compute": {"split": "train"}}}, "cluster.compute.split"),
    ({"cluster": {"gpu": 1}}, "cluster.gpu"),
]


@pytest.mark.parametrize(("data", "match"), BAD, ids=[str(b[0])[:60] for b in BAD])
def test_bad_values_raise_one_clear_value_error(data, match):
    with pytest.raises(ValueError, match=match) as info:
        EnvConfig.from_dict(data)
    assert "allowed" in str(info.value)


def test_bad_config_types_and_scenario():
    with pytest.raises(ValueError, match="config"):
        build_config(42)
    with pytest.raises(ValueError, match="scenario"):
        EnvConfig.scenario("apocalyptic")
    with pytest.raises(ValueError, match="not a known field"):
        EnvConfig().replace({"reward.bogus.deep": 1})
    with pytest.raises(ValueError, match="field names are strings"):
        EnvConfig().replace({1: 5})
    with pytest.raises(ValueError, match="expected a dict"):
        EnvConfig().replace([("deadline_ms", 3)])
    with pytest.raises(ValueError, match="reward=.*expected a dict"):
        EnvConfig.from_dict({"reward": [1, 2]})


@pytest.mark.parametrize("cls", [DistrEEEnv, lambda **kw: DistrEEVecEnv(2, **kw)])
def test_device_count_must_match_trace(cls):
    with pytest.raises(ValueError, match="cluster.devices has 3 entries"):
        cls(trace="synthetic:n=100,devices=4", cluster={"devices": ["jetson-nano"] * 3})


def test_explicit_numbers_and_mixed_profiles():
    env = DistrEEEnv(
        trace="synthetic:n=100,devices=2",
        cluster={"devices": [5e9, "jetson-nano"], "links": ["wifi-4", 2e6], "link_latency_ms": 3},
    )
    env.reset(seed=0)
    env.step(1)


def test_bad_trace_files_name_the_field(tmp_path):
    bad = tmp_path / "shares.csv"
    bad.write_text("0.5\n1.7\n")
    cfg = EnvConfig(**FAST, cluster={"bandwidth": {"kind": "trace", "csv": str(bad)}})
    with pytest.raises(ValueError, match=r"cluster.bandwidth.csv.*:2.*outside"):
        DistrEEEnv(cfg)
    with pytest.raises(ValueError, match="arrivals.csv.*not found"):
        DistrEEEnv(**FAST, arrivals={"kind": "trace", "csv": str(tmp_path / "none.csv")})
    with pytest.raises(ValueError, match="a directory"):
        DistrEEEnv(**FAST, arrivals={"kind": "trace", "csv": str(tmp_path)})
    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)  # opening it would block for ever
    with pytest.raises(ValueError, match="arrivals.csv.*is a FIFO"):
        DistrEEEnv(**FAST, arrivals={"kind": "trace", "csv": str(fifo)})
    huge_cell = tmp_path / "cell.csv"
    huge_cell.write_text("0\n" + "1" * 200_000 + "\n")  # over the csv module's field limit
    with pytest.raises(ValueError, match=r"arrivals.csv: .*cell.csv:2: not a CSV row"):
        DistrEEEnv(**FAST, arrivals={"kind": "trace", "csv": str(huge_cell)})


def test_process_config_direct():
    p = ProcessConfig(kind="iid", low=0.2, high=0.4)
    assert p.levels == (1.0, 0.5, 0.2)
    with pytest.raises(ValueError, match=r"^low=0.9"):
        ProcessConfig(kind="iid", low=0.9, high=0.5)
