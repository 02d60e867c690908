"""WRN branches, the runtime API, losses, the feature difference, costs and backbone files."""

from __future__ import annotations

import zipfile
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from distree_env.model.checkpoint import load_backbone, save_backbone
from distree_env.model.costs import measure_costs
from distree_env.model.data import Split
from distree_env.model.export import export_trace
from distree_env.model.network import MultiBranchNet, NetConfig, PreActBlock
from distree_env.model.presets import PRESETS, preset
from distree_env.model.train import (
    LossConfig,
    TrainConfig,
    Trainer,
    attention_loss,
    attention_map,
    augment,
    exit_losses,
    matching_exits,
)
from distree_env.traces import ExitTrace, consecutive_feature_diff
from tests.damaged import version_needed

# WRN-10-1: one block per group (16, 32, 64 channels), an exit after each block
TINY = {"depth": 10, "widen": 1, "exits": (1, 2, 3), "embed_dim": 5, "num_classes": 3}


def tiny_split(n: int = 12, classes: int = 3, seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    return Split(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), np.arange(n) % classes)


def tiny_net(topology: str = "parallel", devices: int = 2) -> MultiBranchNet:
    torch.manual_seed(0)
    return MultiBranchNet(NetConfig(topology=topology, num_devices=devices, **TINY)).eval()


def test_wrn_block_is_pre_activation_with_a_strided_shortcut():
    same = PreActBlock(16, 16, 1)
    assert same.shortcut is None
    x = torch.randn(2, 16, 32, 32)
    assert same(x).shape == x.shape
    down = PreActBlock(16, 32, 2)
    assert down.conv1.stride == (2, 2) and down.shortcut.stride == (2, 2)
    assert down(x).shape == (2, 32, 16, 16)
    # pre-activation: the block adds to its raw input, so zeroed convolutions are the identity
    for p in (same.conv1.weight, same.conv2.weight):
        torch.nn.init.zeros_(p)
    torch.testing.assert_close(same(x), x)


def test_wrn16_stages_are_cut_at_the_exits():
    cfg = NetConfig(topology="pipeline", num_devices=4, depth=16, widen=2, exits=(2, 4, 5, 6))
    assert cfg.name == "WRN-16-2" and cfg.blocks_per_group == 2
    assert cfg.stage_widths == (32, 64, 128, 128)
    net = MultiBranchNet(cfg).eval()
    assert [len(s) for s in net.branches[0].stages] == [2, 2, 1, 3]  # last: block + BN + ReLU
    h = torch.randn(2, 3, 32, 32)
    shapes = []
    for k in range(cfg.num_exits):
        h = net.stage_forward(0, k, h)
        shapes.append(tuple(h.shape[1:]))
    assert shapes == [(32, 32, 32), (64, 16, 16), (128, 8, 8), (128, 8, 8)]
    counted = (torch.nn.Conv2d, torch.nn.Linear)  # batch-norm's few weights are not counted
    assert cfg.num_parameters == sum(
        p.numel() for m in net.modules() if isinstance(m, counted) for p in m.parameters()
    )


@pytest.mark.parametrize(("topology", "devices"), [("parallel", 2), ("pipeline", 3)])
def test_runtime_api_composes_to_forward(topology, devices):
    net = tiny_net(topology, devices)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        logits, embeddings = net(x)
        inputs = [x] * net.config.num_branches
        for k in range(net.config.num_exits):
            inputs = [net.stage_forward(b, k, h) for b, h in enumerate(inputs)]
            out, emb = net.exit_forward(k, [net.pool(h) for h in inputs])
            torch.testing.assert_close(out, logits[k])
            torch.testing.assert_close(emb, embeddings[k])
    assert net.pool(inputs[0]).shape == (3, net.config.stage_widths[-1])
    with pytest.raises(ValueError, match="one per branch"):
        net.exit_forward(0, [])


