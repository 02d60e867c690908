"""Run the network live across processes, one per device plus an aggregator, with a policy deciding.

    python -m experiments.run_live --policy last-exit --requests 1000 --out runs/live-last.json

Without ``RANK``/``WORLD_SIZE`` in its environment this starts every process on this machine over
loopback; under ``torchrun`` (one process per machine, see docs/live.md) it is one of them. The
requests, arrivals and resource levels come from the environment's scenario with the given seed,
compute availability is imposed by throttling, links by token buckets (or by ``tc tbf`` between
network namespaces with ``--shaping kernel``), and the run record (per request and stage:
compute, transfer, exit-head and decision milliseconds, queue wait, exit, prediction, label) is
written atomically to ``--out``. Exit status: 0 done, 2 bad settings (one line), 3 a process
failed or timed out during the run (named in one line; the record keeps the requests so far).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from distree_env.model.data import TEST_SAMPLE_FILE
from distree_env.runtime.records import FLUSH_EVERY
from experiments.cli import (
    MAX_REQUESTS,
    MAX_THREADS,
    fail,
    one_line_errors,
    parse_args,
    read_config_overrides,
    require_int,
)

if TYPE_CHECKING:
    from distree_env.runtime.schedule import LiveScenario

#: Seconds the other processes get after the first one ends or fails (a dead or hung peer is
#: noticed when a message to or from it times out, after --timeout; then only the record is left
#: to write).
GRACE_S = 3.0
#: Longest any of the run's timeouts may be (a day): beyond it a clock overflows, not a run.
MAX_TIMEOUT_S = 86_400.0
#: ``--policy NAME:VALUE`` prefixes of the classic rules, and the ``agents`` class each names.
RULE_SPECS = {
    "fixed": "FixedExit",
    "random": "RandomExit",
    "confidence": "ConfidenceThreshold",
    "entropy": "EntropyThreshold",
    "feature-diff": "FeatureDifference",
}
POLICY_HELP = (
    "last-exit | fixed:K | random:P | confidence:T | entropy:T | feature-diff:T | "
    "an agent name or .zip path (see agents.load_agent)"
)


@dataclass(frozen=True)
class Args:
    """Live distributed early-exit inference with an exit policy in the loop."""

    backbone: str | None = field(
        default=None,
        metadata={"help": "trained network weights (default: the shipped network of the "
                  "scenario's topology, checkpoints/backbone-TOPOLOGY.pt)"},
    )  # fmt: skip
    images: str = field(
        default=f"checkpoints/{TEST_SAMPLE_FILE}",
        metadata={"help": "uint8 image sample (.npz: images, labels, indices)"},
    )
    data: str | None = field(
        default=None, metadata={"help": "CIFAR-10 source: use its full test split instead"}
    )
    trace: str | None = field(
        default=None,
        metadata={"help": "exit trace of the same network and split as the images (default: "
                  "the test trace of the scenario's network, e.g. cifar10-pipeline-test)"},
    )  # fmt: skip
    scenario: str | None = field(default=None, metadata={"help": "environment scenario name"})
    config: str | None = field(
        default=None,
        metadata={"help": "JSON or YAML of environment config overrides (a cluster profile)"},
    )
    policy: str = field(default="last-exit", metadata={"help": POLICY_HELP})
    trust: bool = field(default=False, metadata={"help": "load an agent file not in MANIFEST"})
    requests: int = field(default=200, metadata={"help": "requests to serve"})
    seed: int = field(default=0, metadata={"help": "scenario seed (as the simulator's reset)"})
    out: str = field(default="runs/live.json", metadata={"help": "run record (JSON)"})
    shaping: str = field(
        default="bucket",
        metadata={"help": "link emulation", "choices": ("bucket", "kernel", "none")},
    )
    precision: str = field(
        default="bf16",
        metadata={"help": "as the traces were exported", "choices": ("bf16", "fp32")},
    )
    timeout: float = field(default=20.0, metadata={"help": "seconds any message may take"})
    idle_timeout: float = field(
        default=120.0, metadata={"help": "seconds a device waits for its next command"}
    )
    rendezvous_timeout: float = field(default=30.0, metadata={"help": "seconds to find the peers"})
    threads: int = field(default=1, metadata={"help": "torch threads per process"})
    nice: int = field(
        default=0,
        metadata={"help": "niceness added to every process (negative, as root: a shared machine "
                  "disturbs the measurements less)"},
    )  # fmt: skip
    flush_every: int = field(
        default=FLUSH_EVERY, metadata={"help": "append finished requests to the journal every N"}
    )

    def __post_init__(self) -> None:
        require_int("seed", self.seed, 0, 2**63 - 1)
        require_int("requests", self.requests, 1, MAX_REQUESTS)
        require_int("threads", self.threads, 1, MAX_THREADS)
        require_int("flush_every", self.flush_every, 1)
        for name in ("timeout", "idle_timeout", "rendezvous_timeout"):
            if not 0 < getattr(self, name) <= MAX_TIMEOUT_S:
                raise ValueError(
                    f"--{name.replace('_', '-')}={getattr(self, name)!r} is not allowed: a "
                    f"number of seconds in (0, {MAX_TIMEOUT_S:g}]"
                )


def with_network_defaults(args: Args) -> Args:
    """``args`` with ``--trace`` and ``--backbone`` set where not given: the test split of the
    scenario's trace, and the shipped network of that trace's topology. Why: ``--scenario
    pipeline`` must run the pipeline network, not the parallel one."""
    from agents.splits import held_out_trace
    from distree_env.config import build_config
    from distree_env.traces import resolve_trace

    trace = args.trace or held_out_trace(build_config(None, args.scenario).trace)
    if args.backbone is not None:
        return replace(args, trace=trace)
    try:
        topology = resolve_trace(trace).topology
    except ValueError as e:
        raise ValueError(f"--trace: {e}") from None
    return replace(args, trace=trace, backbone=f"checkpoints/backbone-{topology}.pt")


def load_images(args: Args) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The image set (uint8 ``[n, 32, 32, 3]``), its labels and its rows in the test split."""
    if args.data is not None:
        from distree_env.model.data import load_cifar10

        split = load_cifar10(args.data, "test")
        return split.images, split.labels, np.arange(len(split.labels))
    from distree_env.model.data import load_image_sample

    path = Path(args.images)
    if not path.is_file():
        raise ValueError(f"--images {str(path)!r} not found (or pass --data with CIFAR-10)")
    try:
        split, indices = load_image_sample(path)
    except ValueError as e:
        raise ValueError(f"--images: {e}") from None
    images, labels = split.images, split.labels
    return images, labels, indices


