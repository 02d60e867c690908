"""Issue 11, scripts: ``--resume`` runs no code from the run folder and refuses another config or
algorithm; every bad argument, path or file ends with exit code 2 and one line, before the work."""

from __future__ import annotations

import base64
import errno
import json
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("torch")

from experiments import bench_env, demo, train_agent  # noqa: E402
from tests.agents import SYNTH  # noqa: E402

TINY_PPO = """DistrEE-v0:
  n_envs: 2
  policy: 'MlpPolicy'
  n_steps: 32
  batch_size: 32
  n_epochs: 1
  policy_kwargs: "dict(net_arch=[8])"
"""
TINY_A2C = """DistrEE-v0:
  n_envs: 2
  policy: 'MlpPolicy'
  n_steps: 8
  policy_kwargs: "dict(net_arch=[8])"
"""
#: Nine levels of nine aliases: 9**9 strings once expanded, from 700 bytes.
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]\n"
    for i in range(8)
)


def _exits_2(capsys, main, argv, needle: str) -> str:
    """Run ``main(argv)``; it must exit with code 2 and a last stderr line holding ``needle``."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert needle in last, err
    assert "Traceback" not in err and len(last) < 1000
    return last


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    (tmp_path / "ppo.yml").write_text(TINY_PPO)
    (tmp_path / "a2c.yml").write_text(TINY_A2C)
    (tmp_path / "synthetic.json").write_text(json.dumps(SYNTH))
    (tmp_path / "other.json").write_text(json.dumps({**SYNTH, "deadline_ms": 55.0}))
    return {
        name: tmp_path / name for name in ("ppo.yml", "a2c.yml", "synthetic.json", "other.json")
    }


def _train_argv(tmp_path, files, *extra: str) -> list[str]:
    return [
        "--runs-dir", str(tmp_path / "runs"), "--run-name", "r",
        "--hyperparams", str(files["ppo.yml"]), "--config", str(files["synthetic.json"]),
        "--progress", "false", "--eval-freq", "0", "--checkpoint-freq", "64",
        "--timesteps", "128", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished tiny PPO run (checkpoints, args.json) to copy and resume."""
    root = tmp_path_factory.mktemp("run")
    (root / "ppo.yml").write_text(TINY_PPO)
    (root / "synthetic.json").write_text(json.dumps(SYNTH))
    argv = _train_argv(
        root, {"ppo.yml": root / "ppo.yml", "synthetic.json": root / "synthetic.json"}
    )
    train_agent.main(argv)
    return root / "runs" / "r"


@pytest.fixture
def run(finished_run, tmp_path) -> Path:
    copy = tmp_path / "runs" / "r"
    shutil.copytree(finished_run, copy)
    return copy


# item 1: --resume loads checkpoints without running code ------------------------------------------


def test_resume_runs_no_code_from_a_planted_checkpoint(run, tmp_path, files, monkeypatch):
    import stable_baselines3.common.save_util as save_util

    from agents.training import latest_checkpoint

    marker = tmp_path / "ran"
    blob = base64.b64encode(pickle.dumps(_Touch(marker))).decode()
    payload = {":type:": "<class 'x'>", ":serialized:": blob}
    steps, newest = latest_checkpoint(run / "checkpoints")
    with zipfile.ZipFile(newest) as archive:
        contents = {name: archive.read(name) for name in archive.namelist()}
    header = json.loads(contents["data"])
    header.update(policy_class={**payload, "__module__": "stable_baselines3"}, clip_range=payload,
                  _last_obs=payload, ep_info_buffer=payload, env="os:Planted-v0")  # fmt: skip
    contents["data"] = json.dumps(header).encode()
    planted = run / "checkpoints" / f"ckpt_{steps + 64}_steps.zip"  # the newest: --resume's pick
    with zipfile.ZipFile(planted, "w") as archive:
        for name, value in contents.items():
            archive.writestr(name, value)

    def refuse(*args, **kwargs):
        raise AssertionError("something was unpickled")

    monkeypatch.setattr(save_util.cloudpickle, "loads", refuse)
    result = train_agent.main(_train_argv(tmp_path, files, "--resume", "--timesteps", "320"))
    assert result["timesteps"] >= 320 and not marker.exists()