def test_cost_tables_match_a_hand_count_parallel():
    costs = measure_costs(tiny_net("parallel", 2))
    stem = 32 * 32 * 16 * 3 * 9
    block0 = 2 * 32 * 32 * 16 * 16 * 9  # 16 -> 16 at 32 px, identity shortcut
    block1 = 16 * 16 * 32 * (16 * 9 + 32 * 9 + 16)  # 16 -> 32, stride 2, 1x1 shortcut
    block2 = 8 * 8 * 64 * (32 * 9 + 64 * 9 + 32)  # 32 -> 64, stride 2, 1x1 shortcut
    np.testing.assert_array_equal(
        costs.stage_flops, 2 * np.array([[stem + block0] * 2, [block1] * 2, [block2] * 2])
    )
    # exit heads fuse both branches' pooled vectors: (2*w -> 5) then (5 -> 3)
    np.testing.assert_array_equal(
        costs.exit_flops, 2 * np.array([2 * w * 5 + 5 * 3 for w in (16, 32, 64)])
    )
    np.testing.assert_array_equal(costs.transfer_bytes, [[64, 64], [128, 128], [256, 256]])
    assert costs.input_bytes == 3072


def test_cost_tables_match_a_hand_count_pipeline():
    costs = measure_costs(tiny_net("pipeline", 3))
    first = 2 * (32 * 32 * 16 * 3 * 9 + 2 * 32 * 32 * 16 * 16 * 9)
    assert costs.stage_flops[0, 0] == first and costs.stage_flops[0, 1:].sum() == 0
    assert np.count_nonzero(costs.stage_flops) == 3  # segment k runs on device k only
    # continuing ships the raw feature map (float32) to the next device; nothing after the last
    expected = np.diag([16 * 32 * 32 * 4, 32 * 16 * 16 * 4, 0])
    np.testing.assert_array_equal(costs.transfer_bytes, expected)


def test_feature_diff_is_half_the_distance_of_normalised_consecutive_embeddings():
    emb = np.array([[[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, -1.0]]])
    # exit 0: 1 by definition; same direction: 0; orthogonal: sqrt(2)/2; opposite: 1
    expected = [[1.0, 0.0, np.sqrt(2) / 2, 1.0]]
    np.testing.assert_allclose(consecutive_feature_diff(emb), expected, rtol=1e-6)


def _loss_inputs():
    torch.manual_seed(0)
    logits = [torch.randn(6, 3) for _ in range(3)]
    embs = [torch.rand(6, 5) for _ in range(3)]
    return logits, embs, torch.arange(6) % 3


def test_kd_term_matches_a_hand_computation():
    logits, embs, y = _loss_inputs()
    teacher = torch.randn(6, 3)
    cfg = LossConfig(kd_alpha=0.9, kd_temperature=4.0, feature_weight=0, label_smoothing=0)
    _, per_exit = exit_losses(logits, embs, y, cfg, teacher_logits=teacher)
    p_t = F.softmax(teacher / 4, dim=1)
    for k, out in enumerate(logits):
        kl = (p_t * (p_t.log() - F.log_softmax(out / 4, dim=1))).sum(1).mean()
        expected = 0.1 * F.cross_entropy(out, y) + 0.9 * 16 * kl
        torch.testing.assert_close(per_exit[k], expected)
    # a student that already matches the teacher pays only the label term
    _, same = exit_losses([teacher] * 3, embs, y, cfg, teacher_logits=teacher)
    torch.testing.assert_close(same[0], 0.1 * F.cross_entropy(teacher, y))


def test_self_distillation_teaches_earlier_exits_from_the_deepest():
    logits, embs, y = _loss_inputs()
    cfg = LossConfig(kd_alpha=0.5, feature_weight=0, label_smoothing=0)
    _, per_exit = exit_losses(logits, embs, y, cfg)
    torch.testing.assert_close(per_exit[-1], F.cross_entropy(logits[-1], y))  # labels only
    _, as_teacher = exit_losses(logits, embs, y, cfg, teacher_logits=logits[-1])
    torch.testing.assert_close(per_exit[0], as_teacher[0])


def test_feature_transfer_pulls_each_exit_toward_the_next():
    logits, embs, y = _loss_inputs()
    base = LossConfig(kd_alpha=0, feature_weight=0, label_smoothing=0)
    with_ft = LossConfig(kd_alpha=0, feature_weight=2.0, label_smoothing=0)
    _, plain = exit_losses(logits, embs, y, base)
    _, full = exit_losses(logits, embs, y, with_ft)
    for k in range(2):
        gap = (F.normalize(embs[k], dim=1) - F.normalize(embs[k + 1], dim=1)).pow(2).sum(1).mean()
        torch.testing.assert_close(full[k] - plain[k], 2.0 * gap)
    torch.testing.assert_close(full[2], plain[2])  # the deepest exit has no successor


