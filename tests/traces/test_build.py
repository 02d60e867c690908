"""distree_env.traces.build: a network's outputs to a trace, and docs/own-network.md as written."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from agents.splits import held_out_trace, is_test_name, val_counterpart
from distree_env.traces import ExitTrace, consecutive_feature_diff, trace_from_outputs

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "own-network.md"


def _outputs(n: int = 50, k: int = 3, c: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, c, n), rng.normal(size=(n, k, c)), rng.normal(size=(n, k, 8))


def test_logits_embeddings_and_costs_become_the_trace_fields(tmp_path):
    labels, logits, emb = _outputs()
    trace = trace_from_outputs(
        logits=logits, labels=labels, embeddings=emb, stage_flops=[1e6, 2e6, 3e6],
        transfer_bytes=[10, 20, 0], input_bytes=12, metadata={"split": "val"},
    )  # fmt: skip
    z = np.exp(logits - logits.max(axis=2, keepdims=True))
    np.testing.assert_allclose(trace.probs, z / z.sum(axis=2, keepdims=True), rtol=1e-5)
    np.testing.assert_array_equal(trace.feature_diff, consecutive_feature_diff(emb))
    assert trace.stage_flops.shape == (3, 1) and trace.transfer_bytes[:, 0].tolist() == [10, 20, 0]
    assert trace.exit_flops.tolist() == [0, 0, 0] and trace.class_names == ("0", "1", "2", "3")
    assert trace.metadata == {"split": "val", "feature_diff_from": "embeddings"}
    trace.save(tmp_path / "t.npz")
    again = ExitTrace.load(tmp_path / "t.npz")
    np.testing.assert_array_equal(again.probs, trace.probs)


def test_without_embeddings_the_probabilities_stand_in_and_the_metadata_says_so():
    labels, logits, _ = _outputs()
    probs = np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)
    trace = trace_from_outputs(probs=probs, labels=labels, stage_flops=np.ones((3, 2)))
    np.testing.assert_allclose(trace.feature_diff, consecutive_feature_diff(probs), rtol=1e-6)
    assert trace.metadata["feature_diff_from"] == "probs" and trace.num_devices == 2


def test_one_hot_logits_are_logits():
    labels, _, _ = _outputs()
    one_hot = np.eye(4)[np.random.default_rng(0).integers(0, 4, (50, 3))]
    trace = trace_from_outputs(logits=one_hot, labels=labels, stage_flops=np.ones(3))
    assert trace.probs.max() < 0.5  # a softmax of them, not taken as probabilities


def test_a_pipeline_cost_vector_is_one_stage_per_device():
    labels, logits, _ = _outputs()
    trace = trace_from_outputs(
        logits=logits, labels=labels, stage_flops=[1e6, 2e6, 3e6], transfer_bytes=[8, 4, 0],
        topology="pipeline",
    )  # fmt: skip
    np.testing.assert_array_equal(trace.stage_flops, np.diag([1e6, 2e6, 3e6]))
    np.testing.assert_array_equal(trace.transfer_bytes, np.diag([8, 4, 0]))


def test_feature_diff_is_half_the_distance_of_unit_embeddings():
    emb = np.array([[[1.0, 0.0], [0.0, 2.0], [0.0, -3.0]]])
    np.testing.assert_allclose(consecutive_feature_diff(emb), [[1.0, 0.5**0.5, 1.0]], rtol=1e-6)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"probs": None, "logits": None}, "give exactly one"),
        ({"probs": np.full((50, 3, 4), 0.25)}, "give exactly one"),
        ({"logits": np.zeros((50, 4))}, "logits: shape"),
        ({"logits": np.full((50, 3, 4), np.nan)}, "logits: must be finite"),
        ({"logits": np.full((50, 3, 4), 0.25)}, "these are probabilities; pass them as probs="),
        ({"embeddings": np.zeros((50, 2, 8))}, "embeddings: shape"),
        ({"stage_flops": np.ones((2, 2))}, "stage_flops: shape"),
        ({"stage_flops": [-1.0, 1.0, 1.0]}, "stage_flops"),
        ({"transfer_bytes": np.ones((3, 2))}, "transfer_bytes"),
        ({"labels": np.full(50, 7)}, "labels"),
        ({"topology": "ring"}, "topology"),
        ({"input_bytes": "3072"}, "input_bytes"),
        ({"class_names": ("a", "b")}, "class_names"),
    ],
)
def test_a_mistake_names_its_field(change, needle):
    labels, logits, emb = _outputs()
    kwargs = dict(logits=logits, labels=labels, embeddings=emb, stage_flops=np.ones(3))
    with pytest.raises(ValueError, match=needle):
        trace_from_outputs(**{**kwargs, **change})


def test_split_counterparts_of_paths_and_names(tmp_path):
    val, test = tmp_path / "net-val.npz", tmp_path / "net-test.npz"
    assert held_out_trace(str(val)) == str(test)
    with pytest.raises(ValueError, match="no held-out test split"):  # no split in the name
        held_out_trace(str(tmp_path / "net.npz"))
    assert val_counterpart(str(test)) == str(val)
    assert val_counterpart("net_test") == "net_val" and val_counterpart("net") is None
    assert held_out_trace("cifar10-val") == "cifar10-test"
    assert held_out_trace("synthetic") == "synthetic:seed=1"
    assert held_out_trace("synthetic:n=500") == "synthetic:n=500,seed=1"
    # one way: a synthetic trace without a seed is the val side, seed=1 the test side
    assert val_counterpart("synthetic:seed=1") == "synthetic"
    assert val_counterpart("synthetic:n=500, seed=1") == "synthetic:n=500"
    assert val_counterpart("synthetic") is None
    assert is_test_name("synthetic:n=500,seed=1") and not is_test_name("synthetic:n=500")
    # read as the generator reads it: seed=01 is seed 1, the test draw
    assert is_test_name("synthetic:seed=01") and is_test_name("synthetic-pipeline") is False
    assert val_counterpart("synthetic:topology=pipeline,seed=01") == "synthetic:topology=pipeline"
    assert held_out_trace("synthetic-pipeline") == "synthetic:topology=pipeline,seed=1"
    with pytest.raises(ValueError, match="without a seed"):
        held_out_trace("synthetic:seed=0")
    with pytest.raises(ValueError, match="no held-out"):
        held_out_trace("cifar10-test")


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", GUIDE.read_text(), flags=re.S)


def test_the_guide_runs_as_written(tmp_path, monkeypatch, capsys):
    """Its Python blocks in order, then its report_backbone command and its first benchmark
    command (smaller, one process), in a fresh folder: the traces it writes load, the report
    reads them, and the benchmark finds the val file by itself."""
    from experiments import benchmark, report_backbone

    monkeypatch.chdir(tmp_path)
    exec(compile("\n".join(_blocks("python")), str(GUIDE), "exec"), {"__name__": "guide"})
    out = capsys.readouterr().out
    assert "accuracy per exit" in out and "'queue_len'" in out
    assert ExitTrace.load(tmp_path / "mynet-val.npz").metadata["split"] == "val"
    commands = [block.replace("\\\n", " ").split() for block in _blocks("bash")]
    report = next(c for c in commands if c[:3] == ["python", "-m", "experiments.report_backbone"])
    table = report_backbone.main(report[3:])
    assert "AUC feature_diff" in table and "from the exits' embeddings" in table
    command = next(c for c in commands if c[:3] == ["python", "-m", "experiments.benchmark"])
    assert "--val-trace" not in command
    small = ["--seeds", "1", "--requests", "128", "--thresholds", "2", "--calibration-requests",
             "128", "--calibration-steps", "512", "--scenarios", "isolated",
             "--jobs", "1", "--progress", "false"]  # fmt: skip
    assert benchmark.main([*command[3:], *small]) == 0
    assert (tmp_path / "results" / "mynet" / "benchmark.md").is_file()
    assert "mynet-val.npz" in (tmp_path / "results" / "mynet" / "benchmark.json").read_text()
