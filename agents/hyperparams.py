"""Read rl-zoo3 hyperparameter files (``experiments/hyperparams/<algo>.yml``) without ``eval``.

Why: the same files drive ``python -m rl_zoo3.train --gym-packages distree_env`` and our own
``experiments.train_agent``; rl-zoo3 evaluates strings such as ``"dict(net_arch=[64, 64])"`` as
Python, which we parse with ``ast`` instead (literals and ``nn.<Activation>`` only).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ENV_ID", "HYPERPARAMS_DIR", "Hyperparams", "load_hyperparams"]

ENV_ID = "DistrEE-v0"
HYPERPARAMS_DIR = Path(__file__).resolve().parents[1] / "experiments" / "hyperparams"
_ACTIVATIONS = ("ReLU", "Tanh", "ELU", "LeakyReLU", "SiLU", "GELU")
_ZOO_ONLY = ("policy", "n_envs", "n_timesteps", "normalize", "policy_kwargs")


@dataclass(frozen=True)
class Hyperparams:
    """One algorithm's settings for DistrEE-v0, split the way SB3 needs them."""

    n_envs: int
    n_timesteps: int
    policy: str
    normalize: dict[str, bool] | None
    policy_kwargs: dict[str, Any] = field(default_factory=dict)
    algo_kwargs: dict[str, Any] = field(default_factory=dict)


def _literal(node: ast.AST, where: str) -> Any:
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        if node.value.id == "nn" and node.attr in _ACTIVATIONS:
            import torch.nn as nn  # noqa: PLC0415 (torch only when a file asks for it)

            return getattr(nn, node.attr)
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise ValueError(
            f"{where}: only literals and nn.{{{','.join(_ACTIVATIONS)}}} are allowed, "
            f"got {ast.unparse(node)!r}"
        ) from None


def _parse_dict(text: Any, where: str) -> dict[str, Any]:
    """``dict(a=1, b=[2])`` (rl-zoo3 style) or a YAML mapping, as a dict."""
    if isinstance(text, dict):
        return dict(text)
    if not isinstance(text, str):
        raise ValueError(f"{where}: expected a mapping or 'dict(...)', got {text!r}")
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as exc:
        raise ValueError(f"{where}: {text!r} is not a dict(...) expression ({exc.msg})") from None
    if not (
        isinstance(tree, ast.Call)
        and isinstance(tree.func, ast.Name)
        and tree.func.id == "dict"
        and not tree.args
    ):
        raise ValueError(f"{where}: expected dict(key=value, ...), got {text!r}")
    return {kw.arg: _literal(kw.value, f"{where}.{kw.arg}") for kw in tree.keywords}


def load_hyperparams(algo: str, path: str | Path | None = None) -> Hyperparams:
    """The ``DistrEE-v0`` entry of ``path`` (default ``experiments/hyperparams/<algo>.yml``)."""
    file = Path(path) if path is not None else HYPERPARAMS_DIR / f"{algo}.yml"
    if not file.is_file():
        raise ValueError(f"hyperparameters: file {str(file)!r} not found")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"hyperparameters {str(file)!r}: not valid YAML ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get(ENV_ID), dict):
        raise ValueError(f"hyperparameters {str(file)!r}: needs a mapping under {ENV_ID!r}")
    entry = dict(data[ENV_ID])
    where = f"{file.name}:{ENV_ID}"
    normalize = entry.get("normalize", False)
    if normalize is True:
        normalize = {"norm_obs": True, "norm_reward": True}
    elif normalize is False:
        normalize = None
    else:
        normalize = _parse_dict(normalize, f"{where}.normalize")
    n_envs, n_timesteps = entry.get("n_envs", 1), entry.get("n_timesteps", 100_000)
    if not (isinstance(n_envs, int) and n_envs >= 1):
        raise ValueError(f"{where}.n_envs={n_envs!r}: expected an integer >= 1")
    if not (isinstance(n_timesteps, (int, float)) and n_timesteps >= 1):
        raise ValueError(f"{where}.n_timesteps={n_timesteps!r}: expected a number >= 1")
    return Hyperparams(
        n_envs=n_envs,
        n_timesteps=int(n_timesteps),
        policy=str(entry.get("policy", "MlpPolicy")),
        normalize=normalize,
        policy_kwargs=_parse_dict(entry.get("policy_kwargs", "dict()"), f"{where}.policy_kwargs"),
        algo_kwargs={k: v for k, v in entry.items() if k not in _ZOO_ONLY},
    )
