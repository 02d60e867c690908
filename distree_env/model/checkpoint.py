"""Backbone weights on disk: a plain dict of tensors and JSON-able config, loaded with weights_only.

The shipped file stores weights as float16 (half the bytes, no measurable accuracy change); they are
restored to float32 on load, and the exported traces are computed from the restored weights, so the
shipped weights and the shipped traces agree exactly.
"""

from __future__ import annotations

import io
import os
import pickle
import warnings
import zipfile
from pathlib import Path

import torch

from distree_env.io import ARCHIVE_ERRORS, atomic_write_bytes
from distree_env.model.network import MultiBranchNet, NetConfig

BACKBONE_FORMAT = "distree-backbone"
BACKBONE_VERSION = 2  # 2: pre-activation WideResNet branches


def torch_save_atomic(obj: object, path: str | os.PathLike) -> None:
    """``torch.save`` to memory, then an atomic write: a killed run leaves no half file."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


#: The first torch whose ``weights_only`` loading is not known to run code (CVE-2025-32434).
MIN_SAFE_TORCH = "2.6"
#: The first byte of a pickle of protocol 2 or later.
PICKLE_PROTOCOL_OPCODE = pickle.PROTO
#: The first bytes of a zip archive's first record: what torch checks before reading a file as
#: one (``torch.save``'s format).
ZIP_LOCAL_HEADER = b"PK\x03\x04"
#: Largest backbone, teacher or training-checkpoint file read (the shipped ones are 1-2 MB; a
#: WRN-40-4 teacher with its optimiser state is about 0.2 GB).
MAX_CHECKPOINT_BYTES = 1 << 30


def check_torch_archive(data: bytes, what: str) -> None:
    """Refuse bytes that are not a torch zip archive whose records are stored as written.

    Why: ``torch.load`` reads each record into a buffer of the size the archive declares, so a
    record deflated by another zip tool lets a file of a few hundred kilobytes ask for gigabytes
    (a zip bomb). ``torch.save`` stores records uncompressed, so nothing it wrote is refused;
    the legacy (pre-1.6, non-zip) format, which declares storage sizes the same way, is refused.
    """
    buffer = io.BytesIO(data)
    if data[:1] == PICKLE_PROTOCOL_OPCODE:  # a bare pickle, or torch's legacy format (pickles)
        raise ValueError(
            f"{what}: the file holds pickled Python objects, refused because loading them "
            "could run code (torch.save writes a zip archive)"
        )
    not_torch = (
        f"{what} is corrupt, truncated or not a torch zip archive (the format torch.save "
        "writes; the legacy format is not read)"
    )
    # torch reads a file as a zip archive only when it starts with a local file header; anything
    # else (a pickle with a zip appended) goes to its legacy reader
    if data[:4] != ZIP_LOCAL_HEADER or not zipfile.is_zipfile(buffer):
        raise ValueError(not_torch)
    try:
        with zipfile.ZipFile(buffer) as archive:
            infos = archive.infolist()
    except ARCHIVE_ERRORS as e:
        raise ValueError(f"{not_torch}: {type(e).__name__}: {e}") from None
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED:
            raise ValueError(
                f"{what}: record {info.filename!r} is compressed, which torch.save never "
                "does (a damaged or hostile file: it could inflate to any size)"
            )
        if info.header_offset + max(info.file_size, info.compress_size) > len(data):
            raise ValueError(
                f"{what}: record {info.filename!r} declares {info.file_size} bytes beyond "
                f"the end of the {len(data)}-byte file (truncated or hostile)"
            )


def torch_load_bytes(data: bytes, what: str) -> object:
    """``torch.load(weights_only=True)`` of :func:`check_torch_archive`-checked bytes; any
    failure is a ValueError naming ``what``."""
    if torch.torch_version.TorchVersion(torch.__version__) < MIN_SAFE_TORCH:
        raise ValueError(
            f"{what} is not loaded with torch {torch.__version__}: weights_only loading can run "
            f"code before torch {MIN_SAFE_TORCH} (CVE-2025-32434); upgrade torch"
        )
    check_torch_archive(data, what)
    try:
        with warnings.catch_warnings():  # torch warns about odd pickles; we refuse them
            warnings.simplefilter("ignore")
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (ValueError, pickle.UnpicklingError, *ARCHIVE_ERRORS) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            first = "it holds objects that only unpickling could restore (refused)"
        raise ValueError(f"{what} is corrupt, truncated or unsafe to load: {first}") from None


def torch_load_safe(path: str | os.PathLike, what: str = "checkpoint") -> dict:
    """:func:`torch_load_bytes` of a file of at most ``MAX_CHECKPOINT_BYTES``; a missing,
    oversized, truncated or foreign file is a ValueError."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{what} file {str(path)!r} does not exist")
    if not path.is_file():
        raise ValueError(f"{what} file {str(path)!r} is not a regular file")
    size = path.stat().st_size
    if size > MAX_CHECKPOINT_BYTES:
        raise ValueError(
            f"{what} file {str(path)!r} has {size} bytes, over the cap of {MAX_CHECKPOINT_BYTES}"
        )
    obj = torch_load_bytes(path.read_bytes(), f"{what} file {str(path)!r}")
    if not isinstance(obj, dict):
        raise ValueError(f"{what} file {str(path)!r} holds a {type(obj).__name__}, not a dict")
    return obj


