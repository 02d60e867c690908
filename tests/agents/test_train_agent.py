"""experiments.train_agent: clean CLI errors, resume after SIGKILL, shipping to the manifest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from agents.splits import TEST_SEED_BASE  # noqa: E402
from experiments import train_agent  # noqa: E402
from tests.agents import SYNTH  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TINY_PPO = """DistrEE-v2: &tiny
  n_envs: 4
  policy: 'MlpPolicy'
  n_steps: 64
  batch_size: 64
  n_epochs: 1
  policy_kwargs: "dict(net_arch=[16])"
DistrEE-v0:
  <<: *tiny
"""


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.yml"
    path.write_text(TINY_PPO)
    (tmp_path / "synthetic.json").write_text(json.dumps(SYNTH))
    return path


def _common(tmp_path, tiny) -> list[str]:
    """Tiny settings on the synthetic trace (a later ``--config`` wins)."""
    return [
        "--runs-dir",
        str(tmp_path / "runs"),
        "--hyperparams",
        str(tiny),
        "--progress",
        "false",
        "--val-requests",
        "256",
        "--config",
        str(tmp_path / "synthetic.json"),
    ]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--algo", "sac"], "--algo"),
        (["--timesteps", "-5"], "--timesteps"),
        (["--timesteps", "ten"], "--timesteps"),
        (["--n-envs", "-1"], "--n-envs"),
        (["--config", "/nonexistent.json"], "--config"),
        (["--save-to", "agent.pt"], "--save-to"),
        (["--run-name", "a/b"], "--run-name"),
        (["--threads", "0"], "--threads"),
        (["--seed", str(2**40)], "--seed"),
        (["--eval-requests", str(10**13)], "--eval-requests"),
        (["--drain-weight", "-1"], "--drain-weight"),
        (["--drain-weight", "nan"], "--drain-weight"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        train_agent.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert needle in err[-1] and "Traceback" not in "\n".join(err)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("{not json", "cannot parse"),
        ('{"deadline_ms": -1}', "deadline_ms"),
        ('{"colour": 1}', "colour"),
        ("[1, 2]", "mapping"),
        ('{"trace": "cifar10-test"}', "is a test split"),
    ],
)
def test_bad_config_file_exits_2(tmp_path, tiny, content, needle, capsys):
    cfg = tmp_path / "env.json"
    cfg.write_text(content)
    with pytest.raises(SystemExit) as exc:
        train_agent.main([*_common(tmp_path, tiny), "--config", str(cfg)])
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err


def test_a_trace_marked_test_in_its_metadata_is_refused(tmp_path, tiny, capsys):
    """Agents learn on val: a test trace under another name is refused by its metadata."""
    from distree_env.traces import synthetic_trace

    trace = synthetic_trace(n=64)
    trace.metadata["split"] = "test"
    trace.save(tmp_path / "renamed.npz")
    cfg = tmp_path / "env.json"
    cfg.write_text(json.dumps({"trace": str(tmp_path / "renamed.npz")}))
    with pytest.raises(SystemExit) as exc:
        train_agent.main([*_common(tmp_path, tiny), "--config", str(cfg)])
    assert exc.value.code == 2
    assert "marked split='test'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_save_to_needs_a_held_out_split_and_says_so_before_training(tmp_path, tiny, capsys):
    """A trace without a test counterpart cannot be "held out"; the run stops before training,
    instead of evaluating on the training trace or failing after it."""
    from distree_env.traces import synthetic_trace

    synthetic_trace(n=64).save(tmp_path / "mine-val.npz")  # no mine-test.npz beside it
    cfg = tmp_path / "env.json"
    cfg.write_text(json.dumps({"trace": str(tmp_path / "mine-val.npz")}))
    argv = [*_common(tmp_path, tiny), "--config", str(cfg), "--save-to", str(tmp_path / "a.zip")]
    with pytest.raises(SystemExit) as exc:
        train_agent.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--save-to evaluates on the held-out split" in err and "mine-test.npz" in err
    assert not (tmp_path / "runs").exists()


def test_yaml_config_and_ship_to_manifest(tmp_path, tiny, checkpoints):
    cfg = tmp_path / "env.yml"
    cfg.write_text("trace: synthetic\nrequests_per_episode: 8\nreward:\n  latency_weight: 0.2\n")
    dest = checkpoints / "agents" / "tiny.zip"
    result = train_agent.main(
        [
            *_common(tmp_path, tiny),
            "--config",
            str(cfg),
            "--timesteps",
            "512",
            "--eval-freq",
            "256",
            "--save-to",
            str(dest),
            "--eval-seeds",
            "2",
            "--eval-requests",
            "64",
        ]
    )
    assert result["manifest"] and dest.is_file()
    manifest = json.loads((checkpoints / "MANIFEST.json").read_text())
    entry = manifest["files"]["agents/tiny.zip"]
    assert entry["metrics"]["seeds"] == 2 and "mean" in entry["metrics"]["mean_reward"]
    assert entry["metrics"]["first_seed"] == TEST_SEED_BASE  # held-out seeds, not training's
    assert entry["metrics"]["evaluated_on"] == "synthetic:seed=1"
    args = json.loads((Path(result["run_dir"]) / "args.json").read_text())
    assert args["env_config"]["requests_per_episode"] == 8
    stale = dest.with_name("tiny.vecnormalize.npz")  # an earlier agent's statistics (issue 11.4)
    stale.write_bytes(b"old statistics")
    again = train_agent.main(
        [
            *_common(tmp_path, tiny),
            "--config",
            str(cfg),
            "--timesteps",
            "256",
            "--eval-freq",
            "0",
            "--save-to",
            str(dest),
            "--seed",
            "2",
            "--eval-seeds",
            "1",
            "--eval-requests",
            "32",
        ]
    )  # replaces it
    manifest = json.loads((checkpoints / "MANIFEST.json").read_text())
    assert again["manifest"] and manifest["files"]["agents/tiny.zip"]["sha256"] != entry["sha256"]
    assert not stale.exists() and "sidecars" not in manifest["files"]["agents/tiny.zip"]


def test_resume_after_sigkill(tmp_path, tiny, capsys):
    argv = [
        sys.executable,
        "-m",
        "experiments.train_agent",
        "--timesteps",
        "12000",
        "--checkpoint-freq",
        "1024",
        "--eval-freq",
        "0",
        "--run-name",
        "killed",
        *_common(tmp_path, tiny),
    ]
    ckpts = tmp_path / "runs" / "killed" / "checkpoints"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300  # generous: a loaded 2-core machine imports torch slowly
    while not list(ckpts.glob("ckpt_*.zip")) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it was killed"
    assert list(ckpts.glob("ckpt_*.zip")), "no checkpoint before the kill"
    # the same command again: refuses to overwrite; with --resume it continues and finishes
    again = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    assert again.returncode == 2 and "--resume" in again.stderr
    resumed = subprocess.run(
        [*argv, "--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stdout
    result = json.loads(resumed.stdout[resumed.stdout.index("{") :])
    assert result["timesteps"] >= 12000
    assert (tmp_path / "runs" / "killed" / "final_model.zip").is_file()
    finished = train_agent.main([*argv[3:], "--resume"])  # nothing left to do: still fine
    assert finished["timesteps"] == result["timesteps"]
    # a resume continues the same run: other hyperparameters, or no run to continue, stop it
    other = tmp_path / "other.yml"
    other.write_text(TINY_PPO.replace("n_epochs: 1", "n_epochs: 2"))
    changed = [*argv[3:], "--resume"]
    changed[changed.index("--hyperparams") + 1] = str(other)
    with pytest.raises(SystemExit) as exc:
        train_agent.main(changed)
    assert exc.value.code == 2
    assert "n_epochs': 1" in capsys.readouterr().err  # the run's own setting, named
    lost = [a for a in argv[3:] if a not in ("--run-name", "killed")] + ["--resume", "--seed", "9"]
    with pytest.raises(SystemExit) as exc:
        train_agent.main(lost)
    assert exc.value.code == 2 and "--resume: no run" in capsys.readouterr().err
    typo = [*argv[3:], "--resume"]
    typo[typo.index("killed")] = "kiled"
    with pytest.raises(SystemExit) as exc:
        train_agent.main(typo)
    assert exc.value.code == 2 and "holds no run" in capsys.readouterr().err


def test_a_resumed_run_keeps_its_best_model_on_val(tmp_path, tiny, capsys):
    """Resuming, also a finished run with val evaluations on, keeps the earlier best model
    unless a later evaluation beats its recorded val reward."""
    argv = [*_common(tmp_path, tiny), "--timesteps", "512", "--eval-freq", "256",
            "--run-name", "r"]  # fmt: skip
    first = train_agent.main(argv)
    run = tmp_path / "runs" / "r"
    record = json.loads((run / "best_model.json").read_text())
    assert record["mean_reward"] == max(r for _, r in first["val_history"])
    (run / "best_model.json").write_text(json.dumps({"mean_reward": 1e9, "timesteps": 0}))
    before = (run / "best_model.zip").read_bytes()
    again = train_agent.main([*argv, "--resume"])  # nothing left, the final model was evaluated
    assert again["timesteps"] == first["timesteps"] and again["val_history"] == first["val_history"]
    assert (run / "best_model.zip").read_bytes() == before  # 1e9 was not beaten
    (run / "best_model.json").write_text("{}")
    with pytest.raises(SystemExit):
        train_agent.main([*argv, "--resume"])
    (run / "best_model.json").write_text(json.dumps({**record, "mean_reward": -9.0}))
    train_agent.main([*argv, "--resume"])  # the record's own model: its reward is believed
    assert json.loads((run / "best_model.json").read_text())["mean_reward"] == -9.0


def test_a_kill_between_the_best_model_and_its_record_is_measured_again(tmp_path, tiny, capsys):
    """A run stopped after writing ``best_model.zip`` (or its statistics) and before its record
    resumes with the model on disk evaluated again on val, not with another model's reward."""
    argv = [*_common(tmp_path, tiny), "--timesteps", "512", "--eval-freq", "256",
            "--run-name", "r"]  # fmt: skip
    train_agent.main(argv)
    run = tmp_path / "runs" / "r"
    record = json.loads((run / "best_model.json").read_text())
    on_val = record["mean_reward"]
    # the record of another (better) model: the zip on disk is not the one it describes
    (run / "best_model.json").write_text(
        json.dumps({**record, "mean_reward": 1e9, "sha256": "0" * 64})
    )
    with pytest.warns(UserWarning, match="is not the model .* evaluated again on val"):
        again = train_agent.main([*argv, "--resume"])
    assert again["val_reward"] == pytest.approx(on_val)  # measured, not the record's 1e9
    fixed = json.loads((run / "best_model.json").read_text())
    assert fixed["mean_reward"] == pytest.approx(on_val) and fixed["sha256"] == record["sha256"]
    # statistics written, the model not yet: the record names statistics that are not on disk
    (run / "best_model.json").write_text(
        json.dumps({**fixed, "mean_reward": 1e9, "normalization_sha256": "1" * 64})
    )
    with pytest.warns(UserWarning, match="is not the model"):
        assert train_agent.main([*argv, "--resume"])["val_reward"] == pytest.approx(on_val)
    (run / "best_model.json").unlink()  # stopped before the first record was written
    with pytest.warns(UserWarning, match="has no record"):
        assert train_agent.main([*argv, "--resume"])["val_reward"] == pytest.approx(on_val)
    (run / "best_model.json").unlink()
    (run / "best_model.zip").write_bytes(b"PK not a model")  # cannot be measured: named
    capsys.readouterr()
    with pytest.raises(SystemExit, match="2"):
        train_agent.main([*argv, "--resume"])
    assert "cannot be evaluated again" in capsys.readouterr().err


