"""Damaged archives for the loader tests: what zipfile or numpy's header parser cannot read."""

from __future__ import annotations

import io
import zipfile


def version_needed(data: bytes, version: int) -> bytes:
    """``data`` (a zip) with its first central-directory record asking for zip version
    ``version / 10`` (found from the end record: members may be zips themselves)."""
    end = data.rindex(b"PK\x05\x06")
    at = int.from_bytes(data[end + 16 : end + 20], "little") + 6  # "version needed to extract"
    return data[:at] + version.to_bytes(2, "little") + data[at + 2 :]


def with_header(data: bytes, member: str, header: bytes) -> bytes:
    """``data`` (an ``.npz``) with ``member``'s ``.npy`` header replaced by ``header``."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            raw = src.read(info)
            if info.filename == member:
                raw = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header
            dst.writestr(info.filename, raw)
    return out.getvalue()


#: An ``.npy`` header whose dict is never closed: numpy's parser raises tokenize.TokenError.
UNCLOSED_HEADER = b"{'descr': '<f8', 'fortran_order': False, 'shape': (3,), ".ljust(63) + b"\n"
