"""Trace format v2: round trip, validation of every field, refused files, atomic save."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from distree_env.traces import TRACE_FORMAT_VERSION, ExitTrace, synthetic_trace
from tests.damaged import UNCLOSED_HEADER, with_header
from tests.traces.conftest import raw_arrays, write_npz


def test_round_trip(tmp_path, small):
    path = tmp_path / "t.npz"
    small.save(path)
    back = ExitTrace.load(path)
    for f in ("probs", "labels", "feature_diff", "stage_flops", "exit_flops", "transfer_bytes"):
        assert np.array_equal(getattr(back, f), getattr(small, f)), f
    assert back.class_names == small.class_names and back.metadata == small.metadata
    assert back.topology == small.topology and back.input_bytes == small.input_bytes
    with np.load(path, allow_pickle=False) as data:
        assert int(data["format_version"]) == TRACE_FORMAT_VERSION == 2
        assert "feature_diff" in data.files and "similarity" not in data.files


def test_float16_probs_accepted(tmp_path, small):
    t = dataclasses.replace(small, probs=small.probs.astype(np.float16))
    t.save(tmp_path / "h.npz")
    assert ExitTrace.load(tmp_path / "h.npz").probs.dtype == np.float16


def _nan_probs(t):
    p = t.probs.copy()
    p[0, 0, 0] = np.nan
    return p


def _diff_at_exit0(t, value):
    d = t.feature_diff.copy()
    d[5, 0] = value
    return d


#: case -> (changes to a valid trace, text the error must contain)
BAD_TRACES = {
    "probs-nan": (lambda t: {"probs": _nan_probs(t)}, "probs"),
    "probs-sum": (lambda t: {"probs": t.probs * 0.5}, "sum to 1"),
    "probs-negative": (lambda t: {"probs": t.probs - 0.2}, "probs"),
    "probs-2d": (lambda t: {"probs": t.probs[:, 0]}, "probs"),
    "probs-int": (lambda t: {"probs": t.probs.astype(np.int64)}, "probs"),
    "labels-range": (lambda t: {"labels": t.labels + 10}, "labels"),
    "labels-negative": (lambda t: {"labels": t.labels - 20}, "labels"),
    "labels-shape": (lambda t: {"labels": t.labels[:-1]}, "labels"),
    "labels-float": (lambda t: {"labels": t.labels.astype(np.float64)}, "labels"),
    "feature-diff-range": (
        lambda t: {"feature_diff": t.feature_diff + 2},
        r"feature_diff.*\[0, 1\]",
    ),
    "feature-diff-shape": (lambda t: {"feature_diff": t.feature_diff[:, :2]}, "feature_diff"),
    "feature-diff-exit0": (
        lambda t: {"feature_diff": _diff_at_exit0(t, 0.2)},
        r"feature_diff: exit 0 must be 1\.0",
    ),
    "stage-flops-negative": (lambda t: {"stage_flops": -t.stage_flops}, "stage_flops"),
    "stage-flops-inf": (lambda t: {"stage_flops": t.stage_flops * np.inf}, "stage_flops"),
    "stage-flops-shape": (lambda t: {"stage_flops": t.stage_flops[:2]}, "stage_flops"),
    "exit-flops-shape": (lambda t: {"exit_flops": t.exit_flops[:2]}, "exit_flops"),
    "transfer-shape": (lambda t: {"transfer_bytes": t.transfer_bytes[:, :2]}, "transfer_bytes"),
    "topology": (lambda t: {"topology": "mesh"}, "topology.*mesh.*parallel, pipeline"),
    "pipeline-devices": (
        lambda t: {
            "topology": "pipeline",
            "stage_flops": t.stage_flops[:, :3],
            "transfer_bytes": t.transfer_bytes[:, :3],
        },
        "D == K",
    ),
    "class-names": (lambda t: {"class_names": ("a", "b")}, "class_names"),
    "metadata-nan": (lambda t: {"metadata": {"x": float("nan")}}, "metadata"),
    "metadata-type": (lambda t: {"metadata": ["x"]}, "metadata: expected a dict"),
    "input-bytes": (lambda t: {"input_bytes": -1.0}, "input_bytes"),
    "input-bytes-bool": (lambda t: {"input_bytes": True}, "input_bytes"),
}


@pytest.mark.parametrize("case", sorted(BAD_TRACES))
def test_validate_refuses(small, case):
    change, match = BAD_TRACES[case]
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(small, **change(small)).validate()


def test_numpy_scalars_are_numbers(small):
    dataclasses.replace(small, input_bytes=np.float32(3072.0)).validate()
    dataclasses.replace(small, input_bytes=np.int64(3072)).validate()


def _tamper(arrays, key, value):
    if value is None:
        del arrays[key]
    elif isinstance(value, str) and value == "nan":
        bad = arrays[key].copy()
        bad[0, 1] = np.nan
        arrays[key] = bad
    elif isinstance(value, str) and value == "big":
        arrays[key] = arrays[key] + 100
    else:
        arrays[key] = value


FILE_CASES = {
    "version": ({"format_version": np.array(99)}, "format_version 99 unknown"),
    "version-float": ({"format_version": np.array(2.0)}, "format_version must be an integer"),
    "missing-key": ({"probs": None}, r"missing keys \['probs'\]"),
    "missing-version": ({"format_version": None}, "missing keys.*format_version"),
    "extra-key": ({"extra": np.zeros(3)}, r"unexpected members \['extra.npy'\]"),
    "nan": ({"feature_diff": "nan"}, "feature_diff"),
    "labels-range": ({"labels": "big"}, "labels"),
    "metadata-json": ({"metadata": np.array("{not json")}, "metadata is not valid JSON"),
    "metadata-list": ({"metadata": np.array("[1, 2]")}, "metadata: expected a dict"),
    "topology-array": ({"topology": np.array(["parallel"])}, "topology must be a Unicode scalar"),
    "input-bytes-text": ({"input_bytes": np.array("3072")}, "input_bytes must be a numeric"),
    "object-array": ({"class_names": np.array([object()], dtype=object)}, "Python objects"),
}


@pytest.mark.parametrize("case", sorted(FILE_CASES))
def test_load_refuses_bad_files(tmp_path, small, case):
    change, match = FILE_CASES[case]
    arrays = raw_arrays(small)
    for key, value in change.items():
        _tamper(arrays, key, value)
    path = tmp_path / "bad.npz"
    write_npz(path, **arrays)
    with pytest.raises(ValueError, match=match) as info:
        ExitTrace.load(path)
    message = str(info.value)
    assert str(path) in message and "allow_pickle" not in message and "\n" not in message


def test_format_1_is_refused_with_the_way_out(tmp_path, small):
    arrays = raw_arrays(small)
    arrays["format_version"] = np.array(1)
    arrays["similarity"] = arrays.pop("feature_diff")
    path = tmp_path / "old.npz"
    write_npz(path, **arrays)
    with pytest.raises(ValueError, match=r"format_version 1 is no longer read.*export_traces"):
        ExitTrace.load(path)


def test_load_refuses_truncated_and_garbage(tmp_path, small):
    good = tmp_path / "good.npz"
    small.save(good)
    data = good.read_bytes()
    for name, content in {
        "truncated.npz": data[: len(data) // 2],
        "tail-cut.npz": data[:-30],
        "garbage.npz": b"this is not a zip file" * 10,
        "empty.npz": b"",
    }.items():
        p = tmp_path / name
        p.write_bytes(content)
        with pytest.raises(ValueError, match="corrupt or truncated") as info:
            ExitTrace.load(p)
        assert str(p) in str(info.value)
    with pytest.raises(ValueError, match="not found"):
        ExitTrace.load(tmp_path / "nope.npz")
    # an .npy header numpy's parser cannot tokenize (it raised tokenize.TokenError)
    p = tmp_path / "header.npz"
    p.write_bytes(with_header(data, "labels.npy", UNCLOSED_HEADER))
    with pytest.raises(ValueError, match="header.npz.*'labels.npy': not a valid .npy header"):
        ExitTrace.load(p)


def test_atomic_save_keeps_previous_file(tmp_path, small, monkeypatch):
    path = tmp_path / "t.npz"
    small.save(path)
    before = path.read_bytes()

    def dies_midway(handle, **arrays):
        handle.write(b"PK\x03\x04 partial garbage")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(np, "savez_compressed", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        synthetic_trace(n=50, seed=9).save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["t.npz"]  # no temp file left behind
    assert ExitTrace.load(path).n == small.n


def test_save_validates_first(tmp_path, small):
    bad = dataclasses.replace(small, labels=small.labels + 50)
    with pytest.raises(ValueError, match="labels"):
        bad.save(tmp_path / "bad.npz")
    assert not (tmp_path / "bad.npz").exists()


def test_same_samples_compares_contents_not_names():
    """The benchmark refuses a val trace holding the test samples under another name."""
    a = synthetic_trace(n=50)
    assert a.same_samples(synthetic_trace(n=50, seed=0))
    assert not a.same_samples(synthetic_trace(n=50, seed=1))
    assert not a.same_samples(synthetic_trace(n=40))  # other shapes: unequal, no error