def test_a_best_model_saved_with_another_models_statistics_is_dropped(tmp_path, tiny, monkeypatch):
    """A run stopped between a best model's statistics and its archive (at its last evaluation)
    resumes without that pair: it is removed, and the final model is evaluated and chosen."""
    from agents import training
    from agents.loading import load_agent
    from agents.policy import sidecar

    hyperparams = tmp_path / "normalised.yml"
    hyperparams.write_text(
        TINY_PPO.replace("  n_epochs: 1\n", "  n_epochs: 1\n  normalize: true\n")
    )
    argv = [*_common(tmp_path, tiny), "--hyperparams", str(hyperparams), "--timesteps", "512",
            "--eval-freq", "256", "--run-name", "r"]  # fmt: skip
    train_agent.main(argv)
    run = tmp_path / "runs" / "r"
    best = run / "best_model.zip"
    stats = dict(np.load(sidecar(best)))
    np.savez(sidecar(best), **{**stats, "model_sha256": np.array("0" * 64)})  # another model's
    with pytest.warns(UserWarning, match="saved with another model .* removed"):
        again = train_agent.main([*argv, "--resume"])
    assert again["val_reward"] is not None and again["model"] == str(best)
    assert load_agent(best, trust=True).normalizer is not None  # a pair that loads
    steps = [s for s, _ in again["val_history"]]
    assert steps == [256, 512]  # the final model evaluated again at its own step, once
    # stopped so at 256 of 512 steps: the checkpoint resumed from competes again
    short = [*argv[:-1], "r2", "--checkpoint-freq", "256"]
    short[short.index("--timesteps") + 1] = "256"
    train_agent.main(short)
    best = tmp_path / "runs" / "r2" / "best_model.zip"
    stats = dict(np.load(sidecar(best)))
    np.savez(sidecar(best), **{**stats, "model_sha256": np.array("0" * 64)})
    short[short.index("--timesteps") + 1] = "512"
    real = training.evaluate

    def worse_later(policy, *args):  # the model at 256 must win, if it competes
        metrics = dict(real(policy, *args))
        metrics["mean_reward"] -= 1.0 * (policy.model.num_timesteps > 256)
        return metrics

    monkeypatch.setattr(training, "evaluate", worse_later)
    with pytest.warns(UserWarning, match="removed"):
        resumed = train_agent.main([*short, "--resume"])
    history = resumed["val_history"]
    assert [s for s, _ in history] == [256, 512] and resumed["val_reward"] == history[0][1]


