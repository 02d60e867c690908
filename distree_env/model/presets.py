"""Named training recipes: the network of each topology and the schedule that fits a machine.

- ``cpu``: what this project trains on a 2-core CPU in about 70 minutes (bf16 autocast): the
  pipeline backbone, a WRN-16-2 cut into 4 segments, and the parallel branches (2 x WRN-16-1,
  NoNN's student size), 34 epochs each, side by side on one core each. Trained self-distilled
  without cutout (the flags ``--kd-alpha 0.5 --cutout 0``: a preset sets the network and the
  schedule only; ``train_backbone``'s defaults are KD alpha 0.9 and cutout 8): 86.1% (parallel)
  and 87.9% (pipeline) at the last exit on test.
- ``gpu``: the shipped sizes, a stronger teacher and a longer schedule, for one H100/H200 in about
  10 minutes (bf16 autocast, data kept on the GPU; ``experiments/train_backbones_gpu.sh``, which
  made the shipped networks). A WRN-16-4 teacher with an exit after every block (a training
  artefact, not shipped) teaches the pipeline WRN-16-2 and the 2 x WRN-16-1 branches (KD +
  attention transfer after the same block). The shipped widths stay those of the ``cpu`` preset
  so the live runtime on a 2-core CPU and the simulator's costs do not change; ``--widen`` gives
  wider branches. The pipeline exits after blocks 1, 3, 4 and 6: in the ``cpu`` pipeline the
  exit after block 5 was 0.2 points below the last on val and the one after block 2 only 12.9
  points below it.
- ``tiny``: WRN-10-1 with 3 exits, for tests; trains in a second on a handful of images.

Exits of a WRN-16 (2 blocks per group): after group 1 (32 px), group 2 (16 px), the first block
of group 3 and the end of group 3 (8 px). Four exits give the decision problem room; group
boundaries are where the features change scale, and splitting the last (most accurate per FLOP)
group gives a cheap late exit. Cumulative compute of a WRN-16-2: 34 / 67 / 81 / 100%.
"""

from __future__ import annotations

from distree_env.constants import TOPOLOGIES

PRESETS: dict[str, dict] = {
    "cpu": {
        "pipeline": {"net": {"num_devices": 4, "depth": 16, "widen": 2}, "epochs": 34},
        "parallel": {"net": {"num_devices": 2, "depth": 16, "widen": 1}, "epochs": 34},
        "batch_size": 256,
        "lr": 0.2,
        "device": "cpu",
    },
    "gpu": {
        "pipeline": {
            "net": {"num_devices": 4, "depth": 16, "widen": 2, "exits": (1, 3, 4, 6)},
            "epochs": 60,
        },
        "parallel": {"net": {"num_devices": 2, "depth": 16, "widen": 1}, "epochs": 60},
        "batch_size": 512,
        "lr": 0.4,
        "device": "cuda",
    },
    "tiny": {
        "pipeline": {
            "net": {"num_devices": 3, "depth": 10, "widen": 1, "exits": (1, 2, 3)},
            "epochs": 1,
        },
        "parallel": {
            "net": {"num_devices": 2, "depth": 10, "widen": 1, "exits": (1, 2, 3)},
            "epochs": 1,
        },
        "batch_size": 8,
        "lr": 0.05,
        "device": "cpu",
    },
}


def preset(name: str, topology: str) -> dict:
    """Keyword arguments of NetConfig (``net``) and of TrainConfig for ``name`` and ``topology``.

    :param name: one of :data:`PRESETS`.
    :param topology: ``parallel`` or ``pipeline``.
    """
    if name not in PRESETS:
        raise ValueError(f"preset={name!r} is not allowed; choose one of {sorted(PRESETS)}")
    if topology not in TOPOLOGIES:
        raise ValueError(f"topology={topology!r} is not allowed; choose one of {TOPOLOGIES}")
    p = PRESETS[name]
    per_topology = p[topology]
    return {
        "net": {"topology": topology, **per_topology["net"]},
        "epochs": per_topology["epochs"],
        "batch_size": p["batch_size"],
        "lr": p["lr"],
        "device": p["device"],
    }