def save_backbone(
    model: MultiBranchNet, path: str | os.PathLike, metrics: dict | None = None
) -> None:
    """Write ``model`` as a backbone file: float16 weights, its config and ``metrics``."""
    state = {  # on the CPU: a file made on a GPU must load where there is none
        k: (v.half() if v.is_floating_point() else v).cpu() for k, v in model.state_dict().items()
    }
    torch_save_atomic(
        {
            "format": BACKBONE_FORMAT,
            "version": BACKBONE_VERSION,
            "config": model.config.to_dict(),
            "state_dict": state,
            "metrics": metrics or {},
        },
        path,
    )


def load_backbone(path: str | os.PathLike, expect: NetConfig | None = None) -> MultiBranchNet:
    """Load a backbone; refuse another format, version or (if ``expect`` is given) architecture.

    A file in the checkpoints folder is checked against its MANIFEST sha256 first; the declared
    architecture is validated (sizes capped) before any weight tensor is allocated.

    :param path: the ``.pt`` file written by :func:`save_backbone`.
    :param expect: the architecture the caller needs, if any.
    """
    from distree_env.manifest import verify

    verify(path)
    obj = torch_load_safe(path, "backbone")
    if obj.get("format") != BACKBONE_FORMAT or obj.get("version") != BACKBONE_VERSION:
        raise ValueError(
            f"backbone file {str(path)!r} has format={obj.get('format')!r} "
            f"version={obj.get('version')!r}; "
            f"expected format={BACKBONE_FORMAT!r} version={BACKBONE_VERSION}"
        )
    for key, kind in (("config", dict), ("state_dict", dict)):
        if not isinstance(obj.get(key), kind):
            raise ValueError(
                f"backbone file {str(path)!r}: {key!r} is "
                f"{'missing' if key not in obj else type(obj[key]).__name__}; expected a dict"
            )
    try:
        config = NetConfig.from_dict(obj["config"])
    except ValueError as e:
        raise ValueError(f"backbone file {str(path)!r}: {e}") from None
    if expect is not None and config != expect:
        raise ValueError(
            f"backbone file {str(path)!r} was made for architecture {config.to_dict()}; "
            f"expected {expect.to_dict()}"
        )
    model = MultiBranchNet(config)
    load_state(model, obj["state_dict"], str(path))
    metrics = obj.get("metrics")
    model.metrics = metrics if isinstance(metrics, dict) else {}  # what its trainer recorded
    return model.eval()


def load_state(model: torch.nn.Module, state: dict, source: str) -> None:
    """``load_state_dict`` whose failure says which file does not fit which architecture."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(map(str, set(state) - set(own)))
    wrong = sorted(
        k
        for k in set(own) & set(state)
        if not isinstance(state[k], torch.Tensor) or own[k].shape != state[k].shape
    )
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{label}: {keys[:3]}{'...' if len(keys) > 3 else ''}"
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("wrong shape", wrong),
            )
            if keys
        )
        raise ValueError(f"{source!r} is a checkpoint of another architecture ({detail})")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
