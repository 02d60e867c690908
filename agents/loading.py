"""Open stable-baselines3 archives without running code: shipped agents, user agents, checkpoints.

Why: an SB3 ``.zip`` holds cloudpickled objects, and SB3's own ``load`` unpickles them and hands
the header's ``env`` to ``gym.make`` (whose ``"module:Id"`` form imports a module). Every archive
the project opens, for inference (:func:`load_agent`) and to resume training
(``experiments.train_agent --resume``), goes through :func:`restore_model` instead: it unpickles
nothing and imports nothing named in the file. The JSON header is read with declared sizes capped;
only allow-listed plain fields are kept (numbers and flags, type- and range-checked); the policy
class, spaces and ``policy_kwargs`` are rebuilt here from their JSON fields; ``env`` and every
pickled entry (schedules, buffers' classes) are ignored, so training-only schedules come from
SB3's defaults or the caller's hyperparameters; the weights are read with
``torch.load(weights_only=True)``. A shipped agent (``"ppo"`` -> ``checkpoints/agents/ppo.zip``)
must also match ``checkpoints/MANIFEST.json``; any other file needs ``trust=True``.
"""

from __future__ import annotations

import glob
import json
import math
import os
import pickle
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from agents.policy import SB3Policy, read_obs_normalizer, sidecar
from agents.training import ALGOS, algo_class
from distree_env.io import ARCHIVE_ERRORS, error_line, require_input_file
from distree_env.manifest import checkpoints_dir, manifest_entry, verify

__all__ = ["agent_path", "infer_algo", "load_agent", "restore_model"]

#: Caps on what an archive may declare, checked before anything is decompressed.
MAX_MEMBERS = 64
MAX_HEADER_BYTES = 4 << 20
MAX_WEIGHTS_BYTES = 64 << 20
#: Largest network an archive may ask for (observation size, hidden width, hidden layers).
MAX_OBS_DIM = 4096
MAX_WIDTH = 4096
MAX_LAYERS = 16

#: What a failing library call may raise on a hostile or damaged archive: each becomes one
#: ValueError naming the file (MemoryError: a declared size; RecursionError: nested JSON).
_LOAD_ERRORS = (
    *ARCHIVE_ERRORS,
    ArithmeticError,
    AssertionError,
    AttributeError,
    IndexError,
    MemoryError,
    RecursionError,
    TypeError,
    ValueError,
    pickle.UnpicklingError,
)

_INT, _FLOAT, _BOOL = "int", "float", "bool"
_BIG = 10**15
#: Plain header fields kept, with their kind and bounds; everything else in a header is ignored.
_FIELDS: dict[str, tuple[str, float, float]] = {
    "verbose": (_INT, 0, 2),
    "num_timesteps": (_INT, 0, _BIG),
    "_total_timesteps": (_INT, 0, _BIG),
    "_num_timesteps_at_start": (_INT, 0, _BIG),
    "_episode_num": (_INT, 0, _BIG),
    "_n_updates": (_INT, 0, _BIG),
    "_n_calls": (_INT, 0, _BIG),
    "_stats_window_size": (_INT, 1, 10**6),
    "sde_sample_freq": (_INT, -1, 10**6),
    "n_envs": (_INT, 1, 1024),
    "n_steps": (_INT, 1, 1 << 16),
    "batch_size": (_INT, 1, 1 << 20),
    "n_epochs": (_INT, 1, 10**4),
    "buffer_size": (_INT, 1, 10**7),
    "learning_starts": (_INT, 0, _BIG),
    "gradient_steps": (_INT, -1, 10**4),
    "target_update_interval": (_INT, 1, _BIG),
    "n_quantiles": (_INT, 1, 1024),
    "learning_rate": (_FLOAT, 0.0, 10.0),
    "gamma": (_FLOAT, 0.0, 1.0),
    "gae_lambda": (_FLOAT, 0.0, 1.0),
    "ent_coef": (_FLOAT, 0.0, 1e3),
    "vf_coef": (_FLOAT, 0.0, 1e3),
    "max_grad_norm": (_FLOAT, 0.0, 1e9),
    "tau": (_FLOAT, 0.0, 1.0),
    "target_kl": (_FLOAT, 0.0, 1e9),
    "_current_progress_remaining": (_FLOAT, -1.0, 1.0),
    "exploration_initial_eps": (_FLOAT, 0.0, 1.0),
    "exploration_final_eps": (_FLOAT, 0.0, 1.0),
    "exploration_fraction": (_FLOAT, 0.0, 1.0),
    "exploration_rate": (_FLOAT, 0.0, 1.0),
    "use_sde": (_BOOL, 0, 1),
    "normalize_advantage": (_BOOL, 0, 1),
    "optimize_memory_usage": (_BOOL, 0, 1),
    "use_sde_at_warmup": (_BOOL, 0, 1),
}
#: Constructor arguments that a header stores under another name.
_HEADER_NAMES = {"stats_window_size": "_stats_window_size"}
#: Constructor arguments a header keeps only as pickled schedules (never read back): their
#: range is checked before training alone.
_SCHEDULES: dict[str, tuple[str, float, float]] = {
    "clip_range": (_FLOAT, 0.0, 10.0),
    "clip_range_vf": (_FLOAT, 0.0, 1e9),
}
#: The MLP policy's alias where an algorithm names it otherwise.
_MLP_ALIAS = {"recurrent_ppo": "MlpLstmPolicy"}