def test_attention_transfer_matches_each_branch_to_its_share_of_the_teacher():
    torch.manual_seed(0)
    a, b = torch.randn(2, 4, 8, 8), torch.randn(2, 6, 8, 8)
    q = a.pow(2).mean(1).flatten(1)
    torch.testing.assert_close(attention_map(a), q / q.norm(dim=1, keepdim=True))
    teacher = torch.cat([a, b], dim=1)  # 10 channels: one share of 5 per branch
    students = [[teacher[:, :5]], [teacher[:, 5:]]]
    assert attention_loss(students, [teacher]).item() == pytest.approx(0.0, abs=1e-7)
    swapped = [[teacher[:, 5:]], [teacher[:, :5]]]
    assert attention_loss(swapped, [teacher]).item() > 1e-4
    # a teacher map of another resolution is pooled to the student's
    big = F.interpolate(teacher, scale_factor=2)
    assert attention_loss(students, [big]).item() < attention_loss(swapped, [big]).item()


def test_attention_is_matched_after_the_same_block_of_the_teacher():
    student = NetConfig(topology="pipeline", num_devices=4, depth=16, exits=(1, 3, 4, 6))
    teacher = NetConfig(
        topology="pipeline", num_devices=6, depth=16, widen=4, exits=tuple(range(1, 7))
    )
    assert matching_exits(student, teacher) == [0, 2, 3, 5]
    parallel = NetConfig(topology="parallel", depth=16)  # exits after blocks 2, 4, 5, 6
    assert matching_exits(parallel, teacher) == [1, 3, 4, 5]
    with pytest.raises(ValueError, match=r"an exit after every block"):
        matching_exits(student, NetConfig(topology="pipeline", num_devices=4, depth=16))


def test_augment_crops_flips_and_cuts_out_with_the_seeded_draws():
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), np.uint8))
    a = augment(x, np.random.default_rng(1), cutout=8)
    b = augment(x, np.random.default_rng(1), cutout=8)
    assert a.dtype == torch.uint8 and a.shape == x.shape and torch.equal(a, b)
    plain = augment(x, np.random.default_rng(1), pad=0)
    assert all(
        torch.equal(p, i) or torch.equal(p, i.flip(1)) for p, i in zip(plain, x, strict=True)
    )


def test_teacher_distillation_trains_the_student(tmp_path):
    split = tiny_split()
    teacher = tiny_net("pipeline", 3)
    student = NetConfig(topology="parallel", num_devices=2, **TINY)
    cfg = TrainConfig(net=student, epochs=1, batch_size=4, bf16=False, teacher="t.pt")
    trainer = Trainer(cfg, split, split, tmp_path, teacher=teacher)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    frozen = [p.detach().clone() for p in teacher.parameters()]
    trainer.fit(progress=False)
    assert any(
        not torch.equal(a, p) for a, p in zip(before, trainer.model.parameters(), strict=True)
    )
    assert all(torch.equal(a, p) for a, p in zip(frozen, teacher.parameters(), strict=True))
    with pytest.raises(ValueError, match="teacher"):
        Trainer(cfg, split, split, tmp_path / "x")  # the config names a teacher; none given
    # a teacher of other exits teaches by KD alone; attention transfer needs matching exits
    other = MultiBranchNet(
        NetConfig(topology="pipeline", num_devices=2, **{**TINY, "exits": (2, 3)})
    )
    with pytest.raises(ValueError, match="needs the same depth and an exit after every block"):
        Trainer(cfg, split, split, tmp_path / "y", teacher=other)
    kd_only = replace(cfg, loss=replace(cfg.loss, attention_weight=0.0))
    Trainer(kd_only, split, split, tmp_path / "z", teacher=other).fit(progress=False)
    from experiments.train_backbone import distillation  # the recipe line says which

    assert distillation(kd_only) == "teacher t.pt (final exit), KD"
    assert distillation(cfg) == "teacher t.pt (final exit), KD + attention transfer"
    assert distillation(replace(cfg, teacher="")).startswith("self-distillation")


