"""experiments.best_rule: the live benchmark's rule is chosen on val, in a form run_live reads."""

from __future__ import annotations

import subprocess
import sys

import pytest

from experiments.run_live import RULE_SPECS


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "experiments.best_rule", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_refuses_a_test_trace_in_one_line():
    done = _run("--trace", "cifar10-test")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "never on test" in done.stderr


def test_prints_a_run_live_policy_spec():
    done = _run("--scenario", "isolated", "--trace", "synthetic", "--requests", "256")
    assert done.returncode == 0, done.stderr
    prefix, _, value = done.stdout.strip().partition(":")
    assert prefix in RULE_SPECS
    float(value)


def test_a_bad_profile_names_the_file(tmp_path, capsys):
    from experiments import best_rule

    profile = tmp_path / "profile.json"
    profile.write_text("{not json")
    with pytest.raises(SystemExit) as exc:
        best_rule.main(["--profile", str(profile)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--profile" in err and "profile.json" in err, err


@pytest.mark.parametrize(
    ("argv", "named"),
    [(["--requests", "0"], "--requests=0"), (["--scenario", "nowhere"], "--scenario")],
)
def test_bad_arguments_name_the_flag_before_any_work(argv, named, capsys):
    from experiments import best_rule

    with pytest.raises(SystemExit) as exc:
        best_rule.main(argv)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and named in err, err