def agent_path(name_or_path: str | os.PathLike) -> Path:
    """``"ppo-steady-stream"`` -> ``<checkpoints>/agents/ppo-steady-stream.zip``; anything ending
    in ``.zip`` or with a ``/`` is a path.

    :param name_or_path: a shipped agent's name or a path to an archive.
    """
    text = os.fspath(name_or_path)
    if text.endswith(".zip") or "/" in text or os.sep in text:
        return Path(text).expanduser()
    return checkpoints_dir() / "agents" / f"{text}.zip"


@contextmanager
def _failures_as_value_error(path: Path, doing: str) -> Iterator[None]:
    """Turn what a library raises on a bad archive into one ValueError naming the file."""
    try:
        yield
    except _LOAD_ERRORS as exc:
        raise ValueError(f"agent {str(path)!r}: {doing} failed ({error_line(exc)})") from None


def _member(archive: zipfile.ZipFile, name: str, limit: int, path: Path) -> bytes | None:
    """The bytes of one member (None if absent), refused when it declares more than ``limit``."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        return None
    if info.file_size > limit:
        raise ValueError(
            f"agent {str(path)!r}: member {name!r} declares {info.file_size} bytes, over the "
            f"cap of {limit} (a damaged or hostile archive)"
        )
    return archive.read(info)  # zipfile never inflates past the declared size


@contextmanager
def _open_archive(path: Path) -> Iterator[zipfile.ZipFile]:
    require_input_file(path, "agent")
    try:
        archive = zipfile.ZipFile(path)
    except (ValueError, *ARCHIVE_ERRORS) as exc:
        raise ValueError(
            f"agent {str(path)!r}: not a readable stable-baselines3 archive ({error_line(exc)}); "
            "it is truncated, corrupt or not an agent"
        ) from None
    with archive:
        if len(archive.infolist()) > MAX_MEMBERS:
            raise ValueError(
                f"agent {str(path)!r}: {len(archive.infolist())} members, over the cap of "
                f"{MAX_MEMBERS}; not a stable-baselines3 archive"
            )
        yield archive


def _header(archive: zipfile.ZipFile, path: Path) -> dict[str, Any]:
    """The archive's JSON header as plain data (nothing in it is decoded further)."""
    with _failures_as_value_error(path, "reading the header"):
        raw = _member(archive, "data", MAX_HEADER_BYTES, path)
        if raw is None:
            raise ValueError("no 'data' member: not a stable-baselines3 archive")
        data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError(f"agent {str(path)!r}: the header is not a JSON object")
    return data


def infer_algo(path: str | os.PathLike) -> str:
    """The algorithm of an SB3 archive, from its JSON header (policy class and fields).

    :param path: the archive.
    """
    p = Path(path)
    with _open_archive(p) as archive:
        data = _header(archive, p)
    policy = data.get("policy_class")
    module = str(policy.get("__module__", "")) if isinstance(policy, dict) else ""
    if "qrdqn" in module:
        return "qrdqn"
    if "recurrent" in module:
        return "recurrent_ppo"
    if "maskable" in module:
        return "maskable_ppo"
    if "dqn" in module:
        return "dqn"
    if "n_epochs" in data:
        return "ppo"
    if "n_steps" in data:
        return "a2c"
    raise ValueError(
        f"agent {str(p)!r}: cannot tell the algorithm; pass algo= one of {list(ALGOS)}"
    )