@pytest.mark.parametrize("topology", ["parallel", "pipeline"])
def test_both_topologies_train_and_export_a_valid_trace(topology, tmp_path):
    split = tiny_split()
    net = NetConfig(topology=topology, num_devices=2 if topology == "parallel" else 3, **TINY)
    cfg = TrainConfig(net=net, epochs=1, batch_size=4, bf16=False)
    trainer = Trainer(cfg, split, split, tmp_path)
    history = trainer.fit(progress=False)
    assert len(history) == 1 and len(history[0]["val_exit_accuracy"]) == 3
    trace = export_trace(trainer.model, split, "val", bf16=False)
    path = tmp_path / "trace.npz"
    trace.save(path)
    loaded = ExitTrace.load(path)
    assert loaded.topology == topology and loaded.probs.shape == (12, 3, 3)
    assert loaded.stage_flops.shape == (3, net.num_devices)
    assert (loaded.feature_diff[:, 0] == 1).all() and (loaded.feature_diff[:, 1:] < 1).all()
    np.testing.assert_allclose(loaded.exit_accuracy, loaded.metadata["exit_accuracy"], atol=1e-4)


def test_batch_larger_than_the_data_is_refused(tmp_path):
    cfg = TrainConfig(net=NetConfig(**TINY), epochs=1, batch_size=64, bf16=False)
    with pytest.raises(ValueError, match="batch_size=64"):
        Trainer(cfg, tiny_split(), tiny_split(), tmp_path).fit(progress=False)


def test_presets_build_valid_networks():
    for name in PRESETS:
        for topology in ("parallel", "pipeline"):
            p = preset(name, topology)
            cfg = NetConfig(**p["net"])
            assert cfg.topology == topology and cfg.num_parameters < 20_000_000
    for topology in ("parallel", "pipeline"):  # the GPU recipe ships the CPU recipe's sizes
        gpu, cpu = (NetConfig(**preset(n, topology)["net"]) for n in ("gpu", "cpu"))
        assert gpu.num_parameters == pytest.approx(cpu.num_parameters, rel=0.05)
    with pytest.raises(ValueError, match="preset='huge'"):
        preset("huge", "parallel")


def test_backbone_round_trip_and_wrong_architecture_refused(tmp_path):
    model = tiny_net()
    path = tmp_path / "bb.pt"
    save_backbone(model, path)
    loaded = load_backbone(path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[0][-1], model(x)[0][-1], atol=2e-2, rtol=0)
    with pytest.raises(ValueError, match="was made for architecture"):
        load_backbone(path, expect=NetConfig(**{**TINY, "widen": 2}))
    # a file whose config lies about its weights: refused by shape, not a torch traceback
    obj = torch.load(path, weights_only=True)
    obj["config"]["widen"] = 2
    torch.save(obj, path)
    with pytest.raises(ValueError, match="another architecture"):
        load_backbone(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda o: o.pop("config"), "'config' is missing"),
        (lambda o: o.pop("state_dict"), "'state_dict' is missing"),
        (lambda o: o.update(config=[1, 2]), "'config' is list"),
        (lambda o: o.update(state_dict="x"), "'state_dict' is str"),
        (lambda o: o["config"].update(depth="16"), "depth='16'"),
        (lambda o: o["config"].update(exits=["a"]), "exits="),
        (lambda o: o["config"].update(colour=1), "unknown NetConfig field"),
        # WRN-100-32 on 16 devices would ask for tens of GB: refused before any allocation
        (lambda o: o["config"].update(depth=100, widen=32, num_devices=16, exits=[48]), "at most"),
        (lambda o: o["config"].update(widen=10**9), "widen=1000000000"),
        (lambda o: o["state_dict"].update({"exits.0.fuse.weight": [1.0]}), "another architecture"),
    ],
)
def test_malformed_backbone_files_give_one_value_error(tmp_path, change, message):
    path = tmp_path / "bb.pt"
    save_backbone(tiny_net(), path)
    obj = torch.load(path, weights_only=True)
    change(obj)
    torch.save(obj, path)
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        load_backbone(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "corrupt"), (b"not a zip at all", "corrupt")],
)
def test_corrupt_backbone_files_are_refused(tmp_path, content, message):
    path = tmp_path / "bb.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        load_backbone(path)


def test_truncated_backbone_is_refused(tmp_path):
    path = tmp_path / "bb.pt"
    save_backbone(tiny_net(), path)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(ValueError, match="corrupt"):
        load_backbone(path)


