"""The one implementation of the environment's dynamics, shared by the single and vector envs.

Why one module: the single env and the vector env must never drift apart. Both draw whole
episodes from :meth:`Dynamics.generate` (resources are exogenous, so every request's latencies,
rewards and resource levels are known when the episode starts) and build observations with
:meth:`Dynamics.gather` (step records: observation plus rewards). A step is then a few table
look-ups.

Episodes are generated in banks of ``max(num_envs, BANK_MIN)`` so numpy's per-call cost is
amortised; the bank order is deterministic, so a seeded env replays exactly, and a vector env
with one sub-env replays exactly what the single env does.

When both resource processes are discrete (``constant``/``markov``) and the cluster is small
enough, every joint resource state of a request is enumerated once at construction and the
latencies, reward parts and resource observations of a request are single table look-ups.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np

from distree_env.cluster import (
    DEVICE_PROFILES,
    LINK_PROFILES,
    ChainSampler,
    LatencyModel,
    ResourceProcess,
    make_process,
)
from distree_env.config import EnvConfig, ProcessConfig
from distree_env.trace import ExitTrace, resolve_trace

#: Smallest number of episodes generated at once (the single env's bank).
BANK_MIN = 64
#: Largest bank of the vector env (bigger banks gain nothing and leave the CPU cache).
BANK_MAX = 4096
#: Columns of the per-exit features, in observation order.
EXIT_FEATURES = ("max_prob", "margin", "entropy", "similarity", "progress")
#: Scalar episode metrics, in the column order of :meth:`Dynamics.episode_metrics`
#: (``exit_fractions`` follows). The ``reward_*`` entries are episode sums of the reward parts.
METRICS = (
    "accuracy",
    "compute_saving",
    "latency_mean_ms",
    "latency_p95_ms",
    "qos_rate",
    "reward_correct",
    "reward_latency",
    "reward_deadline",
)
#: Largest number of joint resource states enumerated in look-up tables.
MAX_JOINT_STATES = 1 << 16

_FEATURE_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def exit_features(trace: ExitTrace) -> tuple[np.ndarray, np.ndarray]:
    """Per (sample, exit): features ``[n*K, 5]`` float32 (row ``s*K + k``), correctness ``[n, K]``.

    Computed once per trace (cached), so a step never touches the probability tensor.
    """
    cached = _FEATURE_CACHE.get(trace)
    if cached is not None:
        return cached
    probs = trace.probs.astype(np.float64)
    n, k, c = probs.shape
    top2 = np.partition(probs, c - 2, axis=-1)[..., -2:]
    max_prob = top2[..., 1]
    margin = top2[..., 1] - top2[..., 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(probs > 0, probs * np.log(probs), 0.0)
    entropy = -plogp.sum(-1) / np.log(c)
    progress = np.broadcast_to(np.arange(k) / (k - 1) if k > 1 else np.ones(1), (n, k))
    feats = np.stack([max_prob, margin, entropy, trace.similarity, progress], axis=-1)
    feats = np.clip(feats, 0.0, 1.0).astype(np.float32).reshape(n * k, len(EXIT_FEATURES))
    correct = probs.argmax(-1) == trace.labels[:, None]
    feats.flags.writeable = False
    correct.flags.writeable = False
    _FEATURE_CACHE[trace] = (feats, correct)
    return feats, correct


@dataclass
class RequestTables:
    """Per request-state row ``j`` and exit ``k`` (flat index ``j*K + k``): what a step needs.

    With discrete resources a row is a joint resource state shared by all episodes; otherwise
    a row is one generated request.
    """

    r_latency: np.ndarray  # [J*K] float64 latency part of the reward at exit k (continue reward)
    exit_lat: np.ndarray  # [J*K] float64 r_latency + deadline part (exit reward minus correctness)
    cum_ms: np.ndarray  # [J*K] float64 latency (ms) of the request if it exits at k
    # [J*K, 2D+3] float32: observation tail (resource shares, latency_ratio), then the step's
    # rewards (continue = r_latency, exit without the correctness part = exit_lat)
    tail: np.ndarray

    def __len__(self) -> int:
        return int(self.tail.shape[0])

    @property
    def tail_rows(self) -> np.ndarray:
        """``tail`` as one opaque record per row (for fast row gathers)."""
        return self.tail.view(np.dtype((np.void, 4 * self.tail.shape[1])))[:, 0]


@dataclass
class EpisodeBank:
    """``E`` pre-generated episodes of ``R`` requests: trace rows and request-table rows."""

    sample_base: np.ndarray  # [E, R] int64: trace row * K (index of exit 0 in per-exit tables)
    table_base: np.ndarray  # [E, R] int64: request-table row * K
    tables: RequestTables | None  # per-request tables (rows local to this bank) or None (shared)

    def __len__(self) -> int:
        return int(self.sample_base.shape[0])


def _rates(config: EnvConfig, d: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    cl = config.cluster
    if name == "devices":
        entries = cl.devices if cl.devices is not None else (cl.device_profile,) * d
        if len(entries) != d:
            raise ValueError(
                f"cluster.devices has {len(entries)} entries but trace {config.trace!r} has "
                f"{d} devices; give {d} entries or None"
            )
        rate = [
            DEVICE_PROFILES[e].effective_flops if isinstance(e, str) else float(e) for e in entries
        ]
        return np.asarray(rate), np.zeros(d)
    entries = cl.links if cl.links is not None else (cl.link_profile,) * d
    if len(entries) != d:
        raise ValueError(
            f"cluster.links has {len(entries)} entries but trace {config.trace!r} has {d} "
            f"devices (one link per device); give {d} entries or None"
        )
    bw, lat = [], []
    for e in entries:
        if isinstance(e, str):
            bw.append(LINK_PROFILES[e].effective_bandwidth)
            lat.append(LINK_PROFILES[e].latency_s)
        else:
            bw.append(float(e))
            lat.append(cl.link_latency_ms * 1e-3)
    return np.asarray(bw), np.asarray(lat)


def _process(pc: ProcessConfig, d: int, field: str) -> ResourceProcess:
    spec = {
        "kind": pc.kind,
        "value": pc.value,
        "low": pc.low,
        "high": pc.high,
        "levels": pc.levels,
        "transition": pc.transition,
        "csv": pc.csv,
    }
    return make_process(spec, d, field)


class Dynamics:
    """Precomputed tables of one configuration, episode generation and observation layout."""

    def __init__(self, config: EnvConfig) -> None:
        if not isinstance(config, EnvConfig):
            raise ValueError(f"config must be an EnvConfig, got {type(config).__name__}")
        self.config = config
        trace = resolve_trace(config.trace)
        self.trace = trace
        self.K, self.D, self.R = trace.num_exits, trace.num_devices, config.requests_per_episode
        self.n = trace.n
        self.feats, self.correct = exit_features(trace)
        device_rate, _ = _rates(config, self.D, "devices")
        link_bw, link_lat = _rates(config, self.D, "links")
        self.latency = LatencyModel(
            trace.topology,
            trace.stage_flops.astype(np.float64),
            trace.exit_flops.astype(np.float64),
            trace.transfer_bytes.astype(np.float64),
            float(trace.input_bytes),
            device_rate,
            link_bw,
            link_lat,
        )
        self.compute_process = _process(config.cluster.compute, self.D, "cluster.compute")
        self.bandwidth_process = _process(config.cluster.bandwidth, self.D, "cluster.bandwidth")
        per_stage = trace.stage_flops.sum(axis=1) + trace.exit_flops
        self.cum_flops = np.cumsum(per_stage.astype(np.float64))  # [K]
        self.deadline_ms = float(config.deadline_ms)
        self.max_ratio = float(config.max_latency_ratio)
        rw = config.reward
        # per (sample, exit), flat index sample*K + k
        self.correct_flat = self.correct.reshape(-1)
        self.rc_flat = np.where(self.correct_flat, rw.correct_bonus, -rw.wrong_penalty)

        names = list(EXIT_FEATURES)
        names += [f"compute_{d}" for d in range(self.D)]
        names += [f"bandwidth_{d}" for d in range(self.D)]
        names.append("latency_ratio")
        self.observation_names: tuple[str, ...] = tuple(names)
        self.obs_dim = len(names)
        self.obs_low = np.zeros(self.obs_dim, dtype=np.float32)
        self.obs_high = np.ones(self.obs_dim, dtype=np.float32)
        self.obs_high[-1] = self.max_ratio
        # Step records (see gather): [rc | exit features | resources, latency_ratio | rewards]
        nf, nt = len(EXIT_FEATURES) + 1, 2 * self.D + 3
        front = np.empty((self.n * self.K, nf), dtype=np.float32)
        front[:, 0] = self.rc_flat
        front[:, 1:] = self.feats
        self._front_rows = front.view(np.dtype((np.void, 4 * nf))).reshape(-1)
        self._record = np.dtype([("f", np.void, 4 * nf), ("t", np.void, 4 * nt)])
        self.record_width = nf + nt
        #: observation columns of a step record
        self.obs_slice = slice(1, 1 + self.obs_dim)
        self._build_joint_tables()
        # episode_metrics: METRICS = raw sums * scale + offset, raw = (correct count, FLOPs,
        # latency sum, p95 latency, misses, correctness reward, latency sum, misses)
        r, full = self.R, self.R * self.cum_flops[-1]
        self._metric_scale = np.array(
            [1 / r, -1 / full if full > 0 else 0.0, 1 / r, 1.0, -1 / r, 1.0,
             -rw.latency_weight / self.deadline_ms, -rw.deadline_penalty] + [1 / r] * self.K
        )  # fmt: skip
        self._metric_offset = np.zeros(len(METRICS) + self.K)
        self._metric_offset[[1, 4]] = 1.0
        k_of = np.tile(np.arange(self.K), self.n)
        self._fk_stats = np.column_stack(
            (self.correct_flat, self.rc_flat, self.cum_flops[k_of], np.eye(self.K)[k_of])
        )
        self._ones = np.ones(self.R)

    # ---- tables -----------------------------------------------------------------------------
    def _request_tables(self, compute: np.ndarray, bandwidth: np.ndarray) -> RequestTables:
        """Request tables from availability ``[J, D]`` (one row per request state)."""
        stage_ms = self.latency.stage_ms(compute, bandwidth)  # [J, K]
        cum_ms = np.cumsum(stage_ms, axis=-1)
        rw = self.config.reward
        r_latency = stage_ms * (-rw.latency_weight / self.deadline_ms)
        exit_lat = r_latency + np.where(cum_ms > self.deadline_ms, -rw.deadline_penalty, 0.0)
        j, k, d = compute.shape[0], self.K, self.D
        tail = np.empty((j, k, 2 * d + 3), dtype=np.float32)
        tail[..., :d] = compute[:, None, :]
        tail[..., d : 2 * d] = bandwidth[:, None, :]
        tail[..., 2 * d] = np.minimum(cum_ms / self.deadline_ms, self.max_ratio)
        tail[..., 2 * d + 1] = r_latency
        tail[..., 2 * d + 2] = exit_lat
        return RequestTables(
            r_latency.reshape(-1), exit_lat.reshape(-1), cum_ms.reshape(-1), tail.reshape(j * k, -1)
        )

    def _build_joint_tables(self) -> None:
        """Enumerate joint resource states when both processes are discrete and few enough."""
        cp, bp = self.compute_process, self.bandwidth_process
        self.tables: RequestTables | None = None
        if not (cp.discrete and bp.discrete):
            return
        sc, sb = cp.num_states, bp.num_states
        per_device = sc * sb
        if per_device**self.D > MAX_JOINT_STATES:
            return
        j = per_device**self.D
        weights = per_device ** np.arange(self.D, dtype=np.int64)
        combo = np.arange(j)[:, None] // weights[None, :] % per_device  # [J, D]
        self.tables = self._request_tables(cp.levels[combo // sb], bp.levels[combo % sb])
        # One chain per device over (compute state, bandwidth state) pairs; the table position
        # of exit 0 is K * sum_d (compute_state_d * sb + bandwidth_state_d) * weights_d.
        self._chains = ChainSampler([ResourceProcess.product(cp, bp)])
        self._col_weights = (weights * self.K).astype(np.float64)  # exact: values < 2**53

    # ---- episodes ---------------------------------------------------------------------------
    def generate(self, rng: np.random.Generator, episodes: int) -> EpisodeBank:
        """Draw ``episodes`` whole episodes: trace samples and resource states per request."""
        e, r, k = episodes, self.R, self.K
        sample_base = rng.integers(0, self.n, size=(e, r)) * k
        if self.tables is not None:
            states = self._chains.codes(rng, e, r)  # [R, E, D] per-device pair states
            joint = states.astype(np.float64) @ self._col_weights  # [R, E]
            table_base = joint.T.astype(np.int64)
            return EpisodeBank(sample_base, table_base, None)
        compute = self.compute_process.sample(rng, e, r).reshape(e * r, self.D)
        bandwidth = self.bandwidth_process.sample(rng, e, r).reshape(e * r, self.D)
        tables = self._request_tables(compute, bandwidth)
        table_base = (np.arange(e * r, dtype=np.int64) * k).reshape(e, r)
        return EpisodeBank(sample_base, table_base, tables)

    def gather(self, tables: RequestTables, jk: np.ndarray, fk: np.ndarray) -> np.ndarray:
        """Step records ``[B, record_width]`` float32 at request-table positions ``jk`` and trace
        positions ``fk`` (both ``row * K + k``): column 0 is the correctness reward, then the
        observation (``obs_slice``), then the continue reward and the exit reward without its
        correctness part (the last two columns).

        Rows are gathered as opaque byte records into a structured array viewed as float32:
        numpy copies whole rows far faster than it assembles narrow columns, and the rewards of
        the next step come with the observation, so a step needs no other random look-up.
        """
        out = np.empty(jk.shape[0], dtype=self._record)
        out["f"] = self._front_rows.take(fk)
        out["t"] = tables.tail_rows.take(jk)
        return out.view(np.float32).reshape(jk.shape[0], self.record_width)

    @staticmethod
    def record_rewards(rec: np.ndarray, ex: np.ndarray) -> np.ndarray:
        """Rewards (float32) of exiting (``ex``) or continuing from the states of ``rec``."""
        return np.where(ex, rec[:, -1] + rec[:, 0], rec[:, -2])

    # ---- evaluation helpers -----------------------------------------------------------------
    def oracle_exit(self, r_latency: np.ndarray, r_exit: np.ndarray, k: np.ndarray) -> np.ndarray:
        """Reward-maximising exit index ``>= k`` per request, from the latency part of each
        stage's reward ``[B, K]`` and the exit part (correctness + deadline) ``[B, K]``.

        From exit k (whose cost is already paid), exiting at k' earns the latency parts of
        stages k+1..k' plus the exit part at k'. Ties go to the earlier (cheaper) exit.
        """
        cum = np.cumsum(r_latency, axis=-1)
        k = np.asarray(k)
        value = cum - np.take_along_axis(cum, k[..., None], axis=-1) + r_exit
        value = np.where(np.arange(self.K) >= k[..., None], value, -np.inf)
        return value.argmax(axis=-1)

    def episode_metrics(
        self, tables: RequestTables, jk: np.ndarray, fk: np.ndarray, exits: np.ndarray
    ) -> np.ndarray:
        """Metrics of finished episodes, ``[m, len(METRICS) + K]`` (columns: ``METRICS`` then
        ``exit_fractions``), from the table positions ``jk``/``fk`` and exit index of each
        request where it exited (each ``[m, R]``). One implementation for both envs; written
        as few numpy calls as possible because the vector env runs it on most steps."""
        m, r = exits.shape
        # per request at its exit: correct, correctness reward, FLOPs, one-hot exit (fk encodes k)
        per_f = self._ones[:r] @ self._fk_stats.take(fk, axis=0)  # [m, 3 + K] sums
        lat = tables.cum_ms.take(jk)
        lat.sort(axis=1)
        lo = int(0.95 * (r - 1))  # numpy's default (linear) percentile
        frac, hi = 0.95 * (r - 1) - lo, min(lo + 1, r - 1)
        lat_sum = lat @ self._ones[:r]
        p95 = lat[:, lo] * (1.0 - frac) + lat[:, hi] * frac
        misses = (lat > self.deadline_ms).sum(axis=1)
        raw = np.column_stack(
            (per_f[:, 0], per_f[:, 2], lat_sum, p95, misses, per_f[:, 1], lat_sum, misses)
        )
        out = np.concatenate((raw, per_f[:, 3:]), axis=1)
        out *= self._metric_scale
        out += self._metric_offset
        return out


class BankSource:
    """Hands out episodes one at a time, in order, from banks of ``BANK_MIN`` (single env)."""

    def __init__(self, dynamics: Dynamics) -> None:
        self.dynamics = dynamics
        self.bank: EpisodeBank | None = None
        self.next = 0

    def clear(self) -> None:
        self.bank, self.next = None, 0

    def take(self, rng: np.random.Generator) -> tuple[EpisodeBank, int]:
        if self.bank is None or self.next >= len(self.bank):
            self.bank = self.dynamics.generate(rng, BANK_MIN)
            self.next = 0
        self.next += 1
        return self.bank, self.next - 1