def _number(value: Any, kind: str, low: float, high: float, where: str) -> Any:
    """``value`` checked as a JSON int / float / bool within [low, high], else ValueError."""
    if kind == _BOOL:
        if isinstance(value, bool):
            return value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if kind == _INT and isinstance(value, int) and low <= value <= high:
            return value
        if kind == _FLOAT and math.isfinite(value) and low <= value <= high:
            return float(value)
    raise ValueError(f"{where}={value!r} is not allowed: a {kind} in [{low:g}, {high:g}]")


def _allowed_classes() -> dict[str, type]:
    """Activation and optimizer classes a ``policy_kwargs`` may name, by their ``repr``."""
    import torch  # noqa: PLC0415 (loading an agent needs torch anyway)

    allowed = (
        torch.nn.ReLU,
        torch.nn.Tanh,
        torch.nn.ELU,
        torch.nn.LeakyReLU,
        torch.nn.SiLU,
        torch.nn.GELU,
        torch.optim.Adam,
        torch.optim.AdamW,
        torch.optim.RMSprop,
        torch.optim.SGD,
    )
    return {f"<class '{c.__module__}.{c.__qualname__}'>": c for c in allowed}


def _widths(value: Any, where: str) -> list[int]:
    """A list of layer widths, each an int in [1, MAX_WIDTH], at most MAX_LAYERS of them."""
    if not isinstance(value, list) or len(value) > MAX_LAYERS:
        raise ValueError(f"{where}={value!r}: expected a list of at most {MAX_LAYERS} widths")
    return [_number(w, _INT, 1, MAX_WIDTH, f"{where}[{i}]") for i, w in enumerate(value)]


def _net_arch(value: Any, where: str) -> list[int] | dict[str, list[int]]:
    """``net_arch``: one list of widths, or one per network (``pi``, ``vf``, ``qf``)."""
    if not isinstance(value, dict):
        return _widths(value, where)
    if not set(value) <= {"pi", "vf", "qf"}:
        raise ValueError(f"{where} keys {sorted(value)}: allowed pi, vf, qf")
    return {k: _widths(v, f"{where}.{k}") for k, v in value.items()}


def _allowed_class(value: Any, where: str) -> type:
    """An activation or optimizer class named by its ``repr``, from :func:`_allowed_classes`."""
    classes = _allowed_classes()
    if not isinstance(value, str) or value not in classes:
        raise ValueError(
            f"{where}={value!r} is not an allowed class (it could only be restored by unpickling)"
        )
    return classes[value]


def _optimizer_kwargs(value: Any, where: str) -> dict[str, float | bool]:
    """``optimizer_kwargs``: at most 16 plain numbers or flags (``lr``, ``eps``, ``amsgrad``)."""
    if not isinstance(value, dict) or len(value) > 16:
        raise ValueError(f"{where}={value!r}: expected an object of numbers")
    return {
        str(k): _number(v, _BOOL, 0, 1, f"{where}.{k}")
        if isinstance(v, bool)
        else _number(v, _FLOAT, -1e9, 1e9, f"{where}.{k}")
        for k, v in value.items()
    }


def _flag(value: Any, where: str) -> bool:
    """A JSON boolean."""
    return _number(value, _BOOL, 0, 1, where)


def _count(high: int) -> Callable[[Any, str], int]:
    """A checker of an integer in [1, high]."""
    return lambda value, where: _number(value, _INT, 1, high, where)


#: ``policy_kwargs`` keys rebuilt, each with its checker; any other key is refused (it would need
#: a class from the file). ``lstm_*``, ``shared_lstm``, ``enable_critic_lstm``: RecurrentPPO.
_POLICY_KWARGS: dict[str, Callable[[Any, str], Any]] = {
    "net_arch": _net_arch,
    "activation_fn": _allowed_class,
    "optimizer_class": _allowed_class,
    "optimizer_kwargs": _optimizer_kwargs,
    "ortho_init": _flag,
    "normalize_images": _flag,
    "share_features_extractor": _flag,
    "n_quantiles": _count(1024),
    "lstm_hidden_size": _count(4096),
    "n_lstm_layers": _count(4096),
    "shared_lstm": _flag,
    "enable_critic_lstm": _flag,
}


