"""Backbone scripts end to end on a tiny generated archive: train, resume after SIGKILL, export."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from distree_env.traces import ExitTrace
from experiments import export_traces, train_backbone

ROOT = Path(__file__).resolve().parents[2]
TINY_ARGS = ["--preset", "tiny", "--batch-size", "4", "--val-size", "8", "--threads", "1"]
TINY_ARGS += ["--bf16", "false", "--progress", "false"]


def _train_cmd(data: Path, tmp: Path, epochs: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "experiments.train_backbone",
        "--data",
        str(data),
        *TINY_ARGS,
        "--epochs",
        str(epochs),
        "--runs-dir",
        str(tmp / "runs"),
        "--run-name",
        "r",
        "--output",
        str(tmp / "bb.pt"),
        *extra,
    ]


def _run(cmd: list[str], tmp: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=_env(tmp), capture_output=True, text=True, timeout=300)


def _env(tmp: Path) -> dict:
    return {
        **os.environ,
        "DISTREE_CACHE": str(tmp / "cache"),
        "DISTREE_CHECKPOINTS": str(tmp / "ckpt"),
    }


def test_killed_training_resumes_to_the_same_weights(tiny_cifar, tmp_path):
    data, _ = tiny_cifar
    epochs = 12  # the kill comes after the first epoch, with 11 to go
    proc = subprocess.Popen(
        _train_cmd(data, tmp_path, epochs),
        cwd=ROOT,
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    last = tmp_path / "runs" / "r" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert last.exists() and not (tmp_path / "bb.pt").exists(), "the run should die mid-training"
    done = torch.load(last, weights_only=True)["epoch"]
    assert 1 <= done < epochs

    out = _run(_train_cmd(data, tmp_path, epochs, "--resume"), tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resumed" in out.stdout
    resumed = torch.load(tmp_path / "bb.pt", weights_only=True)["state_dict"]

    fresh_dir = tmp_path / "fresh"
    fresh_dir.mkdir()
    out = _run(_train_cmd(data, fresh_dir, epochs), fresh_dir)
    assert out.returncode == 0, out.stderr[-2000:]
    fresh = torch.load(fresh_dir / "bb.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(resumed[k], fresh[k]) for k in fresh)


def test_existing_run_without_resume_is_refused(tiny_cifar, tmp_path, monkeypatch, capsys):
    data, _ = tiny_cifar
    assert _run(_train_cmd(data, tmp_path, 1), tmp_path).returncode == 0
    out = _run(_train_cmd(data, tmp_path, 1), tmp_path)
    assert out.returncode == 2 and "--resume" in out.stderr and "Traceback" not in out.stderr
    last = tmp_path / "runs" / "r" / "last.pt"  # damaged, yet still a loadable file
    state = torch.load(last, weights_only=True)
    del state["history"]
    state["torch_rng"] = "not a tensor"
    torch.save(state, last)
    for name, value in _env(tmp_path).items():  # in this process: no second torch start-up
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exc:
        train_backbone.main(_train_cmd(data, tmp_path, 1, "--resume")[3:])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.strip().count("\n") == 0, err
    assert "last.pt': missing or malformed ['torch_rng', 'history']" in err


@pytest.mark.parametrize("topology", ["parallel", "pipeline"])
def test_export_writes_valid_traces_and_manifest(tiny_cifar, tmp_path, topology, monkeypatch):
    data, _ = tiny_cifar
    ckpt = tmp_path / "ckpt"
    backbone = ckpt / f"backbone-{topology}.pt"
    train = _train_cmd(data, tmp_path, 1, "--topology", topology, "--output", str(backbone))
    out = _run(train, tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    export = [sys.executable, "-m", "experiments.export_traces", "--data", str(data)]
    export += ["--backbone", str(backbone), "--out-dir", str(ckpt / "traces")]
    out = _run([*export, "--val-size", "8", "--threads", "1", "--bf16", "false"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    prefix = "cifar10" if topology == "parallel" else "cifar10-pipeline"
    manifest = json.loads((ckpt / "MANIFEST.json").read_text())["files"]
    names = {backbone.name, f"traces/{prefix}-val.npz", f"traces/{prefix}-test.npz"}
    assert names <= set(manifest)
    assert manifest[backbone.name]["metrics"]["val_exit_accuracy"]
    # another val split than training's would hold training images: refused, nothing written
    other = _run([*export[:-2], "--out-dir", str(tmp_path / "other"), "--val-size", "10"], tmp_path)
    assert other.returncode == 2 and "another val split" in other.stderr, other.stderr
    assert not (tmp_path / "other").exists()
    if topology == "parallel":  # --max-images draws at random: the split is ordered by class
        few = [*export[:-2], "--out-dir", str(tmp_path / "few"), "--splits", "test"]
        out = _run([*few, "--max-images", "6", "--threads", "1", "--bf16", "false"], tmp_path)
        assert out.returncode == 0, out.stderr[-2000:]
        trace = ExitTrace.load(tmp_path / "few" / f"{prefix}-test.npz")
        assert trace.n == 6 and len(set(trace.labels.tolist())) > 3  # 2 images per class
        assert trace.metadata["subset"] == "6 images drawn with seed 0"
        # stopped while exporting the test split: the val split's trace is not written either
        import distree_env.model.export as export_module
        from experiments import export_traces

        real = export_module.export_trace

        def stopped_at_test(model, split, name, **kwargs):
            if name == "test":
                raise KeyboardInterrupt
            return real(model, split, name, **kwargs)

        monkeypatch.setattr(export_module, "export_trace", stopped_at_test)
        argv = [*export[3:-2], "--out-dir", str(tmp_path / "stopped"), "--val-size", "8"]
        with pytest.raises(SystemExit) as stop:
            export_traces.main([*argv, "--threads", "1", "--bf16", "false"])
        assert stop.value.code == 130  # Ctrl-C during the test split's export
        assert not list((tmp_path / "stopped").glob("*.npz"))
    for split, n in (("val", 8), ("test", 20)):
        trace = ExitTrace.load(ckpt / "traces" / f"{prefix}-{split}.npz")
        assert trace.n == n and trace.metadata["split"] == split and trace.topology == topology
        assert (
            manifest[f"traces/{prefix}-{split}.npz"]["metrics"]["exit_accuracy"]
            == trace.metadata["exit_accuracy"]
        )
        assert trace.metadata["backbone_sha256"] == manifest[backbone.name]["sha256"]


def test_distillation_from_a_teacher_backbone(tiny_cifar, tmp_path, capsys):
    data, _ = tiny_cifar
    teacher = tmp_path / "teacher.pt"
    out = _run(
        _train_cmd(data, tmp_path, 1, "--topology", "pipeline", "--output", str(teacher)), tmp_path
    )
    assert out.returncode == 0, out.stderr[-2000:]
    student = _train_cmd(data, tmp_path, 1, "--teacher", str(teacher), "--run-name", "s")
    out = _run(student, tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    state = torch.load(tmp_path / "runs" / "s" / "last.pt", weights_only=True)
    assert state["train_config"]["teacher"] == "teacher.pt"
    # another teacher of the same file name: refused on resume, and no log of it is written
    from distree_env.model.checkpoint import load_backbone, save_backbone

    other = tmp_path / "other" / "teacher.pt"
    other.parent.mkdir()
    changed = load_backbone(teacher)
    with torch.no_grad():
        next(changed.parameters()).add_(0.5)
    save_backbone(changed, other)
    logs = sorted((tmp_path / "runs" / "s").glob("events.out.tfevents.*"))
    swapped = _train_cmd(data, tmp_path, 1, "--teacher", str(other), "--run-name", "s", "--resume")
    with pytest.raises(SystemExit) as exc:
        train_backbone.main(swapped[3:])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "teacher_sha256" in err, err[-2000:]
    assert sorted((tmp_path / "runs" / "s").glob("events.out.tfevents.*")) == logs


def test_short_runs_warm_up_for_at_most_a_fifth_of_their_steps():
    from distree_env.model.train import lr_at, warmup_steps

    assert warmup_steps(2.0, 100, 100 * 52) == 200  # the recipes' schedules: unchanged
    one_epoch = warmup_steps(2.0, 100, 100)
    assert one_epoch == 20 and lr_at(99, 100, one_epoch, 1.0) < 0.05  # it decays before the end


def test_an_experiment_writes_its_run_folder_and_resumes_only_on_the_same_data(
    tiny_cifar, tmp_path
):
    """Without --output the weights stay in the run folder (the shipped ones are untouched),
    and the traces of that backbone go beside it; a resume with other data names the field."""
    data, _ = tiny_cifar
    cmd = _train_cmd(data, tmp_path, 1)
    cmd = cmd[: cmd.index("--output")] + ["--max-train-images", "24"]
    out = _run(cmd, tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    backbone = tmp_path / "runs" / "r" / "backbone.pt"
    assert backbone.is_file() and not (tmp_path / "ckpt").exists()
    export = [sys.executable, "-m", "experiments.export_traces", "--data", str(data), "--backbone",
              str(backbone), "--threads", "1", "--bf16", "false", "--splits", "val"]  # fmt: skip
    out = _run(export, tmp_path)  # --val-size as the backbone file records it (8)
    assert out.returncode == 0, out.stderr[-2000:]
    assert ExitTrace.load(backbone.with_name("cifar10-val.npz")).n == 8
    out = _run([*cmd[:-1], "32", "--resume"], tmp_path)
    assert out.returncode == 2 and "data '" in out.stderr and "' -> '" in out.stderr, out.stderr
    last = tmp_path / "runs" / "r" / "last.pt"  # a checkpoint from before data was recorded
    state = torch.load(last, weights_only=True)
    del state["train_config"]["data"]
    torch.save(state, last)
    out = _run([*cmd[:-1], "32", "--resume"], tmp_path)
    assert out.returncode == 0 and "resumed" in out.stdout, out.stderr[-2000:]
    metrics = torch.load(backbone, weights_only=True)["metrics"]  # the file keeps its record
    assert metrics["val_size"] == 8 and len(metrics["val_exit_accuracy"]) == 3
    assert metrics["train_images"] == 32 and metrics["distillation"].startswith("self")


def test_a_small_training_subset_is_drawn_from_every_class(tiny_cifar):
    from experiments.train_backbone import Args, training_data

    data, _ = tiny_cifar
    train, val = training_data(Args(data=str(data), val_size=8, max_train_images=12))
    full, _ = training_data(Args(data=str(data), val_size=8))
    assert len(train) == 12 and len(set(train.labels.tolist())) >= 6
    assert len(set(full.labels[:12].tolist())) < len(set(train.labels.tolist()))


def test_gpu_recipe_runs_on_the_cpu_with_a_tiny_configuration(tiny_cifar, tmp_path):
    """The ``gpu`` preset's code path (data held on the training device) with device=cpu."""
    from distree_env.model.data import load_cifar10
    from distree_env.model.network import NetConfig
    from distree_env.model.presets import preset
    from distree_env.model.train import TrainConfig, Trainer

    data, _ = tiny_cifar
    p = preset("gpu", "parallel")
    net = NetConfig(**{**p["net"], "depth": 10, "widen": 1, "exits": (1, 2, 3)})
    cfg = TrainConfig(net=net, epochs=1, batch_size=8, lr=p["lr"], device="cpu", bf16=True)
    train = load_cifar10(data, "train", val_size=8)
    trainer = Trainer(cfg, train, load_cifar10(data, "val", val_size=8), tmp_path)
    assert trainer.train_images.device.type == "cpu" and trainer.train_images.dtype == torch.uint8
    history = trainer.fit(progress=False)
    assert len(history[0]["val_exit_accuracy"]) == 3


