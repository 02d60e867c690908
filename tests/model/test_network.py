from __future__ import annotations

import numpy as np
import pytest
import torch

from distree_env.model.checkpoint import load_backbone, save_backbone
from distree_env.model.costs import measure_costs
from distree_env.model.data import Split
from distree_env.model.export import consecutive_similarity, export_trace
from distree_env.model.network import MultiBranchNet, NetConfig
from distree_env.model.train import LossConfig, TrainConfig, Trainer, exit_losses
from distree_env.trace import ExitTrace

TINY = {"widths": (4, 8), "blocks": 0, "embed_dim": 5, "num_classes": 3}


def tiny_split(n: int = 12, classes: int = 3, seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    return Split(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), np.arange(n) % classes)


def test_cost_tables_match_a_hand_count_parallel():
    model = MultiBranchNet(NetConfig(topology="parallel", num_devices=2, **TINY))
    costs = measure_costs(model)
    stem = 32 * 32 * 16 * 3 * 9  # stem: 3 -> 16 channels (min stem width), 3x3, at 32x32
    stage0 = 32 * 32 * 4 * 16 * 9  # 16 -> 4 channels at 32x32, then pooled to 16x16
    stage1 = 16 * 16 * 8 * 4 * 9  # 4 -> 8 channels at 16x16
    np.testing.assert_array_equal(
        costs.stage_flops, 2 * np.array([[stem + stage0] * 2, [stage1] * 2])
    )
    # exit heads fuse both branches' pooled vectors: (2*w -> 5) then (5 -> 3)
    np.testing.assert_array_equal(costs.exit_flops, 2 * np.array([8 * 5 + 5 * 3, 16 * 5 + 5 * 3]))
    np.testing.assert_array_equal(
        costs.transfer_bytes, [[16, 16], [32, 32]]
    )  # float32 pooled vectors
    assert costs.input_bytes == 3072


def test_cost_tables_match_a_hand_count_pipeline():
    model = MultiBranchNet(NetConfig(topology="pipeline", num_devices=2, **TINY))
    costs = measure_costs(model)
    first = 2 * (32 * 32 * 16 * 3 * 9 + 32 * 32 * 4 * 16 * 9)
    np.testing.assert_array_equal(costs.stage_flops, [[first, 0], [0, 2 * 16 * 16 * 8 * 4 * 9]])
    np.testing.assert_array_equal(costs.exit_flops, 2 * np.array([4 * 5 + 5 * 3, 8 * 5 + 5 * 3]))
    # continuing from segment 0 ships its 4 x 16 x 16 float32 feature map to device 1
    np.testing.assert_array_equal(costs.transfer_bytes, [[4 * 16 * 16 * 4, 0], [0, 0]])


@pytest.mark.parametrize("topology", ["parallel", "pipeline"])
def test_both_topologies_train_and_export_a_valid_trace(topology, tmp_path):
    split = tiny_split()
    cfg = TrainConfig(
        net=NetConfig(topology=topology, num_devices=2, **TINY), epochs=1, batch_size=4, bf16=False
    )
    trainer = Trainer(cfg, split, split, tmp_path)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    history = trainer.fit(progress=False)
    assert len(history) == 1 and len(history[0]["val_exit_accuracy"]) == 2
    assert any(
        not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True)
    )
    trace = export_trace(trainer.model, split, "val", bf16=False)
    path = tmp_path / "trace.npz"
    trace.save(path)
    loaded = ExitTrace.load(path)
    assert loaded.topology == topology and loaded.probs.shape == (12, 2, 3)
    assert loaded.stage_flops.shape == (2, 2)
    np.testing.assert_allclose(loaded.exit_accuracy, loaded.metadata["exit_accuracy"], atol=1e-4)


def test_losses_include_distillation_and_feature_terms():
    torch.manual_seed(0)
    logits = [torch.randn(6, 3), torch.randn(6, 3)]
    embs = [torch.rand(6, 5), torch.rand(6, 5)]
    y = torch.arange(6) % 3
    plain, _ = exit_losses(logits, embs, y, LossConfig(kd_weight=0, feature_weight=0))
    full, per_exit = exit_losses(logits, embs, y, LossConfig())
    assert full > plain
    # the deepest exit learns from labels only
    deepest, _ = exit_losses(logits[1:], embs[1:], y, LossConfig())
    assert torch.isclose(per_exit[-1], deepest)


def test_similarity_is_cosine_of_consecutive_embeddings():
    emb = np.array([[[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]]])
    np.testing.assert_allclose(consecutive_similarity(emb), [[0.0, 1.0, 0.0]])


def test_backbone_round_trip_and_wrong_architecture_refused(tmp_path):
    model = MultiBranchNet(NetConfig(**TINY)).eval()
    path = tmp_path / "bb.pt"
    save_backbone(model, path)
    loaded = load_backbone(path)
    x = torch.randn(2, 3, 32, 32)
    np.testing.assert_allclose(loaded(x)[0][-1].detach(), model(x)[0][-1].detach(), atol=1e-2)
    with pytest.raises(ValueError, match="was made for architecture"):
        load_backbone(path, expect=NetConfig(**{**TINY, "widths": (4, 16)}))
    # a file whose config lies about its weights: refused by shape, not a torch traceback
    obj = torch.load(path, weights_only=True)
    obj["config"]["widths"] = [4, 16]
    torch.save(obj, path)
    with pytest.raises(ValueError, match="another architecture"):
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
    save_backbone(MultiBranchNet(NetConfig(**TINY)), path)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(ValueError, match="corrupt"):
        load_backbone(path)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("topology", "ring", "topology='ring'"),
        ("widths", (), "widths=()"),
        ("widths", (4, 0), "widths=(4, 0)"),
        ("num_devices", 0, "num_devices=0"),
        ("blocks", -1, "blocks=(-1, -1)"),
        ("blocks", (1, 2, 3), "blocks=(1, 2, 3)"),
    ],
)
def test_bad_net_config_is_named(field, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        NetConfig(**{**TINY, field: value})


def test_pipeline_needs_one_device_per_stage():
    with pytest.raises(ValueError, match="must equal the number of stages"):
        NetConfig(topology="pipeline", num_devices=3, **TINY)
