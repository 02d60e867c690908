"""rl-zoo3: hyperparameters for every registered id and algorithm, and the documented
``python -m rl_zoo3.train`` / ``enjoy`` / ``record_video`` path on a tiny budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from gymnasium.envs.registration import registry

import distree_env  # noqa: F401  (registers the ids)

ROOT = Path(__file__).resolve().parents[1]
HYPERPARAMS = ROOT / "experiments" / "hyperparams"
ALGOS = sorted(p.stem for p in HYPERPARAMS.glob("*.yml"))
#: The id the command-line path runs on: the default scenario (not DistrEE-v0, whose entry rl-zoo3
#: once was the only one it found).
ZOO_ID = "DistrEE-v3"
DISTREE_IDS = sorted(
    env_id for env_id, spec in registry.items() if str(spec.entry_point).startswith("distree_env")
)


@pytest.mark.parametrize("algo", ALGOS)
def test_every_registered_id_has_hyperparameters(algo):
    """rl-zoo3 stops with 'Hyperparameters not found for <algo>-<id>' otherwise."""
    entries = yaml.safe_load((HYPERPARAMS / f"{algo}.yml").read_text(encoding="utf-8"))
    assert len(DISTREE_IDS) >= 2
    missing = [env_id for env_id in DISTREE_IDS if env_id not in entries]
    assert not missing, f"{algo}.yml has no entry for {missing}"
    assert all("n_timesteps" in entries[i] and "policy" in entries[i] for i in DISTREE_IDS)


#: Runs rl-zoo3's command-line modules one after the other in ONE process (importing torch, SB3
#: and rl-zoo3 once: seconds on a 2-core machine), each with its own ``sys.argv``, as
#: ``python -m rl_zoo3.<module> <args>`` would. The package is imported first for record_video,
#: which has no --gym-packages and looks the id up before it makes the env (docs/libraries.md).
RUNNER = """
import json, runpy, sys
import distree_env
for module, argv in json.loads(sys.argv[1]):
    sys.argv = [module, *argv]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def test_zoo_train_enjoy_record_video(tmp_path):
    pytest.importorskip("rl_zoo3", reason="needs the zoo extra: pip install -e '.[zoo]'")
    logs, videos = tmp_path / "logs", tmp_path / "videos"
    common = ["--algo", "ppo", "--env", ZOO_ID]
    package = ["--gym-packages", "distree_env"]
    train = [*common, *package, "--conf-file", str(HYPERPARAMS / "ppo.yml"), "-f", str(logs),
             "-n", "64", "--hyperparams", "n_envs:2", "n_steps:32", "batch_size:32",
             "n_epochs:1", "--eval-freq", "-1", "--seed", "0", "--device", "cpu",
             "--num-threads", "1"]  # fmt: skip
    # enjoy renders in "human" mode unless --no-render: headless, the env warns and goes on
    enjoy = [*common, *package, "-f", str(logs), "-n", "40", "--device", "cpu"]
    record = [*common, "-f", str(logs), "-n", "40", "-o", str(videos)]
    runs = [("rl_zoo3.train", train), ("rl_zoo3.enjoy", enjoy), ("rl_zoo3.record_video", record)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps(runs)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert (logs / "ppo" / f"{ZOO_ID}_1" / f"{ZOO_ID}.zip").is_file()
    assert "no display" in done.stderr  # enjoy's human frames reached the env's renderer
    found = list(videos.glob("*.mp4"))
    assert len(found) == 1 and found[0].stat().st_size > 1000