def env_config(args: Args, labels: np.ndarray, indices: np.ndarray) -> Any:
    """The environment config of the run (the one the simulator is compared on): the scenario,
    ``--config`` overrides, and as trace the rows of ``--trace`` that the image set holds."""
    from distree_env.config import build_config
    from distree_env.runtime.schedule import LIVE_PIPELINING_REFUSED, image_trace

    trace = image_trace(args.trace, indices, labels, image_trace_file(args))
    # the images are test images: the link and arrival traces a scenario replays are too
    overrides: dict[str, Any] = {"cluster.bandwidth.split": "test", "arrivals.split": "test"}
    if args.config is not None:
        extra = read_config_overrides(args.config)
        cluster = extra.get("cluster")
        if extra.get("cluster.pipelining") or (
            isinstance(cluster, dict) and cluster.get("pipelining")
        ):
            raise ValueError(f"--config {args.config!r}: {LIVE_PIPELINING_REFUSED}")
        overrides = {**overrides, **extra}
    return build_config(None, args.scenario, {**overrides, "trace": trace})


def image_trace_file(args: Args) -> Path:
    """Where a run keeps the rows of ``--trace`` that its image set holds (beside the record)."""
    return Path(args.out).with_suffix(".trace.npz")


@dataclass(frozen=True)
class Layout:
    """What a rule reads from an environment to bind to it."""

    observation_names: tuple[str, ...]
    num_exits: int


