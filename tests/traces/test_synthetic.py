"""Synthetic traces: deterministic, plausible, a feature difference with DistrEE's meaning, caps."""

from __future__ import annotations

import numpy as np
import pytest

from distree_env.constants import CIFAR10_CLASS_NAMES
from distree_env.traces import synthetic_trace


@pytest.fixture(scope="module")
def trace():
    return synthetic_trace(n=2000, seed=1)


def test_deterministic_and_seeded(trace):
    again = synthetic_trace(n=2000, seed=1)
    for f in ("probs", "labels", "feature_diff", "stage_flops"):
        assert np.array_equal(getattr(trace, f), getattr(again, f)), f
    assert not np.array_equal(synthetic_trace(n=2000, seed=2).labels, trace.labels)


def test_accuracy_and_confidence_look_real(trace):
    acc = trace.exit_accuracy
    assert np.all(np.diff(acc) > 0), acc  # accuracy rises with depth
    assert 0.45 < acc[0] < 0.65 and 0.85 < acc[-1] < 0.95
    conf = trace.probs.max(-1)
    right = trace.probs.argmax(-1) == trace.labels[:, None]
    assert conf[right].mean() > conf[~right].mean() + 0.2  # calibrated-looking
    assert trace.class_names == CIFAR10_CLASS_NAMES


def test_feature_diff_means_what_distree_means(trace):
    diff = trace.feature_diff
    assert np.all(diff[:, 0] == 1.0)  # no earlier exit to agree with
    later = diff[:, 1:]
    assert later.max() <= 1.0 and later.min() >= 0.0 and later.mean() < 0.5
    pred = trace.probs.argmax(-1)
    agree = pred[:, 1:] == pred[:, :-1]
    assert later[agree].mean() < later[~agree].mean() - 0.1  # small when consecutive exits agree
    right = (pred == trace.labels[:, None])[:, 1:]
    assert later[right].mean() < later[~right].mean() - 0.1  # informative about correctness
    # informative, not an oracle: some right answers still differ more than some wrong ones
    assert later[right].max() > later[~right].min()
    assert later[:, -1].mean() < later[:, 0].mean()  # settles with depth


def test_difficulty_lowers_accuracy():
    easy, hard = synthetic_trace(n=2000, difficulty=0.0), synthetic_trace(n=2000, difficulty=1.0)
    assert np.all(easy.exit_accuracy > hard.exit_accuracy)


def test_pipeline_layout():
    t = synthetic_trace(n=100, topology="pipeline", num_exits=3)
    assert t.num_devices == 3 and t.topology == "pipeline"
    assert np.count_nonzero(t.transfer_bytes) == 2 and not t.transfer_bytes[-1].any()


def test_other_class_counts_get_generic_names():
    t = synthetic_trace(n=50, num_classes=3, num_exits=1)
    assert t.class_names == ("class_0", "class_1", "class_2") and t.feature_diff.shape == (50, 1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n": 100_000_000}, r"n=100000000 .*\(MAX_SAMPLES\)"),
        ({"num_classes": 100_000}, r"num_classes=100000 .*\(MAX_CLASSES\)"),
        ({"num_exits": 1_000_000}, r"num_exits=1000000 .*\(MAX_EXITS\)"),
        ({"num_devices": 10_000}, r"num_devices=10000 .*\(MAX_DEVICES\)"),
        ({"n": 1_000_000, "num_classes": 100}, r"MAX_SYNTHETIC_CELLS"),
        ({"n": 0}, r"n=0 .*\[1, "),
        ({"n": 10.5}, r"n=10.5 .*integer"),
        ({"n": True}, r"n=True .*integer"),
        ({"num_classes": 1}, r"num_classes=1 "),
        ({"seed": -1}, r"seed=-1 "),
        ({"difficulty": float("nan")}, r"difficulty=nan .*\[0, 1\]"),
        ({"difficulty": 2}, r"difficulty=2 "),
        ({"topology": "mesh"}, r"topology='mesh' .*parallel, pipeline"),
        ({"topology": "pipeline", "num_exits": 3, "num_devices": 2}, r"num_exits \(3\)"),
    ],
)
def test_arguments_are_checked_before_any_work(kwargs, match):
    with pytest.raises(ValueError, match=match):
        synthetic_trace(**kwargs)