def _policy_kwargs(entry: Any) -> dict[str, Any]:
    """``policy_kwargs`` rebuilt from its JSON fields; classes only from a short allow-list."""
    if entry is None:
        return {}
    if not isinstance(entry, dict):
        raise ValueError(f"policy_kwargs={entry!r}: expected an object")
    kwargs: dict[str, Any] = {}
    for key, value in entry.items():
        where = f"policy_kwargs.{key}"
        if key in (":type:", ":serialized:"):
            continue
        if key not in _POLICY_KWARGS:
            raise ValueError(f"{where} is not supported by the pickle-free loader")
        kwargs[key] = _POLICY_KWARGS[key](value, where)
    return kwargs


def check_settings(algo_kwargs: dict[str, Any], policy_kwargs: dict[str, Any], where: str) -> None:
    """ValueError naming the key, the value and what is allowed for any hyperparameter that
    the loader would refuse in a saved agent: checked before training, so no run trains a
    model that :func:`load_agent` (and ``--resume``) then refuse.

    :param algo_kwargs: constructor arguments (``gamma``, ``batch_size``...).
    :param policy_kwargs: the policy's arguments (classes are checked where they are parsed).
    :param where: the file and entry, for the message.
    """
    for key, value in algo_kwargs.items():
        spec = _FIELDS.get(_HEADER_NAMES.get(key, key)) or _SCHEDULES.get(key)
        if spec is None or value is None:  # None: SB3's default (target_kl: null)
            continue
        kind, low, high = spec
        try:
            _number(value, kind, low, high, f"{where}.{key}")
        except ValueError as e:
            hint = " (YAML reads 1e-3 as a string: write !!float 1e-3 or 0.001)"
            raise ValueError(f"{e}{hint if _number_text(value) else ''}") from None
    for key, value in policy_kwargs.items():
        if key in _POLICY_KWARGS and _POLICY_KWARGS[key] is not _allowed_class:
            _POLICY_KWARGS[key](value, f"{where}.policy_kwargs.{key}")


def _number_text(value: Any) -> bool:
    """Whether ``value`` is a string that reads as a number (YAML 1.1's ``1e-3``)."""
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return isinstance(value, str)


#: Most weights a header may ask the loader to allocate: what a weights file at its cap could
#: hold in float16 (the model is built before the weights are read).
MAX_PARAMETERS = MAX_WEIGHTS_BYTES // 2


def _check_size(policy_kwargs: dict[str, Any], obs_dim: int) -> None:
    """ValueError when the networks a header declares would exceed :data:`MAX_PARAMETERS`
    (an upper estimate: every layer list counted for the policy and for the value network)."""
    arch = policy_kwargs.get("net_arch", [64, 64])
    lists = list(arch.values()) if isinstance(arch, dict) else [arch, arch]
    hidden = int(policy_kwargs.get("lstm_hidden_size", 0))
    layers = int(policy_kwargs.get("n_lstm_layers", 1)) if hidden else 0
    inputs = obs_dim + hidden
    total = 2 * 4 * hidden * (obs_dim + hidden + 2) * layers  # actor and critic LSTMs
    for widths in lists:
        sizes = [inputs, *widths, max(int(policy_kwargs.get("n_quantiles", 1)) * 2, 2)]
        total += sum(a * b + b for a, b in pairwise(sizes))
    if total > MAX_PARAMETERS:
        raise ValueError(
            f"policy_kwargs declare networks of about {total:,} weights; at most "
            f"{MAX_PARAMETERS:,} are allowed (MAX_PARAMETERS, what a weights file may hold)"
        )