def rule_from_spec(spec: str) -> Any | None:
    """The classic rule that ``spec`` names (``last-exit``, ``NAME:VALUE``), not yet bound to an
    environment; None when ``spec`` names an agent. Needs no torch, so the launcher checks it
    before it starts any process."""
    import agents

    name, _, value = spec.partition(":")
    if spec == "last-exit":
        return agents.LastExit()
    if name not in RULE_SPECS:
        return None
    rule = getattr(agents, RULE_SPECS[name])
    whole = rule is agents.FixedExit
    try:
        number = int(value) if whole else float(value)
    except ValueError:
        raise ValueError(
            f"--policy {spec!r}: {value!r} is not {'an integer' if whole else 'a number'}; "
            f"allowed: {POLICY_HELP}"
        ) from None
    try:
        return rule(number)
    except ValueError as e:
        raise ValueError(f"--policy {spec!r}: {e}") from None


def make_policy(spec: str, config: Any, trust: bool, seed: int) -> Any:
    """A rule from ``name:parameter`` or an agent, bound to the environment's layout; a
    stochastic rule seeded with the run's ``seed``, as ``agents.evaluate`` seeds it."""
    import agents
    from distree_env.dynamics import tables_for

    policy = rule_from_spec(spec)
    if policy is None:
        return agents.load_agent(spec, trust=trust)
    tables = tables_for(config)
    policy = policy.bind(Layout(tables.observation_names, tables.num_exits))
    if hasattr(policy, "seed"):
        policy.seed(seed)
    return policy


def check_trace_fits(net: Any, trace_path: str, trace_name: str) -> None:
    """ValueError unless the trace's cost tables are this network's (it was exported from it)."""
    from distree_env.model.costs import measure_costs
    from distree_env.traces import resolve_trace

    trace, costs = resolve_trace(trace_path), measure_costs(net)
    flops = np.asarray(trace.stage_flops)
    if (
        trace.topology != net.config.topology
        or flops.shape != costs.stage_flops.shape
        or not np.allclose(flops, costs.stage_flops, rtol=1e-6)
    ):
        raise ValueError(
            f"--trace {trace_name!r} ({trace.topology}, {trace.num_exits} exits, stage FLOPs "
            f"{flops.sum():.4g}) was not exported from --backbone "
            f"({net.config.topology}, {net.config.num_exits} exits, stage FLOPs "
            f"{costs.stage_flops.sum():.4g}); give both, or neither (they follow --scenario)"
        )


def check_policy(policy: Any, spec: str, names: tuple[str, ...]) -> None:
    """ValueError unless ``policy`` answers an observation of this layout with 0 or 1."""
    try:
        action, _ = policy.predict(
            np.zeros((1, len(names)), np.float32), None, np.array([True]), deterministic=True
        )
    except (ValueError, RuntimeError, IndexError) as e:
        raise ValueError(
            f"--policy {spec!r} does not fit this environment's observation "
            f"({len(names)} features: {', '.join(names)}): {e}"
        ) from None
    if int(np.asarray(action).reshape(-1)[0]) not in (0, 1):
        raise ValueError(f"--policy {spec!r} answered {action!r}; expected 0 or 1")


def check_before_start(args: Args, config: Any) -> LiveScenario:
    """The run's scenario, after the checks every worker would make (each would print the
    same error): the backbone file and the trace exported from it, ``--config`` against the
    trace, and the policy, bound and asked once."""
    from distree_env.model.checkpoint import load_backbone
    from distree_env.runtime.schedule import live_scenario

    if args.backbone is not None:
        if not Path(args.backbone).is_file():
            raise ValueError(
                f"--backbone {args.backbone!r} not found (a .pt file of train_backbone)"
            )
        check_trace_fits(load_backbone(args.backbone), config.trace, args.trace)
    try:
        scenario = live_scenario(config, args.seed, args.requests)
    except ValueError as e:  # name the user's trace, not the image set's rows of it
        raise ValueError(str(e).replace(repr(config.trace), repr(args.trace))) from None
    try:
        policy = make_policy(args.policy, config, args.trust, args.seed)
    except ValueError as e:
        raise ValueError(f"--policy {args.policy!r}: {e} (allowed: {POLICY_HELP})") from None
    check_policy(policy, args.policy, scenario.observation_names)
    return scenario


