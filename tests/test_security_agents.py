"""Issue 11, agents: an SB3 archive from a stranger runs no code and fails in one clear line;
shipped agents and their sidecars load only when their MANIFEST entry vouches for them."""

from __future__ import annotations

import base64
import io
import json
import pickle
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from stable_baselines3 import PPO  # noqa: E402
from stable_baselines3.common.vec_env import VecNormalize  # noqa: E402

from agents import loading  # noqa: E402
from agents.loading import load_agent, restore_model  # noqa: E402
from agents.policy import sidecar  # noqa: E402
from agents.sb3 import make_sb3_env  # noqa: E402
from agents.training import save_model  # noqa: E402
from distree_env.manifest import record  # noqa: E402
from tests.agents import SYNTH  # noqa: E402
from tests.damaged import version_needed  # noqa: E402

OBS_DIM = int(make_sb3_env(SYNTH, 1, seed=0).observation_space.shape[0])


class _Touch:
    """Unpickling this creates a file: proof that code from the archive ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _payload(marker: Path) -> dict:
    blob = base64.b64encode(pickle.dumps(_Touch(marker))).decode()
    return {":type:": "<class 'abc.ABCMeta'>", ":serialized:": blob}


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """A small genuine PPO archive."""
    torch.set_num_threads(1)
    model = PPO(
        "MlpPolicy",
        make_sb3_env(SYNTH, 2, seed=0),
        n_steps=32,
        batch_size=32,
        policy_kwargs={"net_arch": [8]},
        seed=0,
        device="cpu",
    )
    path = tmp_path_factory.mktemp("agent") / "genuine.zip"
    save_model(model, path)
    return path


def _rewrite(src: Path, dst: Path, header: dict | None = None, **members: bytes) -> Path:
    """A copy of ``src`` with header fields replaced and members replaced or added."""
    with zipfile.ZipFile(src) as archive:
        contents = {name: archive.read(name) for name in archive.namelist()}
    data = json.loads(contents["data"])
    data.update(header or {})
    contents["data"] = json.dumps(data).encode()
    contents.update({name.replace("__", "."): value for name, value in members.items()})
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, value in contents.items():
            archive.writestr(name, value)
    return dst


def _never_unpickle(monkeypatch) -> None:
    import stable_baselines3.common.save_util as save_util

    def refuse(*args, **kwargs):
        raise AssertionError("something was unpickled")

    monkeypatch.setattr(save_util.cloudpickle, "loads", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)


# items 1 and 2: nothing in the archive runs ------------------------------------------------------


def test_pickled_header_entries_and_env_run_nothing(archive, tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    planted = tmp_path / "planted_h1_module.py"
    planted.write_text(f"open({str(tmp_path / 'imported')!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    hostile = _rewrite(
        archive,
        tmp_path / "hostile.zip",
        {
            "policy_class": {**_payload(marker), "__module__": "stable_baselines3"},
            "clip_range": _payload(marker),
            "_last_obs": _payload(marker),
            "lr_schedule": _payload(marker),
            "env": "planted_h1_module:Planted-v0",  # gym.make would import the module
        },
    )
    _never_unpickle(monkeypatch)
    policy = load_agent(str(hostile), trust=True)
    assert policy.predict(np.zeros((3, OBS_DIM), np.float32))[0].shape == (3,)
    env = make_sb3_env(SYNTH, 2, seed=0)  # the resume path: same loader, with an env
    assert restore_model(hostile, "ppo", env=env).get_env() is not None
    assert not marker.exists() and not (tmp_path / "imported").exists()
    assert "planted_h1_module" not in sys.modules


def test_pickled_weights_are_refused_without_running_them(archive, tmp_path):
    marker = tmp_path / "ran"
    hostile = _rewrite(archive, tmp_path / "w.zip", policy__pth=pickle.dumps(_Touch(marker)))
    with pytest.raises(ValueError) as exc:
        load_agent(str(hostile), trust=True)
    message = str(exc.value)
    assert "w.zip" in message and "pickled Python objects" in message and "\n" not in message
    assert "weights_only" not in message and not marker.exists()


def test_resumed_model_matches_the_saved_one(archive):
    env = make_sb3_env(SYNTH, 2, seed=0)
    restored = restore_model(archive, "ppo", env=env, overrides={"clip_range": 0.1})
    original = PPO.load(archive, device="cpu")  # our own file: SB3's own loader as reference
    obs = np.random.default_rng(0).random((64, OBS_DIM)).astype(np.float32)
    assert np.array_equal(restored.predict(obs, deterministic=True)[0],
                          original.predict(obs, deterministic=True)[0])  # fmt: skip
    assert restored.num_timesteps == original.num_timesteps and restored.n_envs == 2
    assert restored.clip_range(1.0) == 0.1  # the run's hyperparameters, not the file's pickle


# item 8: every bad archive is one ValueError naming the file -----------------------------------

_BAD_HEADERS = {
    "huge _shape (MemoryError)": {"observation_space": {
        ":type:": "<class 'gymnasium.spaces.box.Box'>", "_shape": [99999999999]}},
    "shape of wrong type (TypeError)": {"observation_space": {
        ":type:": "<class 'gymnasium.spaces.box.Box'>", "_shape": "ten"}},
    "spaces missing (AttributeError)": {"observation_space": 5},
    "wide net (MemoryError)": {"policy_kwargs": {"net_arch": [10**9, 10**9]}},
    "net_arch of strings": {"policy_kwargs": {"net_arch": "big"}},
    "unknown class in policy_kwargs": {"policy_kwargs": {
        "activation_fn": "<class 'os.system'>"}},
    "pickled features extractor": {"policy_kwargs": {"features_extractor_class": "x"}},
    "n_steps as text": {"n_steps": "12"},
    "huge rollout (MemoryError)": {"n_steps": 10**12},
    "infinite step count (OverflowError)": {"num_timesteps": float("inf")},
    "nan learning rate": {"learning_rate": float("nan")},
    "other action space": {"action_space": {
        ":type:": "<class 'gymnasium.spaces.discrete.Discrete'>", "n": "7"}},
    "architecture differs from the weights": {"policy_kwargs": {"net_arch": [16]}},
    "terabytes of LSTM": {"policy_kwargs": {"net_arch": [8], "lstm_hidden_size": 4096,
                                            "n_lstm_layers": 4096}},
    "gigabytes of layers": {"policy_kwargs": {"net_arch": [4096] * 16}},
    "class of a dict": {"policy_kwargs": {"activation_fn": {"a": 1}}},
}  # fmt: skip


@pytest.mark.parametrize("header", list(_BAD_HEADERS.values()), ids=list(_BAD_HEADERS))
def test_bad_headers_are_one_clear_value_error(archive, tmp_path, header):
    bad = _rewrite(archive, tmp_path / "bad.zip", header)
    with pytest.raises(ValueError) as exc:
        load_agent(str(bad), trust=True)
    assert "bad.zip" in str(exc.value) and "\n" not in str(exc.value)
    assert exc.value.__cause__ is None and exc.value.__suppress_context__


def test_nested_json_and_zip_bombs_are_refused_before_reading(archive, tmp_path, monkeypatch):
    nested = tmp_path / "nested.zip"
    with zipfile.ZipFile(nested, "w") as archive_out:
        archive_out.writestr("data", "[" * 200_000 + "]" * 200_000)
    with pytest.raises(ValueError, match="nested.zip.*RecursionError"):
        load_agent(str(nested), trust=True)
    header_bomb = tmp_path / "header_bomb.zip"
    with zipfile.ZipFile(header_bomb, "w", zipfile.ZIP_DEFLATED) as archive_out:
        archive_out.writestr("data", b" " * (loading.MAX_HEADER_BYTES + 1))
    with pytest.raises(ValueError, match=r"header_bomb.zip.*'data' declares \d+ bytes, over"):
        load_agent(str(header_bomb), trust=True)
    monkeypatch.setattr(loading, "MAX_WEIGHTS_BYTES", 1 << 20)  # the real cap is 64 MiB
    weights_bomb = _rewrite(archive, tmp_path / "weights_bomb.zip", policy__pth=b"\0" * (2 << 20))
    with pytest.raises(ValueError, match=r"weights_bomb.zip.*'policy.pth' declares \d+ bytes"):
        load_agent(str(weights_bomb), trust=True)


def test_weights_whose_records_are_deflated_are_refused_before_they_inflate(archive, tmp_path):
    """``policy.pth`` is itself a torch zip archive: within the 64 MiB member cap, a record
    deflated by another tool could inflate about a thousandfold inside ``torch.load``."""
    with zipfile.ZipFile(archive) as outer:
        weights = outer.read("policy.pth")
    inner = tmp_path / "inner.zip"
    with zipfile.ZipFile(io.BytesIO(weights)) as src, zipfile.ZipFile(inner, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info), zipfile.ZIP_DEFLATED)
    bomb = _rewrite(archive, tmp_path / "inner_bomb.zip", policy__pth=inner.read_bytes())
    with pytest.raises(ValueError, match=r"inner_bomb.zip.*policy.pth: record .* is compressed"):
        load_agent(str(bomb), trust=True)


def test_truncated_missing_and_foreign_files(archive, tmp_path):
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(archive.read_bytes()[:300])
    with pytest.raises(ValueError, match="truncated.zip.*truncated, corrupt"):
        load_agent(str(truncated), trust=True)
    version = tmp_path / "version.zip"  # asks for zip version 10.0, unknown to zipfile
    version.write_bytes(version_needed(archive.read_bytes(), 100))
    with pytest.raises(ValueError, match="version.zip.*not a readable stable-baselines3"):
        load_agent(str(version), trust=True)
    with pytest.raises(ValueError, match="is a directory"):
        load_agent(str(tmp_path) + "/", trust=True)
    no_weights = _rewrite(archive, tmp_path / "no_weights.zip")
    with zipfile.ZipFile(no_weights) as a, zipfile.ZipFile(tmp_path / "nw.zip", "w") as b:
        for name in a.namelist():
            if name != "policy.pth":
                b.writestr(name, a.read(name))
    with pytest.raises(ValueError, match="nw.zip.*no policy.pth"):
        load_agent(str(tmp_path / "nw.zip"), trust=True)


# item 3: a listed agent without a hash does not load untrusted ----------------------------------


def test_an_agent_listed_without_sha256_is_refused(archive, checkpoints):
    path = checkpoints / "agents" / "a.zip"
    path.parent.mkdir()
    path.write_bytes(archive.read_bytes())
    (checkpoints / "MANIFEST.json").write_text(json.dumps({"files": {"agents/a.zip": {}}}))
    with pytest.raises(ValueError, match="no valid sha256"):
        load_agent("a")


# item 4: sidecars belong to their agent's entry ---------------------------------------------


def _normalised_agent(path: Path) -> None:
    env = VecNormalize(make_sb3_env(SYNTH, 2, seed=0), norm_reward=False)
    env.obs_rms.mean = np.full(OBS_DIM, 0.5)  # statistics that change the actions
    model = PPO("MlpPolicy", env, n_steps=32, batch_size=32, seed=0, device="cpu")
    save_model(model, path)


def test_a_stale_sidecar_never_changes_a_shipped_agent(archive, checkpoints):
    path = checkpoints / "agents" / "a.zip"
    path.parent.mkdir()
    _normalised_agent(path)
    record(path, "test", sidecars=[sidecar(path)])
    assert load_agent("a").normalizer is not None
    stats = sidecar(path).read_bytes()
    path.write_bytes(archive.read_bytes())  # replaced by an agent without statistics...
    sidecar(path).write_bytes(stats)  # ...but the old statistics are still there
    record(path, "test")
    with pytest.raises(ValueError, match="vecnormalize.npz' is not part of the agent's entry"):
        load_agent("a")
    sidecar(path).unlink()
    assert load_agent("a").normalizer is None


def test_a_listed_sidecar_is_verified_and_required(checkpoints):
    path = checkpoints / "agents" / "a.zip"
    path.parent.mkdir()
    _normalised_agent(path)
    record(path, "test", sidecars=[sidecar(path)])
    original = sidecar(path).read_bytes()
    sidecar(path).unlink()
    with pytest.raises(ValueError, match="listed in checkpoints/MANIFEST.json, are missing"):
        load_agent("a")
    damaged = bytearray(original)
    damaged[-30] ^= 0xFF
    sidecar(path).write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match="vecnormalize.npz.*sha256"):
        load_agent("a")


def test_saving_an_agent_without_statistics_removes_the_old_sidecar(archive, tmp_path):
    path = tmp_path / "a.zip"
    _normalised_agent(path)
    assert sidecar(path).is_file()
    model = PPO("MlpPolicy", make_sb3_env(SYNTH, 2, seed=0), n_steps=32, device="cpu")
    save_model(model, path)
    assert not sidecar(path).exists()
    assert load_agent(str(path), trust=True).normalizer is None
