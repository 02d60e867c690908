"""The local launcher: stopped by a signal, it takes the processes it started with it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

LAUNCHER = (
    "import sys; from distree_env.runtime.launch import spawn_local; "
    "sys.exit(spawn_local(['sleep', '60'], 3, 1.0, 1.0))"
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL])
def test_a_stopped_launcher_leaves_no_process_behind(signum):
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER], stdout=subprocess.PIPE, text=True)
    pids = []
    try:
        while len(pids) < 3:
            line = launcher.stdout.readline()
            assert line, "the launcher ended before starting its processes"
            pids += [int(m) for m in re.findall(r"pid (\d+)", line)]
        launcher.send_signal(signum)
        status = launcher.wait(timeout=30)
        assert status == (-signum if signum == signal.SIGKILL else 128 + signum)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [p for p in pids if _alive(p)], "processes outlived their launcher"
    finally:
        launcher.kill()
        for p in pids:
            if _alive(p):
                os.kill(p, signal.SIGKILL)