def start_local(args: Args, argv: list[str]) -> int:
    """Launcher: check the run once (:func:`check_before_start`), then start the aggregator and
    one process per device on this machine. The device count comes from the exit trace; each
    worker checks that the network has as many devices."""
    from distree_env.runtime.launch import spawn_local
    from distree_env.runtime.shaping import KernelShaper, kernel_shaping_unavailable

    rule_from_spec(args.policy)  # a bad rule fails here, before the image set is read
    _, labels, indices = load_images(args)
    trace_file = image_trace_file(args)
    fresh = not trace_file.exists()
    try:
        config = env_config(args, labels, indices)
        scenario = check_before_start(args, config)
    except BaseException:
        if fresh:  # a refused (or interrupted) run leaves no file behind
            trace_file.unlink(missing_ok=True)
        raise
    devices = len(scenario.compute)
    command = [sys.executable, "-m", "experiments.run_live", *argv]
    env = {"OMP_NUM_THREADS": str(args.threads)}
    grace = GRACE_S
    if args.shaping != "kernel":
        return spawn_local(command, devices + 1, grace, args.timeout, env=env)
    why = kernel_shaping_unavailable()
    if why is not None:
        fail(f"--shaping kernel: {why}")
    with KernelShaper(scenario.link_bytes_per_s) as shaper:
        env["DISTREE_NETNS_TAG"] = shaper.tag
        per_rank = [{"GLOO_SOCKET_IFNAME": shaper.bridge}]
        per_rank += [{"GLOO_SOCKET_IFNAME": shaper.ifname(d)} for d in range(devices)]
        prefixes = [[]] + [shaper.exec_prefix(d) for d in range(devices)]
        return spawn_local(
            command,
            devices + 1,
            grace,
            args.timeout,
            env=env,
            prefixes=prefixes,
            master_addr=shaper.master_addr,
            per_rank_env=per_rank,
        )