def _spaces(data: dict[str, Any]) -> tuple[int, int]:
    """(observation size, number of actions) from the spaces' JSON fields."""
    obs, act = data.get("observation_space"), data.get("action_space")
    if not isinstance(obs, dict) or not isinstance(act, dict):
        raise ValueError("the header has no observation_space / action_space")
    if "spaces.box.Box" not in str(obs.get(":type:")) or "spaces.discrete.Discrete" not in str(
        act.get(":type:")
    ):
        raise ValueError(
            "not a DistrEE agent (needs Box observations and Discrete actions, got "
            f"{str(obs.get(':type:'))[:80]} / {str(act.get(':type:'))[:80]})"
        )
    shape = obs.get("_shape")
    if not (isinstance(shape, list) and len(shape) == 1):
        raise ValueError(f"observation_space._shape={str(shape)[:80]}: expected one dimension")
    dim = _number(shape[0], _INT, 1, MAX_OBS_DIM, "observation_space._shape[0]")
    n = act.get("n")
    if str(n) != "2" or str(act.get("start", "0")) != "0":
        raise ValueError(f"action_space.n={str(n)[:20]!r}: DistrEE's actions are Discrete(2)")
    return dim, 2


def _fields(data: dict[str, Any]) -> dict[str, Any]:
    """The allow-listed plain fields of a header, checked; ``env`` and pickles are never read."""
    kept = {}
    for key, (kind, low, high) in _FIELDS.items():
        value = data.get(key)
        if value is None or (isinstance(value, dict) and ":serialized:" in value):
            continue  # absent, or pickled: SB3's default or the caller's hyperparameters
        kept[key] = _number(value, kind, low, high, key)
    return kept


def restore_model(
    path: str | os.PathLike,
    algo: str,
    env: Any = None,
    overrides: dict[str, Any] | None = None,
) -> Any:
    """An SB3 model rebuilt from an archive without unpickling or importing anything it names.

    With ``env`` (a VecEnv) the model can continue training: the archive's spaces must match the
    env's, and ``overrides`` (the run's hyperparameters) replace what the header holds only
    pickled (schedules, ``train_freq``, ``clip_range``). Without it the model is for inference
    and allocates no rollout or replay memory. Any problem is one ValueError naming the file.

    :param path: the ``.zip`` archive.
    :param algo: one of :data:`agents.training.ALGOS`.
    :param env: the environment to train on, or None for inference.
    :param overrides: model attributes set before the model is built (resume: hyperparameters).
    """
    p = Path(path)
    cls = algo_class(algo)
    with _open_archive(p) as archive:
        data = _header(archive, p)
        try:
            obs_dim, n_actions = _spaces(data)
            fields = _fields(data)
            policy_kwargs = _policy_kwargs(data.get("policy_kwargs"))
            _check_size(policy_kwargs, obs_dim)
        except ValueError as exc:
            raise ValueError(f"agent {str(p)!r}: {exc}") from None
        if env is not None:
            got = (env.observation_space.shape, getattr(env.action_space, "n", None))
            if got != ((obs_dim,), n_actions):
                raise ValueError(
                    f"agent {str(p)!r} observes {obs_dim} values with {n_actions} actions, but "
                    f"the environment gives {got[0]} with {got[1]}: another configuration"
                )
            fields.pop("n_envs", None)
        else:
            fields.update(n_envs=1, buffer_size=1)  # inference: no rollout or replay memory
        fields.update(overrides or {})
        with _failures_as_value_error(p, f"building the {algo} model"):
            from gymnasium import spaces  # noqa: PLC0415

            model = cls(
                policy=cls.policy_aliases[_MLP_ALIAS.get(algo, "MlpPolicy")],
                env=env,
                device="cpu",
                _init_setup_model=False,
            )
            if env is None:
                model.observation_space = spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
                model.action_space = spaces.Discrete(n_actions)
            model.__dict__.update(fields)
            model.policy_kwargs = policy_kwargs
            model._last_obs = None  # forces a reset before training, as SB3's load does
            model._setup_model()
        from distree_env.model.checkpoint import torch_load_bytes  # noqa: PLC0415 (torch)

        names = model._get_torch_save_params()[0]  # none of ALGOS has extra torch variables
        params = {}
        for name in names:
            with _failures_as_value_error(p, f"reading the weights {name}.pth"):
                raw = _member(archive, f"{name}.pth", MAX_WEIGHTS_BYTES, p)
                if raw is None:
                    raise ValueError(f"the archive has no {name}.pth")
                params[name] = torch_load_bytes(raw, f"{name}.pth")
        with _failures_as_value_error(p, f"restoring the weights as {algo}"):
            model.set_parameters(params, exact_match=True, device="cpu")
    return model


