"""Read rl-zoo3 hyperparameter files (``experiments/hyperparams/<algo>.yml``) without ``eval``.

Why: the same files drive ``python -m rl_zoo3.train --gym-packages distree_env`` and our own
``experiments.train_agent``; rl-zoo3 evaluates strings such as ``"dict(net_arch=[64, 64])"`` as
Python, which we parse with ``ast`` instead (literals and ``nn.<Activation>`` only). YAML is read
with the file size and the expanded size of its aliases capped: an alias "bomb" expands a few lines
into gigabytes.
Keys the algorithm does not take are refused when the file is read, not deep inside training.
"""

from __future__ import annotations

import ast
import inspect
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from distree_env.io import read_text_capped

__all__ = ["ENV_ID", "HYPERPARAMS_DIR", "Hyperparams", "load_hyperparams", "safe_yaml"]

ENV_ID = "DistrEE-v0"
HYPERPARAMS_DIR = Path(__file__).resolve().parents[1] / "experiments" / "hyperparams"
_ACTIVATIONS = ("ReLU", "Tanh", "ELU", "LeakyReLU", "SiLU", "GELU")
_ZOO_ONLY = ("policy", "n_envs", "n_timesteps", "normalize", "policy_kwargs")
#: Constructor arguments a hyperparameter file may not set (the script sets them).
_SET_BY_SCRIPT = ("self", "env", "seed", "device", "verbose", "tensorboard_log")
_NORMALIZE_KEYS = ("norm_obs", "norm_reward", "clip_obs", "clip_reward", "epsilon")
#: Largest hyperparameter or config file read (bytes), and the caps on run sizes it may ask for.
MAX_FILE_BYTES = 1 << 20
MAX_ENVS = 1024
MAX_TIMESTEPS = 10**10


#: Most nodes a YAML document may hold once its aliases are expanded.
MAX_YAML_NODES = 100_000


def _expanded_nodes(node: yaml.Node, memo: dict[int, int], open_: set[int]) -> int:
    """How many nodes ``node`` stands for with every alias expanded (shared nodes counted each
    time they are used); ValueError for a node that contains itself."""
    key = id(node)
    if key in open_:
        raise ValueError("a recursive alias (a node that contains itself)")
    if key not in memo:
        open_.add(key)
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        memo[key] = 1 + sum(_expanded_nodes(child, memo, open_) for child in children)
        open_.discard(key)
    return memo[key]


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing documents whose aliases expand past ``MAX_YAML_NODES``
    (an alias "bomb": a few lines that stand for gigabytes); merge keys (``<<: *base``) work."""

    def compose_document(self) -> Any:
        node = super().compose_document()
        size = _expanded_nodes(node, {}, set()) if node is not None else 0
        if size > MAX_YAML_NODES:
            raise ValueError(
                f"its aliases expand to {size} nodes, over the cap of {MAX_YAML_NODES}"
            )
        return node


def safe_yaml(text: str, where: str) -> Any:
    """Parse YAML ``text`` safely and bounded; ValueError naming ``where`` when invalid.

    :param text: the YAML document.
    :param where: how errors name the file.
    """
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 (a SafeLoader subclass)
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        detail = " ".join(str(exc).split())[:300]
        raise ValueError(f"{where}: not valid YAML ({detail})") from None


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


def _check_keys(algo: str, entry: dict[str, Any], where: str) -> None:
    """Refuse keys that ``algo``'s constructor does not take (before any training starts)."""
    from agents.training import algo_class  # noqa: PLC0415 (imports stable-baselines3)

    params = inspect.signature(algo_class(algo).__init__).parameters
    taken = {k for k in params if not k.startswith("_")} - set(_SET_BY_SCRIPT)
    allowed = taken | set(_ZOO_ONLY)
    unknown = sorted(str(k) for k in entry if k not in allowed)
    if unknown:
        raise ValueError(
            f"{where}: unknown key(s) {unknown} for {algo}; allowed: {sorted(allowed)}"
        )


def load_hyperparams(
    algo: str, path: str | Path | None = None, env_id: str = ENV_ID
) -> Hyperparams:
    """The ``env_id`` entry of ``path`` (default ``experiments/hyperparams/<algo>.yml``).

    :param algo: the algorithm the file is for (its constructor decides which keys are allowed).
    :param path: an rl-zoo3 hyperparameter file.
    :param env_id: the registered id whose entry is read (each scenario has its own).
    """
    file = Path(path) if path is not None else HYPERPARAMS_DIR / f"{algo}.yml"
    text = read_text_capped(file, "hyperparameters", MAX_FILE_BYTES)
    data = safe_yaml(text, f"hyperparameters {str(file)!r}")
    if not isinstance(data, dict) or not isinstance(data.get(env_id), dict):
        raise ValueError(f"hyperparameters {str(file)!r}: needs a mapping under {env_id!r}")
    entry = dict(data[env_id])
    where = f"{file.name}:{env_id}"
    _check_keys(algo, entry, where)
    normalize = entry.get("normalize", False)
    if normalize is True:
        normalize = {"norm_obs": True, "norm_reward": True}
    elif normalize is False:
        normalize = None
    else:
        normalize = _parse_dict(normalize, f"{where}.normalize")
        unknown = sorted(str(k) for k in normalize if k not in _NORMALIZE_KEYS)
        if unknown:
            raise ValueError(
                f"{where}.normalize: unknown key(s) {unknown}; allowed: {list(_NORMALIZE_KEYS)}"
            )
    n_envs, n_timesteps = entry.get("n_envs", 1), entry.get("n_timesteps", 100_000)
    if not (isinstance(n_envs, int) and not isinstance(n_envs, bool) and 1 <= n_envs <= MAX_ENVS):
        raise ValueError(f"{where}.n_envs={n_envs!r}: expected an integer in [1, {MAX_ENVS}]")
    if not (
        isinstance(n_timesteps, (int, float))
        and not isinstance(n_timesteps, bool)
        and math.isfinite(n_timesteps)
        and 1 <= n_timesteps <= MAX_TIMESTEPS
    ):
        raise ValueError(
            f"{where}.n_timesteps={n_timesteps!r}: expected a number in [1, {MAX_TIMESTEPS:g}]"
        )
    from agents.loading import check_settings  # noqa: PLC0415 (imports stable-baselines3)

    policy_kwargs = _parse_dict(entry.get("policy_kwargs", "dict()"), f"{where}.policy_kwargs")
    algo_kwargs = {k: v for k, v in entry.items() if k not in _ZOO_ONLY}
    check_settings(algo_kwargs, policy_kwargs, where)
    return Hyperparams(
        n_envs=n_envs,
        n_timesteps=int(n_timesteps),
        policy=str(entry.get("policy", "MlpPolicy")),
        normalize=normalize,
        policy_kwargs=policy_kwargs,
        algo_kwargs=algo_kwargs,
    )
