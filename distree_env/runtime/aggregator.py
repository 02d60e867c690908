"""The aggregator process: request queue, fusion and exit heads, and the exit controller.

Why one process for all three: in DistrEE the exit heads fuse every device's features, so the
node that fuses is the node that knows enough to decide. The aggregator takes requests in arrival
order (FIFO; the devices serve one request at a time), ships each image to every device over its
link, and after every stage fuses the devices' pooled features, computes the confidence features
exactly as the exit trace does, builds the environment's observation by name and asks the
policy. Every measurement goes into the run record, which is rewritten atomically every few
requests, and once more when a peer fails (then the run ends with :class:`PeerError`).
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from distree_env.runtime.device import DeviceReport
from distree_env.runtime.launch import device_rank
from distree_env.runtime.records import (
    FLUSH_EVERY,
    RequestRecord,
    RunRecord,
    append_journal,
    journal_path,
    keep_killed_journal,
    write_run,
)
from distree_env.runtime.schedule import LiveScenario, starts_episode
from distree_env.runtime.shaping import TokenBucket, sleep_until
from distree_env.runtime.transport import Endpoint, Op, PeerError

__all__ = ["Aggregator", "confidence_features"]


def confidence_features(
    probs: np.ndarray, embedding: np.ndarray, previous: np.ndarray | None
) -> dict[str, float]:
    """``max_prob``, ``margin``, ``entropy`` (over log C) and ``feature_diff`` of one exit, the
    way the exit trace defines them.

    :param probs: ``[C]`` class probabilities of the exit.
    :param embedding: ``[E]`` the exit head's embedding.
    :param previous: the previous exit's embedding, None at exit 0 (``feature_diff`` = 1).
    """
    p = np.asarray(probs, dtype=np.float64)
    top2 = np.sort(p)[-2:]
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(p > 0, p * np.log(p), 0.0)
    entropy = float(-plogp.sum() / math.log(p.size))
    if previous is None:
        diff = 1.0
    else:
        a = np.asarray(embedding, np.float64)
        b = np.asarray(previous, np.float64)
        a = a / max(float(np.linalg.norm(a)), 1e-12)
        b = b / max(float(np.linalg.norm(b)), 1e-12)
        diff = 0.5 * float(np.linalg.norm(a - b))
    out = {
        "max_prob": float(top2[1]),
        "margin": float(top2[1] - top2[0]),
        "entropy": entropy,
        "feature_diff": diff,
    }
    return {k: min(max(v, 0.0), 1.0) for k, v in out.items()}


class Aggregator:
    """Runs the requests of a :class:`LiveScenario` through the devices with ``policy`` deciding.

    :param net: the network (only the exit heads are used here).
    :param scenario: requests, resources, queue and observation layout.
    :param policy: anything with SB3's ``predict(obs, state, episode_start, deterministic)``.
    :param endpoint: the transport.
    :param images: uint8 ``[n, 32, 32, 3]`` image set indexed by ``scenario.samples``.
    :param labels: ``[n]`` labels of the image set.
    :param downlinks: per device, the token bucket of its link towards it (None: unshaped).
    :param run: the run record to fill (its ``meta`` is kept).
    :param out: where the run record is written (atomically: at the start, at the end and if
        the run fails; in between, finished requests go to its journal,
        :func:`~distree_env.runtime.records.append_journal`).
    :param bf16: run the exit heads under bfloat16 autocast, as the traces were exported.
    :param tta: the devices send two views (image and mirror image) to average, ditto.
    :param flush_every: append the finished requests to the journal every this many.
    :param progress: called with the number of finished requests after each one.
    :param on_request: called with a request's index when the devices take it up.
    """

    def __init__(
        self,
        net: torch.nn.Module,
        scenario: LiveScenario,
        policy: Any,
        endpoint: Endpoint,
        images: np.ndarray,
        labels: np.ndarray,
        downlinks: list[TokenBucket | None],
        run: RunRecord,
        out: str | Path | None,
        bf16: bool,
        tta: bool = False,
        flush_every: int = FLUSH_EVERY,
        progress: Callable[[int], None] | None = None,
        on_request: Callable[[int], None] | None = None,
        policy_seed: int = 0,
    ) -> None:
        self.net, self.sc, self.policy, self.ep = net.eval(), scenario, policy, endpoint
        self.images, self.labels = images, labels
        self.downlinks, self.run, self.out, self.bf16 = downlinks, run, out, bf16
        self.progress, self.on_request, self.flush_every = progress, on_request, flush_every
        self.num_devices = len(downlinks)
        self.num_exits = int(net.config.num_exits)
        self.pipeline = net.config.topology == "pipeline"
        self.views = 2 if tta else 1
        self.policy_seed = policy_seed
        self._state: Any = None
        self._answered = 0  # requests answered so far: every requests_per_episode, memory resets

    # ---- the run -----------------------------------------------------------------------------
    def serve(self) -> RunRecord:
        """Serve every request, then stop the devices. PeerError (after writing the record) if a
        device fails."""
        self.run.meta["status"] = "running"
        self._warm_up()
        if hasattr(self.policy, "seed"):  # a stochastic rule: the warm-up's draws are no request's
            self.policy.seed(self.policy_seed)
        self.ep.reset_clock()
        if self.out is not None and (aside := keep_killed_journal(self.out)) is not None:
            print(
                f"a killed run's record and journal at {str(self.out)!r} were moved to "
                f"{str(aside)!r} (distree_env.runtime.records.load_journal reads them)",
                file=sys.stderr,
            )
        self._write()  # the record exists (status "running") from the start
        journaled = 0
        try:
            for r in range(self.sc.num_requests):
                self.run.requests.append(self._serve_one(r))
                if self.progress is not None:
                    self.progress(r + 1)
                if self.out is not None and r + 1 - journaled >= self.flush_every:
                    append_journal(self.out, self.run.requests[journaled:])
                    journaled = r + 1
        except PeerError as e:
            self.run.meta.update(status="failed", error=str(e), failed_rank=e.rank)
            self._write()
            self._stop_devices(skip=e.rank)
            raise
        self.run.meta["status"] = "complete"
        self._write()
        self._stop_devices()
        return self.run

    def _write(self) -> None:
        """Write the whole record; once the run is over, its journal is no longer needed."""
        if self.out is not None:
            write_run(self.out, self.run)
            if self.run.meta["status"] != "running":
                journal_path(self.out).unlink(missing_ok=True)

    def _stop_devices(self, skip: int = -1) -> None:
        for d in range(self.num_devices):
            if device_rank(d) != skip:
                with contextlib.suppress(PeerError):
                    self.ep.send(device_rank(d), Op.STOP, -1, -1, None)
        with contextlib.suppress(PeerError):
            self.ep.flush()

    # ---- one request -------------------------------------------------------------------------
    def _serve_one(self, r: int) -> RequestRecord:
        sc, ep = self.sc, self.ep
        sample = int(sc.samples[r])
        rec = RequestRecord(index=r, sample=sample, label=int(self.labels[sample]), arrival_ms=0.0)
        if sc.arrivals_ms is None:
            rec.arrival_ms = ep.now_ms()
        else:
            rec.arrival_ms = float(sc.arrivals_ms[r])
            if self._queue_full_at_arrival(r):
                rec.dropped = True
                return rec
            sleep_until(ep.to_local_s(rec.arrival_ms))
        if self.on_request is not None:
            self.on_request(r)
        rec.start_ms = ep.now_ms()
        rec.queue_wait_ms = rec.start_ms - rec.arrival_ms
        image = self.images[sample]
        previous: np.ndarray | None = None
        for k in range(self.num_exits):
            dispatch = ep.now_ms()
            rec.compute_level.append([c.at(r, dispatch) for c in sc.compute])
            rec.bandwidth_level.append([b.at(r, dispatch) for b in sc.bandwidth])
            devices = self._devices_of(k)
            if k == 0:
                self._dispatch(Op.INPUT, r, 0, image, devices, image.nbytes)
            elif self.pipeline:  # device k-1 ships its feature map to device k
                self._dispatch(Op.FORWARD, r, k - 1, None, [k - 1], 0.0)
                self._dispatch(Op.STAGE, r, k, None, devices, 0.0)
            else:
                self._dispatch(Op.STAGE, r, k, None, devices, sc.decision_bytes)
            reports, arrived = self._collect(r, k, devices)
            t0 = max(max(arrived), ep.now_ms())  # every device's features are in
            busy = ep.now_ms()
            probs, emb = self._exit_head(k, [rep.pooled for rep in reports])
            busy = ep.now_ms() - busy
            # the exit head runs on its device's share of compute (device 0 for parallel,
            # device k for pipeline), as in the simulator; this is the one wait of the stage
            # for the emulated compute and links
            exit_device = k if self.pipeline else 0
            sleep_until(ep.to_local_s(sc.compute[exit_device].finish(r, t0, busy)))
            t1 = ep.now_ms()
            obs = self._observation(r, k, probs, emb, previous, rec.arrival_ms, t1)
            action = self._decide(
                obs, k == 0 and starts_episode(self._answered, sc.requests_per_episode)
            )
            t2 = ep.now_ms()
            rec.stage_ms.append(t1 - dispatch)
            rec.exit_ms.append(t1 - t0)
            rec.decision_ms.append(t2 - t1)
            busy_d = np.full(self.num_devices, np.nan)
            compute_d, transfer_d = busy_d.copy(), busy_d.copy()
            for d, a, rep in zip(devices, arrived, reports, strict=True):
                busy_d[d], compute_d[d] = rep.busy_ms, rep.compute_ms
                transfer_d[d] = a - dispatch - rep.compute_ms
                rec.compute_level[-1][d] = rep.compute_level  # when the device started
            rec.busy_ms.append(busy_d.tolist())
            rec.compute_ms.append(compute_d.tolist())
            rec.transfer_ms.append(transfer_d.tolist())
            previous = emb
            if action == 1 or k == self.num_exits - 1:
                rec.exit, rec.prediction = k, int(np.argmax(probs))
                break
        self._answered += 1
        rec.end_ms = ep.now_ms()
        rec.latency_ms = rec.end_ms - rec.arrival_ms
        rec.correct = rec.prediction == rec.label
        rec.deadline_met = rec.latency_ms <= sc.deadline_ms
        return rec

    def _queue_full_at_arrival(self, r: int) -> bool:
        """Whether request ``r`` found ``queue_slots`` requests waiting when it arrived (FIFO:
        every earlier request is started or dropped by now, so their start times are known).
        Starts are in request order, so the scan walks back only over the requests that started
        after the arrival: a scan of the whole run grew with it and, at a few thousand requests,
        added half a millisecond to every hand-over."""
        t = float(self.sc.arrivals_ms[r])
        waiting = 0
        for rec in reversed(self.run.requests):
            if rec.dropped:
                continue
            if rec.start_ms <= t:
                break
            waiting += rec.arrival_ms <= t
        return waiting >= self.sc.queue_slots

    def _devices_of(self, k: int) -> list[int]:
        """The devices that run stage ``k``: all (parallel) or device ``k`` (pipeline)."""
        return [k] if self.pipeline else list(range(self.num_devices))

    def _dispatch(
        self,
        op: Op,
        r: int,
        k: int,
        payload: np.ndarray | None,
        devices: list[int],
        nbytes: float,
    ) -> None:
        """Send ``op`` to ``devices`` at once, each stamped with its arrival on its own link
        (the device starts then); ``nbytes`` as the cost model counts the message (0: a
        control message the model does not count, sent at once)."""
        now = self.ep.now_ms()
        for d in devices:
            link = self.downlinks[d]
            due = now if link is None else link.reserve(nbytes, now, r)
            self.ep.send(device_rank(d), op, r, k, payload, due_ms=due)
        self.ep.flush()

    def _collect(
        self, r: int, k: int, devices: list[int]
    ) -> tuple[list[DeviceReport], list[float]]:
        """The report of stage ``k`` of each of ``devices`` and its arrival on the emulated link
        (run ms). Receiving takes a little longer (the wire, waking up): that is in
        ``stage_ms``."""
        reports, arrived = [], []
        for d in devices:
            msg = self.ep.recv(device_rank(d), f"computing stage {k} of request {r}")
            if msg.op != Op.FEATURES or msg.request != r or msg.stage != k:
                raise PeerError(
                    device_rank(d),
                    f"computing stage {k} of request {r}",
                    f"answered {msg.op.name} for request {msg.request} stage {msg.stage}",
                )
            reports.append(DeviceReport.decode(msg.payload))
            arrived.append(msg.due_ms)
        return reports, arrived

    def _warm_up(self) -> None:
        """Run every exit head and the policy once: first calls allocate, they are no
        request's cost."""
        for k, width in enumerate(self.net.config.stage_widths):
            pooled = [np.zeros(width * self.views, np.float32)] * self.net.config.num_branches
            self._exit_head(k, pooled)
        obs = np.zeros((1, len(self.sc.observation_names)), np.float32)
        self.policy.predict(obs, state=None, episode_start=np.array([True]), deterministic=True)

    @torch.no_grad()
    def _exit_head(self, k: int, pooled: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities and embedding of exit ``k``, averaged over the views (as the traces'
        flip test-time augmentation averages them)."""
        vectors = [
            torch.from_numpy(np.asarray(p, np.float32)).reshape(self.views, -1) for p in pooled
        ]
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        with ctx:
            logits, emb = self.net.exit_forward(k, vectors)
        probs = F.softmax(logits.float(), dim=1).mean(0).numpy()
        return probs, emb.float().mean(0).numpy()

    def _observation(
        self,
        r: int,
        k: int,
        probs: np.ndarray,
        emb: np.ndarray,
        previous: np.ndarray | None,
        arrival_ms: float,
        now_ms: float,
    ) -> np.ndarray:
        sc = self.sc
        values = confidence_features(probs, emb, previous)
        values["progress"] = k / (self.num_exits - 1) if self.num_exits > 1 else 1.0
        compute, bandwidth = sc.measured(r, now_ms)
        for d in range(self.num_devices):
            values[f"compute_{d}"] = float(compute[d])
            values[f"bandwidth_{d}"] = float(bandwidth[d])
        values["elapsed_ratio"] = (now_ms - arrival_ms) / sc.deadline_ms
        waiting = self._waiting(r, now_ms)
        values["queue_len"] = len(waiting) / max(sc.queue_capacity, 1)
        values["oldest_wait_ratio"] = (now_ms - waiting[0]) / sc.deadline_ms if waiting else 0.0
        return sc.observation(values)

    def _waiting(self, r: int, now_ms: float) -> list[float]:
        """Arrival times of the requests that wait behind request ``r`` now: those arrived so
        far, up to ``queue_slots`` (nothing leaves the queue while ``r`` is served, so the
        later arrivals found it full and are dropped)."""
        if self.sc.arrivals_ms is None:
            return []
        later = self.sc.arrivals_ms[r + 1 :]
        count = min(int(np.searchsorted(later, now_ms, side="right")), self.sc.queue_slots)
        return [float(t) for t in later[:count]]

    def _decide(self, obs: np.ndarray, episode_start: bool) -> int:
        """The policy's action; ``episode_start`` where the environment would start an episode
        (``agents.evaluate`` passes the same flag)."""
        action, self._state = self.policy.predict(
            obs[None, :],
            state=self._state,
            episode_start=np.array([episode_start]),
            deterministic=True,
        )
        return int(np.asarray(action).reshape(-1)[0])
