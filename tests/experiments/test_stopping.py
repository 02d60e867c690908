"""Stopping a long job stops its workers: no training run or benchmark worker goes on without
the process that started it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from experiments import train_agents

ROOT = Path(__file__).resolve().parents[2]
SLEEPER = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(60)"


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie left for init to reap does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _wait_for(path: Path, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text()):
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.05)
    return int(path.read_text())


def test_train_agents_runs_report_their_return_codes(tmp_path):
    commands = [
        ("ppo", "a", [sys.executable, "-c", "pass"]),
        ("dqn", "b", [sys.executable, "-c", "raise SystemExit(3)"]),
    ]
    results = train_agents.run_all(commands, 2, tmp_path)
    assert {k: v["returncode"] for k, v in results.items()} == {"ppo-a": 0, "dqn-b": 3}


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_sigterm_to_train_agents_stops_its_runs(tmp_path):
    pids = [tmp_path / "a.pid", tmp_path / "b.pid"]
    commands = [("ppo", n.stem, [sys.executable, "-c", SLEEPER, str(n)]) for n in pids]

    def kill_when_started() -> None:
        for path in pids:
            _wait_for(path)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=kill_when_started, daemon=True).start()
    started = time.monotonic()
    with pytest.raises(SystemExit) as stopped:
        train_agents.run_all(commands, 2, tmp_path)
    assert stopped.value.code == 128 + signal.SIGTERM
    assert not any(_alive(int(p.read_text())) for p in pids)
    assert time.monotonic() - started < 30


BATCH = """
import sys
from pathlib import Path
from experiments import train_agents

sleeper, logs = sys.argv[1], Path(sys.argv[2])
commands = [("ppo", n, [sys.executable, "-c", sleeper, str(logs / f"{n}.pid")]) for n in "ab"]
train_agents.run_all(commands, 2, logs)
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_a_killed_train_agents_takes_its_runs_with_it(tmp_path):
    """SIGKILL leaves the batch no clean-up of its own: its runs die with it all the same (else
    they would go on training and replace the shipped agents after the user stopped it)."""
    batch = subprocess.Popen([sys.executable, "-c", BATCH, SLEEPER, str(tmp_path)], cwd=ROOT)
    try:
        pids = [_wait_for(tmp_path / f"{n}.pid") for n in "ab"]
        batch.kill()
        batch.wait()
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(p) for p in pids)
    finally:
        batch.kill()


PARENT = """
import multiprocessing, os, sys, time
from concurrent.futures import ProcessPoolExecutor
from experiments.benchmarking.runner import _exit_with_parent

if __name__ == "__main__":
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        1, mp_context=context, initializer=_exit_with_parent, initargs=(os.getpid(),)
    ) as pool:
        print(pool.submit(os.getpid).result(), flush=True)
        pool.submit(time.sleep, 60)
        time.sleep(60)
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_benchmark_workers_end_when_the_benchmark_is_killed():
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        worker = int(parent.stdout.readline())
        assert _alive(worker)
        parent.kill()  # SIGKILL: no clean-up of its own can run
        parent.wait()
        deadline = time.monotonic() + 15
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(worker)
    finally:
        parent.kill()
        parent.stdout.close()
