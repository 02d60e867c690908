"""The script that makes the shipped arrival traces, on tiny raw files of the Azure format."""

from __future__ import annotations

from pathlib import Path

import pytest

from distree_env.cluster.arrivals import load_arrival_csv
from experiments import prepare_arrival_traces

HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def _raw(path, seconds):
    rows = [f"2023-11-16 18:{int(s) // 60:02d}:{s % 60:010.7f},100,10\n" for s in seconds]
    path.write_text("\ufeff" + HEADER + "".join(rows), encoding="utf-8")
    return str(path)


def test_each_service_is_cut_into_a_val_and_a_test_half(tmp_path, capsys):
    conversation = _raw(tmp_path / "conv.csv", [0.0, 1.5, 2.0, 3.25, 10.0, 12.0])
    code = _raw(tmp_path / "code.csv", [5.0, 0.0, 7.5, 12.5, 20.0])  # out of order: sorted
    out = tmp_path / "out"
    prepare_arrival_traces.main(["--conversation", conversation, "--code", code, "--out", str(out)])
    # the midpoint of the conversation's 12 s: val before it, test from it (re-based to 0)
    assert load_arrival_csv(out / "conversation-val.csv").tolist() == [0.0, 1500.0, 2000.0, 3250.0]
    assert (out / "conversation-test.csv").read_text() == "arrival_ms\n0.000\n2000.000\n"
    assert load_arrival_csv(out / "code-val.csv").tolist() == [0.0, 5000.0, 7500.0]
    assert "code test: code-test.csv: 2 requests over 8 s" in capsys.readouterr().out


def test_a_half_too_short_to_replay_is_refused(tmp_path):
    short = _raw(tmp_path / "short.csv", [0.0, 1.0, 2.0, 10.0])
    with pytest.raises(ValueError, match="short.csv: its test half holds 1 request"):
        prepare_arrival_traces.halves(prepare_arrival_traces.arrival_ms(Path(short)), short)


def test_a_row_that_is_not_a_timestamp_is_named(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text(HEADER + "2023-11-16 18:00:00.0000000,1,1\nyesterday,1,1\n")
    with pytest.raises(SystemExit) as info:
        prepare_arrival_traces.main(["--conversation", str(bad), "--code", str(bad)])
    assert info.value.code != 0
    with pytest.raises(ValueError, match=r"bad.csv:3: not a TIMESTAMP row"):
        prepare_arrival_traces.arrival_ms(bad)
    bad.write_text(HEADER + "x" * 200_000 + ",1,1\n")  # over the csv module's field limit
    with pytest.raises(ValueError, match=r"bad.csv:2: not a CSV row"):
        prepare_arrival_traces.arrival_ms(bad)
    bad.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ValueError, match=r"bad.csv: not UTF-8 text"):
        prepare_arrival_traces.arrival_ms(bad)


@pytest.mark.parametrize("given", ["conversation", "code"])
def test_both_inputs_are_required_and_nothing_is_written_without_them(tmp_path, capsys, given):
    raw = _raw(tmp_path / "raw.csv", [0.0, 1.5, 2.0, 3.25, 10.0, 12.0])
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        prepare_arrival_traces.main([f"--{given}", raw, "--out", str(out)])
    missing = "code" if given == "conversation" else "conversation"
    assert info.value.code == 2 and f"--{missing} is required" in capsys.readouterr().err
    assert not out.exists()


def test_a_bad_second_input_writes_nothing(tmp_path, capsys):
    """The conversation file is good, the code file is not: its error, and no file written."""
    good = _raw(tmp_path / "conv.csv", [0.0, 1.5, 2.0, 3.25, 10.0, 12.0])
    short = _raw(tmp_path / "code.csv", [0.0, 1.0, 2.0, 10.0])  # a test half of 1 request
    out = tmp_path / "out"
    out.mkdir()
    for code in (short, str(tmp_path / "missing.csv"), str(tmp_path)):
        with pytest.raises(SystemExit) as info:
            prepare_arrival_traces.main(["--conversation", good, "--code", code, "--out", str(out)])
        assert info.value.code == 2 and "code" in capsys.readouterr().err
        assert list(out.iterdir()) == []


def test_help_says_which_inputs_are_required(capsys):
    with pytest.raises(SystemExit):
        prepare_arrival_traces.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--conversation CONVERSATION required:" in text and "--code CODE required:" in text