class _Touch:
    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


# item 7: --resume refuses another config or algorithm -------------------------------------------


def test_resume_refuses_another_config_naming_both(run, tmp_path, files, capsys):
    before = (run / "args.json").read_bytes()
    argv = _train_argv(tmp_path, files, "--resume", "--config", str(files["other.json"]))
    last = _exits_2(capsys, train_agent.main, argv, "--resume")
    assert "synthetic.json" in last and "other.json" in last and "deadline_ms" in last
    assert (run / "args.json").read_bytes() == before  # the record is kept


def test_resume_refuses_another_algorithm_naming_both(run, tmp_path, files, capsys):
    before = (run / "args.json").read_bytes()
    argv = _train_argv(tmp_path, files, "--resume", "--algo", "a2c")
    argv[argv.index("--hyperparams") + 1] = str(files["a2c.yml"])
    last = _exits_2(capsys, train_agent.main, argv, "--algo ppo")
    assert "--algo a2c" in last
    assert (run / "args.json").read_bytes() == before
    (run / "args.json").unlink()  # without the record, the checkpoint itself tells
    _exits_2(capsys, train_agent.main, argv, "holds a ppo agent")


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--seed", "7"], "--seed 1, this call gives --seed 7"),
        (["--request-episodes", "false"], "--request-episodes true, this call gives"),
        (["--drain-weight", "1"], "--drain-weight None then, 1.0 now"),
    ],
)
def test_resume_refuses_another_seed_episode_kind_or_environment_flag(
    run, tmp_path, files, capsys, extra, named
):
    """A resumed run that changed its seed (its streams) or how the learner sees episodes
    would be another run under the same name; a changed environment names the flag."""
    before = (run / "args.json").read_bytes()
    _exits_2(capsys, train_agent.main, _train_argv(tmp_path, files, "--resume", *extra), named)
    assert (run / "args.json").read_bytes() == before


def test_a_successful_resume_keeps_the_first_record(run, tmp_path, files):
    first = json.loads((run / "args.json").read_text())
    train_agent.main(_train_argv(tmp_path, files, "--resume", "--timesteps", "192"))
    record = json.loads((run / "args.json").read_text())
    assert record["args"] == first["args"] and record["resumed"][0]["args"]["timesteps"] == 192


# item 8: scripts, one line and exit code 2 ------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--seed", "-1"], "--seed=-1"),
        (["--seed", str(2**40)], "--seed"),
        (["--requests", str(10**13)], "--requests=10000000000000 is not allowed"),
        (["--requests", "0"], "--requests"),
    ],
)
def test_demo_refuses_bad_numbers(argv, needle, capsys):
    _exits_2(capsys, demo.main, argv, needle)


@pytest.mark.parametrize("seconds", ["inf", "nan", "-1", "1e9"])
def test_bench_env_refuses_unbounded_rounds(seconds, capsys):
    _exits_2(capsys, bench_env.main, ["--seconds", seconds], "--seconds")


def test_outputs_are_checked_before_the_work(tmp_path, capsys, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("the work started before the output was checked")

    monkeypatch.setattr(bench_env, "measure", no_work)
    _exits_2(capsys, bench_env.main, ["--json", str(tmp_path)], "is a directory")
    folder_zip = tmp_path / "agent.zip"
    folder_zip.mkdir()
    _exits_2(capsys, train_agent.main, ["--save-to", str(folder_zip)], "is a directory")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    _exits_2(capsys, train_agent.main, ["--runs-dir", str(a_file)], "is a file, not a folder")

    from experiments import benchmark

    _exits_2(capsys, benchmark.main, ["--out", str(a_file)], "is a file, not a folder")


def test_a_fifo_config_is_refused_without_blocking(tmp_path, capsys):
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)  # opening it for reading would block for ever
    _exits_2(capsys, train_agent.main, ["--config", str(fifo)], "is a FIFO")


