"""bench_learnability end to end with tiny settings: it trains, evaluates on the held-out split
and prints the figure (the real 300k-step run is a benchmark, not a test)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from experiments import bench_learnability  # noqa: E402


def test_tiny_cleanrl_run_prints_reward_per_request(capsys, tmp_path):
    argv = ["--learners", "cleanrl", "--timesteps", "512", "--eval-seeds", "1"]
    out = tmp_path / "learn.json"
    result = bench_learnability.main(
        [*argv, "--eval-requests", "256", "--tuned", "none", "--out", str(out)]
    )
    assert -2.0 < result["cleanrl"]["mean"] < 1.0  # a reward per request (at most the bonus)
    assert "cleanrl defaults, 512 steps:" in capsys.readouterr().out
    assert json.loads(out.read_text())["cleanrl"] == result["cleanrl"]


def test_a_stopped_run_resumes_from_the_learners_it_finished(tmp_path, monkeypatch, capsys):
    """Each learner's figures are written as it finishes; ``--resume`` takes them (for the same
    arguments only) and trains the others."""
    from agents.rules import LastExit

    out = tmp_path / "learn.json"
    argv = ["--learners", "cleanrl", "sb3", "--timesteps", "512", "--eval-seeds", "1",
            "--eval-requests", "128", "--tuned", "none", "--out", str(out)]  # fmt: skip

    def stopped(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench_learnability, "train_sb3", stopped)
    with pytest.raises(SystemExit, match="130"):
        bench_learnability.main(argv)  # stopped while training its second learner
    first = json.loads(out.read_text())["cleanrl"]
    monkeypatch.setattr(bench_learnability, "train_cleanrl", stopped)  # must not train again
    monkeypatch.setattr(bench_learnability, "train_sb3", lambda args: LastExit())
    result = bench_learnability.main([*argv, "--resume"])
    assert result["cleanrl"] == first and "sb3" in json.loads(out.read_text())
    assert "resuming: cleanrl taken from" in capsys.readouterr().err
    # a resume asking for fewer learners keeps the others' figures in the file
    only_sb3 = [*argv[:1], "sb3", *argv[3:]]
    assert "cleanrl" not in bench_learnability.main([*only_sb3, "--resume"])
    assert json.loads(out.read_text())["cleanrl"] == first
    # a damaged figure (not finite) is measured again, not taken
    data = json.loads(out.read_text())
    out.write_text(json.dumps({**data, "sb3": {**data["sb3"], "mean": float("inf")}}))
    monkeypatch.setattr(bench_learnability, "train_sb3", stopped)
    with pytest.raises(SystemExit, match="130"):
        bench_learnability.main([*argv, "--resume"])
    assert "sb3's figures in" in capsys.readouterr().err  # said, not dropped silently
    monkeypatch.setattr(bench_learnability, "train_sb3", lambda args: LastExit())
    # measured otherwise: refused, naming what differs
    with pytest.raises(SystemExit):
        bench_learnability.main([*argv, "--resume", "--seed", "2"])
    assert "was measured with seed 1 (now 2)" in capsys.readouterr().err
    out.write_text("[]")
    with pytest.raises(SystemExit):
        bench_learnability.main([*argv, "--resume"])
    assert "is not a bench_learnability result" in capsys.readouterr().err


def test_held_out_config_uses_test_traces():
    config, scenario = bench_learnability.held_out_config("DistrEE-Cellular-v2")
    assert scenario == "cellular"
    assert config.trace.endswith("-test") and config.cluster.bandwidth.split == "test"
    assert config.arrivals.split == "test"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [(["--env-id", "CartPole-v1"], "not a DistrEE environment"),
     (["--tuned", "nosuch"], "--tuned 'nosuch'")],
)  # fmt: skip
def test_a_foreign_id_or_a_missing_tuned_agent_is_one_line(argv, needle, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        bench_learnability.main(
            [*argv, "--timesteps", "64", "--eval-seeds", "1", "--out", str(tmp_path / "o.json")]
        )
    assert exc.value.code == 2 and needle in capsys.readouterr().err


def test_a_resume_beside_a_shipped_tuned_agent_takes_its_learners(tmp_path, monkeypatch):
    """The tuned agent's files are part of what a resume must share, as JSON keeps them."""
    from agents.rules import LastExit

    out = tmp_path / "learn.json"
    argv = ["--learners", "cleanrl", "--eval-seeds", "1", "--eval-requests", "128",
            "--out", str(out)]  # fmt: skip
    monkeypatch.setattr(bench_learnability, "train_cleanrl", lambda args: LastExit())
    first = bench_learnability.main(argv)
    assert json.loads(out.read_text())["arguments"]["tuned_sha256"][0]  # the shipped PPO's

    def stopped(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench_learnability, "train_cleanrl", stopped)  # must not train again
    assert bench_learnability.main([*argv, "--resume"])["cleanrl"] == first["cleanrl"]
