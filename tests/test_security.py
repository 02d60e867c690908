"""Issue 11, core: nothing unverified passes as verified (MANIFEST), files in and out fail in one
clear line, and killed writers' temporary files do not pile up. numpy only, no torch."""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from distree_env import io as dio
from distree_env.io import (
    atomic_write_text,
    error_line,
    read_npz,
    read_text_capped,
    require_input_file,
    require_output_dir,
    require_output_file,
)
from distree_env.manifest import record, sha256_of, verify
from tests.damaged import UNCLOSED_HEADER, version_needed, with_header


def _listed(checkpoints, name: str, content: bytes = b"weights") -> os.PathLike:
    path = checkpoints / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    record(path, "test")
    return path


def _set_entry(checkpoints, rel: str, entry: dict) -> None:
    manifest = json.loads((checkpoints / "MANIFEST.json").read_text())
    manifest["files"][rel] = entry
    (checkpoints / "MANIFEST.json").write_text(json.dumps(manifest))


# item 3: a missing hash is "not verified" -------------------------------------------------------


@pytest.mark.parametrize(
    "entry",
    [{}, {"sha256": None}, {"sha256": None, "bytes": 7}, {"sha256": ""}, {"sha256": "abc"}, None],
)
def test_an_entry_without_a_valid_sha256_is_not_verified(checkpoints, entry):
    path = _listed(checkpoints, "agents/a.zip")
    _set_entry(checkpoints, "agents/a.zip", entry)
    with pytest.raises(ValueError, match=r"a\.zip.*(no valid sha256|not listed)"):
        verify(path)


def test_a_listed_file_whose_hash_was_removed_cannot_be_swapped(checkpoints):
    path = _listed(checkpoints, "agents/a.zip", b"genuine")
    assert verify(path)
    _set_entry(checkpoints, "agents/a.zip", {"bytes": 7})  # hash removed
    path.write_bytes(b"swapped")  # same size
    with pytest.raises(ValueError, match="no valid sha256"):
        verify(path)


# item 5 (the check the loaders call): unlisted files, a deleted MANIFEST ------------------------


def test_files_in_the_checkpoints_folder_must_be_listed(checkpoints):
    stray = checkpoints / "traces" / "extra.npz"
    stray.write_bytes(b"x")
    with pytest.raises(ValueError, match=r"MANIFEST\.json' is missing"):
        verify(stray)  # no MANIFEST at all
    _listed(checkpoints, "backbone.pt")
    with pytest.raises(ValueError, match=r"extra\.npz' is not listed"):
        verify(stray)


def test_a_deleted_manifest_verifies_nothing(checkpoints):
    path = _listed(checkpoints, "backbone.pt")
    assert verify(path)
    (checkpoints / "MANIFEST.json").unlink()
    with pytest.raises(ValueError, match="backbone.pt.*MANIFEST.json' is missing"):
        verify(path)


def test_a_symlink_into_or_out_of_the_checkpoints_folder_is_checked(checkpoints, tmp_path):
    outside = tmp_path / "mine.npz"
    outside.write_bytes(b"user file")
    assert verify(outside) is False  # a user's own file: not vouched for, not refused
    with pytest.raises(ValueError, match="not a shipped file"):
        verify(outside, required=True)
    _listed(checkpoints, "backbone.pt")
    link = checkpoints / "traces" / "link.npz"
    link.symlink_to(outside)  # lies in the folder: must be listed like any shipped file
    with pytest.raises(ValueError, match="not listed"):
        verify(link)


def test_manifest_problems_name_the_file(checkpoints):
    (checkpoints / "MANIFEST.json").write_text("{broken")
    stray = checkpoints / "backbone.pt"
    stray.write_bytes(b"x")
    with pytest.raises(ValueError, match=r"manifest '.*MANIFEST\.json' is not valid JSON"):
        verify(stray)
    (checkpoints / "MANIFEST.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="MANIFEST.json"):
        verify(stray)


# item 10: the verification cache does not trust (path, mtime, size) ------------------------------


def test_a_same_size_same_mtime_rewrite_is_hashed_again(checkpoints):
    path = _listed(checkpoints, "backbone.pt", b"genuine!")
    assert verify(path)
    before = path.stat()
    with open(path, "r+b") as handle:  # in place: same inode, same size
        handle.write(b"swapped!")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # and the old mtime
    with pytest.raises(ValueError, match="sha256"):
        verify(path)


# item 4: sidecars are part of their agent's entry ----------------------------------------------


def test_sidecars_are_listed_inside_their_agents_entry(checkpoints):
    agent = checkpoints / "agents" / "a.zip"
    side = checkpoints / "agents" / "a.vecnormalize.npz"
    agent.parent.mkdir()
    agent.write_bytes(b"agent")
    side.write_bytes(b"stats")
    record(side, "old style: listed on its own")
    record(agent, "test", sidecars=[side])
    files = json.loads((checkpoints / "MANIFEST.json").read_text())["files"]
    assert list(files) == ["agents/a.zip"]  # listed once, inside its owner
    assert files["agents/a.zip"]["sidecars"]["agents/a.vecnormalize.npz"]["sha256"] == sha256_of(
        side
    )
    assert verify(side)
    record(agent, "replaced without statistics")
    with pytest.raises(ValueError, match="not listed"):
        verify(side)  # the earlier agent's statistics no longer verify


# items 8 / 9: paths reported as what they are, one line, no unsafe advice -----------------------


def test_folders_and_fifos_are_reported_as_such(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="is a directory"):
        require_input_file(tmp_path, "--config")
    with pytest.raises(ValueError, match=r"is a FIFO \(named pipe\)"):
        require_input_file(fifo, "--config")  # refused before open: opening would block
    with pytest.raises(ValueError, match="file not found"):
        require_input_file(tmp_path / "missing.json", "--config")
    with pytest.raises(ValueError, match="is a directory"):
        require_output_file(tmp_path, "--json")
    with pytest.raises(ValueError, match="is a FIFO"):
        require_output_file(fifo, "--json")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        require_output_dir(a_file / "runs", "--runs-dir")
    assert require_output_file(tmp_path / "new" / "out.json", "--json").name == "out.json"


def test_big_and_non_utf8_inputs_are_refused_naming_the_file(tmp_path):
    big = tmp_path / "big.yml"
    big.write_bytes(b"a" * 2000)
    with pytest.raises(ValueError, match="big.yml' is 2000 bytes; at most 1000"):
        read_text_capped(big, "--config", 1000)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match="latin.csv': not UTF-8"):
        read_text_capped(latin, "trace CSV")