def test_gpu_recipe_script_runs_its_steps_with_the_tiny_preset(tiny_cifar, tmp_path):
    """The shipped GPU recipe end to end on a CPU: short timed runs, the teacher, both students."""
    data, _ = tiny_cifar
    ship = tmp_path / "ckpt"
    env = _env(tmp_path) | {
        "PRESET": "tiny",
        "WORK": str(tmp_path / "runs"),
        "SHIP": str(ship),
        "SAMPLE": "16",
        "TRAIN_ARGS": "--batch-size 4 --val-size 8 --threads 1 --bf16 false",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    script = ROOT / "experiments" / "train_backbones_gpu.sh"
    out = subprocess.run(
        ["bash", str(script), str(data), "1", "1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "== teacher: 1 epochs" in out.stdout
    manifest = json.loads((ship / "MANIFEST.json").read_text())["files"]
    assert sorted(manifest) == ["backbone-parallel.pt", "backbone-pipeline.pt"]  # no teacher
    for entry in manifest.values():
        assert "--teacher" in entry["command"] and entry["metrics"]["device"] == "cpu"
        assert entry["metrics"]["distillation"].startswith("teacher teacher.pt")
    assert (tmp_path / "runs" / "teacher.pt").exists()


def test_image_sample_for_the_runtime(tiny_cifar, tmp_path):
    import numpy as np

    from distree_env.model.data import load_cifar10, load_image_sample

    data, _ = tiny_cifar
    out_file = tmp_path / "ckpt" / "cifar10-test-sample.npz"
    cmd = [sys.executable, "-m", "experiments.export_images", "--data", str(data), "--n", "10"]
    out = _run([*cmd, "--output", str(out_file)], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    manifest = json.loads((tmp_path / "ckpt" / "MANIFEST.json").read_text())["files"]
    assert manifest["cifar10-test-sample.npz"]["metrics"]["n"] == 10
    split, idx = load_image_sample(out_file)
    test = load_cifar10(data, "test")
    test_x, test_y = test.images, test.labels
    assert split.images.dtype == np.uint8 and sorted(np.bincount(split.labels)) == [1] * 10
    np.testing.assert_array_equal(split.images, test_x[idx])
    np.testing.assert_array_equal(split.labels, test_y[idx])
    # an object array (a pickle) or a declared shape far beyond the cap is refused unread
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.array([object()]), labels=np.zeros(1), indices=np.zeros(1))
    with pytest.raises(ValueError, match="image sample"):
        load_image_sample(bad)
    np.savez(bad, images=np.zeros((1, 2), np.uint8), labels=np.zeros(10**6, np.int64),
             indices=np.zeros(1))  # fmt: skip
    with pytest.raises(ValueError, match="image sample .* at most"):
        load_image_sample(bad)
    np.savez(bad, images=np.zeros((1, 2), np.uint8), labels=np.zeros(1001, np.int8),
             indices=np.zeros(1))  # fmt: skip
    with pytest.raises(ValueError, match="0 < n <= 1000"):
        load_image_sample(bad)


TRAIN = [sys.executable, "-m", "experiments.train_backbone"]
EXPORT = [sys.executable, "-m", "experiments.export_traces"]


@pytest.mark.parametrize(
    ("cmd", "message"),
    [
        ([*TRAIN, "--epochs", "-1"], "--epochs=-1 is not allowed"),
        ([*TRAIN, "--lr", "nan"], "lr=nan"),
        ([*TRAIN, "--topology", "ring"], "invalid choice"),
        ([*TRAIN, "--data", "/nonexistent.tar.gz"], "does not exist"),
        ([*TRAIN, "--threads", "0"], "--threads=0 is not allowed"),
        ([*TRAIN, "--max-train-images", "-1"], "--max-train-images=-1"),
        ([*TRAIN, "--batch-size", "1000"], "--batch-size 1000"),
        ([*TRAIN, "--output", "/"], "--output"),
        ([*TRAIN, "--teacher", "/nonexistent.pt"], "does not exist"),
        ([*TRAIN, "--exits", "1,x"], "--exits '1,x'"),
        ([*TRAIN, "--exits", "2,1"], "exits=(2, 1)"),
        ([*EXPORT, "--threads", "0"], "--threads=0"),
        ([*EXPORT, "--max-images", "-1"], "--max-images=-1"),
        ([*EXPORT, "--prefix", "../../x"], "--prefix '../../x'"),
        ([*EXPORT, "--splits", "train"], "never train"),
        ([*EXPORT, "--backbone", "/nonexistent.pt"], "does not exist"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    tiny_cifar, tmp_path, monkeypatch, capsys, cmd, message
):
    """Each script's ``main`` in this process (a subprocess each would spend most of the
    test's time starting torch; the command line itself is checked by the tests above)."""
    data, _ = tiny_cifar
    for name, value in _env(tmp_path).items():
        monkeypatch.setenv(name, value)
    extra = ["--data", str(data)] if "--data" not in cmd else []
    script = export_traces if cmd[2] == "experiments.export_traces" else train_backbone
    tiny = TINY_ARGS if script is train_backbone else []
    with pytest.raises(SystemExit) as exc:  # any other exception would end in a traceback
        script.main([*tiny, *extra, *cmd[3:]])
    err = capsys.readouterr().err
    assert exc.value.code == 2, err[-2000:]
    last = err.strip().splitlines()[-1]  # argparse prints its usage above the error
    assert "error:" in last and message in last


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--seed", "-1"], "--seed=-1 is not allowed: an integer in [0, 4294967295]"),
        (["--seed", str(2**32)], f"--seed={2**32} is not allowed"),
        (["--n", "15"], "--n=15 is not allowed: a multiple of 10 in [10, 1000]"),
        (["--n", "1010"], "--n=1010 is not allowed"),
    ],
)
def test_export_images_refuses_bad_arguments_before_reading_the_dataset(
    tmp_path, capsys, argv, message
):
    """One line, exit 2, with a dataset path that does not exist: nothing was read."""
    from experiments.export_images import main

    missing = tmp_path / "no-cifar.tar.gz"
    with pytest.raises(SystemExit) as info:
        main(["--data", str(missing), "--output", str(tmp_path / "s.npz"), *argv])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "s.npz").exists()


def test_export_images_help_names_the_shipped_output_and_the_rule_for_n(capsys, monkeypatch):
    from experiments.export_images import main

    monkeypatch.setenv("COLUMNS", "300")  # no line wrapped inside a path
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "a multiple of 10 in [10, 1000]" in text
    assert "the shipped sample the live runtime reads" in text and "MANIFEST.json" in text
    assert "(default: checkpoints/cifar10-test-sample.npz)" in text