def test_hyperparameter_and_config_files_fail_in_one_line(tmp_path, files, capsys):
    unknown = tmp_path / "unknown.yml"
    unknown.write_text(TINY_PPO + "  learning_rat: 0.1\n")
    argv = _train_argv(tmp_path, files)
    argv[argv.index("--hyperparams") + 1] = str(unknown)
    _exits_2(capsys, train_agent.main, argv, "unknown key(s) ['learning_rat']")
    bomb = tmp_path / "bomb.yml"
    bomb.write_text(ALIAS_BOMB)
    argv[argv.index("--hyperparams") + 1] = str(bomb)
    _exits_2(capsys, train_agent.main, argv, "over the cap")
    argv = _train_argv(tmp_path, files, "--config", str(bomb))
    _exits_2(capsys, train_agent.main, argv, "over the cap")
    _exits_2(capsys, train_agent.main, ["--threads", "0"], "--threads=0")


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("  ent_coef: 1e-3\n", "ent_coef='1e-3' is not allowed: a float in [0, 1000] (YAML"),
        ("  gamma: 2.0\n", "gamma=2.0 is not allowed: a float in [0, 1]"),
        ("  n_epochs: 0\n", "n_epochs=0 is not allowed"),
        ("  batch_size: 1.5\n", "batch_size=1.5 is not allowed: a int"),
        # stored under another name in the archive (_stats_window_size)
        ("  stats_window_size: 0\n", "stats_window_size=0 is not allowed: a int in [1,"),
        # kept in the archive only as a pickled schedule
        ("  clip_range: -1\n", "clip_range=-1 is not allowed: a float in [0, 10]"),
    ],
)
def test_hyperparameter_values_are_checked_before_training(tmp_path, files, capsys, line, needle):
    """Values the loader would refuse in the saved agent (or SB3 would crash on mid-run) stop
    the run before it trains, in one line naming the key."""
    bad = tmp_path / "bad.yml"
    bad.write_text(TINY_PPO.replace("  n_epochs: 1\n", "") + line)
    argv = _train_argv(tmp_path, files)
    argv[argv.index("--hyperparams") + 1] = str(bad)
    _exits_2(capsys, train_agent.main, argv, needle)
    wide = tmp_path / "wide.yml"
    wide.write_text(TINY_PPO.replace("net_arch=[8]", "net_arch=[0]"))
    argv[argv.index("--hyperparams") + 1] = str(wide)
    _exits_2(capsys, train_agent.main, argv, "policy_kwargs.net_arch[0]=0 is not allowed")


def test_a_full_disk_ends_in_one_line(tmp_path, files, capsys, monkeypatch):
    import distree_env.io as dio

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(dio.os, "fsync", full)
    last = _exits_2(capsys, train_agent.main, _train_argv(tmp_path, files), "no space left")
    assert "args.json" in last


def test_every_script_ends_an_expected_failure_in_one_line():
    """Each ``experiments`` script's ``main`` is wrapped by ``one_line_errors`` (a file or
    numeric error escaping a script's own checks must not end in a traceback)."""
    import importlib
    import pkgutil

    import experiments

    scripts = [m.name for m in pkgutil.iter_modules(experiments.__path__) if not m.ispkg]
    mains = {
        name: getattr(importlib.import_module(f"experiments.{name}"), "main", None)
        for name in scripts
    }
    mains = {name: main for name, main in mains.items() if main is not None}
    assert len(mains) >= 15
    bare = [name for name, main in mains.items() if not hasattr(main, "__wrapped__")]
    assert bare == []
