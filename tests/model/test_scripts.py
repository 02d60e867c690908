"""Backbone scripts end to end on a tiny generated archive: train, resume after SIGKILL, export."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from distree_env.trace import ExitTrace

ROOT = Path(__file__).resolve().parents[2]
TINY_ARGS = [
    "--widths",
    "4",
    "8",
    "--blocks",
    "0",
    "--batch-size",
    "4",
    "--val-size",
    "8",
    "--threads",
    "1",
    "--bf16",
    "false",
    "--progress",
    "false",
]


def _train_cmd(data: Path, tmp: Path, epochs: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "experiments.train_backbone",
        "--data",
        str(data),
        *TINY_ARGS,
        "--epochs",
        str(epochs),
        "--runs-dir",
        str(tmp / "runs"),
        "--run-name",
        "r",
        "--output",
        str(tmp / "bb.pt"),
        *extra,
    ]


def _run(cmd: list[str], tmp: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=_env(tmp), capture_output=True, text=True, timeout=300)


def _env(tmp: Path) -> dict:
    return {
        **os.environ,
        "DISTREE_CACHE": str(tmp / "cache"),
        "DISTREE_CHECKPOINTS": str(tmp / "ckpt"),
    }


def test_killed_training_resumes_to_the_same_weights(tiny_cifar, tmp_path):
    data, _ = tiny_cifar
    epochs = 30
    proc = subprocess.Popen(
        _train_cmd(data, tmp_path, epochs),
        cwd=ROOT,
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    last = tmp_path / "runs" / "r" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert last.exists() and not (tmp_path / "bb.pt").exists(), "the run should die mid-training"
    done = torch.load(last, weights_only=True)["epoch"]
    assert 1 <= done < epochs

    out = _run(_train_cmd(data, tmp_path, epochs, "--resume"), tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resumed" in out.stdout
    resumed = torch.load(tmp_path / "bb.pt", weights_only=True)["state_dict"]

    fresh_dir = tmp_path / "fresh"
    fresh_dir.mkdir()
    out = _run(_train_cmd(data, fresh_dir, epochs), fresh_dir)
    assert out.returncode == 0, out.stderr[-2000:]
    fresh = torch.load(fresh_dir / "bb.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(resumed[k], fresh[k]) for k in fresh)


def test_existing_run_without_resume_is_refused(tiny_cifar, tmp_path):
    data, _ = tiny_cifar
    assert _run(_train_cmd(data, tmp_path, 1), tmp_path).returncode == 0
    out = _run(_train_cmd(data, tmp_path, 1), tmp_path)
    assert out.returncode == 2 and "--resume" in out.stderr and "Traceback" not in out.stderr


def test_export_writes_valid_traces_and_manifest(tiny_cifar, tmp_path):
    data, _ = tiny_cifar
    ckpt = tmp_path / "ckpt"
    assert (
        _run(
            _train_cmd(data, tmp_path, 1, "--output", str(ckpt / "backbone.pt")), tmp_path
        ).returncode
        == 0
    )
    export = [sys.executable, "-m", "experiments.export_traces", "--data", str(data)]
    export += ["--backbone", str(ckpt / "backbone.pt"), "--out-dir", str(ckpt / "traces")]
    out = _run([*export, "--val-size", "8", "--threads", "1", "--bf16", "false"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    manifest = json.loads((ckpt / "MANIFEST.json").read_text())["files"]
    assert {"backbone.pt", "traces/cifar10-val.npz", "traces/cifar10-test.npz"} <= set(manifest)
    for split, n in (("val", 8), ("test", 20)):
        trace = ExitTrace.load(ckpt / "traces" / f"cifar10-{split}.npz")
        assert trace.n == n and trace.metadata["split"] == split
        assert (
            manifest[f"traces/cifar10-{split}.npz"]["metrics"]["exit_accuracy"]
            == trace.metadata["exit_accuracy"]
        )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--epochs", "0"], "epochs=0"),
        (["--lr", "nan"], "lr=nan"),
        (["--topology", "ring"], "invalid choice"),
        (["--data", "/nonexistent.tar.gz"], "does not exist"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path, args, message):
    out = _run([sys.executable, "-m", "experiments.train_backbone", *TINY_ARGS, *args], tmp_path)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
