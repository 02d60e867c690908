"""Hostile or careless trace files (issue 11): refused before any large allocation, in one line
that names the file, the field or member, the value and the cap or rule."""

from __future__ import annotations

import dataclasses
import io
import os
import re
import struct
import time
import zipfile

import numpy as np
import pytest

import distree_env.traces.format as trace_format
from distree_env.traces import ExitTrace, resolve_trace
from tests.traces.conftest import raw_arrays, write_npz


def _zip(path, members: dict[str, bytes], compress: bool = False) -> None:
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def _npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _members(trace, **replace) -> dict[str, bytes]:
    members = {f"{k}.npy": _npy(v) for k, v in raw_arrays(trace).items()}
    members.update(replace)
    return members


def _refused(path, *patterns) -> str:
    started = time.perf_counter()
    with pytest.raises(ValueError) as info:
        ExitTrace.load(path)
    message = str(info.value)
    assert time.perf_counter() - started < 5.0
    assert str(path) in message and "\n" not in message
    for pattern in patterns:
        assert pattern in message, (pattern, message)
    return message


def test_npy_header_declaring_terabytes(tmp_path, small):
    header = io.BytesIO()
    shape = (1_000_000_000, 1000, 1000)
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": shape}
    )
    path = tmp_path / "huge-shape.npz"
    _zip(path, _members(small, **{"probs.npy": header.getvalue() + b"\0" * 64}))
    _refused(path, "member 'probs.npy'", str(shape), "TiB", "MAX_TRACE_BYTES")


def test_npy_header_declaring_more_than_the_member_holds(tmp_path, small):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (200, 4)}
    )
    path = tmp_path / "short.npz"
    _zip(path, _members(small, **{"feature_diff.npy": header.getvalue() + b"\0" * 64}))
    _refused(path, "member 'feature_diff.npy'", "truncated or forged")


def test_npy_header_declaring_a_negative_dimension(tmp_path, small):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<i8", "fortran_order": False, "shape": (-5, 3)}
    )
    path = tmp_path / "negative.npz"
    _zip(path, _members(small, **{"labels.npy": header.getvalue() + b"\0" * 64}))
    _refused(path, "member 'labels.npy'", "(-5, 3)", "must be >= 0")


def _forge_uncompressed_size(path, member: str, size: int) -> None:
    """Rewrite the uncompressed size that the zip directory declares for ``member``."""
    data = bytearray(path.read_bytes())
    at = 0
    while True:
        at = data.find(b"PK\x01\x02", at)
        assert at >= 0
        (name_len,) = struct.unpack_from("<H", data, at + 28)
        if data[at + 46 : at + 46 + name_len] == member.encode():
            struct.pack_into("<I", data, at + 24, size)
            break
        at += 4
    path.write_bytes(bytes(data))


def test_zip_declaring_gigabytes_uncompressed(tmp_path, small):
    path = tmp_path / "declared-bomb.npz"
    _zip(path, _members(small), compress=True)
    _forge_uncompressed_size(path, "probs.npy", 0xFFFF0000)
    _refused(path, "declares", "GiB uncompressed", "MAX_TRACE_BYTES")


def test_zip_bomb(tmp_path, small, monkeypatch):
    monkeypatch.setattr(trace_format, "MAX_TRACE_BYTES", 4 << 20)  # a real bomb, scaled down
    zeros = np.zeros((8 << 20) // 4, dtype=np.float32)
    path = tmp_path / "bomb.npz"
    _zip(path, _members(small, **{"probs.npy": _npy(zeros)}), compress=True)
    assert path.stat().st_size < 100_000
    _refused(path, "declares 8.01 MiB uncompressed", "at most 4 MiB", "MAX_TRACE_BYTES")


def test_zip_with_too_many_members(tmp_path, small):
    path = tmp_path / "many.npz"
    _zip(path, {**_members(small), **{f"x{i}.npy": b"" for i in range(100)}})
    _refused(path, "lists 111 members", "MAX_MEMBERS")


def test_file_over_the_size_cap(tmp_path, small, monkeypatch):
    path = tmp_path / "big.npz"
    small.save(path)
    monkeypatch.setattr(trace_format, "MAX_FILE_BYTES", 1000)
    _refused(path, "on disk", "MAX_FILE_BYTES")


def _with_metadata(tmp_path, small, text) -> os.PathLike:
    arrays = raw_arrays(small)
    arrays["metadata"] = text if isinstance(text, np.ndarray) else np.array(text)
    path = tmp_path / "meta.npz"
    write_npz(path, **arrays)
    return path


def test_metadata_nested_beyond_the_parser(tmp_path, small):
    path = _with_metadata(tmp_path, small, "[" * 100_000 + "]" * 100_000)
    _refused(path, "metadata is nested too deeply", "MAX_METADATA_DEPTH")


def test_metadata_nested_beyond_the_cap(tmp_path, small):
    deep = '{"a": ' * 40 + "1" + "}" * 40
    _refused(_with_metadata(tmp_path, small, deep), "metadata", "MAX_METADATA_DEPTH")
    nested: dict = {}
    for _ in range(40):
        nested = {"a": nested}
    with pytest.raises(ValueError, match="MAX_METADATA_DEPTH"):
        dataclasses.replace(small, metadata=nested).validate()


def test_metadata_too_long(tmp_path, small):
    text = '{"a": "' + "x" * (2 << 20) + '"}'
    _refused(_with_metadata(tmp_path, small, text), "metadata is", "MAX_METADATA_CHARS")


def test_latin1_metadata(tmp_path, small):
    latin1 = np.array('{"note": "café"}'.encode("latin-1"))
    _refused(_with_metadata(tmp_path, small, latin1), "metadata is stored as bytes", "Latin-1")


def test_lone_surrogate_text(tmp_path, small):
    _refused(_with_metadata(tmp_path, small, '{"note": "\udcff"}'), "not valid Unicode")
    arrays = raw_arrays(small)
    arrays["class_names"] = np.array(["\udcff"] + list(small.class_names[1:]))
    path = tmp_path / "names.npz"
    write_npz(path, **arrays)
    _refused(path, "class_names", "not valid Unicode")


@pytest.mark.parametrize(
    "field, value, cap",
    [
        ("stage_flops", 1e308, "MAX_STAGE_FLOPS"),
        ("exit_flops", 1e16, "MAX_STAGE_FLOPS"),
        ("transfer_bytes", 1e13, "MAX_BYTES"),
    ],
)
def test_costs_above_the_ceiling(tmp_path, small, field, value, cap):
    table = getattr(small, field).copy()
    table.flat[0] = value
    bad = dataclasses.replace(small, **{field: table})
    expected = re.escape(f"ExitTrace.{field}: value {value:.4g} ") + rf".*\({cap}\)"
    with pytest.raises(ValueError, match=expected):
        bad.validate()
    arrays = raw_arrays(small)
    arrays[field] = table
    path = tmp_path / "costly.npz"
    write_npz(path, **arrays)
    _refused(path, field, cap)


def test_input_bytes_above_the_ceiling(small):
    with pytest.raises(ValueError, match=r"input_bytes: 1e\+300.*MAX_BYTES"):
        dataclasses.replace(small, input_bytes=1e300).validate()


def test_directory_and_fifo_are_not_files(tmp_path):
    folder = tmp_path / "folder.npz"
    folder.mkdir()
    with pytest.raises(ValueError, match="is a directory"):
        ExitTrace.load(folder)
    with pytest.raises(ValueError, match="is a directory"):
        resolve_trace(str(folder))
    fifo = tmp_path / "pipe.npz"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        resolve_trace(str(fifo))  # must not block on open
