"""The multi-branch early-exit network of DistrEE, and the pipeline layout of MDI-Exit.

``parallel`` (DistrEE, after NoNN): ``num_devices`` branches, each a small WideResNet-style network
that sees the whole input and runs on its own device. After stage k every branch pools its feature
map into a vector and sends it to the aggregator, where exit head k fuses the vectors into a
prediction.

``pipeline`` (MDI-Exit): one backbone cut into ``num_stages`` segments on as many devices in
sequence; exit head k runs on device k, and continuing ships the feature map to device k+1.

Both share one stage structure, so the two layouts differ only in how stages map to devices.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import nn
from torch.nn import functional as F

TOPOLOGIES = ("parallel", "pipeline")


@dataclass(frozen=True)
class NetConfig:
    """Architecture of the network; stored beside the weights so a checkpoint names its shape."""

    topology: str = "parallel"
    num_devices: int = 2  # parallel: branches; pipeline: must equal num_stages
    widths: tuple[int, ...] = (64, 128, 256)  # per stage (and per branch); len = number of exits
    blocks: int | tuple[int, ...] = 1  # residual blocks per stage: one number, or one per stage
    embed_dim: int = 128  # width of each exit head's fused embedding
    num_classes: int = 10

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if isinstance(self.blocks, int):
            object.__setattr__(self, "blocks", (self.blocks,) * len(self.widths))
        object.__setattr__(self, "blocks", tuple(int(b) for b in self.blocks))
        if self.topology not in TOPOLOGIES:
            raise ValueError(
                f"topology={self.topology!r} is not allowed; choose one of {TOPOLOGIES}"
            )
        if not self.widths or any(w < 1 for w in self.widths):
            raise ValueError(
                f"widths={self.widths} is not allowed; give one positive width per stage"
            )
        if len(self.widths) > 5:
            raise ValueError(
                f"widths={self.widths} has {len(self.widths)} stages; at most 5 fit 32x32 inputs"
            )
        for name in ("num_devices", "embed_dim", "num_classes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} is not allowed; it must be >= 1")
        if len(self.blocks) != len(self.widths) or any(b < 0 for b in self.blocks):
            raise ValueError(
                f"blocks={self.blocks} is not allowed; give one number >= 0, or one per stage "
                f"({len(self.widths)})"
            )
        if self.topology == "pipeline" and self.num_devices != self.num_stages:
            raise ValueError(
                f"num_devices={self.num_devices} is not allowed for topology='pipeline'; "
                f"it must equal the number of stages ({self.num_stages})"
            )

    @property
    def num_stages(self) -> int:
        return len(self.widths)

    @property
    def num_branches(self) -> int:
        return self.num_devices if self.topology == "parallel" else 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = list(self.widths)
        d["blocks"] = list(self.blocks)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> NetConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown NetConfig field(s) {unknown}; allowed: {sorted(known)}")
        return cls(**d)


def conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class ResidualBlock(nn.Module):
    """Two 3x3 conv-BN-ReLU layers with an identity shortcut (WideResNet's basic block)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(width, width), conv_bn(width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Stage(nn.Sequential):
    """Widen with a 3x3 conv, halve the resolution, then refine with residual blocks."""

    def __init__(self, cin: int, cout: int, blocks: int) -> None:
        super().__init__(
            conv_bn(cin, cout), nn.MaxPool2d(2), *[ResidualBlock(cout) for _ in range(blocks)]
        )


class Branch(nn.Module):
    """One device's network: a stem and one stage per width; yields every stage's feature map."""

    def __init__(self, widths: tuple[int, ...], blocks: tuple[int, ...]) -> None:
        super().__init__()
        stem = max(16, widths[0] // 2)
        self.stem = conv_bn(3, stem)
        chans = (stem, *widths)
        self.stages = nn.ModuleList(
            Stage(chans[i], chans[i + 1], blocks[i]) for i in range(len(widths))
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out


class ExitHead(nn.Module):
    """Fuse the pooled features of every branch into an embedding, then classify it.

    The embedding (after ReLU, so non-negative) is what DistrEE's similarity criterion compares
    between consecutive exits.
    """

    def __init__(self, in_features: int, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.fuse = nn.Linear(in_features, embed_dim)
        self.classify = nn.Linear(embed_dim, num_classes)

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = F.relu(self.fuse(pooled))
        return self.classify(embedding), embedding


class MultiBranchNet(nn.Module):
    """For every exit k: the logits ``[B, C]`` and the fused embedding ``[B, embed_dim]``."""

    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        self.config = config
        self.branches = nn.ModuleList(
            Branch(config.widths, config.blocks) for _ in range(config.num_branches)
        )
        self.exits = nn.ModuleList(
            ExitHead(w * config.num_branches, config.embed_dim, config.num_classes)
            for w in config.widths
        )

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        per_branch = [branch(x) for branch in self.branches]  # [branch][stage] -> feature map
        logits, embeddings = [], []
        for k, head in enumerate(self.exits):
            pooled = torch.cat([feats[k].mean(dim=(2, 3)) for feats in per_branch], dim=1)
            out, emb = head(pooled)
            logits.append(out)
            embeddings.append(emb)
        return logits, embeddings