def test_library_advice_to_load_unsafely_never_reaches_the_user(tmp_path):
    pickled = tmp_path / "p.npy"
    pickled.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError) as numpy_error:
        np.load(pickled, allow_pickle=False)
    objects = tmp_path / "o.npy"
    np.save(objects, np.array([None, 1], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError) as object_error:
        np.load(objects, allow_pickle=False)
    torch_text = (
        "Weights only load failed. Re-running `torch.load` with `weights_only` set to `False` "
        "will likely succeed, but it can result in arbitrary code execution.\nWeightsUnpickler "
        "error: Unsupported global: GLOBAL posix.system was not an allowed global by default. "
        "Please use `torch.serialization.add_safe_globals([system])`"
    )
    for exc in (
        numpy_error.value,
        object_error.value,
        ValueError(f"backbone 'b.pt': {torch_text}"),
    ):
        line = error_line(exc)
        assert "\n" not in line and "pickled Python objects" in line
        for advice in ("allow_pickle", "weights_only", "unsafely", "safe_globals", "pickle.load"):
            assert advice not in line
    assert error_line(ValueError(f"backbone 'b.pt': {torch_text}")).startswith("backbone 'b.pt'")
    assert "posix.system" in error_line(ValueError(torch_text))
    assert len(error_line(ValueError("x" * 10**6))) <= dio.MAX_ERROR_CHARS


def _npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_npz_sizes_are_checked_before_anything_is_allocated(tmp_path):
    good = tmp_path / "good.npz"
    good.write_bytes(_npz_bytes(a=np.arange(3.0)))
    assert read_npz(good, "stats")["a"].tolist() == [0.0, 1.0, 2.0]
    huge = tmp_path / "huge.npz"  # an .npy header declaring a 3.64 TiB array in a few bytes
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (500_000, 1_000_000)}
    )
    with zipfile.ZipFile(huge, "w") as archive:
        archive.writestr("a.npy", header.getvalue() + b"\0" * 64)
    with pytest.raises(ValueError, match=r"huge.npz.*declares shape \(500000, 1000000\)"):
        read_npz(huge, "stats")
    bomb = tmp_path / "bomb.npz"  # 2 MB of zeros compress to a few KB
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a.npy", b"\0" * (2 << 20))
    with pytest.raises(ValueError, match=r"bomb.npz.*declaring \d+ bytes uncompressed"):
        read_npz(bomb, "stats", limit=1 << 20)
    objects = tmp_path / "objects.npz"
    np.savez(objects, a=np.array([None], dtype=object))
    with pytest.raises(ValueError, match="objects.npz.*Python objects"):
        read_npz(objects, "stats")


# items 8 / 10: writes -------------------------------------------------------------------------


def test_a_full_disk_is_one_line_naming_the_file(tmp_path, monkeypatch):
    target = tmp_path / "out.json"
    target.write_text("old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(dio.os, "fsync", full)
    with pytest.raises(OSError) as exc:
        atomic_write_text(target, "new")
    assert exc.value.errno == errno.ENOSPC and exc.value.__cause__ is None
    assert exc.value.__suppress_context__
    assert "out.json" in error_line(exc.value) and "no space left" in error_line(exc.value)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["out.json"]


def test_stale_temporaries_of_dead_writers_are_removed_on_the_next_write(tmp_path):
    target = tmp_path / "data.bin"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".data.bin.{dead_pid}.abc123.tmp"
    stale.write_bytes(b"x" * 1000)
    legacy = tmp_path / ".data.bin.k2j3h4_x.tmp"  # an older writer's name, without a pid
    legacy.write_bytes(b"x")
    os.utime(legacy, (0, 0))
    live = tmp_path / f".data.bin.{os.getpid()}.live99.tmp"  # a live writer (this process)
    live.write_bytes(b"x")
    other = tmp_path / f".other.bin.{dead_pid}.abc123.tmp"  # another file's: not ours to clean
    other.write_bytes(b"x")
    atomic_write_text(target, "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["data.bin", live.name, other.name])


# damaged archives: whatever zipfile or numpy's header parser raises is one ValueError ------------


def test_archives_zipfile_or_numpy_cannot_parse_are_one_line_naming_the_file(tmp_path):
    good = _npz_bytes(a=np.arange(3.0))
    cases = {
        "version.npz": version_needed(good, 100),  # zipfile: NotImplementedError
        "header.npz": with_header(good, "a.npy", UNCLOSED_HEADER),  # numpy: TokenError
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=f"stats .*{name}.*not a readable .npz"):
            read_npz(tmp_path / name, "stats")