def test_shipped_backbone_is_checked_against_the_manifest(tmp_path, monkeypatch):
    from distree_env.manifest import record

    monkeypatch.setenv("DISTREE_CHECKPOINTS", str(tmp_path))
    path = tmp_path / "backbone-parallel.pt"
    save_backbone(tiny_net(), path)
    with pytest.raises(ValueError, match="MANIFEST.json' is missing"):
        load_backbone(path)
    other = tmp_path / "other.pt"
    save_backbone(tiny_net(), other)
    record(other, "test")
    with pytest.raises(ValueError, match="not listed"):
        load_backbone(path)
    record(path, "test")
    load_backbone(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        load_backbone(path)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("topology", "ring", "topology='ring'"),
        ("depth", 12, "depth=12"),
        ("depth", 16.0, "depth=16.0"),
        ("widen", 0, "widen=0"),
        ("num_devices", 0, "num_devices=0"),
        ("exits", (), "exits=()"),
        ("exits", (2, 1, 3), "exits=(2, 1, 3)"),
        ("exits", (1, 2), "ending with the last block (3)"),
        ("exits", (0, 3), "exits=(0, 3)"),
    ],
)
def test_bad_net_config_is_named(field, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        NetConfig(**{**TINY, field: value})


def test_pipeline_needs_one_device_per_exit():
    with pytest.raises(ValueError, match="must equal the number of exits"):
        NetConfig(topology="pipeline", num_devices=2, **TINY)


def test_a_pickle_bearing_backbone_is_one_line_without_unpickling_advice(tmp_path):
    """Refused by ``weights_only``, and the message never passes on torch's advice to load it
    with pickling back on."""
    import os

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'PWNED'}",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "distree-backbone", "version": 2, "config": Payload()}, path)
    with pytest.raises(ValueError) as exc:
        load_backbone(path)
    text = str(exc.value)
    assert "\n" not in text and "weights_only" not in text and "unpickling" in text
    assert not (tmp_path / "PWNED").exists()


def _recompressed(path, compression=zipfile.ZIP_DEFLATED):
    """The same archive with every record written by another zip tool."""
    out = path.with_name("re.pt")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w", compression) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    return out


def test_a_compressed_backbone_is_refused_before_it_inflates(tmp_path):
    """torch.load would inflate each record to its declared size: a zip bomb."""
    path = tmp_path / "bb.pt"
    save_backbone(tiny_net(), path)
    load_backbone(_recompressed(path, zipfile.ZIP_STORED))  # another tool, stored: fine
    with pytest.raises(ValueError, match="is compressed, which torch.save never does"):
        load_backbone(_recompressed(path))


def test_pickled_legacy_oversized_and_non_file_backbones_are_refused(tmp_path, monkeypatch):
    import distree_env.model.checkpoint as checkpoint

    path = tmp_path / "bb.pt"
    net = tiny_net()
    torch.save(
        {"config": {}, "state_dict": net.state_dict()}, path, _use_new_zipfile_serialization=False
    )
    with pytest.raises(ValueError, match="holds pickled Python objects"):
        load_backbone(path)
    pickled = path.read_bytes()
    path.write_bytes(b"PK not really a zip")
    with pytest.raises(ValueError, match="not a torch zip archive"):
        load_backbone(path)
    save_backbone(net, path)
    archive = path.read_bytes()
    for name, data in {
        "legacy-and-zip.pt": b"(lp0\n." + archive,  # a protocol-0 pickle, then a zip: legacy path
        "version.pt": version_needed(archive, 100),  # zip version 10.0, unknown to zipfile
        "pickled.pt": pickled[:1] + archive,  # torch's legacy reader, behind a pickle opcode
    }.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=f"{name}.*(not a torch zip|pickled Python)"):
            load_backbone(tmp_path / name)
    save_backbone(net, path)
    monkeypatch.setattr(checkpoint, "MAX_CHECKPOINT_BYTES", path.stat().st_size - 1)
    with pytest.raises(ValueError, match="over the cap"):
        load_backbone(path)
    with pytest.raises(ValueError, match="is not a regular file"):
        load_backbone(tmp_path)


def test_a_torch_whose_weights_only_loading_is_unsafe_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "bb.pt"
    save_backbone(tiny_net(), path)
    monkeypatch.setattr(torch, "__version__", "2.5.1")
    with pytest.raises(ValueError, match="CVE-2025-32434"):
        load_backbone(path)