def _normalizer(path: Path, listed: bool) -> Any:
    """The agent's observation normalisation: for a listed agent exactly the sidecars its
    MANIFEST entry lists (a leftover from an earlier version of the file is refused)."""
    norm_path = sidecar(path)
    if listed:
        entry = manifest_entry(path) or {}
        expected = {checkpoints_dir() / rel for rel in entry.get("sidecars") or {}}
        if norm_path.exists() and not any(norm_path.resolve() == e.resolve() for e in expected):
            raise ValueError(
                f"agent {str(path)!r}: {str(norm_path)!r} is not part of the agent's entry in "
                "checkpoints/MANIFEST.json (left from an earlier version?); remove it or ship "
                "the agent again"
            )
        if expected and not norm_path.exists():
            raise ValueError(
                f"agent {str(path)!r}: its normalisation statistics {str(norm_path)!r}, listed "
                "in checkpoints/MANIFEST.json, are missing"
            )
    if not norm_path.exists():
        pickled = _pickled_normalization(path)
        if pickled is not None:
            raise ValueError(
                f"agent {str(path)!r}: its observation normalisation looks to be in "
                f"{str(pickled)!r}, a pickle this loader never opens (without it the agent "
                "would see raw observations and score wrong). If you made that file (loading "
                "a pickle runs any code it holds), convert it once, in your own process: "
                "venv = VecNormalize.load(PKL, venv); "
                f"agents.policy.save_vecnormalize({str(norm_path)!r}, venv); if that file is "
                "another agent's, move it"
            )
        return None
    verify(norm_path, required=listed)
    return read_obs_normalizer(norm_path, path)


def _pickled_normalization(path: Path) -> Path | None:
    """The agent's own ``VecNormalize`` pickle, if any: ``<stem>...vec[_]normalize.pkl`` or SB3's
    documented ``vec_normalize.pkl`` beside the archive, or rl-zoo3's
    ``<stem>/vecnormalize.pkl`` (its model ``<env_id>.zip`` beside the folder ``<env_id>``)."""
    folder = path.parent
    found = sorted(folder.glob(f"{glob.escape(path.stem)}*vec*normali*.pkl"))
    found += [folder / n for n in ("vec_normalize.pkl", "vecnormalize.pkl")]
    found.append(folder / path.stem / "vecnormalize.pkl")
    return next((p for p in found if p.is_file()), None)


def load_agent(
    name_or_path: str | os.PathLike, trust: bool = False, algo: str | None = None
) -> SB3Policy:
    """A shipped agent by name (``"ppo-steady-stream"``: ``ALGO-SCENARIO``) or a path, as a
    policy with ``predict``.

    Raises ValueError when the file is missing, fails its manifest check, is not listed and
    ``trust`` is False, or is not a valid archive. Normalisation statistics beside the archive
    (``NAME.vecnormalize.npz``) are applied to observations; a shipped agent's must be listed
    in its MANIFEST entry.

    :param name_or_path: a shipped agent's name or a path to an archive.
    :param trust: load a file that is not listed in the manifest (a file you made yourself).
    :param algo: the algorithm (default: read from the archive's header).
    """
    path = agent_path(name_or_path)
    if not path.exists():
        shipped = sorted(p.stem for p in (checkpoints_dir() / "agents").glob("*.zip"))
        raise ValueError(
            f"agent {os.fspath(name_or_path)!r}: file {str(path)!r} not found "
            f"(shipped agents: {shipped or 'none'})"
        )
    require_input_file(path, "agent")
    listed = verify(path)
    if not listed and not trust:
        raise ValueError(
            f"agent {str(path)!r} is not listed in checkpoints/MANIFEST.json; pass trust=True "
            "(--trust) only for files you made yourself"
        )
    normalizer = _normalizer(path, listed)
    model = restore_model(path, algo or infer_algo(path))
    if normalizer is not None and normalizer.mean.shape != model.observation_space.shape:
        raise ValueError(
            f"agent {str(path)!r}: its normalisation statistics {str(sidecar(path))!r} are for "
            f"{normalizer.mean.shape} observations, the agent takes {model.observation_space.shape}"
        )
    return SB3Policy(model, normalizer)