def run_worker(args: Args, rank: int, world_size: int) -> int:
    """One process of the run: the aggregator (rank 0) or device ``rank - 1``."""
    import torch

    from distree_env.model.checkpoint import load_backbone
    from distree_env.model.train import to_tensor
    from distree_env.runtime.aggregator import Aggregator
    from distree_env.runtime.device import StageRunner, run_device
    from distree_env.runtime.launch import check_world_size
    from distree_env.runtime.records import RunRecord
    from distree_env.runtime.schedule import live_scenario
    from distree_env.runtime.shaping import KernelShaper, LinkFollower, TokenBucket
    from distree_env.runtime.transport import Endpoint, rendezvous
    from distree_env.traces import resolve_trace

    torch.set_num_threads(args.threads)
    if args.nice:
        try:
            os.nice(args.nice)
        except OSError as e:
            raise ValueError(f"--nice {args.nice}: {e} (negative values need root)") from None
    net = load_backbone(args.backbone)
    cfg = net.config
    images, labels, indices = load_images(args)
    config = env_config(args, labels, indices)
    check_trace_fits(net, config.trace, args.trace)  # names the files, before WORLD_SIZE
    check_world_size(world_size, cfg.num_devices)
    pipeline = cfg.topology == "pipeline"
    scenario = live_scenario(config, args.seed, args.requests)
    bf16 = args.precision == "bf16"
    tta = bool(resolve_trace(config.trace).metadata.get("flip_tta", False))  # as exported
    shaped = args.shaping == "bucket"
    if args.shaping == "kernel" and "DISTREE_NETNS_TAG" not in os.environ:
        raise ValueError("--shaping kernel works with the local launcher only (not torchrun)")

    def bucket(d: int) -> TokenBucket | None:
        if args.shaping == "none":
            return None
        peak = scenario.link_bytes_per_s[d] if shaped else 1e15  # kernel: tbf does the rate
        return TokenBucket(peak, scenario.link_latency_ms[d], scenario.bandwidth[d])

    if rank > 0:
        runner = StageRunner(net, 0 if pipeline else rank - 1, bf16, tta)
        runner.warm_up(to_tensor(images[:1]))
    else:  # a policy that does not fit fails here, before the others wait for it
        policy = make_policy(args.policy, config, args.trust, args.seed)
        check_policy(policy, args.policy, scenario.observation_names)
    rendezvous(rank, world_size, args.rendezvous_timeout)
    endpoint = Endpoint(args.timeout)
    if rank > 0:
        d = rank - 1
        last = d == cfg.num_devices - 1
        run_device(
            d,
            runner,
            to_tensor,
            endpoint,
            scenario.compute[d],
            None if pipeline else bucket(d),  # pipeline: the exit head is the device's own
            args.idle_timeout,
            next_link=None if last or not pipeline else bucket(d + 1),
            pipeline=pipeline,
        )
        return 0
    meta = {
        "argv": sys.argv[1:],
        "args": asdict(args),
        "config": config.to_dict(),
        "net": cfg.to_dict(),
        "world_size": world_size,
        "host": os.uname().nodename,
        "started_unix": time.time(),
        "observation_names": list(scenario.observation_names),
        "link_bytes_per_s": scenario.link_bytes_per_s.tolist(),
        "link_latency_ms": scenario.link_latency_ms.tolist(),
        "flip_tta": tta,
    }
    follower = None
    if args.shaping == "kernel":
        shaper = KernelShaper.attach(os.environ["DISTREE_NETNS_TAG"], scenario.link_bytes_per_s)
        follower = LinkFollower(shaper, scenario.bandwidth, endpoint.now_ms)
    agg = Aggregator(
        net,
        scenario,
        policy,
        endpoint,
        images,
        labels,
        [bucket(d) for d in range(cfg.num_devices)],
        RunRecord(meta),
        args.out,
        bf16,
        tta=tta,
        flush_every=args.flush_every,
        progress=_progress(args.requests),
        on_request=None if follower is None else follower.request_started,
        policy_seed=args.seed,
    )
    try:
        run = agg.serve()
    finally:
        if follower is not None:
            follower.stop()
    done = [r for r in run.requests if not r.dropped]
    acc = np.mean([r.correct for r in done]) if done else float("nan")
    lat = np.array([r.latency_ms for r in done])
    print(
        f"{len(done)} requests: accuracy {acc:.4f}, latency mean {lat.mean():.2f} ms, "
        f"p95 {np.percentile(lat, 95):.2f} ms -> {args.out}",
        flush=True,
    )
    return 0


def _progress(total: int):
    every = max(total // 10, 1)

    def report(done: int) -> None:
        if done % every == 0 or done == total:
            print(f"  {done}/{total} requests", file=sys.stderr, flush=True)

    return report


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    """Run from command-line ``argv`` (default: ``sys.argv``); returns the exit status."""
    # c10d logs every failed connection attempt itself; the failure ends here in one line
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(Args, argv)
    try:
        args = with_network_defaults(args)
    except ValueError as e:
        fail(str(e))
    from distree_env.runtime.launch import (
        AGGREGATOR_RANK,
        EXIT_PEER,
        EXIT_SETTINGS,
        PeerError,
        RendezvousError,
        rank_name,
        worker_from_env,
    )

    worker = None
    try:
        worker = worker_from_env()
        if worker is None:
            return start_local(args, argv)
        code = run_worker(args, worker.rank, worker.world_size)
    except RendezvousError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        os._exit(EXIT_SETTINGS)
    except PeerError as e:
        if worker is not None and worker.rank != AGGREGATOR_RANK and e.rank == AGGREGATOR_RANK:
            # a device that lost its commands: the aggregator names the peer that failed (a
            # hung device closes the aggregator's connections to all), or its own exit status
            # tells that it failed itself
            print(
                f"{rank_name(worker.rank)} stopped: lost the aggregator while {e.doing} "
                f"({e.detail})",
                file=sys.stderr,
                flush=True,
            )
        else:
            print(f"error: {e}", file=sys.stderr, flush=True)
        os._exit(EXIT_PEER)
    except ValueError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
        os._exit(EXIT_SETTINGS)
    sys.stdout.flush()
    os._exit(code)  # gloo's teardown may wait on peers that already left


if __name__ == "__main__":
    sys.exit(main())