def test_tensorboard_names_say_per_request_or_per_episode(tmp_path, tiny):
    """The val evaluation logs the benchmark's metrics; totals and per-request figures have
    different names; hyperparameters and config are logged as text."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tmp_path / "short.json"
    cfg.write_text(json.dumps({**SYNTH, "requests_per_episode": 8}))
    argv = [*_common(tmp_path, tiny), "--config", str(cfg), "--timesteps", "1024"]
    result = train_agent.main(
        [*argv, "--eval-freq", "512", "--run-name", "tb", "--drain-weight", "0.5"]
    )
    record = json.loads((Path(result["run_dir"]) / "args.json").read_text())
    assert record["env_config"]["reward"]["drain_weight"] == 0.5  # the flag sets the config's
    acc = EventAccumulator(result["run_dir"])
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    assert {"distree_val/per_request/mean_reward", "distree_val/per_request/qos_rate"} <= scalars
    assert "distree_train/per_request/accuracy" in scalars
    assert "distree_train/per_episode/return" in scalars
    assert "distree_train/per_episode/reward_queue" in scalars
    assert not any(t.startswith("distree/") for t in scalars)  # the old, ambiguous names
    texts = " ".join(acc.Tags()["tensors"])
    assert "run/hyperparameters" in texts and "run/env_config" in texts
    assert len(result["val_history"]) >= 2 and Path(result["model"]).name == "best_model.zip"


def test_run_names_follow_the_reward_of_the_run():
    """A run with ``--drain-weight 1`` is a v3 environment and is named (and tuned) as one."""
    assert train_agent.env_id_for("bursty-stream") == "DistrEE-Bursty-v2"
    assert train_agent.env_id_for("bursty-stream", 1.0) == "DistrEE-Bursty-v3"
    assert train_agent.env_id_for("isolated", 1.0) == "DistrEE-v0"  # no v3 of it


def test_an_off_policy_run_does_not_resume_without_its_replay_buffer(tmp_path, capsys):
    """Without its ``.replay.npz`` a DQN checkpoint would resume on an empty buffer."""
    hyperparams = tmp_path / "dqn.yml"
    hyperparams.write_text(
        "DistrEE-v0:\n  n_envs: 2\n  policy: 'MlpPolicy'\n  buffer_size: 1000\n"
        '  learning_starts: 50\n  policy_kwargs: "dict(net_arch=[16])"\n'
    )
    (tmp_path / "synthetic.json").write_text(json.dumps(SYNTH))
    argv = [*_common(tmp_path, hyperparams), "--algo", "dqn", "--timesteps", "256",
            "--eval-freq", "0", "--run-name", "d"]  # fmt: skip
    train_agent.main(argv)
    checkpoints = tmp_path / "runs" / "d" / "checkpoints"
    # resumed with its buffer: the buffer goes on filling from where it was (256 steps of
    # 2 envs, then 256 more: position 256, where a fresh buffer would be at 128)
    train_agent.main([*argv, "--timesteps", "512", "--resume"])
    replay = checkpoints / "ckpt_512_steps.replay.npz"
    with np.load(replay) as data:
        assert int(data["pos"]) == 256
    replay.unlink()
    with pytest.raises(SystemExit) as exc:
        train_agent.main([*argv, "--timesteps", "768", "--resume"])
    assert exc.value.code == 2
    assert "has no replay buffer beside it" in capsys.readouterr().err


def _policy_weights(archive: Path) -> dict:
    import zipfile

    import torch

    with zipfile.ZipFile(archive) as z, z.open("policy.pth") as f:
        return torch.load(f, weights_only=True)


def test_a_checkpoint_of_n_steps_has_learned_from_all_n(tmp_path, tiny):
    """Checkpoints are written after the update of the steps they are named for (PPO's step
    that ends a rollout comes before that rollout's update), so ``ckpt_N`` equals the model of
    a run of N steps, and a resumed run loses no update."""
    rollout = 4 * 64  # n_envs x n_steps of TINY_PPO
    common = [*_common(tmp_path, tiny), "--eval-freq", "0", "--checkpoint-freq", str(rollout)]
    train_agent.main([*common, "--timesteps", str(2 * rollout), "--run-name", "long"])
    short = train_agent.main([*common, "--timesteps", str(rollout), "--run-name", "short"])
    ckpt = tmp_path / "runs" / "long" / "checkpoints" / f"ckpt_{rollout}_steps.zip"
    first, trained = (
        _policy_weights(ckpt),
        _policy_weights(Path(short["run_dir"]) / "final_model.zip"),
    )
    assert first.keys() == trained.keys()
    assert all(np.array_equal(first[k].numpy(), trained[k].numpy()) for k in first)


def test_a_resumed_run_reports_the_val_history_of_its_earlier_part(tmp_path, tiny):
    argv = [*_common(tmp_path, tiny), "--eval-freq", "256", "--checkpoint-freq", "256",
            "--run-name", "h"]  # fmt: skip
    first = train_agent.main([*argv, "--timesteps", "512"])
    assert [s for s, _ in first["val_history"]] == [256, 512]
    resumed = train_agent.main([*argv, "--timesteps", "768", "--resume"])
    assert resumed["val_history"][:2] == first["val_history"]  # kept across the resume
    assert [s for s, _ in resumed["val_history"]] == [256, 512, 768]


def test_a_run_record_with_parts_of_the_wrong_kind_is_one_line(tmp_path, tiny, capsys):
    argv = [*_common(tmp_path, tiny), "--timesteps", "256", "--eval-freq", "0",
            "--run-name", "r"]  # fmt: skip
    train_agent.main(argv)
    record = tmp_path / "runs" / "r" / "args.json"
    good = json.loads(record.read_text())
    for part in ("settings", "args", "env_config"):
        record.write_text(json.dumps({**good, part: 5}))
        capsys.readouterr()
        with pytest.raises(SystemExit, match="2"):
            train_agent.main([*argv, "--resume"])
        assert "is not a readable run record" in capsys.readouterr().err


def test_a_resumed_run_is_reproducible(tmp_path, tiny):
    """Two resumptions of the same checkpoint train the same model (the random streams restart
    from the seed and the step, as the env's do)."""
    import shutil

    argv = [*_common(tmp_path, tiny), "--timesteps", "512", "--checkpoint-freq", "256",
            "--eval-freq", "0"]  # fmt: skip
    train_agent.main([*argv, "--run-name", "a"])
    runs = tmp_path / "runs"
    (runs / "a" / "checkpoints" / "ckpt_512_steps.zip").unlink()  # as if killed after 256 steps
    shutil.copytree(runs / "a", runs / "b")
    for name in ("a", "b"):
        train_agent.main([*argv, "--run-name", name, "--resume"])
    weights = [zipfile.ZipFile(runs / name / "final_model.zip").read("policy.pth") for name in "ab"]
    assert weights[0] == weights[1]
