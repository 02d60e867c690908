"""Backbone weights on disk: a plain dict of tensors and JSON-able config, loaded with weights_only.

The shipped file stores weights as float16 (half the bytes, no measurable accuracy change); they are
restored to float32 on load, and the exported traces are computed from the restored weights, so the
shipped weights and the shipped traces agree exactly.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import torch

from distree_env.io import atomic_write_bytes
from distree_env.model.network import MultiBranchNet, NetConfig

BACKBONE_FORMAT = "distree-backbone"
BACKBONE_VERSION = 1


def torch_save_atomic(obj: object, path: str | os.PathLike) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def torch_load_safe(path: str | os.PathLike, what: str = "checkpoint") -> dict:
    """``torch.load(weights_only=True)``; a missing, truncated or foreign file is a ValueError."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} file {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (
        RuntimeError,
        EOFError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        OSError,
        ValueError,
    ) as e:
        raise ValueError(
            f"{what} file {str(path)!r} is corrupt, truncated or unsafe to load: {e}"
        ) from e
    if not isinstance(obj, dict):
        raise ValueError(f"{what} file {str(path)!r} holds a {type(obj).__name__}, not a dict")
    return obj


def save_backbone(
    model: MultiBranchNet, path: str | os.PathLike, metrics: dict | None = None
) -> None:
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
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
    """Load a backbone; refuse another format, version or (if ``expect`` is given) architecture."""
    obj = torch_load_safe(path, "backbone")
    if obj.get("format") != BACKBONE_FORMAT or obj.get("version") != BACKBONE_VERSION:
        raise ValueError(
            f"backbone file {str(path)!r} has format={obj.get('format')!r} "
            f"version={obj.get('version')!r}; "
            f"expected format={BACKBONE_FORMAT!r} version={BACKBONE_VERSION}"
        )
    config = NetConfig.from_dict(obj["config"])
    if expect is not None and config != expect:
        raise ValueError(
            f"backbone file {str(path)!r} was made for architecture {config.to_dict()}; "
            f"expected {expect.to_dict()}"
        )
    model = MultiBranchNet(config)
    load_state(model, obj["state_dict"], str(path))
    return model.eval()


def load_state(model: torch.nn.Module, state: dict, source: str) -> None:
    """``load_state_dict`` whose failure says which file does not fit which architecture."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
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
