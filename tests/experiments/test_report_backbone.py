"""experiments.report_backbone: AUC of each exit signal, the shipped tables, a trace of yours."""

from __future__ import annotations

import numpy as np
import pytest

from distree_env.traces import synthetic_trace
from experiments import report_backbone


def _pairs_auc(score: np.ndarray, positive: np.ndarray) -> float:
    """By definition: the share of (positive, negative) pairs ranked right, ties counting half."""
    pos, neg = score[positive], score[~positive]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (pos.size * neg.size))


def test_auc_is_the_share_of_pairs_ranked_right():
    rng = np.random.default_rng(0)
    score = rng.integers(0, 5, 300).astype(float)  # many ties
    positive = rng.random(300) < score / 6
    assert report_backbone.auc(score, positive) == pytest.approx(_pairs_auc(score, positive))
    assert report_backbone.auc(np.arange(4.0), np.array([0, 0, 1, 1], bool)) == 1.0
    assert report_backbone.auc(-np.arange(4.0), np.array([0, 0, 1, 1], bool)) == 0.0
    assert np.isnan(report_backbone.auc(np.arange(3.0), np.ones(3, bool)))
    # a constant score is no criterion (the feature difference at the first exit): not 0.5
    assert np.isnan(report_backbone.auc(np.zeros(4), np.array([0, 1, 0, 1], bool)))


def test_the_shipped_networks_table(tmp_path, capsys):
    out = tmp_path / "backbone.md"
    table = report_backbone.main(["--out", str(out)])
    assert "### parallel" in table and "### pipeline" in table
    assert out.read_text() == "# Backbones\n\n" + table + "\n"


def test_a_trace_of_your_own(tmp_path, capsys):
    for split, seed in (("val", 0), ("test", 1)):
        synthetic_trace(n=300, num_exits=3, num_devices=2, seed=seed).save(
            tmp_path / f"net-{split}.npz"
        )
    out = tmp_path / "net.md"
    table = report_backbone.main(["--trace", str(tmp_path / "net-test.npz"), "--out", str(out)])
    rows = [line for line in table.splitlines() if line.startswith("| ") and "exit" not in line]
    assert len(rows) == 3 and out.read_text() == table + "\n"
    assert not (tmp_path / "docs").exists()  # the shipped networks' file is left alone
    for argv, needle in (
        (["--trace", str(tmp_path / "net-test.npz"), "--update-readme"], "--update-readme"),
        (["--trace", str(tmp_path / "net.npz")], "NAME-test.npz"),
    ):
        with pytest.raises(SystemExit) as exc:
            report_backbone.main(argv)
        assert exc.value.code == 2 and needle in capsys.readouterr().err
