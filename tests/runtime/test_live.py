"""The live runtime end to end: 2 device processes + the aggregator over loopback, a tiny network
(and once the pipeline layout: 3 devices in sequence).

Each test starts real processes (``python -m experiments.run_live``), so they are the slow ones of
this folder (a few seconds each on 2 cores).
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from distree_env.model.checkpoint import save_backbone
from distree_env.model.data import Split
from distree_env.model.export import export_trace
from distree_env.model.network import MultiBranchNet, NetConfig
from distree_env.model.train import to_tensor
from distree_env.runtime.launch import free_port
from distree_env.runtime.records import RequestRecord, journal_path, load_run
from distree_env.runtime.shaping import kernel_shaping_unavailable

ROOT = Path(__file__).resolve().parents[2]
LAYOUTS = {
    "parallel": NetConfig(depth=10, widen=1, exits=(1, 2, 3), num_devices=2, embed_dim=16),
    "pipeline": NetConfig(topology="pipeline", depth=10, widen=1, exits=(1, 2, 3), num_devices=3,
                          embed_dim=16),
}  # fmt: skip


def _make(root: Path, layout: str) -> Path:
    """A randomly initialised tiny network, 16 random images and its exit trace over them."""
    torch.manual_seed(0)
    net = MultiBranchNet(LAYOUTS[layout]).eval()
    save_backbone(net, root / "tiny.pt")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(16, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=16)
    np.savez(root / "images.npz", images=images, labels=labels, indices=np.arange(16))
    export_trace(net, Split(images, labels), "test").save(root / "trace.npz")
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _make(tmp_path_factory.mktemp("live"), "parallel")


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    return _make(tmp_path_factory.mktemp("live-pipeline"), "pipeline")


def live_command(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "experiments.run_live",
        "--backbone", str(root / "tiny.pt"), "--images", str(root / "images.npz"),
        "--trace", str(root / "trace.npz"), "--scenario", "isolated", "--out", str(out),
        "--timeout", "8", "--rendezvous-timeout", "60", "--idle-timeout", "60", *extra,
    ]  # fmt: skip


def run(cmd: list[str], timeout: float = 180, env: dict | None = None):
    full_env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=full_env
    )


@torch.no_grad()
@pytest.mark.parametrize("layout", ["parallel", "pipeline"])
def test_live_predictions_equal_the_offline_model(layout, tiny, tiny_pipeline, tmp_path):
    tiny = tiny if layout == "parallel" else tiny_pipeline
    out = tmp_path / "run.json"
    done = run(live_command(tiny, out, "--requests", "8", "--policy", "random:0.4",
                            "--precision", "fp32"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    rec = load_run(out)
    assert rec.meta["status"] == "complete" and len(rec.requests) == 8
    assert not journal_path(out).exists()  # the whole record replaced it
    with np.load(tiny / "images.npz") as f:
        images, labels = f["images"], f["labels"]
    net = MultiBranchNet(LAYOUTS[layout])
    net.load_state_dict(torch.load(tiny / "tiny.pt", weights_only=True)["state_dict"])
    net = net.float().eval()
    x = to_tensor(images)  # the trace was exported with flip test-time augmentation: so is the run
    views = [torch.stack([lg.softmax(1) for lg in net(v)[0]], 1) for v in (x, x.flip(3))]
    offline = ((views[0] + views[1]) / 2).argmax(2).numpy()  # [n, K]
    exits = set()
    for r in rec.requests:
        assert r.prediction == offline[r.sample, r.exit]
        assert r.label == labels[r.sample]
        assert len(r.stage_ms) == len(r.compute_ms) == len(r.transfer_ms) == r.exit + 1
        compute, busy = np.asarray(r.compute_ms), np.asarray(r.busy_ms)
        ran = np.isfinite(busy)
        assert (compute[ran] >= busy[ran] - 0.05).all()
        if layout == "pipeline":  # stage k ran on device k alone
            assert [np.flatnonzero(row).tolist() for row in ran] == [[k] for k in range(r.exit + 1)]
        else:
            assert ran.all()
        assert r.latency_ms >= sum(r.stage_ms)
        exits.add(r.exit)
    assert len(exits) > 1  # the random policy exercised more than the last exit

    # the run calibrates the simulator and is compared with it (same seed, policy, images)
    from experiments import calibrate_cluster

    profile, table = tmp_path / "profile.json", tmp_path / "table.md"
    timeline = tmp_path / "timeline.png"
    result = calibrate_cluster.main(
        [str(out), "--out", str(profile), "--evaluate", str(out), "--table", str(table)]
        + ["--decision-runs", str(out), "--timeline", str(timeline)]
    )
    assert timeline.read_bytes().startswith(b"\x89PNG")
    cluster = json.loads(profile.read_text())["cluster"]
    assert len(cluster["devices"]) == LAYOUTS[layout].num_devices
    assert cluster["stage_overhead_ms"] >= 0
    assert "| random:0.4 | live | 8 |" in result["table"]
    assert "also fitted (a calibration record)" in result["table"]  # one run, fitted and compared
    assert "| random:0.4 | simulated |" in table.read_text()
    # the diagnostic row: the simulator at the service time the live run measured
    assert "| random:0.4 | simulated at live service (x" in result["table"]
    assert "at the live runs' own service time (the fitted model's x" in result["table"]
    assert "device compute of stage 0" in result["table"] and "(+0%)" in result["table"]
    live_decision = np.mean([d for r in rec.requests for d in r.decision_ms])
    assert (
        f"{live_decision:.2f} ms live, {live_decision:.2f} ms simulated (measured in its own"
        in (result["table"])
    )
    # the replay draws the random rule's coins as the live run did (seeded by --seed, the
    # launcher's check and the warm-up drew none of the requests' draws)
    config = calibrate_cluster.base_config(rec)
    whole_run = config.replace({"requests_per_episode": 8})
    per_episode = config.requests_per_episode
    replayed = calibrate_cluster._simulate_once(rec, whole_run, per_episode, "random:0.4", False)[0]
    assert replayed == [r.exit for r in rec.requests]


def _read_lines(stream, lines: list[str]) -> None:
    for line in stream:
        lines.append(line)


@pytest.mark.parametrize(
    "sig,timeout", [(signal.SIGKILL, 8), (signal.SIGSTOP, 3)], ids=["killed", "hung"]
)
def test_a_failed_device_is_named_and_the_run_ends(tiny, tmp_path, sig, timeout):
    """A device killed (its connection closes) or hung (its answer never comes: a timeout) in the
    middle of a run: the aggregator names it, keeps the record so far and exits with status 3
    within the timeout; the launcher leaves no process behind."""
    out = tmp_path / "run.json"
    cmd = live_command(tiny, out, "--requests", "100000", "--flush-every", "2")
    cmd[cmd.index("--timeout") + 1] = str(timeout)
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )  # fmt: skip
    stdout: list[str] = []
    stderr: list[str] = []
    readers = [
        threading.Thread(target=_read_lines, args=(proc.stdout, stdout), daemon=True),
        threading.Thread(target=_read_lines, args=(proc.stderr, stderr), daemon=True),
    ]
    for t in readers:
        t.start()
    try:
        deadline = time.monotonic() + 120
        while not journal_path(out).exists():  # two requests served
            assert time.monotonic() < deadline and proc.poll() is None, "".join(stderr)
            time.sleep(0.1)
        started = re.finditer(r"rank (\d)\) pid (\d+)", "".join(stdout))
        pids = {int(m[1]): int(m[2]) for m in started}
        os.kill(pids[2], sig)  # device 1
        killed_at = time.monotonic()
        code = proc.wait(timeout=60)
        took = time.monotonic() - killed_at
    finally:
        if proc.poll() is None:
            proc.kill()
    for t in readers:
        t.join(timeout=5)
    assert code == 3
    assert took < timeout + 3 + 5  # message timeout, the launcher's grace, slack for a busy CI
    assert "device 1 (rank 2)" in "".join(stderr)
    assert "aggregator (rank 0) failed" not in "".join(stderr)  # a device only lost it
    rec = load_run(out)
    assert rec.meta["status"] == "failed" and "device 1" in rec.meta["error"]
    assert len(rec.requests) >= 2
    for pid in pids.values():  # nobody left behind
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_wrong_world_size_is_one_line_and_exit_2(tiny, tmp_path):
    done = run(
        live_command(tiny, tmp_path / "r.json"),
        env={"RANK": "0", "WORLD_SIZE": "5", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"},
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "WORLD_SIZE=5 does not fit" in done.stderr


def test_a_backbone_of_another_trace_is_named_before_the_world_size(tiny, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "experiments.run_live",
        "--backbone",
        str(tiny / "tiny.pt"),
        "--trace",
        "cifar10-test",
        "--out",
        str(tmp_path / "r.json"),
    ]  # the shipped images'
    done = run(cmd, env={"RANK": "0", "WORLD_SIZE": "5", "MASTER_ADDR": "127.0.0.1",
                         "MASTER_PORT": "1"})  # fmt: skip
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr
    assert "--trace 'cifar10-test'" in done.stderr
    assert "was not exported from --backbone" in done.stderr


def test_the_launcher_refuses_a_trace_of_another_network_before_starting(tmp_path):
    """Checked once, before any process starts (each worker would print the same line)."""
    cmd = [sys.executable, "-m", "experiments.run_live", "--requests", "10",
           "--backbone", "checkpoints/backbone-pipeline.pt", "--trace", "cifar10-test",
           "--out", str(tmp_path / "r.json")]  # fmt: skip
    done = run(cmd)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr
    assert "was not exported from --backbone" in done.stderr
    assert "started" not in done.stdout and not list(tmp_path.iterdir())


def test_network_files_follow_the_scenario():
    from experiments.run_live import Args, with_network_defaults

    pipeline = with_network_defaults(Args(scenario="pipeline"))
    assert pipeline.trace == "cifar10-pipeline-test"
    assert pipeline.backbone == "checkpoints/backbone-pipeline.pt"
    default = with_network_defaults(Args())
    assert (default.trace, default.backbone) == ("cifar10-test", "checkpoints/backbone-parallel.pt")
    given = with_network_defaults(Args(scenario="pipeline", backbone="mine.pt", trace="t.npz"))
    assert (given.trace, given.backbone) == ("t.npz", "mine.pt")


@pytest.mark.parametrize(
    ("policy", "needle"),
    [("confidence:high", "'high' is not a number"), ("fixed:1.5", "'1.5' is not an integer"),
     ("confidence:1.5", "confidence:1.5")],
)  # fmt: skip
def test_a_bad_rule_is_one_line_before_any_process_starts(tmp_path, policy, needle):
    done = run([sys.executable, "-m", "experiments.run_live", "--policy", policy,
                "--out", str(tmp_path / "r.json")])  # fmt: skip
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr
    assert needle in done.stderr and "started" not in done.stdout


@pytest.mark.parametrize("bad", ["timeout", "fifo", "deep", "yaml-list"])
def test_bad_timeouts_and_config_files_are_one_line_and_leave_no_file(tmp_path, bad):
    config = tmp_path / ("c.yaml" if bad == "yaml-list" else "c.json")
    if bad == "fifo":
        os.mkfifo(config)  # opening it would block for ever
    elif bad != "timeout":
        config.write_text("[" * 100_000 + "]" * 100_000 if bad == "deep" else "- 1\n")
    extra = ["--timeout", "inf"] if bad == "timeout" else ["--config", str(config)]
    done = run([sys.executable, "-m", "experiments.run_live", "--requests", "5",
                "--out", str(tmp_path / "r.json"), *extra])  # fmt: skip
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr
    needle = {
        "timeout": "--timeout=inf is not allowed: a number of seconds in (0, 86400]",
        "fifo": "FIFO",
        "deep": "cannot parse",
        "yaml-list": "expected a mapping",
    }[bad]
    assert needle in done.stderr, done.stderr
    assert [p.name for p in tmp_path.iterdir()] == [config.name] * (bad != "timeout")


def test_pipelining_is_one_line_and_exit_2_before_any_worker_starts(tmp_path):
    """The launcher refuses it once (the workers would each have said so)."""
    done = run(
        [sys.executable, "-m", "experiments.run_live", "--scenario", "pipelined-stream",
         "--requests", "5", "--out", str(tmp_path / "r.json")]
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0
    assert "cluster.pipelining=True is not allowed" in done.stderr
    assert not (tmp_path / "r.json").exists()


def test_unreachable_master_is_one_line_and_exit_2(tiny, tmp_path):
    cmd = live_command(tiny, tmp_path / "r.json")
    cmd[cmd.index("--rendezvous-timeout") + 1] = "2"
    started = time.monotonic()
    done = run(
        cmd,
        env={"RANK": "1", "WORLD_SIZE": "3", "MASTER_ADDR": "127.0.0.1",
             "MASTER_PORT": str(free_port())},
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "rendezvous failed" in done.stderr
    assert done.stderr.strip().count("\n") == 0
    assert time.monotonic() - started < 120  # bounded: process start-up plus the 2 s


def test_kernel_shaping_run(tiny, tmp_path, host_network):
    """The same run with links shaped by tc tbf between network namespaces (root only)."""
    why = kernel_shaping_unavailable()
    if why is not None:
        pytest.skip(why)
    out = tmp_path / "run.json"
    done = run(live_command(tiny, out, "--requests", "4", "--shaping", "kernel"))
    assert done.returncode == 0, done.stderr
    assert load_run(out).meta["status"] == "complete"
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "dtree" not in listed
    assert json.loads(out.read_text())["meta"]["args"]["shaping"] == "kernel"


def test_a_running_record_grows_by_appends_and_the_journal_ends_with_the_run(tmp_path):
    """While a run serves, finished requests are appended to a journal (one JSON line each: a
    rewrite of the whole record, done while requests waited, delayed them by its growing
    duration); the journal reads back as the requests, and the final write removes it."""
    from distree_env.runtime.records import append_journal, load_journal

    out = tmp_path / "run.json"
    recs = [RequestRecord(index=i, sample=i, label=0, arrival_ms=float(i)) for i in range(3)]
    append_journal(out, recs[:2])
    append_journal(out, recs[2:])
    back = load_journal(out)
    assert [r.index for r in back] == [0, 1, 2] and math.isnan(back[0].latency_ms)
    with open(journal_path(out), "a") as f:  # a kill in the middle of a write
        f.write('{"index": 3, "sam')
    assert len(load_journal(out)) == 3
    journal_path(out).write_text('{"index": 0}\n{}\n')
    with pytest.raises(ValueError, match="line 1"):
        load_journal(out)


def test_a_new_run_moves_a_killed_runs_record_and_journal_aside(tmp_path):
    """Starting again at the same --out must not erase what a killed run served, nor leave a
    record that the documented ``*.json`` globs of complete runs would pick up."""
    from distree_env.runtime.records import append_journal, keep_killed_journal, load_journal

    out = tmp_path / "run.json"
    assert keep_killed_journal(out) is None  # nothing left behind: nothing moved
    for n in (1, 2):
        out.write_text(f"record of killed run {n}")
        append_journal(out, [RequestRecord(index=n, sample=0, label=0, arrival_ms=0.0)])
        aside = keep_killed_journal(out)
        assert aside == tmp_path / f"run.json.killed-{n}" and not journal_path(out).exists()
        assert aside.read_text() == f"record of killed run {n}" and not out.exists()
        assert [r.index for r in load_journal(aside)] == [n]
    assert [p.name for p in tmp_path.glob("run*.json")] == []


def test_a_full_queue_at_arrival_counts_only_the_requests_still_waiting():
    from types import SimpleNamespace

    from distree_env.runtime.aggregator import Aggregator

    def rec(i, arrival, start, dropped=False):
        return RequestRecord(index=i, sample=0, label=0, arrival_ms=arrival, start_ms=start,
                             dropped=dropped)  # fmt: skip

    agg = Aggregator.__new__(Aggregator)
    agg.run = SimpleNamespace(requests=[
        rec(0, 0.0, 0.0), rec(1, 1.0, 10.0), rec(2, 2.0, 20.0),
        rec(3, 3.0, float("nan"), dropped=True), rec(4, 4.0, 30.0),
    ])  # fmt: skip
    # at t = 5: requests 1, 2 and 4 wait (3 was dropped); at t = 25 only 4 does
    agg.sc = SimpleNamespace(arrivals_ms=np.array([0, 1, 2, 3, 4, 5.0, 25.0]), queue_slots=3)
    assert agg._queue_full_at_arrival(5)
    assert not agg._queue_full_at_arrival(6)
    agg.sc.queue_slots = 1
    assert agg._queue_full_at_arrival(6)


@pytest.mark.parametrize(
    ("raw", "line"),
    [
        ("[/__w/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error "
         "[127.0.0.1]:5123: Connection reset by peer GLHF! x", "Read error [127.0.0.1]:5123: "
         "Connection reset by peer"),
        ("[../gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 8000ms for recv "
         "operation to complete. This is typically ...", "Timed out waiting 8000ms for recv "
         "operation to complete"),
    ],
)  # fmt: skip
def test_a_gloo_error_is_told_in_its_own_words_without_source_paths(raw, line):
    from distree_env.runtime.transport import _first_line

    assert _first_line(RuntimeError(raw)) == line
